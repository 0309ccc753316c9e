import pytest
import torch
from conftest import run

from clip_unlearn.core.gate import Thresholds, accuracy_checks
from clip_unlearn.core.models import load_model
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError, validate
from clip_unlearn.core.templates import zero_shot_templates
from clip_unlearn.core.zero_shot import class_vectors
from clip_unlearn.methods.context import DataFreeViolation, UnlearnContext
from clip_unlearn.methods.lipschitz import (
    FROZEN,
    LipschitzConfig,
    freeze_batch_norm,
    image_tower,
    lipschitz,
    run_schedule,
    select_top_k,
    text_tower,
)
from clip_unlearn.methods.synthetic import SynthesisConfig, templates_for


def test_select_top_k_picks_largest_mean_abs_grad_and_never_a_frozen_tensor():
    grads = {
        "visual.a": torch.full((4,), -3.0),          # mean |g| 3
        "visual.b": torch.tensor([10.0, 0, 0, 0]),  # mean |g| 2.5 (sum would rank it first)
        "visual.c": torch.full((2, 2), 1.0),
        "visual.d": torch.full((8,), 0.5),
        "text_projection": torch.full((4,), 50.0),  # frozen, largest
        "logit_scale": torch.tensor(70.0),          # frozen
        "visual.none": None,                        # no gradient
    }
    assert select_top_k(grads, 2) == {"visual.a", "visual.b"}
    assert select_top_k(grads, 3) == {"visual.a", "visual.b", "visual.c"}
    assert select_top_k(grads, 100) == {"visual.a", "visual.b", "visual.c", "visual.d"}
    assert select_top_k(grads, 0) == set()
    # visual.proj is a candidate like any image-tower tensor (the authors': everything in model.visual)
    assert select_top_k({**grads, "visual.proj": torch.full((4,), 100.0)}, 1) == {"visual.proj"}


def test_towers_as_the_authors_visual_proj_included_text_projection_and_embeddings_not():
    model = load_model("clip-ref-tiny", device="cpu").model
    names = set(image_tower(model)) | set(text_tower(model))
    assert not names & set(FROZEN)
    assert "visual.proj" in names and "visual.class_embedding" in names and "visual.conv1.weight" in names
    assert "transformer.resblocks.0.attn.in_proj_weight" in names
    assert not any(n.startswith(("text_projection", "token_embedding", "positional_embedding", "ln_final"))
                   for n in names)
    assert len(image_tower(model)) == 56 and len(text_tower(model)) == 48


def test_resnet_image_tower_excludes_the_authors_freeze_rn_list():
    """Their FREEZE_RN (frozen_params.py): conv and downsample weights, the attention pool's positional embedding;
    BatchNorm tensors are frozen too (their freeze_batch_norm), leaving the attention pool's projections."""
    from open_clip.modified_resnet import ModifiedResNet

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8)
            self.transformer = torch.nn.Linear(2, 2)

    model = Tiny()
    assert sorted(image_tower(model)) == sorted(f"visual.attnpool.{p}_proj.{w}" for p in "qkvc"
                                                for w in ("weight", "bias"))
    assert set(text_tower(model)) == {"transformer.weight", "transformer.bias"}
    model.train()
    freeze_batch_norm(model)
    assert not model.visual.bn1.training and not model.visual.layer1[0].downsample[-1].training
    assert model.visual.attnpool.training


class _Scripted:
    """A made-up forgetting run: every epoch adds 1 to the weight; accuracy follows a script."""

    def __init__(self, accuracies):
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.accs = list(accuracies)
        self.calls = []

    def train_epoch(self, sigma, k_v, k_t):
        self.calls.append((sigma, k_v, k_t, float(self.model.weight.detach())))
        self.model.weight.grad = torch.ones_like(self.model.weight)
        self.opt.step()  # changes the optimizer state too
        with torch.no_grad():
            self.model.weight.copy_(self.calls[-1][3] + 1.0)
        return 0.0

    def accuracy(self):
        return self.accs.pop(0)


def test_schedule_rolls_back_an_epoch_that_does_not_lower_accuracy():
    run = _Scripted([1.0, 0.6, 0.7, 0.6, 0.4, 0.05])
    schedule = [(0.1, 9, 8), (0.3, 10, 9), (0.5, 11, 10), (0.7, 12, 11)]
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, schedule, 0.1, 30, log=lambda s: None)
    # epoch 1 kept (w 0->1); epoch 2 (0.7) rolled back to w=1 and advances sigma; epoch 3 (0.6, not lower) rolled
    # back again; epoch 4 kept (w 1->2); epoch 5 reaches 0.05 <= 0.1 and stops.
    assert [c[0] for c in run.calls] == [0.1, 0.1, 0.3, 0.5, 0.5]
    assert [c[3] for c in run.calls] == [0.0, 1.0, 1.0, 1.0, 2.0]
    assert float(run.model.weight.detach()) == 3.0
    assert out["best_accuracy"] == 0.05 and out["epochs"] == 5
    assert [h.get("kept") for h in out["history"][1:]] == [True, False, False, True, True]


def test_schedule_restores_optimizer_and_keeps_the_best_checkpoint():
    run = _Scripted([0.5, 0.9, 0.9])
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, [(0.1, 1, 1), (0.3, 2, 2)], 0.0, 30,
                       log=lambda s: None)
    assert out["epochs"] == 2 and out["schedule_index"] == 2  # both schedule entries failed: the end
    assert float(run.model.weight.detach()) == 0.0  # nothing lowered accuracy: the start is kept
    assert run.opt.state_dict()["state"] == {}  # the optimizer never kept a step
    assert out["best_accuracy"] == 0.5


def test_schedule_falls_back_to_the_last_rolled_back_epoch_as_the_authors():
    run = _Scripted([0.5, 0.9, 0.9])
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, [(0.1, 1, 1), (0.3, 2, 2)], 0.0, 30,
                       log=lambda s: None, fallback="last")
    assert [c[3] for c in run.calls] == [0.0, 0.0]  # both epochs started from the rolled-back start
    assert float(run.model.weight.detach()) == 1.0 and out["fallback_to_last"] is True
    run = _Scripted([0.5, 0.4, 0.9, 0.9])  # one epoch kept: the best checkpoint, no fallback
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, [(0.1, 1, 1), (0.3, 2, 2)], 0.0, 30,
                       log=lambda s: None, fallback="last")
    assert float(run.model.weight.detach()) == 1.0 and out["fallback_to_last"] is False
    assert LipschitzConfig().fallback == "last"


def test_schedule_stops_at_max_epochs():
    run = _Scripted([1.0, 0.9, 0.8, 0.7])
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, [(0.1, 1, 1)], 0.1, 3, log=lambda s: None)
    assert out["epochs"] == 3 and out["best_accuracy"] == 0.7


def test_config_checks_schedule_lengths():
    with pytest.raises(ConfigError, match="same length"):
        validate(LipschitzConfig, {"sigmas": [0.1, 0.2], "k_add": [0]}, "methods.lipschitz")
    assert LipschitzConfig().schedule()[0] == (0.1, 9, 8)
    assert LipschitzConfig().schedule()[-1] == (2.0, 16, 15)
    # their RN50 text schedule grows faster than the image one
    rn = LipschitzConfig(k_v=5, k_t=5, k_add=[0, 2, 5, 8, 10, 15, 20], k_add_t=[0, 2, 7, 13, 20, 25, 30, 35, 40])
    assert rn.schedule()[2] == (0.5, 10, 12) and rn.schedule()[-1] == (2.0, 25, 35)
    with pytest.raises(ConfigError, match="k_add_t"):
        validate(LipschitzConfig, {"k_add_t": [0, 1]}, "methods.lipschitz")


def test_synthesis_and_rollback_use_one_template_as_the_authors():
    assert SynthesisConfig().template == "a photo of a {c}."
    assert templates_for("digits", LipschitzConfig().synthesis) == ["a photo of a {c}."]
    assert templates_for("digits", SynthesisConfig(template=None)) == zero_shot_templates("digits")


# A random tiny model reaches these low thresholds for "crescent" within a few steps.
EASY = SynthesisConfig(per_class=4, max_steps=20, p_high=0.2, p_floor=0.11, batch_size=4, max_tries=8, template=None)


def test_lipschitz_is_data_free_and_changes_only_the_selected_towers(tiny_params):
    """The forget set is refused (DataFreeViolation) and synthesis runs from class names only."""
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    ctx = UnlearnContext(ForgetRequest(dataset="shapes", classes=["crescent"]), data_root=tiny_params.data.root,
                         data_free=True, log=lambda s: None)
    with pytest.raises(DataFreeViolation):
        ctx.forget_set()
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    cfg = LipschitzConfig(lr=2e-2, n_noise=2, max_epochs=2, synthesis=EASY, exclude=["visual.conv1.weight"])
    info = lipschitz(bundle, ctx, cfg)
    assert info["synthetic"]["source"] == "synthesized" and info["synthetic"]["n"] == 4
    assert info["history"][0]["accuracy"] == 1.0 and info["best_accuracy"] < 1.0
    changed = {n for n, p in bundle.model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & set(FROZEN) and "visual.conv1.weight" not in changed
    assert not any(n.startswith(("positional_embedding", "token_embedding")) for n in changed)
    # two kept Adam steps, each on at most k_v + k_t tensors
    assert 0 < len(changed) <= 2 * (cfg.k_v + cfg.k_t)
    assert all(p.requires_grad and p.grad is None for p in bundle.model.parameters())


def test_run_method_uses_the_context_synthetic_set(tiny_params):
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    x = torch.randn(32, 3, 32, 32)
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    w = class_vectors(bundle, classes, zero_shot_templates("digits"))
    with torch.no_grad():
        pred = (torch.nn.functional.normalize(bundle.model.encode_image(x), dim=-1) @ w.T).argmax(-1)
    c = int(pred.mode().values)  # the class these random images look like: synthetic accuracy starts at 1
    x, y = x[pred == c], pred[pred == c]
    res = run(bundle, ForgetRequest(dataset="digits", classes=[classes[c]]), "lipschitz",
                     {"lr": 2e-2, "n_noise": 2, "max_epochs": 1, "synthesis": {"template": None}}, tiny_params.data.root,
                     synthetic=lambda: (x, y),
                     log=lambda s: None)
    assert res["info"]["synthetic"] == {"source": "context", "n": len(y)}
    assert res["info"]["history"][0]["accuracy"] == 1.0
    assert res["info"]["epochs"] == 1


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="known miss on the 8 M-parameter reference: forgetting takes retain and "
                   "other-dataset accuracy down with it (docs/methods.md has the figures)")
def test_lipschitz_meets_class_targets_on_the_reference(reference_params):
    """The issue's class-forgetting targets, data-free, on one class (the method's defaults)."""
    p = reference_params
    bundle = load_model(p.model.dir, device="cpu")
    res = run(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "lipschitz", LipschitzConfig(),
                     p.data.root, ["shapes"], seed=0)
    assert res["info"]["synthetic"]["source"] == "synthesized"
    checks = accuracy_checks(res["before"], res["after"], Thresholds(), subgroup=False)
    assert all(c["passed"] for c in checks), (checks, res["before"], res["after"], res["info"]["history"])
