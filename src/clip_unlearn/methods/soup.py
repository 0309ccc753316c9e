"""The restore stage of seed 001: soups theta = a * theta_unlearned + (1 - a) * theta_original,
each blend of a grid scored on the val split, one alpha chosen.

    grid = soup_grid(bundle, ctx, w, unlearned, original, cfg.alpha_grid, forget_top1)
    alpha = choose_soup_alpha(grid, target=0.1, rule="deepest", margin=0.5)
    blend_(bundle.model, unlearned, original, alpha)
"""

from __future__ import annotations

from typing import Callable

import torch

from clip_unlearn.core.clip_ops import encode_images
from clip_unlearn.core.gate import Thresholds
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext


def choose_soup_alpha(grid_results: list[dict], target: float = 0.1, rule: str = "retain",
                      margin: float = 0.5) -> float:
    """grid_results: [{"alpha", "forget_top1", "retain"}, ...] measured on calibration data
    ("retain": any score of retained accuracy, higher is better; for rule "deepest" the share of
    the allowance left unused, 1 - drop / limit, worst group).

    rule "retain": among alphas with forget_top1 <= target, the one with the highest retain (ties:
    lower forget, then smaller alpha, i.e. closer to the original). rule "deepest": among those,
    the largest alpha with retain >= margin, else as "retain". None meets the target: the lowest
    forget_top1 (ties: higher retain, then smaller alpha)."""
    if not grid_results:
        raise ValueError("choose_soup_alpha: empty grid")
    ok = [r for r in grid_results if r["forget_top1"] <= target]
    deep = [r for r in ok if r["retain"] >= margin] if rule == "deepest" else []
    if deep:
        best = max(deep, key=lambda r: r["alpha"])
    elif ok:
        best = min(ok, key=lambda r: (-r["retain"], r["forget_top1"], r["alpha"]))
    else:
        best = min(grid_results, key=lambda r: (r["forget_top1"], -r["retain"], r["alpha"]))
    return float(best["alpha"])


def soup_limits(th: Thresholds) -> dict[str, float]:
    """How far each retained group may fall under the gate in force: the soup is scored by the worst
    group's share of its own allowance, so a 2-point loss on another dataset (limit 2) weighs as much
    as a 5-point loss on the class's rest (limit 5)."""
    return {"class_rest": th.subgroup_rest_drop_max or 0.05, "other_classes": th.other_classes_drop_max or 0.03,
            "other": th.other_drop_max or 0.02}


def blend_(model: torch.nn.Module, unlearned: dict[str, torch.Tensor], original: dict[str, torch.Tensor],
           alpha: float) -> None:
    """model <- alpha * unlearned + (1 - alpha) * original, for floating tensors that differ
    (tensors the method never changed stay bit-identical)."""
    state = {k: alpha * u + (1 - alpha) * original[k]
             if u.is_floating_point() and not torch.equal(u, original[k]) else u
             for k, u in unlearned.items()}
    model.load_state_dict(state)


@torch.no_grad()
def top1_of(bundle: ClipBundle, images: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    preds = (encode_images(bundle, images) @ w.T.to(bundle.device)).argmax(dim=-1).cpu()
    return float((preds == labels).float().mean())


def soup_grid(bundle: ClipBundle, ctx: UnlearnContext, w: torch.Tensor, unlearned: dict, original: dict,
              alpha_grid: list[float], forget_top1: Callable[[], float]) -> list[dict]:
    """Every blend of the grid scored on the val split: forget_top1() of the blended model, and its
    retained score, the worst share of its allowance used over the groups the targets watch (the
    class's other subgroups, the other classes, each other dataset), of val top-1 against the original
    model: a mean would let a gain on one group hide a loss on the other. Leaves the model at the
    grid's last blend."""
    req, dev = ctx.request, bundle.device
    retain_v = ctx.retain_set("val")
    groups = {k: (*d.tensors(), w) for k, d in (("class_rest", retain_v.select(req.classes)),
                                               ("other_classes", retain_v.select(req.classes, invert=True))) if len(d)}
    for d in ctx.other_sets("val"):
        if len(d):
            groups[f"other:{d.name}"] = (*d.tensors(), class_vectors(bundle, d.classes, zero_shot_templates(d.name)).to(dev))
    base = {k: top1_of(ctx.original, x, y, wk) for k, (x, y, wk) in groups.items()}
    limits = soup_limits(ctx.gate)
    grid = []
    for alpha in alpha_grid:
        blend_(bundle.model, unlearned, original, alpha)
        accs = {k: top1_of(bundle, x, y, wk) for k, (x, y, wk) in groups.items()}
        grid.append({"alpha": alpha, "forget_top1": forget_top1(),
                     "retain": min((1 - (base[k] - accs[k]) / limits[k.split(":")[0]] for k in accs), default=0.0),
                     "groups": accs})
    return grid
