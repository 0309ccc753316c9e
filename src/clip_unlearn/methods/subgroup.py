"""Three-stage subgroup forgetting (seed 001, Zhang et al., CVPR 2025): forget, remind, restore.

    from clip_unlearn.methods import ForgetRequest, run_method
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
    result = run_method(bundle, req, "subgroup", {"remind_steps": 100}, data_root="data", others=["shapes"])
    result["info"]["alpha"], result["info"]["layers"], result["info"]["soup_grid"]

1. forget:  train the k image-tower tensors with the largest Fisher ratio (forget / retained,
            squared gradients of the zero-shot loss) to minimize cos(f_V(x), f_T(t)) on the
            subgroup's train images, t = the class's zero-shot templates + the subgroup phrase.
2. remind:  train the same tensors on retained train images (the class's other subgroups, other
            classes with the subgroup's attributes, the rest) with zero-shot cross-entropy +
            distillation from ctx.original, the forget loss staying on (weighted) [inferred].
3. restore: soup theta = a * theta_unlearned + (1 - a) * theta_original, a picked on the val
            split by `choose_soup_alpha`.

Only the image tower is trained [inferred]: the class's text embedding is shared by every
subgroup of the class, so moving it would hurt the subgroups that are kept. Works for class
requests too (no `where`: the texts are the class templates, "retained" = other classes).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from clip_unlearn.core.clip_ops import encode_image, encode_texts, fast_cpu_attention, to_model_input
from clip_unlearn.core.finetune import (
    MixedSampler,
    Sampler,
    fisher_diag,
    rank_by_fisher_ratio,
    set_trainable,
    train_only,
    visual_params,
    zs_logits,
)
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.progress import track
from clip_unlearn.core.schema import Section
from clip_unlearn.core.templates import subgroup_phrase, zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register
from clip_unlearn.methods.soup import blend_, choose_soup_alpha, soup_grid, top1_of


class SubgroupConfig(Section):
    # The paper fine-tunes RN50/RN101 for epochs on CIFAR/ImageNet; our 8M-parameter model and
    # ~100-180 forget images need a few hundred steps at most (values below: measured on the
    # reference model, docs in the method's report). Everything marked [inferred] is ours.
    top_k: int = Field(32, ge=1, description="image-tower tensors trained (largest Fisher ratio)")
    # Biases and norm gains win the ratio ranking yet hold too few weights to separate a
    # subgroup from the rest of its class (measured): rank weight matrices only by default.
    candidates: Literal["matrices", "all"] = "matrices"
    fisher_batches: int = Field(8, ge=1, description="micro-batches per set for the Fisher estimate")
    fisher_batch_size: int = Field(8, ge=1)
    forget_steps: int = Field(30, ge=0)
    forget_lr: float = Field(1e-3, gt=0, le=1)
    forget_batch_size: int = Field(64, ge=1)
    forget_stop_top1: float = Field(0.0, ge=0, le=1,
                                    description="end the forget stage once the forget batch's top-1 is at most this")
    forget_hits_only: bool = Field(False, description="forget loss only on images still predicted as their class")
    remind_steps: int = Field(200, ge=0)
    remind_lr: float = Field(2e-4, gt=0, le=1)
    remind_batch_size: int = Field(128, ge=1)
    # Remind batches mix three parts of the retained data [inferred]: the class's other subgroups,
    # other classes that share the subgroup's attributes (without them the model learns e.g.
    # "white background = not three" and breaks every white-background digit), and the rest.
    # Rest-of-class loss was the binding target (val, dev requests): 0.5 / 0.25 with remind_lr 2e-4 kept
    # the class's other subgroups within 5 points where 0.34 / 0.33 with 1e-4 lost 5.5-6.4 (measured).
    same_class_frac: float = Field(0.5, ge=0, le=1,
                                   description="share of a remind batch from the class's other subgroups")
    lookalike_frac: float = Field(0.25, ge=0, le=1,
                                  description="share from other classes with the subgroup's attribute values")
    # [inferred] With 0 (a remind stage of retained data only) the remind undid the forgetting
    # on our model (forget top-1 0.83 -> 0.83); the forget loss stays on, weighted.
    remind_forget_weight: float = Field(5.0, ge=0, description="weight of the forget loss during remind")
    # Embedding MSE (normalized features) kept other classes closer than logit KL (measured).
    distill: Literal["logits", "embedding", "none"] = "embedding"
    distill_weight: float = Field(20.0, ge=0)
    distill_temperature: float = Field(2.0, gt=0, description="for distill: logits")
    # [ours] The other datasets' images (retained by definition) join the remind stage with the
    # same embedding distillation, and the soup is scored on them too: without them the remind only
    # protects the request's own dataset, and a subgroup erasure cost shapes 4.6-16 points (issue 9).
    other_batch_size: int = Field(64, ge=0, description="other datasets' images per remind step (0: off)")
    alpha_grid: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(21)], min_length=1,
        description="soup weights of the unlearned model tried on the val split")
    forget_target: float = Field(0.1, ge=0, le=1, description="soup: highest val forget top-1 allowed")
    # "retain": the blend that keeps the most retained accuracy (the paper's restore). "deepest": the
    # largest alpha whose val losses use at most (1 - soup_margin) of each group's allowance: the
    # erasure furthest from the original that the targets allow, so a short fine-tune has more to undo.
    soup_rule: Literal["retain", "deepest"] = "deepest"
    soup_margin: float = Field(0.5, ge=0, le=1, description="for soup_rule deepest: share of each allowance kept unused")
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _shares(self) -> "SubgroupConfig":
        if self.same_class_frac + self.lookalike_frac > 1:
            raise ValueError("same_class_frac + lookalike_frac must be at most 1")
        return self


# ---------------------------------------------------------------- the method

def _class_texts(dataset: str, classname: str, where: dict[str, str]) -> list[str]:
    texts = [t.format(c=classname) for t in zero_shot_templates(dataset)]
    if where:
        phrase = subgroup_phrase(dataset, classname, where)
        texts += [f"{phrase}.", f"a photo of {phrase}.", f"an image of {phrase}."]
    return texts


def _retain_parts(ctx: UnlearnContext, split: str):
    """Retained items split in three: the forgotten classes' other subgroups, other classes that
    share the subgroup's attributes (look-alikes), and the other classes' remaining items."""
    req, retain = ctx.request, ctx.retain_set(split)
    same, other = retain.select(req.classes), retain.select(req.classes, invert=True)
    if not req.where:
        return same, other.select([]), other
    return same, other.select(None, req.where), other.select(None, req.where, invert=True)


@register("subgroup", SubgroupConfig, data_free=False)
def subgroup(bundle: ClipBundle, ctx: UnlearnContext, cfg: SubgroupConfig) -> dict:
    """Three-stage subgroup forgetting: Fisher-selected forget, remind with distillation, soup."""
    req, dev, model = ctx.request, bundle.device, bundle.model
    gen = torch.Generator().manual_seed(ctx.seed)
    templates = zero_shot_templates(req.dataset)
    w = class_vectors(bundle, ctx.classes, templates).to(dev)          # text tower stays frozen
    w0 = class_vectors(ctx.original, ctx.classes, templates).to(dev)   # == w; kept explicit for the teacher
    # Per forgotten label: the mean of the normalized text features of its class templates and
    # subgroup phrases (img . mean(t) = mean over texts of cos(img, t)).
    text_mean = torch.zeros_like(w)
    for y, c in zip(ctx.forget_labels, req.classes):
        text_mean[y] = encode_texts(bundle, _class_texts(req.dataset, c, req.where)).to(dev).mean(0)

    forget = Sampler(ctx.forget_set("train"), gen)
    same, alike, rest = (Sampler(d, gen) for d in _retain_parts(ctx, "train"))
    retain = MixedSampler([same, alike, rest], [cfg.same_class_frac, cfg.lookalike_frac,
                                                1 - cfg.same_class_frac - cfg.lookalike_frac])
    if not len(forget):
        raise ValueError(f"subgroup: no train images of {req.describe()} to forget")

    def forget_loss(x_u8: torch.Tensor, y: torch.Tensor):
        logits, img = zs_logits(bundle, to_model_input(bundle, x_u8), w)
        cos = (img * text_mean[y.to(dev)]).sum(-1)
        if cfg.forget_hits_only:  # images already not predicted as their class stop pushing
            cos = cos * (logits.argmax(-1).cpu() == y).to(dev, cos.dtype)
        return cos.mean(), logits

    def ce_loss(x_u8: torch.Tensor, y: torch.Tensor):
        return F.cross_entropy(zs_logits(bundle, to_model_input(bundle, x_u8), w)[0], y.to(dev))

    others = [Sampler(d, gen) for d in ctx.other_sets("train")]
    others = MixedSampler(others, [1.0] * len(others)) if any(len(o) for o in others) else None

    info: dict = {}
    cand = {n: p for n, p in visual_params(model).items() if cfg.candidates == "all" or p.ndim >= 2}
    with fast_cpu_attention(dev), train_only(model, cand):
        # Stage 0: which tensors are most specific to the forget set.
        f_forget = fisher_diag(cand, lambda: ce_loss(*forget.draw(cfg.fisher_batch_size)), cfg.fisher_batches)
        f_retain = fisher_diag(cand, lambda: ce_loss(*retain.draw(cfg.fisher_batch_size)), cfg.fisher_batches)
        chosen = rank_by_fisher_ratio(f_forget, f_retain, cfg.top_k)
        params = set_trainable(model, chosen)
        info["layers"] = chosen

        # Stage 1: forget.
        opt = torch.optim.Adam(params, lr=cfg.forget_lr, weight_decay=cfg.weight_decay)
        steps = 0
        for steps in range(1, cfg.forget_steps + 1):
            x, y = forget.draw(cfg.forget_batch_size)
            loss, logits = forget_loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if float((logits.argmax(-1).cpu() == y).float().mean()) <= cfg.forget_stop_top1:
                break
        info["forget_steps"] = steps

        # Stage 2: remind (zero-shot CE + distillation from the original model).
        opt = torch.optim.Adam(params, lr=cfg.remind_lr, weight_decay=cfg.weight_decay)
        teacher = ctx.original.model
        t = cfg.distill_temperature
        for _ in track(range(cfg.remind_steps), "subgroup: remind"):
            x_u8, y = retain.draw(cfg.remind_batch_size)
            x = to_model_input(bundle, x_u8)
            logits, img = zs_logits(bundle, x, w)
            loss = F.cross_entropy(logits, y.to(dev))
            if cfg.distill != "none" and cfg.distill_weight > 0:
                with torch.no_grad():
                    t_logits, t_img = zs_logits(ctx.original, x, w0, teacher)
                if cfg.distill == "logits":
                    kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(t_logits / t, -1),
                                  log_target=True, reduction="batchmean") * t * t
                else:
                    kd = (img - t_img).pow(2).sum(-1).mean()
                loss = loss + cfg.distill_weight * kd
            if others is not None and cfg.other_batch_size and cfg.distill_weight > 0:
                xo = to_model_input(bundle, others.draw(cfg.other_batch_size)[0])
                with torch.no_grad():
                    t_feat = encode_image(teacher, xo, normalize=True)
                loss = loss + cfg.distill_weight * (encode_image(model, xo, normalize=True) - t_feat).pow(2).sum(-1).mean()
            if cfg.remind_forget_weight > 0:
                loss = loss + cfg.remind_forget_weight * forget_loss(*forget.draw(cfg.forget_batch_size))[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        info["remind_steps"] = cfg.remind_steps

    # Stage 3: restore by souping with the original, alpha chosen on the val split.
    unlearned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    original = {k: v.to(dev) for k, v in ctx.original.model.state_dict().items()}
    f_x, f_y = ctx.forget_set("val").tensors()
    grid = soup_grid(bundle, ctx, w, unlearned, original, cfg.alpha_grid, lambda: top1_of(bundle, f_x, f_y, w))
    if any(math.isnan(r["forget_top1"]) for r in grid):
        alpha = max(cfg.alpha_grid)  # no calibration image of the subgroup: keep the unlearned model
    else:
        alpha = choose_soup_alpha(grid, cfg.forget_target, cfg.soup_rule, cfg.soup_margin)
    blend_(model, unlearned, original, alpha)
    info.update({"alpha": alpha, "soup_grid": grid, "n_forget_train": len(forget)})
    ctx.log(f"subgroup: layers {chosen[:3]}..., forget {steps} steps, alpha {alpha}")
    return info
