import pytest
import torch

from clip_unlearn.models import load_model
from clip_unlearn.schema import ConfigError, validate
from clip_unlearn.unlearning.context import DataFreeViolation, UnlearnContext
from clip_unlearn.unlearning.lipschitz import (FROZEN, LipschitzConfig, image_tower, lipschitz, run_schedule,
                                               select_top_k, text_tower)
from clip_unlearn.unlearning.request import ForgetRequest
from clip_unlearn.unlearning.runner import run_method
from clip_unlearn.unlearning.synthesize import SynthesisConfig
from clip_unlearn.unlearning.targets import TargetsConfig, check_targets
from clip_unlearn.templates import zero_shot_templates
from clip_unlearn.zero_shot import class_vectors


def test_select_top_k_picks_largest_mean_abs_grad_and_never_a_frozen_tensor():
    grads = {
        "visual.a": torch.full((4,), -3.0),          # mean |g| 3
        "visual.b": torch.tensor([10.0, 0, 0, 0]),  # mean |g| 2.5 (sum would rank it first)
        "visual.c": torch.full((2, 2), 1.0),
        "visual.d": torch.full((8,), 0.5),
        "visual.proj": torch.full((4,), 100.0),     # frozen, largest
        "text_projection": torch.full((4,), 50.0),  # frozen
        "logit_scale": torch.tensor(70.0),          # frozen
        "visual.none": None,                        # no gradient
    }
    assert select_top_k(grads, 2) == {"visual.a", "visual.b"}
    assert select_top_k(grads, 3) == {"visual.a", "visual.b", "visual.c"}
    assert select_top_k(grads, 100) == {"visual.a", "visual.b", "visual.c", "visual.d"}
    assert select_top_k(grads, 0) == set()


def test_towers_exclude_projections_embeddings_final_norm_and_temperature():
    model = load_model("clip-ref-tiny", device="cpu").model
    names = set(image_tower(model)) | set(text_tower(model))
    assert not names & set(FROZEN)
    assert "visual.conv1.weight" in names and "transformer.resblocks.0.attn.in_proj_weight" in names
    assert len(image_tower(model)) == 55 and len(text_tower(model)) == 48


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


def test_schedule_stops_at_max_epochs():
    run = _Scripted([1.0, 0.9, 0.8, 0.7])
    out = run_schedule(run.model, run.opt, run.train_epoch, run.accuracy, [(0.1, 1, 1)], 0.1, 3, log=lambda s: None)
    assert out["epochs"] == 3 and out["best_accuracy"] == 0.7


def test_config_checks_schedule_lengths():
    with pytest.raises(ConfigError, match="same length"):
        validate(LipschitzConfig, {"sigmas": [0.1, 0.2], "k_add": [0]}, "methods.lipschitz")
    assert LipschitzConfig().schedule()[0] == (0.1, 9, 8)
    assert LipschitzConfig().schedule()[-1] == (2.0, 16, 15)


# A random tiny model reaches these low thresholds for "crescent" within a few steps.
EASY = SynthesisConfig(per_class=4, max_steps=20, p_high=0.2, p_floor=0.11, batch_size=4, max_tries=8)


def test_lipschitz_is_data_free_and_changes_only_the_selected_towers(tiny_params):
    """The forget set is refused (DataFreeViolation) and synthesis runs from class names only."""
    torch.manual_seed(0)
    bundle = load_model("clip-ref-tiny", device="cpu")
    ctx = UnlearnContext(ForgetRequest(dataset="shapes", classes=["crescent"]), data_root=tiny_params.data.root,
                         data_free=True, log=lambda s: None)
    with pytest.raises(DataFreeViolation):
        ctx.forget_set()
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    cfg = LipschitzConfig(lr=2e-2, n_noise=2, max_epochs=2, synthesis=EASY)
    info = lipschitz(bundle, ctx, cfg)
    assert info["synthetic"]["source"] == "synthesized" and info["synthetic"]["n"] == 4
    assert info["history"][0]["accuracy"] == 1.0 and info["best_accuracy"] < 1.0
    changed = {n for n, p in bundle.model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & set(FROZEN)
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
    res = run_method(bundle, ForgetRequest(dataset="digits", classes=[classes[c]]), "lipschitz",
                     {"lr": 2e-2, "n_noise": 2, "max_epochs": 1}, tiny_params.data.root, synthetic=lambda: (x, y),
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
    res = run_method(bundle, ForgetRequest(dataset="digits", classes=["seven"]), "lipschitz", LipschitzConfig(),
                     p.data.root, ["shapes"], seed=0)
    assert res["info"]["synthetic"]["source"] == "synthesized"
    checks = check_targets(res["before"], res["after"], TargetsConfig(), subgroup=False)
    assert all(checks.values()), (checks, res["before"], res["after"], res["info"]["history"])
