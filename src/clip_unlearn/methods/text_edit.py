"""Closed-form edit of the text projection: the forgotten class names stop pointing at their images.

    res = run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "text_edit",
                     data_root="data", others=["shapes"])

Data-free and training-free (no image at all, seconds on a CPU); beyond the seed papers, in the
spirit of closed-form model editing. Let h be the text tower's pooled feature before
`text_projection` W. For every prompt that names a forgotten class (the dataset's zero-shot
templates, a generic ensemble, attribute phrases and caption forms: `forget_prompts`) the edit
sends h W to a target direction that no image prefers, while every prompt naming a retained
class (the request's dataset and the other datasets, same prompt forms) keeps its feature:

    min_D  sum_f ||h_f (W + D) - t_f||^2 + lam sum_r ||h_r D||^2 + mu ||D||^2
    D = (H_f'H_f + lam H_r'H_r + mu I)^-1 H_f' (T_f - H_f W)

t_f = ||h_f W|| * u, u = -(mean of every class vector), normalized: the direction opposite the
one all captions share, so cos(image, u) sits below any image's own class. Image features do not
change at all, so other datasets and retained classes keep their accuracy as long as their
prompts keep their features (reported as `retain_drift`).

What it does not do: image features of the forgotten class stay as they were (a linear probe
still separates them, as for every method here), and a subgroup cannot be erased from the text
side, since the class name is shared by the subgroups that are kept (auto uses an image-side
method for those).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from clip_unlearn.core.clip_ops import text_pooled
from clip_unlearn.core.models import ClipBundle
from clip_unlearn.core.schema import ConfigError, Section
from clip_unlearn.core.templates import ZERO_SHOT_TEMPLATES, subgroup_phrase, zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.registry import register

CAPTION_FORMS = ["{p}.", "a photo of {p}.", "an image of {p}."]


class TextEditConfig(Section):
    tokens: bool = Field(True, description="re-initialize the token embeddings only the forgotten class names use")
    token_std: float = Field(0.02, gt=0, description="std of the re-initialized embeddings (open_clip's init)")
    projection: bool = Field(True, description="then the closed-form edit of text_projection")
    lam: float = Field(1.0, gt=0, description="weight of keeping the retained prompts' features")
    mu: float = Field(1e-3, gt=0, description="ridge: stay near the original projection")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the edit applied (1: the full solution)")
    generic_templates: bool = Field(True, description="also edit the generic prompt ensemble, not only the "
                                                      "dataset's own templates")
    attribute_phrases: bool = Field(True, description="also edit captions naming the class with an attribute")


def prompts_for(dataset: str, classname: str, attributes: dict[str, list[str]], cfg: TextEditConfig) -> list[str]:
    """Every prompt form the edit covers for one class name."""
    templates = list(zero_shot_templates(dataset))
    if cfg.generic_templates:
        templates += [t for t in ZERO_SHOT_TEMPLATES["default"] if t not in templates]
    texts = [t.format(c=classname) for t in templates]
    if cfg.attribute_phrases:
        for key, values in attributes.items():
            for v in values:
                phrase = subgroup_phrase(dataset, classname, {key: v})
                texts += [f.format(p=phrase) for f in CAPTION_FORMS]
    return texts


@torch.no_grad()
def pooled_features(bundle: ClipBundle, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    out = [text_pooled(bundle.model, bundle.tokenizer(texts[i:i + batch_size]).to(bundle.device)).float()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).double().cpu()


def edit_delta(h_forget: torch.Tensor, t_forget: torch.Tensor, h_retain: torch.Tensor, w: torch.Tensor,
               lam: float, mu: float) -> torch.Tensor:
    """The ridge solution D (float64) of the module docstring."""
    eye = torch.eye(w.shape[0], dtype=torch.float64)
    a = h_forget.T @ h_forget + lam * h_retain.T @ h_retain + mu * eye
    return torch.linalg.solve(a, h_forget.T @ (t_forget - h_forget @ w))


def reset_tokens(bundle: ClipBundle, forget_texts: list[str], retain_texts: list[str], std: float,
                 seed: int) -> list[int]:
    """Re-initialize the embeddings of tokens that appear in forget prompts and in no retained one:
    the text tower then reads the forgotten names as words it never learned, as a model trained
    without them would (their rows were never updated there). Shared tokens are left alone."""
    def ids(texts):
        tokens = bundle.tokenizer(texts)
        return {int(t) for row in tokens for t in row[1:int(row.argmax())]}  # without start/end tokens
    only = sorted(ids(forget_texts) - ids(retain_texts))
    if only:
        emb = bundle.model.token_embedding.weight
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            emb[only] = (torch.randn(len(only), emb.shape[1], generator=gen) * std).to(emb.dtype).to(emb.device)
    return only


@register("text_edit", TextEditConfig, data_free=True)
def text_edit(bundle: ClipBundle, ctx: UnlearnContext, cfg: TextEditConfig) -> dict:
    """Closed-form text-projection edit: forgotten class names point away from every image (data-free)."""
    req, model = ctx.request, bundle.model
    if req.where:
        raise ConfigError("text_edit erases whole classes; a subgroup shares its class name with the subgroups "
                          "that are kept. Use an image-side method (auto picks one).")
    proj = getattr(model, "text_projection", None)
    if not isinstance(proj, torch.Tensor):
        raise ValueError("text_edit needs an open_clip CLIP with a text_projection matrix")
    attrs = ctx.dataset("train").attributes  # attribute names and values: the manifest, no image
    forget_texts = [t for c in req.classes for t in prompts_for(req.dataset, c, attrs, cfg)]
    retain_texts = [t for c in ctx.retain_classnames for t in prompts_for(req.dataset, c, attrs, cfg)]
    every_class = [class_vectors(bundle, ctx.classes, zero_shot_templates(req.dataset)).cpu()]
    for name in ctx.others:
        if name != req.dataset:
            other = ctx.class_names(name)
            retain_texts += [t for c in other for t in prompts_for(name, c, {}, cfg)]
            every_class.append(class_vectors(bundle, other, zero_shot_templates(name)).cpu())
    u = -F.normalize(torch.cat(every_class).double().mean(0), dim=0)

    info = {"tokens_reset": reset_tokens(bundle, forget_texts, retain_texts, cfg.token_std, ctx.seed)
            if cfg.tokens else []}
    if not cfg.projection:
        return info
    w = proj.detach().double().cpu()
    h_f, h_r = pooled_features(bundle, forget_texts), pooled_features(bundle, retain_texts)
    t_f = (h_f @ w).norm(dim=-1, keepdim=True) * u
    delta = cfg.strength * edit_delta(h_f, t_f, h_r, w, cfg.lam, cfg.mu)
    with torch.no_grad():
        proj.add_(delta.to(proj.dtype).to(proj.device))

    new_w = w + delta
    cos_f = F.cosine_similarity(h_f @ new_w, u.expand(len(h_f), -1), dim=-1)
    drift = 1 - F.cosine_similarity(h_r @ new_w, h_r @ w, dim=-1)
    ctx.log(f"text_edit: {len(forget_texts)} forget / {len(retain_texts)} retained prompts; "
            f"forget cos to target min {float(cos_f.min()):.3f}; retained drift max {float(drift.max()):.2e}")
    return info | {"n_forget_prompts": len(forget_texts), "n_retain_prompts": len(retain_texts),
            "forget_cos_to_target_min": round(float(cos_f.min()), 4),
            "retain_drift_max": float(drift.max()), "retain_drift_mean": float(drift.mean()),
            "delta_norm": round(float(delta.norm()), 4)}
