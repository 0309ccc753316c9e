"""Assurance: what is measured beyond zero-shot accuracy (the gate judges it; core/gate.py).

    from clip_unlearn.core.assurance import AssuranceConfig, probe_check, relearn_check
    res = relearn_check(unlearned, ForgetRequest(dataset="digits", classes=["seven"]), "data", AssuranceConfig())
    res["forget_top1_curve"], res["forget_top1_max"]      # the gate's relearn_forget_max judges the peak
    probe = probe_check(base, unlearned, request, "data", AssuranceConfig())

Two checks:

relearn  Does the forgotten class come back after a short, benign fine-tune? A copy of the
         unlearned model is fine-tuned with zero-shot cross-entropy (image features against the
         dataset's class text vectors; by default the forgotten classes do not compete in the
         loss, see relearn_candidates) on RETAINED train images only (never the forget set), and the
         forgotten class's zero-shot top-1 on the test split, every class a candidate as in
         request_metrics, is tracked along the way. An erasure that only hides the class (e.g.
         squashes one direction that a few gradient steps restore) shows up as a rising curve. The
         gate passes it when the curve never exceeds its relearn_forget_max.

probe    Are the forgotten images still linearly separable from the retained ones in the image
         feature space? One logistic-regression probe per model (base and unlearned) on L2-
         normalized image features, forgotten vs retained images of the request's dataset,
         trained on the train split, scored on the test split by balanced accuracy (the classes
         are ~1:9). Passed: the unlearned model's balanced accuracy is at least probe_margin
         BELOW the base model's (drop >= margin). A zero-shot-only erasure (a projection of the
         image features away from the class's text direction, a text-side edit) leaves the
         features linearly separable, and this check says so. Even a model retrained without
         the class (the oracle) can be expected to separate its images -- generic features
         tell a digit it never saw from the others [not measured here] -- so the verdict is
         informational by default (probe_gate False): it is reported in the certificate, and
         blocks promotion only when probe_gate is on.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from clip_unlearn.core.clip_ops import encode_images, encode_text, fast_cpu_attention, to_model_input
from clip_unlearn.core.depth import DepthConfig
from clip_unlearn.core.finetune import Sampler, zs_logits
from clip_unlearn.core.measure import request_mask
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.progress import track
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import Section
from clip_unlearn.core.splits import request_split
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors, predict


class AssuranceConfig(Section):
    # Relearn defaults, measured on the reference model (digits:seven, forget top-1 on the test
    # split along 60 steps, every 10; batch 64, all parameters, 1 CPU thread ~0.19 s a step):
    #   lr 1e-4: projection 0.25 -> max 0.38; subgroup 0.02 -> 0.29 at step 60, still rising;
    #            the base model itself drifts only 0.91 -> 0.87.
    #   lr 3e-4: projection max 0.48 (step 20); subgroup max 0.47 (step 30); base drifts to 0.74.
    #   lr 1e-3: unstable (projection curve dips to 0.19 before it rises).
    # 3e-4 is the strongest attack that stays a benign fine-tune, and the curves peak within ~30
    # steps; 50 steps cover that. An evaluation point costs ~0.05 s (216 forgotten test images +
    # class vectors), so every 5 steps. With these defaults (2 threads, a shared machine):
    # relearn 13 s + probe 6 s = run_assurance 19 s; projection max 0.51 at step 15 (fails),
    # subgroup 0.02 -> max 0.48 at step 25 (passes) -- both come back about half-way.
    relearn_steps: int = Field(50, ge=0, le=10_000, description="fine-tune steps on retained train images")
    relearn_lr: float = Field(3e-4, gt=0, le=1, description="AdamW learning rate of the relearn fine-tune")
    relearn_batch_size: int = Field(64, ge=1, le=4096, description="retained train images per relearn step")
    relearn_eval_every: int = Field(5, ge=1,
                                    description="steps between forget top-1 measurements (also at 0 and the end)")
    # All parameters by default: a benign fine-tune of the released model touches both towers,
    # and an erasure living in the text tower (e.g. lipschitz, or a text-side edit) can only
    # come back if the text tower moves too. "image" mirrors subgroup's remind stage.
    relearn_trainable: Literal["all", "image"] = Field(
        "all", description="parameters the relearn fine-tune updates: every one, or the image tower only")
    # "retained": the fine-tune's softmax runs over the retained classes only, like a downstream
    # fine-tune on a task without the class. With "all" the forgotten class is a candidate that
    # is never the answer, so the fine-tune itself teaches "never say seven" and the check is
    # biased toward passing (measured on the reference, projection digits:seven, lr 1e-3: forget
    # top-1 0.25 -> 0.05 with "all"). A subgroup request keeps its class either way (the class's
    # other subgroups are retained images of it).
    relearn_candidates: Literal["retained", "all"] = Field(
        "retained", description="classes competing in the relearn loss (evaluation always uses all)")
    probe_max_iter: int = Field(200, ge=1, le=10_000, description="L-BFGS iterations of each linear probe")
    probe_l2: float = Field(1e-3, ge=0, description="L2 penalty of the probe weights (standardized features)")
    # Margin 0 would let noise pass: on the reference, a projection of digits:seven moves the
    # probe's balanced accuracy 0.961 -> 0.952 (drop 0.009) while the images stay plainly
    # separable. 0.05: the drop must be larger than a probe's run-to-run-like wobble.
    probe_margin: float = Field(
        0.05, ge=0, le=1,
        description="probe passes when new balanced accuracy <= base balanced accuracy - margin")
    probe_gate: bool = Field(False, description="whether the probe verdict blocks promotion (informational by default)")
    seed: int = Field(0, ge=0, description="seeds the relearn batches (and any stochastic layer)")
    enabled: bool = Field(True, description="run the assurance checks at all")
    depth: DepthConfig = DepthConfig()


# ---------------------------------------------------------------- relearn

def _copy_bundle(bundle: ClipBundle) -> ClipBundle:
    out = copy.copy(bundle)
    out.model = copy.deepcopy(bundle.model)
    out.meta = dict(bundle.meta)
    return out


def _text_vectors(model: torch.nn.Module, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """zero_shot.class_vectors with gradients: mean of normalized template features, renormalized
    (tokens are class-major: every template of class 0, then class 1, ...)."""
    feats = encode_text(model, tokens, normalize=True).float()
    return F.normalize(feats.view(n_classes, len(tokens) // n_classes, -1).mean(dim=1), dim=-1)


@torch.no_grad()
def _forget_top1(bundle: ClipBundle, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 templates: list[str]) -> float:
    """Zero-shot top-1 of `images` (all classes candidates), as request_metrics scores them."""
    if len(labels) == 0:
        return float("nan")
    preds = predict(encode_images(bundle, images), class_vectors(bundle, classes, templates))
    return float((preds == labels).numpy().mean())  # float64 mean, as request_metrics


def relearn_check(bundle: ClipBundle, request: ForgetRequest, data_root: str, cfg: AssuranceConfig,
                  figure_path: str | Path | None = None, lineage: list[ForgetRequest] = (),
                  split: str = "test", limit: float | None = None) -> dict:
    """Fine-tune a copy of `bundle` on retained train images; track the forget top-1 (test split;
    `split="val"` for choosing hyperparameters or methods without looking at test).

    `bundle` is never modified. The same inputs give the same numbers (seeded batches)."""
    t0 = time.perf_counter()
    train = request_split(request, "train", data_root, lineage)  # the lineage's items are never trained on
    request.check(train.classes, train.attributes)
    classes, templates = train.classes, zero_shot_templates(request.dataset)

    test = request_split(request, split, data_root, lineage)
    t_images, t_labels = test.tensors()
    keep = torch.from_numpy(request_mask(test, request.classes, request.where))
    f_images, f_labels = t_images[keep], t_labels[keep]

    work = _copy_bundle(bundle)
    model, dev = work.model, work.device
    retain = Sampler(train.select(request.classes, request.where or None, invert=True),  # never the forget set
                     torch.Generator().manual_seed(cfg.seed))
    if not len(retain):
        raise ValueError(f"relearn: no retained train images for {request.describe()}")
    names = {n for n, _ in model.named_parameters()
             if cfg.relearn_trainable == "all" or n.startswith("visual.")}
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    params = [p for n, p in model.named_parameters() if n in names]
    tokens = work.tokenizer([t.format(c=c) for c in classes for t in templates]).to(dev)
    # Forgotten classes left out of the relearn softmax (class requests, relearn_candidates "retained").
    excluded = torch.zeros(len(classes), dtype=torch.bool, device=dev)
    if cfg.relearn_candidates == "retained" and not request.where:
        excluded[[classes.index(c) for c in request.classes]] = True
    frozen_w = None if cfg.relearn_trainable == "all" else class_vectors(work, classes, templates).to(dev)

    curve = [[0, _forget_top1(work, f_images, f_labels, classes, templates)]]
    with torch.random.fork_rng(devices=[]), fast_cpu_attention(dev):
        torch.manual_seed(cfg.seed)  # any dropout / stochastic layer, without touching the caller's RNG
        opt = torch.optim.AdamW(params, lr=cfg.relearn_lr)
        for step in track(range(1, cfg.relearn_steps + 1), "assurance: relearning"):
            model.train()
            x_u8, y = retain.draw(cfg.relearn_batch_size)
            w = frozen_w if frozen_w is not None else _text_vectors(model, tokens, len(classes))
            logits, _ = zs_logits(work, to_model_input(work, x_u8), w)
            logits = logits.masked_fill(excluded, float("-inf"))
            loss = F.cross_entropy(logits, y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.relearn_eval_every == 0 or step == cfg.relearn_steps:
                model.eval()
                curve.append([step, _forget_top1(work, f_images, f_labels, classes, templates)])
    model.eval()
    accs = [a for _, a in curve]
    out = {
        "forget_top1_curve": curve,
        "forget_top1_start": accs[0],
        "forget_top1_end": accs[-1],
        "forget_top1_max": max(accs),
        "threshold": limit,
        "passed": None if limit is None else bool(max(accs) <= limit),
        "steps": cfg.relearn_steps,
        "trainable": cfg.relearn_trainable,
        "candidates": [c for c, e in zip(classes, excluded.tolist()) if not e],
        "n_retain_train": len(retain),
        "n_forget_test": int(len(f_labels)),
        "seconds": None,
        "figure": None,
    }
    del work, model, opt, params
    if figure_path is not None:
        out["figure"] = str(_plot_relearn(out, request, Path(figure_path)))
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# ---------------------------------------------------------------- linear probe

def _features(bundle: ClipBundle, request: ForgetRequest, ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, _ = ds.tensors()
    y = torch.from_numpy(request_mask(ds, request.classes, request.where).astype(np.float64))
    return encode_images(bundle, images).double(), y


def fit_probe(x: torch.Tensor, y: torch.Tensor, max_iter: int = 200, l2: float = 1e-3):
    """Class-weighted logistic regression (full-batch L-BFGS, float64, deterministic).

    x [N, D] features, y [N] in {0, 1}. Features are standardized with the train statistics
    (per-dimension affine maps change neither linear separability nor the probe's power, but
    they keep a squashed yet present direction from hiding behind the L2 penalty). Returns a
    function scoring new features (logits > 0: positive)."""
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mean) / std
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_probe: needs both forgotten and retained images")
    weights = torch.where(y > 0, len(y) / (2 * n_pos), len(y) / (2 * n_neg)).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none") * weights).mean() \
            + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()
    return lambda feats: ((feats.double() - mean) / std) @ w_ + b_


def _scores(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of boolean predictions against {0, 1} labels."""
    y = y > 0.5
    tpr = float((pred & y).sum()) / max(int(y.sum()), 1)
    tnr = float((~pred & ~y).sum()) / max(int((~y).sum()), 1)
    return float((pred == y).double().mean()), 0.5 * (tpr + tnr)


def _probe_one(bundle: ClipBundle, request: ForgetRequest, train, test, cfg: AssuranceConfig) -> tuple[float, float]:
    x_tr, y_tr = _features(bundle, request, train)
    x_te, y_te = _features(bundle, request, test)
    score = fit_probe(x_tr, y_tr, cfg.probe_max_iter, cfg.probe_l2)
    return _scores(score(x_te) > 0, y_te)


def probe_check(base_bundle: ClipBundle, new_bundle: ClipBundle, request: ForgetRequest, data_root: str,
                cfg: AssuranceConfig, figure_path: str | Path | None = None,
                lineage: list[ForgetRequest] = ()) -> dict:
    """Linear separability of forgotten vs retained images, base model against unlearned model."""
    t0 = time.perf_counter()
    train = request_split(request, "train", data_root, lineage)  # the lineage's items are never probed on
    test = request_split(request, "test", data_root, lineage)
    request.check(train.classes, train.attributes)
    base_acc, base_bal = _probe_one(base_bundle, request, train, test, cfg)
    new_acc, new_bal = _probe_one(new_bundle, request, train, test, cfg)
    n_forget = int(request_mask(test, request.classes, request.where).sum())
    out = {
        "base_balanced_accuracy": base_bal,
        "new_balanced_accuracy": new_bal,
        "base_accuracy": base_acc,
        "new_accuracy": new_acc,
        "drop": base_bal - new_bal,
        "margin": cfg.probe_margin,
        "chance": 0.5,
        # Passed: separability fell by at least the margin. "Still separable" is the honest
        # summary the certificate prints when it did not.
        "passed": bool(new_bal <= base_bal - cfg.probe_margin),
        "gate": cfg.probe_gate,
        "summary": (f"linear separability of the forgotten images fell by {base_bal - new_bal:.3f} "
                    f"(balanced accuracy {base_bal:.3f} -> {new_bal:.3f}, margin {cfg.probe_margin:.3f})"
                    if new_bal <= base_bal - cfg.probe_margin else
                    f"forgotten images are still linearly separable from retained ones: probe balanced "
                    f"accuracy {new_bal:.3f} vs {base_bal:.3f} on the base model (chance 0.5)"),
        "n_forget_test": n_forget,
        "n_retain_test": len(test) - n_forget,
        "seconds": None,
        "figure": None,
    }
    if figure_path is not None:
        out["figure"] = str(_plot_probe(out, request, Path(figure_path)))
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# ---------------------------------------------------------------- figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version string: same bytes every run
    _pyplot().close(fig)
    return path


def _plot_relearn(res: dict, request: ForgetRequest, path: Path) -> Path:
    plt = _pyplot()
    steps, accs = zip(*res["forget_top1_curve"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, accs, marker="o", label="forget top-1 (test)")
    if res["threshold"] is not None:
        ax.axhline(res["threshold"], linestyle="--", color="tab:red", label=f"threshold {res['threshold']:.2f}")
    ax.set_xlabel("relearn step (retained train images only)")
    ax.set_ylabel("zero-shot top-1")
    ax.set_ylim(0, 1.05)
    verdict = "not judged" if res["passed"] is None else "passed" if res["passed"] else "FAILED"
    ax.set_title(f"relearn check: {request.describe()} ({verdict})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _plot_probe(res: dict, request: ForgetRequest, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3.2))
    vals = [res["base_balanced_accuracy"], res["new_balanced_accuracy"]]
    ax.bar(["base", "unlearned"], vals, color=["tab:gray", "tab:blue"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.axhline(res["chance"], linestyle=":", color="black", label="chance")
    ax.set_ylabel("probe balanced accuracy (test)")
    ax.set_ylim(0, 1.1)
    verdict = "passed" if res["passed"] else "still separable"
    ax.set_title(f"linear probe forgotten vs retained: {request.describe()}\n({verdict}"
                 f"{'' if res['gate'] else ', informational'})", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
