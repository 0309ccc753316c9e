import time

import pytest
import torch
from conftest import run

from clip_unlearn.core.clip_ops import encode_images
from clip_unlearn.core.gate import accuracy_checks
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import UnlearnContext
from clip_unlearn.methods.projection import (
    ProjectionConfig,
    apply_to_visual,
    forget_directions,
    plain_projection,
    projection,
    retention_projection,
)

E = torch.eye(3)


def test_plain_projection_hand_checked():
    assert torch.allclose(plain_projection(E[:, :1]), torch.diag(torch.tensor([0.0, 1.0, 1.0])))
    assert torch.allclose(plain_projection(E[:, :1], alpha=0.5), torch.diag(torch.tensor([0.5, 1.0, 1.0])))
    # two forget directions that are not orthogonal span the same plane as e1, e2
    two = torch.stack([E[0], (E[0] + E[1]) / 2 ** 0.5], dim=1)
    assert torch.allclose(plain_projection(two), torch.diag(torch.tensor([0.0, 0.0, 1.0])), atol=1e-6)


def test_retention_projection_hand_checked():
    # T_f = e1, T_r = e2: A = diag(1+mu, 1+mu, mu), K = diag(mu, 1+mu, mu) -> P = diag(mu/(1+mu), 1, 1)
    mu = 0.01
    p = retention_projection(E[:, :1], E[:, 1:2], lam=1.0, mu=mu)
    assert torch.allclose(p, torch.diag(torch.tensor([mu / (1 + mu), 1.0, 1.0])), atol=1e-6)
    half = retention_projection(E[:, :1], E[:, 1:2], lam=1.0, mu=mu, alpha=0.5)
    assert torch.allclose(half, torch.diag(torch.tensor([0.5 + 0.5 * mu / (1 + mu), 1.0, 1.0])), atol=1e-6)


def test_projected_image_features_lose_the_forget_direction():
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    forget = torch.nn.functional.normalize(torch.randn(bundle.model_cfg["embed_dim"], 2), dim=0)
    images = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    apply_to_visual(bundle.model, plain_projection(forget))
    feats = encode_images(bundle, images)
    assert (feats @ forget).abs().max() < 1e-5


def test_projection_is_fast_on_vit_b_32():
    torch.manual_seed(0)
    bundle = load_model("ViT-B-32", device="cpu")  # random weights: timing and shapes only
    d = bundle.model_cfg["embed_dim"]
    t0 = time.perf_counter()
    apply_to_visual(bundle.model, retention_projection(torch.randn(d, 3), torch.randn(d, 100)))
    print(f"ViT-B-32 retention projection: {time.perf_counter() - t0:.3f} s")


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="known miss on the 8 M-parameter reference: its class vectors are too "
                   "correlated for a projection to remove one class alone (docs/methods.md has the figures)")
def test_projection_meets_class_targets_on_the_reference(reference_params):
    p = reference_params
    bundle = load_model(p.model.dir, device="cpu")
    res = run(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "projection",
                     p.methods["projection"], p.data.root, ["shapes"])
    checks = accuracy_checks(res["before"], res["after"], p.gate, subgroup=False)
    assert all(c["passed"] for c in checks), (checks, res["before"], res["after"])
    assert res["info"]["rank"] == 1


def test_centered_projection_puts_the_forget_logit_at_the_mean_logit():
    """Plain: the forget class's logit is 0 for every image. Centered (w_f - mean w projected out): it equals the
    mean logit over all classes, so the forgotten class can no longer be an image's only argmax."""
    torch.manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(6, 16) + 2.0, dim=-1)  # correlated class vectors (common part)
    feats = w[2] + 0.05 * torch.randn(64, 16)                             # "images" of class 2
    assert bool(((feats @ w.T).argmax(-1) == 2).all())
    plain = feats @ plain_projection(forget_directions(w, [2])).T
    assert plain @ w[2] == pytest.approx(torch.zeros(64), abs=1e-5)
    centered = feats @ plain_projection(forget_directions(w, [2], center=True)).T
    logits = centered @ w.T
    assert torch.allclose(logits[:, 2], logits.mean(-1), atol=1e-5)
    assert not bool((logits.argmax(-1) == 2).any())
    assert torch.allclose(forget_directions(w, [2, 4]), w[[2, 4]].T)


def test_projection_config_default_is_the_centered_retention_form():
    cfg = ProjectionConfig()
    assert cfg.center and cfg.form == "retention" and cfg.lam == 0.01


def test_projection_method_applies_the_centered_form(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    proj = bundle.model.visual.proj.detach().clone()
    ctx = UnlearnContext(ForgetRequest(dataset="shapes", classes=["ring"]), data_root=tiny_params.data.root,
                         data_free=True, log=lambda s: None)
    info = projection(bundle, ctx, ProjectionConfig(form="plain"))
    assert info["center"] is True and info["rank"] == 1
    w = class_vectors(bundle, ctx.classes, zero_shot_templates("shapes"))
    u = torch.nn.functional.normalize(w[ctx.classes.index("ring")] - w.mean(0), dim=0)
    assert (bundle.model.visual.proj @ u).abs().max() < 1e-4          # the centered direction is gone
    assert (proj @ u).abs().max() > 1e-2
