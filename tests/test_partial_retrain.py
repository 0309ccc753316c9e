import pytest
import torch
from conftest import image_paths, run

from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.core.train import shift_images, shift_offsets
from clip_unlearn.methods.partial_retrain import PartialRetrainConfig, _prefix, _tail, _teacher_views

SEVEN = ForgetRequest(dataset="digits", classes=["seven"])
SMALL = PartialRetrainConfig(k=2, steps=3, batch=16)


def _changed(bundle, before):
    return {n for n, p in bundle.model.named_parameters() if not torch.equal(p, before[n])}


def test_resets_only_the_last_blocks_and_never_reads_what_it_forgets(tiny_params, tiny_model_dir, reads):
    bundle = load_model(tiny_model_dir, device="cpu")
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    res = run(bundle, SEVEN, "partial_retrain", SMALL, tiny_params.data.root, ["shapes"])
    assert res["data_free"]
    train = {p for p in reads if "/train/" in p}   # run_method itself measures on test
    assert train and not train & image_paths(tiny_params.data.root, [SEVEN])   # retained images only
    image = {n for n in _changed(bundle, before) if n.startswith("visual.")}
    n_blocks = len(bundle.model.visual.transformer.resblocks)
    allowed = tuple(f"visual.transformer.resblocks.{i}." for i in range(n_blocks - 2, n_blocks)) + ("visual.ln_post",)
    assert image and all(n.startswith(allowed) or n == "visual.proj" for n in image)
    assert "text_projection" in _changed(bundle, before)   # text_edit ran first
    assert res["changed"]["image tower"]["changed"] > 0
    assert all(p.requires_grad for p in bundle.model.parameters())


def test_same_seed_same_weights(tiny_params, tiny_model_dir):
    out = []
    for _ in range(2):
        bundle = load_model(tiny_model_dir, device="cpu")
        run(bundle, SEVEN, "partial_retrain", SMALL, tiny_params.data.root, ["shapes"], seed=3)
        out.append(bundle.model.state_dict())
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_refuses_subgroups_and_too_many_blocks(tiny_params, tiny_model_dir):
    bundle = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(ConfigError, match="whole classes"):
        run(bundle, ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"}), "partial_retrain",
            SMALL, tiny_params.data.root, ["shapes"])
    with pytest.raises(ConfigError, match="blocks"):
        run(bundle, SEVEN, "partial_retrain", PartialRetrainConfig(k=99, steps=1), tiny_params.data.root, ["shapes"])


@pytest.mark.parametrize("shift,split", [(1, 0), (1, 1), (0, 1)])
def test_cached_teacher_targets_are_the_teachers_features_of_each_shifted_image(tiny_model_dir, shift, split):
    bundle = load_model(tiny_model_dir, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    views = _teacher_views(bundle, bundle.model, x, shift, split, chunk=5)
    assert views.shape[:2] == (12, (2 * shift + 1) ** 2)
    offs = shift_offsets(12, shift, gen) if shift else torch.zeros(12, 2, dtype=torch.long)
    xb = shift_images(x, offs, shift) / 255.0 if shift else x
    with torch.no_grad():
        direct = _tail(bundle.model, _prefix(bundle, bundle.model, xb, split), split)
    picked = views[torch.arange(12), offs[:, 0] * (2 * shift + 1) + offs[:, 1]]
    assert torch.allclose(picked, direct, atol=1e-5)
    assert not torch.allclose(views[:, 0], views[:, -1], atol=1e-3) or not shift   # the shifts do differ
