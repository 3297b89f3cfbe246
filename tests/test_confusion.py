import math

import pytest
import torch

from cifar_resnet.inference.metrics import confusion_matrix, per_class_accuracy


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
