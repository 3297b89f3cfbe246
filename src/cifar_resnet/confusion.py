"""Confusion matrix and per-class accuracy of predictions on the test split."""

from __future__ import annotations

import torch


def confusion_matrix(
    predicted: torch.Tensor, actual: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Counts (C, C) int64: row = actual class, column = predicted class."""
    predicted = predicted.reshape(-1).long().cpu()
    actual = actual.reshape(-1).long().cpu()
    if predicted.shape != actual.shape:
        raise ValueError(
            f"predicted and actual differ in length: {predicted.numel()} vs {actual.numel()}"
        )
    flat = actual * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Fraction of each actual class predicted correctly (C,), NaN for a class with no images."""
    totals = matrix.sum(dim=1).double()
    correct = matrix.diagonal().double()
    return torch.where(totals > 0, correct / totals.clamp_min(1), torch.nan).float()
