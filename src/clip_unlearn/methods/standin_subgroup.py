"""Data-free subgroup forgetting in the image tower: seed 001's forget / remind / soup on stand-ins.

    res = run_method(bundle, ForgetRequest.parse("digits:seven[ink=red]"), "standin_subgroup",
                     data_root="data", others=["shapes"])
    res["info"]["alpha"], res["info"]["n_stand_ins"]

Beyond the seed papers. `attribute_edit` turns the class's text vector away from the subgroup and
meets the accuracy targets, but the image features keep the subgroup and a short fine-tune on
retained data brings it back (dev subgroups, val: relearning check passed on 0 of 8, at every margin
tried). This method moves the image features instead, without reading an image of the subgroup:

1. Split the vision transformer after block `split_layer`; the head (patch embedding and the first
   blocks) stays frozen, so every retained image's token stream is computed once.
2. Stand-ins for the subgroup in that token stream (stand_ins.py): the class's other items with the
   attribute's mean tokens swapped, h(c, v) - mu_k(v) + mu_k(a), per token.
3. forget: train the tail (the later blocks, ln_post, proj) so that each stand-in's class logit falls
   `margin` below its best other class (a hinge: once a stand-in is off the class it stops pushing).
4. remind: zero-shot cross-entropy on retained images (the class's other subgroups, the look-alikes,
   the rest, in subgroup's shares) + embedding distillation from the original on them and on the
   other datasets' images, the forget hinge staying on (weighted).
5. soup with the original, alpha on the val split as `subgroup` does, the forget top-1 estimated on
   val stand-ins (built the same way from val retained images).

Chosen on the 8 dev subgroups (scripts/dev_subgroups.py's requests, val only, docs/methods.md): the
hinge met every target on 6 of 8 and passed the relearning check too on 5 of 8 (mean peak 0.30); the
paper's forget loss (minimize cos to the class text) moved the tail so far that other classes lost
4-11 points at every blend. Needs an open_clip VisionTransformer (no ResNet); a request whose
attribute value no other class carries is refused, as in attribute_edit.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from clip_unlearn.core.clip_ops import fast_cpu_attention, to_model_input
from clip_unlearn.core.finetune import train_only
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.progress import track
from clip_unlearn.core.schema import ConfigError, Section
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register
from clip_unlearn.methods.soup import blend_, choose_soup_alpha, soup_grid
from clip_unlearn.methods.stand_ins import item_attributes, swap_attributes


class StandinSubgroupConfig(Section):
    split_layer: int = Field(2, ge=0, description="blocks before the split (frozen); the tail after it is trained")
    margin: float = Field(0.05, ge=0, description="cosine margin below the best other class that a stand-in is pushed to")
    forget_steps: int = Field(30, ge=0)
    forget_lr: float = Field(1e-3, gt=0, le=1)
    forget_batch_size: int = Field(64, ge=1)
    remind_steps: int = Field(200, ge=0)
    remind_lr: float = Field(2e-4, gt=0, le=1)
    remind_batch_size: int = Field(128, ge=1)
    same_class_frac: float = Field(0.5, ge=0, le=1)
    lookalike_frac: float = Field(0.25, ge=0, le=1)
    remind_forget_weight: float = Field(5.0, ge=0)
    distill_weight: float = Field(20.0, ge=0)
    other_batch_size: int = Field(64, ge=0, description="other datasets' images per remind step (0: off)")
    alpha_grid: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(21)], min_length=1)
    forget_target: float = Field(0.1, ge=0, le=1, description="soup: highest val stand-in top-1 allowed")
    soup_rule: Literal["retain", "deepest"] = "deepest"
    soup_margin: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self) -> "StandinSubgroupConfig":
        if self.same_class_frac + self.lookalike_frac > 1:
            raise ValueError("same_class_frac + lookalike_frac must be at most 1")
        return self


def _vit(model: torch.nn.Module, split: int):
    v = getattr(model, "visual", None)
    blocks = getattr(getattr(v, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(v, "_embeds") or not hasattr(v, "_pool"):
        raise ValueError("standin_subgroup needs an open_clip VisionTransformer image tower")
    if split >= len(blocks):
        raise ConfigError(f"standin_subgroup: split_layer {split} leaves no block to train "
                          f"(the tower has {len(blocks)}); use at most {len(blocks) - 1}")
    return v, blocks


@torch.no_grad()
def head_tokens(bundle: ClipBundle, model: torch.nn.Module, images: torch.Tensor, split: int,
                batch_size: int = 256) -> torch.Tensor:
    """Token streams after the first `split` blocks for uint8 images (eval mode, no gradients)."""
    v, blocks = _vit(model, split)
    out = []
    for i in range(0, len(images), batch_size):
        x = v._embeds(to_model_input(bundle, images[i:i + batch_size]))
        for blk in blocks[:split]:
            x = blk(x)
        out.append(x)
    return torch.cat(out) if out else torch.empty(0)


def tail_features(model: torch.nn.Module, h: torch.Tensor, split: int) -> torch.Tensor:
    """Normalized image features from token streams (the rest of open_clip's VisionTransformer.forward)."""
    v, blocks = _vit(model, split)
    for blk in blocks[split:]:
        h = blk(h)
    pooled, _ = v._pool(h)
    if v.proj is not None:
        pooled = pooled @ v.proj
    return F.normalize(pooled, dim=-1)


def tail_names(model: torch.nn.Module, split: int) -> list[str]:
    _, blocks = _vit(model, split)
    later = tuple(f"visual.transformer.resblocks.{i}." for i in range(split, len(blocks)))
    return [n for n, _ in model.named_parameters()
            if n.startswith(later + ("visual.ln_post", "visual.attn_pool")) or n == "visual.proj"]


def stand_ins(ds, h: torch.Tensor, labels: torch.Tensor, req, class_index: list[int], attrs: dict):
    """(stand-in tokens, their class labels) for every forgotten class, from items of `ds`."""
    made = [swap_attributes(h, labels, attrs, ds.attributes, ci, req.where, req.dataset)[0] for ci in class_index]
    return torch.cat(made), torch.cat([torch.full((len(m),), ci) for m, ci in zip(made, class_index)])


def hinge(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, margin: float, scale: torch.Tensor) -> torch.Tensor:
    """softplus(scale * (cos to own class - cos to best other class + margin)), mean."""
    cos = f @ w.T
    own = cos.gather(1, y[:, None]).squeeze(1)
    other = cos.scatter(1, y[:, None], float("-inf")).max(1).values
    return F.softplus(scale * (own - other + margin)).mean()


@register("standin_subgroup", StandinSubgroupConfig, data_free=True)
def standin_subgroup(bundle: ClipBundle, ctx: UnlearnContext, cfg: StandinSubgroupConfig) -> dict:
    """Subgroup forgetting in the image tower on attribute-swapped stand-ins (data-free)."""
    req, model, dev, L = ctx.request, bundle.model, bundle.device, cfg.split_layer
    if not req.where:
        raise ConfigError("standin_subgroup erases subgroups (class plus attributes); for whole classes use text_edit")
    _vit(model, L)
    gen = torch.Generator().manual_seed(ctx.seed)
    w = class_vectors(bundle, ctx.classes, zero_shot_templates(req.dataset)).to(dev)
    scale = model.logit_scale.exp().detach()

    ds = ctx.retain_set("train")   # the subgroup itself is not in it
    images, labels = ds.tensors()
    y = labels.long().to(dev)
    h = head_tokens(bundle, model, images, L)
    attrs = item_attributes(ds, req.where)
    s_h, s_y = stand_ins(ds, h, labels.long(), req, ctx.forget_labels, attrs)
    if not len(s_h):
        raise ValueError(f"standin_subgroup: no retained image of {req.classes} to build stand-ins from")
    s_y = s_y.to(dev)
    same = torch.isin(labels, torch.tensor(ctx.forget_labels))
    alike = ~same
    for k, a in req.where.items():
        alike &= torch.from_numpy(attrs[k] == a)
    parts = [(torch.nonzero(m).flatten(), s) for m, s in
             ((same, cfg.same_class_frac), (alike, cfg.lookalike_frac), (~same & ~alike, 1 - cfg.same_class_frac - cfg.lookalike_frac))
             if m.any() and s > 0]
    total = sum(s for _, s in parts)

    def remind_batch(n: int) -> torch.Tensor:
        counts = [int(n * s / total) for _, s in parts]
        counts[-1] += n - sum(counts)
        return torch.cat([ix[torch.randint(0, len(ix), (k,), generator=gen)] for (ix, _), k in zip(parts, counts)])

    others = [d for d in ctx.other_sets("train") if len(d)]
    h_o = torch.cat([head_tokens(bundle, model, d.tensors()[0], L) for d in others]) if others else None
    teacher = ctx.original.model
    with torch.no_grad():
        t_f = torch.cat([tail_features(teacher, h[i:i + 512], L) for i in range(0, len(h), 512)])
        t_o = torch.cat([tail_features(teacher, h_o[i:i + 512], L) for i in range(0, len(h_o), 512)]) \
            if h_o is not None else None

    def forget_loss() -> torch.Tensor:
        i = torch.randint(0, len(s_h), (cfg.forget_batch_size,), generator=gen)
        return hinge(tail_features(model, s_h[i], L), s_y[i], w, cfg.margin, scale)

    with fast_cpu_attention(dev), train_only(model, tail_names(model, L)) as params:
        opt = torch.optim.Adam(params, lr=cfg.forget_lr)
        for _ in range(cfg.forget_steps):
            loss = forget_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        opt = torch.optim.Adam(params, lr=cfg.remind_lr)
        for _ in track(range(cfg.remind_steps), "standin_subgroup: remind"):
            i = remind_batch(cfg.remind_batch_size)
            f = tail_features(model, h[i], L)
            loss = F.cross_entropy(scale * f @ w.T, y[i]) + cfg.distill_weight * (f - t_f[i]).pow(2).sum(-1).mean()
            if h_o is not None and cfg.other_batch_size:
                j = torch.randint(0, len(h_o), (cfg.other_batch_size,), generator=gen)
                loss = loss + cfg.distill_weight * (tail_features(model, h_o[j], L) - t_o[j]).pow(2).sum(-1).mean()
            if cfg.remind_forget_weight > 0:
                loss = loss + cfg.remind_forget_weight * forget_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Soup: the forget top-1 of a blend is estimated on val stand-ins (no image of the subgroup is read).
    unlearned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    original = {k: v.to(dev) for k, v in ctx.original.model.state_dict().items()}
    val = ctx.retain_set("val")
    v_images, v_labels = val.tensors()
    v_h, v_y = stand_ins(val, head_tokens(bundle, model, v_images, L), v_labels.long(), req, ctx.forget_labels,
                         item_attributes(val, req.where))

    @torch.no_grad()
    def stand_in_top1() -> float:
        return float((tail_features(model, v_h, L) @ w.T).argmax(-1).cpu().eq(v_y).float().mean()) if len(v_h) else 0.0

    grid = soup_grid(bundle, ctx, w, unlearned, original, cfg.alpha_grid, stand_in_top1)
    alpha = choose_soup_alpha(grid, cfg.forget_target, cfg.soup_rule, cfg.soup_margin)
    blend_(model, unlearned, original, alpha)
    ctx.log(f"standin_subgroup: {len(s_h)} stand-ins, tail after block {L}, alpha {alpha}")
    return {"alpha": alpha, "soup_grid": grid, "n_stand_ins": len(s_h), "n_val_stand_ins": len(v_h),
            "trained": tail_names(model, L)}
