"""Contrastive CLIP training from scratch on built-in data: the offline reference model.

    from clip_unlearn.core.train import train_reference
    bundle, history = train_reference(train_sets, BootstrapConfig(steps=200))

Each batch takes an equal share from every dataset. Within a dataset's share no
(class, attributes) combination repeats, and captions that are the same string count as
positives for each other (soft targets), so the loss has no false negatives.
CPU speed-ups (measured in docs/bootstrap.md): plain math attention, fused AdamW, bf16 autocast,
text tower cut to the longest caption.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from clip_unlearn.core.clip_ops import encode_image, encode_text, fast_cpu_attention, to_model_input
from clip_unlearn.core.models import ClipBundle, load_model, resolve_device
from clip_unlearn.core.progress import track
from clip_unlearn.core.schema import Section
from clip_unlearn.core.templates import caption


class BootstrapConfig(Section):
    steps: int = Field(1700, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    init_temperature: float = Field(0.07, gt=0, le=1)
    max_logit_scale: float = Field(100.0, gt=1)
    class_only_frac: float = Field(0.4, ge=0, le=1)
    max_shift: int = Field(1, ge=0, le=8)
    amp: bool = True
    seed: int = 0
    threads: int = Field(0, ge=0, description="0 = all cores")
    device: str = "auto"
    log_every: int = Field(100, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("allowed: 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


class _Sampler:
    """Draws a dataset's share of a batch with distinct (class, attributes) keys."""

    def __init__(self, dataset, rng: random.Random):
        self.dataset, self.rng = dataset, rng
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, y in enumerate(dataset.labels):
            groups[(y, tuple(sorted(dataset.item_attrs(i).items())))].append(i)
        self.keys = sorted(groups)
        self.groups = groups
        self.images, self.labels = dataset.tensors()

    def draw(self, n: int) -> list[int]:
        keys = self.rng.sample(self.keys, min(n, len(self.keys)))
        keys += self.rng.choices(self.keys, k=n - len(keys))
        return [self.rng.choice(self.groups[k]) for k in keys]


def shift_offsets(n: int, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 2] random (dy, dx) in 0..2*max_shift: where each image's crop starts in the padded image."""
    return torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)


def shift_images(x: torch.Tensor, offs: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image translated by its offset (replicate padding, then the crop at `offs`); float, same size."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (max_shift,) * 4, mode="replicate")
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    return shift_images(x, shift_offsets(len(x), max_shift, gen), max_shift)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # open_clip's convention: no decay on gains, biases, embeddings' scale, logit_scale.
        (no_decay if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
         or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: BootstrapConfig) -> float:
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def soft_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, caption_ids: torch.Tensor):
    logits = scale * img @ txt.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric mask: rows and columns alike
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def train_reference(train_sets: list, cfg: BootstrapConfig, arch: str = "clip-ref-tiny",
                    log: Callable[[str], None] = print) -> tuple[ClipBundle, list[dict]]:
    """Train `arch` from scratch on `train_sets` (ImageDatasets with attributes)."""
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bundle = load_model(arch, device=str(device))
    model = bundle.model.train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / cfg.init_temperature))
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    samplers = [_Sampler(ds, rng) for ds in train_sets]
    share = [cfg.batch_size // len(samplers) + (i < cfg.batch_size % len(samplers)) for i in range(len(samplers))]
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                            fused=device.type in ("cpu", "cuda"))
    token_cache: dict[str, torch.Tensor] = {}
    caption_ids: dict[str, int] = {}
    max_log_scale = math.log(cfg.max_logit_scale)
    attention = fast_cpu_attention(device)  # keep a reference: leaving it early undoes it
    history: list[dict] = []
    t0 = time.perf_counter()
    with attention:
        for step in track(range(cfg.steps), "training"):
            images, texts = [], []
            for sampler, n in zip(samplers, share):
                idx = sampler.draw(n)
                images.append(sampler.images[idx])
                ds = sampler.dataset
                texts += [caption(ds.name, ds.classes[sampler.labels[i]], ds.item_attrs(i), rng,
                                  cfg.class_only_frac) for i in idx]
            x = to_model_input(bundle, _random_shift(torch.cat(images), cfg.max_shift, gen) / 255.0)
            for t in texts:
                if t not in token_cache:
                    token_cache[t] = bundle.tokenizer([t])[0]
                    caption_ids[t] = len(caption_ids)
            tokens = torch.stack([token_cache[t] for t in texts]).to(device)
            cid = torch.tensor([caption_ids[t] for t in texts], device=device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                img = encode_image(model, x, normalize=True)
                txt = encode_text(model, tokens, normalize=True)
                loss = soft_clip_loss(img.float(), txt.float(), model.logit_scale.exp(), cid)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"bootstrap: non-finite loss at step {step}; lower bootstrap.lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                rec = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - t0, 1)}
                history.append(rec)
                log(f"step {step:5d}/{cfg.steps}  loss {rec['loss']:.4f}  {rec['seconds']:.0f}s")
    model.eval()
    bundle.meta.update({"trained_steps": cfg.steps, "train_seconds": round(time.perf_counter() - t0, 1),
                        "seed": cfg.seed, "datasets": [ds.name for ds in train_sets]})
    return bundle, history
