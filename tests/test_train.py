import torch

from clip_unlearn.core.data import load_dataset
from clip_unlearn.core.train import train_reference


def _train(params, **cfg):
    sets = [load_dataset(n, "train", params.data.root) for n in params.data.datasets]
    return train_reference(sets, params.bootstrap.model_copy(update=cfg), log=lambda _: None)


def test_short_training_run_lowers_the_loss(tiny_params):
    _, history = _train(tiny_params, steps=40, batch_size=64, log_every=1, lr=1e-3, warmup_frac=0.1)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first - 0.3, (first, last)


def test_same_seed_same_numbers(tiny_params):
    a, ha = _train(tiny_params, steps=3, log_every=1)
    b, hb = _train(tiny_params, steps=3, log_every=1)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    _, hc = _train(tiny_params, steps=3, log_every=1, seed=1)
    assert [h["loss"] for h in hc] != [h["loss"] for h in ha]
