import json

import pytest
import torch
from PIL import Image

from clip_unlearn.core.clip_ops import pixel_bounds
from clip_unlearn.core.models import load_model
from clip_unlearn.core.schema import ConfigError, validate
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.synthetic import (
    SynthesisConfig,
    gaussian_blur,
    invert_classes,
    load_synthetic,
    save_synthetic,
    synthetic_accuracy,
    templates_for,
)

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart", "arrow", "hourglass"]
# A random tiny model reaches these low thresholds for circle (0) and crescent (6) within a few steps.
EASY = SynthesisConfig(per_class=4, max_steps=20, p_high=0.2, p_floor=0.11, batch_size=4, max_tries=16, template=None)


@pytest.fixture(scope="module")
def random_bundle():
    torch.manual_seed(0)
    return load_model("clip-ref-tiny", device="cpu")


@pytest.fixture(scope="module")
def syn(random_bundle):
    return invert_classes(random_bundle, SHAPES, [0, 6], "shapes", EASY, seed=0, log=lambda s: None)


def test_accepted_images_satisfy_the_acceptance_rule(random_bundle, syn):
    assert syn.labels.tolist() == [0] * 4 + [6] * 4
    assert syn.x.shape == (8, 3, 32, 32) and syn.x.device.type == "cpu"
    lo, hi = pixel_bounds(random_bundle)
    assert bool((syn.x >= lo - 1e-6).all() and (syn.x <= hi + 1e-6).all())
    w = class_vectors(random_bundle, SHAPES, templates_for("shapes", EASY))  # one template, as the authors
    with torch.no_grad():
        probs = (100 * torch.nn.functional.normalize(random_bundle.model.encode_image(syn.x), dim=-1) @ w.T).softmax(-1)
    assert torch.equal(probs.argmax(-1), syn.labels)
    for name, c in (("circle", 0), ("crescent", 6)):
        s = syn.stats["per_class"][name]
        got = probs[syn.labels == c, c]
        assert bool((got > s["p_final"] - 1e-6).all())
        assert torch.allclose(got, syn.probs[syn.labels == c], atol=1e-5)
        assert s["accepted"] == 4 and s["tries"] == 4 + s["failed_tries"]
        assert EASY.p_floor <= s["p_final"] <= EASY.p_high
    assert syn.stats["synthetic_accuracy"] == 1.0
    assert synthetic_accuracy(random_bundle, syn.x, syn.labels, w) == 1.0


def test_threshold_drops_after_each_failed_try_down_to_the_floor(random_bundle):
    # circle does not reach 0.32 on this model within 15 steps: p walks down until tries pass.
    cfg = SynthesisConfig(per_class=2, max_steps=15, p_high=0.32, p_step=0.04, p_floor=0.2, batch_size=1,
                          max_tries=30)
    s = invert_classes(random_bundle, SHAPES, [0], "shapes", cfg, seed=0, log=lambda s: None).stats["per_class"]["circle"]
    used = s["thresholds_used"]
    assert s["failed_tries"] >= 1 and len(used) == 1 + s["failed_tries"]  # one try at a time: one drop per failure
    assert all(abs(b - max(a - 0.04, 0.2)) < 1e-9 for a, b in zip(used, used[1:]))
    assert s["p_final"] == used[-1] < 0.32


def test_unreachable_threshold_raises(random_bundle):
    cfg = SynthesisConfig(per_class=1, max_steps=2, p_high=0.99, p_floor=0.95, batch_size=2, max_tries=4)
    with pytest.raises(RuntimeError, match="no image of class"):
        invert_classes(random_bundle, SHAPES, [1], "shapes", cfg, seed=0, log=lambda s: None)


def test_same_seed_same_images(random_bundle, syn):
    again = invert_classes(random_bundle, SHAPES, [0, 6], "shapes", EASY, seed=0, log=lambda s: None)
    assert torch.equal(again.x, syn.x)


def test_save_and_load_write_tensors_grid_and_summary(syn, tmp_path):
    out = save_synthetic(syn, tmp_path / "syn")
    back = load_synthetic(out)
    assert torch.equal(back.x, syn.x) and torch.equal(back.labels, syn.labels) and torch.equal(back.probs, syn.probs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["synthetic_accuracy"] == 1.0
    assert set(summary["per_class"]) == {"circle", "crescent"}
    assert "p_final" in summary["per_class"]["circle"]
    grid = Image.open(out / "grid.png")
    assert grid.mode == "RGB" and grid.height >= 2 * 64 and grid.width > 4 * 64  # two rows of 2x-zoomed images
    assert len(set(grid.getdata())) > 10  # not blank


def test_gaussian_blur_keeps_constants_and_smooths():
    const = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(gaussian_blur(const, 0.5), const, atol=1e-6)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    out = gaussian_blur(spike, 0.5)
    assert abs(float(out.sum()) - 1.0) < 1e-5 and float(out.max()) < 1.0 and float(out[0, 0, 4, 5]) > 0


def test_config_rejects_floor_above_start():
    with pytest.raises(ConfigError, match="p_floor"):
        validate(SynthesisConfig, {"p_high": 0.5, "p_floor": 0.6}, "methods.lipschitz.synthesis")


def test_authors_rescale_accepts_and_returns_the_min_max_rescaled_image(random_bundle):
    """Their quirk (clip_forget_imagegen.py): what is accepted and trained is the min-max rescale of the ascent
    tensor, so every returned image spans exactly [0, 1] in pixels, and it satisfies the acceptance rule."""
    cfg = EASY.model_copy(update={"authors_rescale": True})
    syn = invert_classes(random_bundle, SHAPES, [6], "shapes", cfg, seed=0, log=lambda s: None)
    mean = torch.tensor(random_bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(random_bundle.std).view(1, 3, 1, 1)
    pixels = (syn.x * std + mean).flatten(1)
    assert torch.allclose(pixels.min(1).values, torch.zeros(len(syn)), atol=1e-5)
    assert torch.allclose(pixels.max(1).values, torch.ones(len(syn)), atol=1e-5)
    w = class_vectors(random_bundle, SHAPES, templates_for("shapes", cfg))
    assert synthetic_accuracy(random_bundle, syn.x, syn.labels, w) == 1.0
    plain = invert_classes(random_bundle, SHAPES, [6], "shapes", EASY, seed=0, log=lambda s: None)
    assert not torch.allclose(plain.x, syn.x)
