import pytest
import torch
from conftest import image_paths, run

from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.methods.partial_retrain import PartialRetrainConfig

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
