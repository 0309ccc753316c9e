"""Plain baselines of the field, on real train images of what is forgotten.

    run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "gradient_ascent")
    run_method(bundle, ForgetRequest(dataset="shapes", classes=["star"]), "random_labels", {"steps": 30})

gradient_ascent: maximize the zero-shot cross-entropy of the forget images (their true class
                 among all class vectors) for up to `steps` steps.
random_labels:   minimize the cross-entropy toward a random other class, redrawn every step.
Both fine-tune the whole image tower (text tower frozen, so class vectors stay fixed) and stop
early once the forget batch's top-1 reaches `stop_top1`. No retention term: that is the point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from clip_unlearn.core.clip_ops import fast_cpu_attention, to_model_input
from clip_unlearn.core.finetune import Sampler, train_only, visual_params, zs_logits
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.schema import Section
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register


class GradientAscentConfig(Section):
    steps: int = Field(30, ge=1)
    lr: float = Field(1e-5, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    stop_top1: float = Field(0.0, ge=0, le=1, description="stop once the forget batch's top-1 is at most this")


class RandomLabelsConfig(Section):
    steps: int = Field(30, ge=1)
    lr: float = Field(1e-5, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    stop_top1: float = Field(0.0, ge=0, le=1, description="stop once the forget batch's top-1 is at most this")


def _finetune(bundle: ClipBundle, ctx: UnlearnContext, steps: int, lr: float, batch_size: int,
              stop_top1: float, loss_fn) -> dict:
    """Shared loop: Adam on the image tower, loss_fn(logits, labels, gen) per forget batch."""
    gen = torch.Generator().manual_seed(ctx.seed)
    w = class_vectors(bundle, ctx.classes, zero_shot_templates(ctx.request.dataset)).to(bundle.device)
    forget = Sampler(ctx.forget_set("train"), gen)
    if not len(forget):
        raise ValueError(f"no train images of {ctx.request.describe()} to forget")
    model = bundle.model
    step, top1 = 0, 1.0
    with fast_cpu_attention(bundle.device), train_only(model, visual_params(model)) as params:
        opt = torch.optim.Adam(params, lr=lr)
        for step in range(1, steps + 1):
            x, y = forget.draw(batch_size)
            logits = zs_logits(bundle, to_model_input(bundle, x), w)[0]
            loss = loss_fn(logits, y.to(bundle.device), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            top1 = float((logits.argmax(-1).cpu() == y).float().mean())
            if top1 <= stop_top1:
                break
    return {"steps": step, "last_batch_top1": top1}


@register("gradient_ascent", GradientAscentConfig, data_free=False)
def gradient_ascent(bundle: ClipBundle, ctx: UnlearnContext, cfg: GradientAscentConfig) -> dict:
    """Gradient ascent on the zero-shot cross-entropy of the forget images (baseline)."""
    return _finetune(bundle, ctx, cfg.steps, cfg.lr, cfg.batch_size, cfg.stop_top1,
                     lambda logits, y, gen: -F.cross_entropy(logits, y))


@register("random_labels", RandomLabelsConfig, data_free=False)
def random_labels(bundle: ClipBundle, ctx: UnlearnContext, cfg: RandomLabelsConfig) -> dict:
    """Fine-tune the forget images toward random other-class labels (baseline)."""
    n = len(ctx.classes)

    def loss(logits: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        shift = torch.randint(1, n, (len(y),), generator=gen).to(y.device)  # never the true class
        return F.cross_entropy(logits, (y + shift) % n)

    return _finetune(bundle, ctx, cfg.steps, cfg.lr, cfg.batch_size, cfg.stop_top1, loss)
