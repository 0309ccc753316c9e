"""CCUP: closed-form projection of the visual projection away from forgotten text directions.

No training, no images: only the text embeddings of forget (and retain) class names.
    plain:     P = I - alpha * U U^T            (U: orthonormal basis of the forget vectors)
    retention: P = (lam T_r T_r^T + mu I)(T_f T_f^T + lam T_r T_r^T + mu I)^-1, then
               P <- I - alpha (I - P)           (partial strength)
Image features f (row vectors) become f P^T, i.e. visual.proj <- visual.proj @ P^T.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from clip_unlearn.models import ClipBundle
from clip_unlearn.schema import Section
from clip_unlearn.templates import zero_shot_templates
from clip_unlearn.unlearning.context import UnlearnContext
from clip_unlearn.unlearning.registry import register
from clip_unlearn.zero_shot import class_vectors


class ProjectionConfig(Section):
    form: Literal["plain", "retention"] = "retention"
    alpha: float = Field(1.0, ge=0, le=1, description="partial projection strength")
    # Measured on the reference model (docs/methods.md): lam 1 barely forgets there, because the
    # class vectors of a small joint space are strongly correlated; 0.03 trades better.
    lam: float = Field(0.03, ge=0, description="weight of keeping retain-class embeddings")
    mu: float = Field(0.01, gt=0, description="weight of staying near identity")
    retain_datasets: list[str] = Field(
        default_factory=lambda: ["digits", "shapes"],
        description="datasets whose class names (text only) are kept, besides the request's own")
    rank_tol: float = Field(1e-6, gt=0)


def plain_projection(t_forget: torch.Tensor, alpha: float = 1.0, tol: float = 1e-6) -> torch.Tensor:
    """t_forget: [D, k] forget directions (columns). Returns P = I - alpha U U^T."""
    u, s, _ = torch.linalg.svd(t_forget.double(), full_matrices=False)
    u = u[:, s > tol * s.max()]
    eye = torch.eye(t_forget.shape[0], dtype=torch.float64)
    return (eye - alpha * u @ u.T).to(t_forget.dtype)


def retention_projection(t_forget: torch.Tensor, t_retain: torch.Tensor, lam: float = 1.0, mu: float = 0.01,
                         alpha: float = 1.0) -> torch.Tensor:
    """argmin_P ||P T_f||^2 + lam ||P T_r - T_r||^2 + mu ||P - I||^2, blended with I by alpha."""
    tf, tr = t_forget.double(), t_retain.double()
    eye = torch.eye(tf.shape[0], dtype=torch.float64)
    keep = lam * tr @ tr.T + mu * eye
    p = torch.linalg.solve((tf @ tf.T + keep).T, keep.T).T  # keep @ inv(A), without forming inv
    return (eye - alpha * (eye - p)).to(t_forget.dtype)


def apply_to_visual(model: torch.nn.Module, p: torch.Tensor) -> None:
    proj = model.visual.proj
    if proj is None:
        raise ValueError("this model has no visual.proj to project (ResNet attention-pool models: not yet supported)")
    with torch.no_grad():
        proj.copy_(proj @ p.T.to(proj.dtype).to(proj.device))


@register("projection", ProjectionConfig, data_free=True)
def projection(bundle: ClipBundle, ctx: UnlearnContext, cfg: ProjectionConfig) -> dict:
    """CCUP closed-form projection (training-free, data-free)."""
    w = class_vectors(bundle, ctx.classes, zero_shot_templates(ctx.request.dataset)).cpu()  # [C, D]
    tf = w[ctx.forget_labels].T
    if cfg.form == "plain":
        p = plain_projection(tf, cfg.alpha, cfg.rank_tol)
    else:
        keep = [w[[ctx.classes.index(c) for c in ctx.retain_classnames]]]
        for name in cfg.retain_datasets:
            if name != ctx.request.dataset:  # class names only: reads the manifest, no image
                keep.append(class_vectors(bundle, ctx.class_names(name), zero_shot_templates(name)).cpu())
        p = retention_projection(tf, torch.cat(keep).T, cfg.lam, cfg.mu, cfg.alpha)
    apply_to_visual(bundle.model, p)
    return {"form": cfg.form, "rank": int(torch.linalg.matrix_rank(tf.double()))}
