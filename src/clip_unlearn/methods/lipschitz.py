"""Data-free class forgetting by Lipschitz smoothing on synthetic samples (seed 000, METHODS.md 1).

    res = run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "lipschitz",
                     LipschitzConfig(), data_root="data", others=["shapes"])

1. Synthetic forget set: `ctx.synthetic_set()` when the run has one, else `invert_classes()` (model
   inversion from class names only; never a real image).
2. Each epoch: one Adam step on the Lipschitz loss over all synthetic images and their text
   "A picture of {class}": raw embeddings, N noise draws x~ = clamp(x + N(0, sigma^2)),
   L = 1/(2N) sum [ ||f_T(t) - f_V(x~)|| + ||f_V(x) - f_V(x~)|| ] / (2 ||x - x~||), f_V(x~) without grad.
   After the backward only the top k_v image-tower and top k_t text-tower tensors by mean |grad| keep
   their gradient (`visual.proj` is a candidate, as theirs; for ResNet towers their FREEZE_RN list is
   excluded); text_projection, token/positional embedding, final norm and logit_scale are never updated.
3. Schedule over (sigma, k): an epoch that does not lower synthetic-set accuracy is rolled back
   (model and optimizer) and the next (sigma, k) is used. Stop at accuracy <= stop_accuracy, at the
   end of the schedule or after max_epochs; the lowest-accuracy checkpoint is kept (if none lowered it: the
   last rolled-back epoch, as the authors; `fallback: start` keeps the unchanged model).
"""

from __future__ import annotations

import copy
import re
from typing import Callable, Literal

import torch
from pydantic import Field, model_validator

from clip_unlearn.core.clip_ops import encode_image, encode_text, fast_cpu_attention, pixel_bounds
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.schema import Section
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register
from clip_unlearn.methods.synthetic import SynthesisConfig, invert_classes, synthetic_accuracy, templates_for

# Never updated (METHODS.md 1): as the authors, only tensors of `model.visual` and `model.transformer` are
# candidates, so text_projection, token/positional embedding, ln_final and logit_scale never change.
# `visual.proj` IS a candidate (theirs: everything in model.visual; ours froze it until 2026-11-24).
FROZEN = ("text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
          "logit_scale")
# Their FREEZE_RN (frozen_params.py) for ResNet image towers: every conv and downsample tensor and the attention
# pool's positional embedding leave the candidates (their FREEZE_LN is overwritten by [] there: text LayerNorms
# stay candidates). BatchNorm tensors are frozen and kept in eval mode too (their freeze_batch_norm).
FREEZE_RN = re.compile(r"^visual\.(conv\d\.weight|layer\d\.\d+\.(conv\d\.weight|downsample\..*)|"
                       r"attnpool\.positional_embedding|bn\d\..*|layer\d\.\d+\.bn\d\..*)$")


class LipschitzConfig(Section):
    # The authors' Adam (ViT-B/16, fp32) but lr 1e-3 instead of 5e-5. Their rollback also restores Adam's state (as
    # ours), so every retry is Adam's first step: each chosen element moves by about lr. Chosen on the val split of the
    # 7 named benchmark requests (docs/methods.md; most requests meeting every target, then least summed excess):
    # none met every target at any setting; summed excess lr 1e-3 / 3e-3 = 517.9 / 630.7 pts at p_high 0.9,
    # 667.6 / 649.1 at 0.99. 3e-3 forgets more (forget <= 0.26 on 6 of 7) but costs 15-58 pts of retain; 1e-3
    # leaves shapes:arrow and digits:one+four+eight (all epochs rolled back) almost unchanged.
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    n_noise: int = Field(25, ge=1, description="noise draws per image and step (authors' run: 25)")
    steps_per_epoch: int = Field(1, ge=1, description="Adam steps per epoch (authors: one batch of 64 = one step)")
    batch_size: int = Field(64, ge=1, description="images per backward; gradients accumulate over the set")
    sigmas: list[float] = Field([0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0], min_length=1,
                                description="noise std schedule, normalized-pixel units")
    # ViT-B/16: k = 25 + [0, 2, 5, 8, 10, 15, 20] of 152 image / 144 text-tower tensors (~17%). Our towers
    # have 56 image / 48 text-transformer tensors: the same shares give 9 / 8 and increments x0.36 / x0.33
    # -> [0, 1, 2, 3, 4, 5, 7] (kept: scaled, not measured against other k).
    k_v: int = Field(9, ge=0, description="image-tower tensors updated per step (base)")
    k_t: int = Field(8, ge=0, description="text-tower tensors updated per step (base)")
    k_add: list[int] = Field([0, 1, 2, 3, 4, 5, 7], min_length=1, description="added to k_v (and k_t) per schedule step")
    # Their RN50 run grows the text k faster: 5 + [0, 2, 7, 13, 20, 25, 30]; None = k_add for both towers.
    k_add_t: list[int] | None = Field(None, description="added to k_t per schedule step (None: k_add)")
    exclude: list[str] = Field([], description="parameter names never selected, besides the fixed FROZEN ones")
    # Named requests' val (lr 1e-3, p_high 0.9): they differ only where every epoch rolled back; "last" (theirs) took
    # digits:one+four+eight 0.893 -> 0.883 (retain -0.2, other +0.2 pts), "start" left it at 0.893 (summed excess
    # 517.9 vs 518.9 pts); shapes:arrow stayed at 1.000 either way.
    fallback: Literal["last", "start"] = Field("last", description="no epoch lowered accuracy: keep the last "
                                               "rolled-back epoch (theirs) or the start")
    stop_accuracy: float = Field(0.1, ge=0, le=1, description="stop once synthetic-set accuracy is at or below this")
    max_epochs: int = Field(30, ge=1)
    text: str = Field("A picture of {c}", description="text paired with each synthetic image")
    synthesis: SynthesisConfig = SynthesisConfig()

    @model_validator(mode="after")
    def _check(self) -> "LipschitzConfig":
        if len(self.sigmas) != len(self.k_add):
            raise ValueError(f"sigmas ({len(self.sigmas)}) and k_add ({len(self.k_add)}) must have the same length")
        if self.k_add_t is not None and len(self.k_add_t) < len(self.sigmas):
            raise ValueError(f"k_add_t ({len(self.k_add_t)}) must have at least one entry per sigma ({len(self.sigmas)})")
        if "{c}" not in self.text:
            raise ValueError(f"text {self.text!r} must contain '{{c}}'")
        return self

    def schedule(self) -> list[tuple[float, int, int]]:
        add_t = self.k_add_t if self.k_add_t is not None else self.k_add
        return [(s, self.k_v + a, self.k_t + b) for s, a, b in zip(self.sigmas, self.k_add, add_t)]


def is_resnet(model: torch.nn.Module) -> bool:
    return hasattr(model.visual, "attnpool")  # open_clip's ModifiedResNet


def is_frozen(name: str, resnet: bool = False) -> bool:
    return name in FROZEN or (resnet and bool(FREEZE_RN.match(name)))


def image_tower(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    resnet = is_resnet(model)
    return {n: p for n, p in model.named_parameters() if n.startswith("visual.") and not is_frozen(n, resnet)}


def text_tower(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    # As the authors: the text transformer's blocks (their positional embedding is outside it).
    return {n: p for n, p in model.named_parameters() if n.startswith("transformer.") and not is_frozen(n)}


def freeze_batch_norm(model: torch.nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics fixed), as the authors' freeze_batch_norm."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def select_top_k(named_grads: dict[str, torch.Tensor | None], k: int) -> set[str]:
    """Names of the k tensors with the largest mean |grad| (frozen names and missing grads never)."""
    scored = [(float(g.detach().abs().mean()), n) for n, g in named_grads.items()
              if g is not None and not is_frozen(n)]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return {n for _, n in scored[:max(k, 0)]}


def lipschitz_loss(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor, sigma: float, n_noise: int,
                   lo: torch.Tensor, hi: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Sum over images (mean over draws) of the joint Lipschitz ratio, on raw embeddings."""
    txt = encode_text(model, tokens)
    img = encode_image(model, x)
    b = x.shape[0]
    noise = torch.randn((n_noise, *x.shape), generator=gen).to(x.device) * sigma
    # Kept deviation: clamp to each channel's valid range (theirs: to the batch's global min/max, which for their
    # min-max-rescaled images is about the same range).
    xn = torch.maximum(torch.minimum(x.unsqueeze(0) + noise, hi), lo)          # [N,B,3,H,W]
    with torch.no_grad():
        out = encode_image(model, xn.flatten(0, 1)).view(n_noise, b, -1)
    in_norm = (x.unsqueeze(0) - xn).flatten(2).norm(dim=-1).clamp_min(1e-8)    # [N,B]
    out_norm = (txt.unsqueeze(0) - out).norm(dim=-1) + (img.unsqueeze(0) - out).norm(dim=-1)
    return (out_norm / (2 * in_norm)).sum() / (2 * n_noise)


def run_schedule(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 train_epoch: Callable[[float, int, int], float], accuracy: Callable[[], float],
                 schedule: list[tuple[float, int, int]], stop_accuracy: float, max_epochs: int,
                 log: Callable[[str], None] = print, fallback: str = "start") -> dict:
    """The forgetting loop with rollback. train_epoch(sigma, k_v, k_t) -> loss; accuracy() -> synthetic acc.
    Leaves `model` at the lowest-accuracy state; if no epoch lowered it: the start (fallback="start") or, as the
    authors, the last rolled-back epoch's weights (fallback="last")."""
    best_acc = accuracy()
    best_state = copy.deepcopy(model.state_dict())
    history = [{"epoch": 0, "accuracy": best_acc}]
    i, epoch = 0, 0
    while epoch < max_epochs and i < len(schedule) and best_acc > stop_accuracy:
        epoch += 1
        sigma, k_v, k_t = schedule[i]
        last_model, last_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        loss = train_epoch(sigma, k_v, k_t)
        acc = accuracy()
        kept = acc < best_acc
        history.append({"epoch": epoch, "sigma": sigma, "k_v": k_v, "k_t": k_t, "loss": round(float(loss), 5),
                        "accuracy": acc, "kept": kept})
        log(f"lipschitz: epoch {epoch} sigma={sigma} k=({k_v},{k_t}) loss={float(loss):.4f} "
            f"synthetic acc={acc:.3f} {'kept' if kept else 'rolled back'}")
        if kept:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
        else:
            last_failed = copy.deepcopy(model.state_dict())
            model.load_state_dict(last_model)
            optimizer.load_state_dict(last_opt)
            i += 1
    # As the authors: when no epoch lowered accuracy, their best_model_state is None and they load the LAST
    # ROLLED-BACK epoch's weights (model_last_state_load). fallback="start" returns the unchanged model instead.
    fell_back = False
    if fallback == "last" and len(history) > 1 and not any(h.get("kept") for h in history[1:]):
        model.load_state_dict(last_failed)
        fell_back = True
    else:
        model.load_state_dict(best_state)
    return {"epochs": epoch, "schedule_index": i, "best_accuracy": best_acc, "history": history,
            "fallback_to_last": fell_back}


@register("lipschitz", LipschitzConfig, data_free=True)
def lipschitz(bundle: ClipBundle, ctx: UnlearnContext, cfg: LipschitzConfig) -> dict:
    """Lipschitz forgetting on synthetic samples (data-free; seed 000)."""
    model, dev = bundle.model, bundle.device
    classes, dataset = ctx.classes, ctx.request.dataset
    if ctx.synthetic is not None:
        x, labels = ctx.synthetic_set()
        syn_stats = {"source": "context", "n": len(labels)}
    else:
        syn = invert_classes(bundle, classes, ctx.forget_labels, dataset, cfg.synthesis, seed=ctx.seed, log=ctx.log)
        x, labels = syn.x, syn.labels
        syn_stats = {"source": "synthesized", "n": len(syn), "seconds": syn.stats["seconds"],
                     "images_per_s": syn.stats["images_per_s"],
                     "p_final": {c: s["p_final"] for c, s in syn.stats["per_class"].items()}}
    x, labels = x.to(dev).float(), labels.to(dev).long()
    tokens = bundle.tokenizer([cfg.text.format(c=classes[int(y)]) for y in labels.tolist()]).to(dev)
    lo, hi = (b.to(dev) for b in pixel_bounds(bundle, dev))
    templates = templates_for(dataset, cfg.synthesis)
    gen = torch.Generator().manual_seed(ctx.seed)

    image_params = {n: p for n, p in image_tower(model).items() if n not in cfg.exclude}
    text_params = {n: p for n, p in text_tower(model).items() if n not in cfg.exclude}
    trainable = {**image_params, **text_params}
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    optimizer = torch.optim.Adam(list(trainable.values()), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)

    def accuracy() -> float:
        model.eval()
        return synthetic_accuracy(bundle, x, labels, class_vectors(bundle, classes, templates))

    def train_epoch(sigma: float, k_v: int, k_t: int) -> float:
        model.train()
        freeze_batch_norm(model)
        total = 0.0
        for _ in range(cfg.steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            for s in range(0, len(x), cfg.batch_size):
                loss = lipschitz_loss(model, x[s:s + cfg.batch_size], tokens[s:s + cfg.batch_size], sigma,
                                      cfg.n_noise, lo, hi, gen)
                loss.backward()
                total += float(loss.detach())
            keep = select_top_k({n: p.grad for n, p in image_params.items()}, k_v) | \
                select_top_k({n: p.grad for n, p in text_params.items()}, k_t)
            for n, p in trainable.items():
                if n not in keep:
                    p.grad = None  # Adam (and its weight decay) skips tensors without a gradient
            optimizer.step()
        return total / cfg.steps_per_epoch

    try:
        with fast_cpu_attention(dev):
            out = run_schedule(model, optimizer, train_epoch, accuracy, cfg.schedule(), cfg.stop_accuracy,
                               cfg.max_epochs, ctx.log, cfg.fallback)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags[n])
            p.grad = None
        model.eval()
    return {**out, "synthetic": syn_stats}
