"""Depth of an erasure: how much of what was forgotten an attacker who holds the weights gets back.
Zero-shot accuracy says the class's *name* no longer points at its images; these four attacks ask
whether the model still *recognises* them. The yardstick is the model retrained without the data
(the oracle): an erasure is as deep as retraining when these figures are no higher than its.

    d = measure_depth(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "data", DepthConfig())
    d["prototypes"], d["probe"], d["relearn_attack"], d["paraphrase"]      # recall of what was forgotten

Every figure is the recall of the forgotten items (a class: its images; a subgroup: the subgroup's
images, as their class) on `split`; the attacker's labelled images come from the TRAIN split, never
the lineage's items. Deterministic: every choice is drawn from generators seeded with cfg.seed.
The verifier reads those images; no method does: methods see data through their context only, whose
forget_set leaves out `attacker_items`.

prototypes      `shots` labelled train images per class (the forgotten included), class means of
                L2-normalized image features, nearest mean by cosine.
probe           multinomial logistic regression over every class on L2-normalized image features of
                `probe_per_class` train images per class (standardized, float64 L-BFGS).
relearn_attack  a copy fine-tuned `attack_steps` AdamW steps at `attack_lr` over all parameters on
                batches holding the `shots` labelled forgotten train images plus retained ones, then
                zero-shot top-1 (the dataset's templates, every class a candidate).
paraphrase      zero-shot with paraphrased templates no method fits on (templates.PARAPHRASES).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from clip_unlearn.core.clip_ops import encode_image, encode_images, encode_text, fast_cpu_attention, to_model_input
from clip_unlearn.core.data import ImageDataset
from clip_unlearn.core.measure import request_mask
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import Section
from clip_unlearn.core.splits import request_split
from clip_unlearn.core.templates import paraphrase_templates, zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors, predict

METRICS = ("prototypes", "probe", "relearn_attack", "paraphrase")


class DepthConfig(Section):
    """How the attacks are made (params assurance.depth); their limits are in the gate."""
    enabled: bool = Field(True, description="measure depth at all (verification, auto's val gate, the benchmark)")
    shots: int = Field(10, ge=1, le=1000, description="labelled train images per class the attacker holds")
    probe_per_class: int = Field(100, ge=2, le=100_000, description="train images per class of the linear probe")
    probe_l2: float = Field(1e-3, ge=0)
    probe_max_iter: int = Field(200, ge=1, le=10_000)
    attack_steps: int = Field(30, ge=0, le=10_000, description="AdamW steps of the relearning attack")
    attack_lr: float = Field(1e-4, gt=0, le=1)
    attack_batch_size: int = Field(64, ge=2, le=4096)
    seed: int = Field(0, ge=0)


def _pick(groups: list[torch.Tensor], k: int, gen: torch.Generator) -> torch.Tensor:
    """k seeded indices from each group (all of a smaller group)."""
    return torch.cat([g[torch.randperm(len(g), generator=gen)[:k]] for g in groups]) if groups else \
        torch.zeros(0, dtype=torch.long)


def _recall(preds: torch.Tensor, labels: torch.Tensor, mask: np.ndarray) -> float:
    m = torch.from_numpy(mask)
    return float((preds[m] == labels[m]).double().mean()) if m.any() else float("nan")


def _prototype_shots(by_class: list[torch.Tensor], forgotten: torch.Tensor, request: ForgetRequest,
                     cfg: DepthConfig) -> torch.Tensor:
    idx = _pick(by_class, cfg.shots, torch.Generator().manual_seed(cfg.seed))
    if request.where:   # the subgroup's class is represented by its kept images and the attacker's shots
        keep = ~torch.isin(idx, forgotten)
        idx = torch.cat([idx[keep], _pick([forgotten], cfg.shots, torch.Generator().manual_seed(cfg.seed))])
    return idx


def _probe_items(by_class: list[torch.Tensor], cfg: DepthConfig) -> torch.Tensor:
    return _pick(by_class, cfg.probe_per_class, torch.Generator().manual_seed(cfg.seed + 2))


def _relearn_shots(labels: torch.Tensor, forgotten: torch.Tensor, classes: list[str], request: ForgetRequest,
                   cfg: DepthConfig, gen: torch.Generator) -> torch.Tensor:
    return _pick([forgotten[labels[forgotten] == classes.index(c)] for c in request.classes], cfg.shots, gen)


def attacker_items(train: ImageDataset, request: ForgetRequest, cfg: DepthConfig) -> np.ndarray:
    """Positions in `train` (the request's train split, lineage dropped) of the forgotten items the
    attacks hold as labelled images: prototype shots, probe images, relearning shots. The verifier
    reads them; methods never do (UnlearnContext.forget_set leaves them out), so a method that reads
    real images of what it forgets cannot fit the very images an attack is scored with."""
    labels = torch.tensor(train.labels, dtype=torch.long)
    forgotten = torch.from_numpy(np.flatnonzero(request_mask(train, request.classes, request.where)))
    by_class = [torch.nonzero(labels == c).flatten() for c in range(len(train.classes))]
    picked = torch.cat([_prototype_shots(by_class, forgotten, request, cfg), _probe_items(by_class, cfg),
                        _relearn_shots(labels, forgotten, train.classes, request, cfg,
                                       torch.Generator().manual_seed(cfg.seed + 1))])
    return np.intersect1d(picked.numpy(), forgotten.numpy())


@torch.no_grad()
def _features(bundle: ClipBundle, images: torch.Tensor) -> torch.Tensor:
    return encode_images(bundle, images).float()


def prototypes(train_feats: torch.Tensor, train_labels: torch.Tensor, feats: torch.Tensor, n: int) -> torch.Tensor:
    """Predictions by the nearest class mean (cosine); a class without shots never wins."""
    means = torch.stack([train_feats[train_labels == c].mean(0) if (train_labels == c).any()
                         else torch.full_like(train_feats[0], float("nan")) for c in range(n)])
    sims = F.normalize(feats, dim=-1) @ F.normalize(means, dim=-1).T
    return sims.nan_to_num(-2.0).argmax(-1)


def fit_multinomial(x: torch.Tensor, y: torch.Tensor, n: int, l2: float = 1e-3, max_iter: int = 200):
    """Multinomial logistic regression (float64 full-batch L-BFGS on standardized features); returns
    a function from features to predicted labels."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], n, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_, b_ = w.detach(), b.detach()
    return lambda feats: (((feats.double() - mean) / std) @ w_ + b_).argmax(-1)


def relearn_attack(bundle: ClipBundle, images: torch.Tensor, labels: torch.Tensor, shots: torch.Tensor,
                   retained: torch.Tensor, classes: list[str], templates: list[str], cfg: DepthConfig,
                   gen: torch.Generator) -> ClipBundle:
    """A copy of `bundle` fine-tuned on batches that always hold the attacker's `shots` (indices into
    images/labels) plus `retained` items drawn with `gen`. `bundle` is not modified."""
    n_retained = cfg.attack_batch_size - len(shots)
    if n_retained <= 0 or not len(retained):
        raise ValueError(f"depth: attack batch {cfg.attack_batch_size} leaves no room for retained images "
                         f"besides {len(shots)} forgotten ones")
    work = copy.copy(bundle)
    work.model = copy.deepcopy(bundle.model).requires_grad_(True)
    model, dev = work.model, work.device
    tokens = work.tokenizer([t.format(c=c) for c in classes for t in templates]).to(dev)
    with torch.random.fork_rng(devices=[]), fast_cpu_attention(dev), torch.enable_grad():
        torch.manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.attack_lr)
        model.train()
        for _ in range(cfg.attack_steps):
            idx = torch.cat([shots, retained[torch.randint(0, len(retained), (n_retained,), generator=gen)]])
            w = F.normalize(encode_text(model, tokens, normalize=True).float()
                            .view(len(classes), len(templates), -1).mean(1), dim=-1)
            img = encode_image(model, to_model_input(work, images[idx]), normalize=True)
            loss = F.cross_entropy(model.logit_scale.exp() * img @ w.T, labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    return work


def measure_depth(bundle: ClipBundle, request: ForgetRequest, data_root: str, cfg: DepthConfig,
                  split: str = "test", lineage: list[ForgetRequest] = (), metrics: tuple[str, ...] = METRICS) -> dict:
    """The depth figures of `metrics` (recall of what was forgotten on `split`) and seconds per metric."""
    bundle.model.eval()
    train = request_split(request, "train", data_root, lineage)
    ev = request_split(request, split, data_root, lineage)
    n, classes = len(train.classes), train.classes
    tr_x, tr_y = train.tensors()
    ev_x, ev_y = ev.tensors()
    mask = request_mask(ev, request.classes, request.where)
    forgotten_train = torch.from_numpy(np.flatnonzero(request_mask(train, request.classes, request.where)))
    out, seconds = {}, {}
    t0 = time.perf_counter()
    ev_f = _features(bundle, ev_x)
    seconds["encode"] = time.perf_counter() - t0
    by_class = [torch.nonzero(tr_y == c).flatten() for c in range(n)]
    for name in metrics:
        t = time.perf_counter()
        if name == "prototypes":
            idx = _prototype_shots(by_class, forgotten_train, request, cfg)
            out[name] = _recall(prototypes(_features(bundle, tr_x[idx]), tr_y[idx], ev_f, n), ev_y, mask)
        elif name == "probe":
            idx = _probe_items(by_class, cfg)
            score = fit_multinomial(_features(bundle, tr_x[idx]), tr_y[idx], n, cfg.probe_l2, cfg.probe_max_iter)
            out[name] = _recall(score(ev_f), ev_y, mask)
        elif name == "relearn_attack":
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            shots = _relearn_shots(tr_y, forgotten_train, classes, request, cfg, gen)
            retained = torch.from_numpy(np.setdiff1d(np.arange(len(tr_y)), forgotten_train.numpy()))
            attacked = relearn_attack(bundle, tr_x, tr_y, shots, retained, classes, zero_shot_templates(request.dataset),
                                      cfg, gen)
            with torch.no_grad():
                preds = predict(_features(attacked, ev_x), class_vectors(attacked, classes,
                                                                         zero_shot_templates(request.dataset)))
            out[name] = _recall(preds, ev_y, mask)
        elif name == "paraphrase":
            with torch.no_grad():
                w = class_vectors(bundle, classes, paraphrase_templates(request.dataset))
            out[name] = _recall(predict(ev_f, w), ev_y, mask)
        else:
            raise ValueError(f"unknown depth metric {name!r}; allowed: {', '.join(METRICS)}")
        seconds[name] = time.perf_counter() - t
    return out | {"split": split, "seconds": {k: round(v, 2) for k, v in seconds.items()},
                  "n_forget": int(mask.sum()), "shots": cfg.shots}
