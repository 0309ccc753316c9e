import pytest
import torch

from clip_unlearn.core import metrics
from clip_unlearn.core.zero_shot import predict


def test_metrics_on_a_hand_made_case():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2])
    assert metrics.top1(preds, labels) == pytest.approx(6 / 8)
    assert metrics.per_class_accuracy(preds, labels, 4) == [0.75, 0.5, 1.0, None]
    # mean over classes that have examples: (0.75 + 0.5 + 1.0) / 3, not the micro average
    assert metrics.mean_per_class_recall(preds, labels, 4) == pytest.approx(0.75)


def test_per_subgroup_accuracy():
    labels = torch.tensor([0, 0, 0, 1])
    preds = torch.tensor([0, 1, 0, 1])
    attrs = [{"ink": "red"}, {"ink": "red"}, {"ink": "blue"}, {"ink": "red"}]
    out = metrics.per_subgroup_accuracy(preds, labels, attrs, ["a", "b"])
    assert out == {"a": {"ink=blue": {"top1": 1.0, "n": 1}, "ink=red": {"top1": 0.5, "n": 2}},
                   "b": {"ink=red": {"top1": 1.0, "n": 1}}}


def test_predict_is_argmax_of_cosine():
    classifier = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    feats = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.2, 0.8], [-1.0, 0.3]]), dim=-1)
    assert predict(feats, classifier).tolist() == [0, 1, 2]
