"""inference/metrics.py: the confusion matrix, per-class accuracy, the most confident mistakes."""

import math

import pytest
import torch

from cifar_resnet.inference.metrics import (
    confusion_matrix,
    per_class_accuracy,
    select_misclassified,
)


def test_rows_are_actual_columns_predicted():
    actual = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    m = confusion_matrix(predicted, actual, 3)
    assert m.tolist() == [[1, 2, 0], [1, 1, 0], [0, 0, 1]]
    assert m.sum() == 6


def test_per_class_accuracy_is_the_diagonal_over_row_totals():
    m = torch.tensor([[1, 2, 0], [1, 1, 0], [0, 0, 0]])
    acc = per_class_accuracy(m).tolist()
    assert acc[:2] == pytest.approx([1 / 3, 1 / 2])
    assert math.isnan(acc[2])  # no images of class 2


def test_matches_a_loop_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    actual = torch.randint(0, 10, (1000,), generator=g)
    predicted = torch.randint(0, 10, (1000,), generator=g)
    m = confusion_matrix(predicted, actual, 10)
    for a in range(10):
        for p in range(10):
            assert m[a, p] == ((actual == a) & (predicted == p)).sum()
    overall = (m.diagonal().sum() / m.sum()).item()
    assert overall == pytest.approx((predicted == actual).float().mean().item())


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(torch.zeros(3), torch.zeros(4), 2)


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_picks_exactly_the_misclassified_images_most_confident_first():
    logits = _logits_for(
        [
            [0.9, 0.05, 0.05],  # 0: right
            [0.2, 0.7, 0.1],  # 1: wrong, 0.7
            [0.1, 0.1, 0.8],  # 2: right
            [0.05, 0.05, 0.9],  # 3: wrong, 0.9
            [0.4, 0.5, 0.1],  # 4: wrong, 0.5
            [0.3, 0.3, 0.4],  # 5: right
        ]
    )
    labels = torch.tensor([0, 0, 2, 1, 2, 2])
    m = select_misclassified(logits, labels)
    assert m.indices.tolist() == [3, 1, 4]
    assert m.predicted.tolist() == [2, 1, 1]
    assert m.actual.tolist() == [1, 0, 2]
    assert m.confidence.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert m.true_prob.tolist() == pytest.approx([0.05, 0.2, 0.1])
    assert len(m) == 3


def test_matches_a_plain_loop_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    m = select_misclassified(logits, labels)
    probs = logits.softmax(1)
    expected = [i for i in range(500) if probs[i].argmax() != labels[i]]
    assert sorted(m.indices.tolist()) == expected
    conf = m.confidence.tolist()
    assert conf == sorted(conf, reverse=True)
    assert all(
        probs[i].max().item() == pytest.approx(c) for i, c in zip(m.indices, conf, strict=True)
    )


def test_equal_confidences_keep_index_order_and_limit_takes_the_top():
    logits = torch.tensor([[0.0, 1.0]] * 6)  # every image predicted class 1 at the same confidence
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    assert select_misclassified(logits, labels).indices.tolist() == [0, 2, 3, 5]
    top = select_misclassified(logits, labels, limit=2)
    assert top.indices.tolist() == [0, 2]
    assert select_misclassified(logits, labels).head(3).indices.tolist() == [0, 2, 3]


def test_no_mistakes_gives_an_empty_selection():
    m = select_misclassified(torch.eye(4) * 5, torch.arange(4))
    assert len(m) == 0 and m.indices.dtype == torch.long


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="logits must be"):
        select_misclassified(torch.zeros(3, 10), torch.zeros(4, dtype=torch.long))
