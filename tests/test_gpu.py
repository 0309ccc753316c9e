"""The GPU path: every registered method runs on CUDA and leaves the model there; closed-form
methods give the CPU's numbers. Deselected by default; on a CUDA machine:

    python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from conftest import run

from clip_unlearn.core.models import load_model, save_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.splits import cached_split
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods import get_method
from clip_unlearn.methods.registry import METHODS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SEVEN = ForgetRequest(dataset="digits", classes=["seven"])
RED_SEVEN = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})
QUICK = {  # a few steps each: this checks devices, not forgetting
    "subgroup": {"fisher_batches": 1, "forget_steps": 2, "remind_steps": 2, "remind_batch_size": 8, "alpha_grid": [1.0]},
    "attribute_edit": {"steps": 5, "rounds": 1},
    "standin_subgroup": {"forget_steps": 2, "remind_steps": 2, "remind_batch_size": 8, "alpha_grid": [1.0]},
    "gradient_ascent": {"steps": 2},
    "random_labels": {"steps": 2},
    "oracle": {"steps": 2},
    "auto": {"order": ["text_edit", "projection"], "subgroup_order": ["attribute_edit"]},
}


def _configs():
    return {n: get_method(n).config_cls.model_validate(QUICK.get(n, {})) for n in METHODS}


def _run(params, name: str, device: str, request=SEVEN):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device=device)
    res = run(bundle, request, name, QUICK.get(name), params.data.root, ["shapes"], log=lambda _: None,
                     configs=_configs())
    return bundle, res


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"lipschitz"}))
def test_every_method_runs_on_cuda_and_keeps_the_model_there(tiny_params, name):
    request = RED_SEVEN if name in ("attribute_edit", "standin_subgroup") else SEVEN
    bundle, res = _run(tiny_params, name, "cuda", request)
    assert {p.device.type for p in bundle.model.parameters()} == {"cuda"}
    assert 0.0 <= res["after"]["forget_top1"] <= 1.0 and res["after"]["other"]


def test_lipschitz_synthesizes_and_forgets_on_cuda(tiny_params):
    """Synthesis from a random model: ask to forget the class its random images already look like."""
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cuda")
    classes = cached_split("digits", "train", tiny_params.data.root).classes
    w = class_vectors(bundle, classes, zero_shot_templates("digits"))
    with torch.no_grad():
        x = torch.randn(64, 3, 32, 32, device="cuda")
        c = int((torch.nn.functional.normalize(bundle.model.encode_image(x), dim=-1) @ w.T).argmax(-1).mode().values)
    cfg = {"lr": 2e-2, "n_noise": 2, "max_epochs": 2, "synthesis": {"per_class": 4, "max_steps": 20, "p_high": 0.2,
                                                                     "p_floor": 0.11, "batch_size": 4, "max_tries": 8,
                                                                     "template": None}}
    res = run(bundle, ForgetRequest(dataset="digits", classes=[classes[c]]), "lipschitz", cfg,
                     tiny_params.data.root, ["shapes"], log=lambda _: None)
    assert res["info"]["synthetic"]["source"] == "synthesized" and res["info"]["history"][0]["accuracy"] == 1.0
    assert {p.device.type for p in bundle.model.parameters()} == {"cuda"}


@pytest.mark.parametrize("name", ["text_edit", "projection"])
def test_closed_form_methods_match_the_cpu(tiny_params, name):
    _, gpu = _run(tiny_params, name, "cuda")
    _, cpu = _run(tiny_params, name, "cpu")
    for key in ("forget_top1", "retain_top1", "other_top1"):
        assert gpu["after"][key] == pytest.approx(cpu["after"][key], abs=0.02), key


def test_a_model_erased_on_cuda_loads_on_cpu(tiny_params, tmp_path):
    bundle, _ = _run(tiny_params, "text_edit", "cuda")
    back = load_model(str(save_model(bundle, tmp_path / "m")), device="cpu")
    for (k, a), b in zip(bundle.model.state_dict().items(), back.model.state_dict().values()):
        assert torch.equal(a.cpu(), b), k
