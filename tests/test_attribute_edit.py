"""attribute_edit: a subgroup leaves its class through the class's text vector, data-free."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run

from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.core.splits import cached_split
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.attribute_edit import AttributeEditConfig, fit_class_vector

RED_SEVEN = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})


def test_the_fit_takes_the_attribute_off_the_class_and_keeps_the_rest():
    """Features = class direction + attribute direction: the fitted vector of class 0 must lose
    (class 0, attribute 'red') and keep (class 0, other attributes) and every other class."""
    gen = torch.Generator().manual_seed(0)
    dim, n_classes = 32, 4
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    cls, attr = basis[:n_classes], basis[n_classes:n_classes + 3]  # attribute 0 = "red"
    w = F.normalize(cls + 0.05 * torch.randn(n_classes, dim, generator=gen) / dim ** 0.5, dim=-1)

    def raw(c, a, n):
        return cls[c] + 0.8 * attr[a] + 0.05 * torch.randn(n, dim, generator=gen)

    def items(c, a, n):
        return F.normalize(raw(c, a, n), dim=-1)

    kept = [(c, a) for c in range(n_classes) for a in range(3) if (c, a) != (0, 0)]
    x = torch.cat([items(c, a, 20) for c, a in kept])
    y = torch.tensor([c for c, _ in kept for _ in range(20)])
    # the class's other subgroups with their attribute swapped for the forgotten one (as the method builds them)
    stand_ins = F.normalize(torch.cat([raw(0, a, 20) - 0.8 * attr[a] + 0.8 * attr[0] for a in (1, 2)]), dim=-1)
    new = fit_class_vector(w, 0, x, y, stand_ins, AttributeEditConfig(), seed=0)
    w2 = w.clone()
    w2[0] = new
    subgroup = items(0, 0, 50)
    assert (subgroup @ w.T).argmax(1).eq(0).float().mean() > 0.9          # it was the class before
    assert (subgroup @ w2.T).argmax(1).eq(0).float().mean() <= 0.1        # and is not any more
    assert (x @ w2.T).argmax(1).eq(y).float().mean() >= 0.95              # the rest keeps its labels
    assert torch.allclose(w2[1:], w[1:]) and abs(float(new.norm()) - 1) < 1e-5


def test_only_the_class_vector_moves(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    root = tiny_params.data.root

    def vectors(d):
        return class_vectors(bundle, cached_split(d, "train", root).classes, zero_shot_templates(d)).clone()

    digits, shapes = vectors("digits"), vectors("shapes")
    res = run(bundle, RED_SEVEN, "attribute_edit", None, root, ["shapes"], log=lambda _: None)
    assert res["data_free"] is True
    info = res["info"]["classes"]["seven"]
    assert info["n_stand_ins"] > 0 and info["cos_realized"] > 0.99
    d2, s2 = vectors("digits"), vectors("shapes")
    seven = cached_split("digits", "train", root).classes.index("seven")
    cos_d = (d2 * digits).sum(-1)
    assert float(cos_d[seven]) < 0.9999                                    # the class moved
    assert float(torch.cat([cos_d[:seven], cos_d[seven + 1:]]).min()) > 0.99  # its neighbours did not
    assert float((s2 * shapes).sum(-1).min()) > 0.999                      # nor the other dataset


def test_a_whole_class_is_refused_with_a_reason(tiny_params):
    bundle = load_model("clip-ref-tiny", device="cpu")
    with pytest.raises(ConfigError, match="subgroups"):
        run(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "attribute_edit", None,
                   tiny_params.data.root, log=lambda _: None)
