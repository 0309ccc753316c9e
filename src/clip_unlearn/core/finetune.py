"""The fine-tuning toolkit that methods and the relearning check share: which tensors train,
seeded batches, zero-shot logits with gradients, and a Fisher-ratio ranking of tensors.

    with train_only(model, names) as params:         # gradients on `names` only, restored on exit
        logits, feats = zs_logits(bundle, x, w)
    batch = Sampler(ds, torch.Generator().manual_seed(0)).draw(64)
    chosen = rank_by_fisher_ratio(fisher_diag(p, loss_a, 8), fisher_diag(p, loss_b, 8), k=32)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch

from clip_unlearn.core.clip_ops import encode_image
from clip_unlearn.core.models import ClipBundle


def visual_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.startswith("visual.")}


def set_trainable(model: torch.nn.Module, names: Iterable[str]) -> list[torch.nn.Parameter]:
    """Gradients on for `names` only; returns those parameters."""
    names = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return [p for n, p in model.named_parameters() if n in names]


@contextlib.contextmanager
def train_only(model: torch.nn.Module, names: Iterable[str]):
    """Train mode with gradients on `names` only; gradient flags, grads and eval mode are
    restored on exit, even after an error."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    try:
        yield set_trainable(model, names)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.eval()


def zs_logits(bundle: ClipBundle, x: torch.Tensor, w: torch.Tensor, model: torch.nn.Module | None = None):
    """(logits = logit_scale * cos(f_V(x), w), normalized image features) for normalized input x."""
    model = model or bundle.model
    img = encode_image(model, x, normalize=True)
    return model.logit_scale.exp().detach() * img @ w.T, img


class Sampler:
    """Seeded random batches of (uint8 images, labels) from a set of ImageDatasets."""

    def __init__(self, dataset, gen: torch.Generator):
        self.images, self.labels = dataset.tensors()
        self.gen = gen

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.labels), (n,), generator=self.gen) if n < len(self.labels) \
            else torch.randperm(len(self.labels), generator=self.gen)
        return self.images[idx], self.labels[idx]


class MixedSampler:
    """Batches drawn from several Samplers in fixed shares (empty parts' shares go to the rest)."""

    def __init__(self, parts: list[Sampler], shares: list[float]):
        kept = [(p, s) for p, s in zip(parts, shares) if len(p) and s > 0] or [(p, 1.0) for p in parts if len(p)]
        if not kept:
            raise ValueError("no retained images to sample from")
        total = sum(s for _, s in kept)
        self.parts, self.shares = [p for p, _ in kept], [s / total for _, s in kept]

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts = [int(n * s) for s in self.shares]
        counts[-1] += n - sum(counts)
        drawn = [p.draw(k) for p, k in zip(self.parts, counts) if k > 0]
        return torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])


def fisher_diag(params: dict[str, torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                n_batches: int) -> dict[str, float]:
    """Mean squared gradient per tensor over n_batches calls of loss_fn (each draws a batch)."""
    acc = {n: 0.0 for n in params}
    for _ in range(n_batches):
        for p in params.values():
            p.grad = None
        loss_fn().backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += float(p.grad.pow(2).mean())
    for p in params.values():
        p.grad = None
    return {n: v / n_batches for n, v in acc.items()}


def rank_by_fisher_ratio(fisher_forget: dict[str, float], fisher_retain: dict[str, float], k: int,
                         eps: float = 1e-8) -> list[str]:
    """Names of the k tensors with the largest forget/retain Fisher ratio, largest first.

    eps is relative to the largest retain Fisher, so a tensor retained data never moves
    does not win by dividing by ~0."""
    floor = eps * max(max(fisher_retain.values(), default=0.0), 1e-30)
    ratio = {n: fisher_forget[n] / (fisher_retain.get(n, 0.0) + floor) for n in fisher_forget}
    return sorted(ratio, key=lambda n: (-ratio[n], n))[:k]
