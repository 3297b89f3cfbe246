"""What a model's predictions on a split amount to: confusion counts, per-class accuracy,
and the mistakes it is most confident about (the report's gallery, TensorBoard's figure)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Misclassified:
    """Misclassified images of a split, ordered by the model's confidence, highest first."""

    indices: torch.Tensor  # (K,) int64, positions in the evaluated split
    predicted: torch.Tensor  # (K,) int64, the class the model chose
    actual: torch.Tensor  # (K,) int64, the true class
    confidence: torch.Tensor  # (K,) softmax probability of the predicted class
    true_prob: torch.Tensor  # (K,) softmax probability of the true class

    def __len__(self) -> int:
        return int(self.indices.numel())

    def head(self, n: int) -> Misclassified:
        """The first ``n`` (most confident) mistakes."""
        return Misclassified(
            self.indices[:n],
            self.predicted[:n],
            self.actual[:n],
            self.confidence[:n],
            self.true_prob[:n],
        )


def select_misclassified(
    logits: torch.Tensor, labels: torch.Tensor, limit: int | None = None
) -> Misclassified:
    """Every image whose arg-max differs from its label, most confident first (ties by index)."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (N, C) with N = len(labels), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    probs = torch.softmax(logits.detach().float().cpu(), dim=1)  # (N, C)
    labels = labels.detach().long().cpu()
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    # A stable sort keeps equal confidences in index order, so the gallery is reproducible.
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices
    idx = wrong[order]
    if limit is not None:
        idx = idx[:limit]
    return Misclassified(
        indices=idx,
        predicted=predicted[idx],
        actual=labels[idx],
        confidence=confidence[idx],
        true_prob=probs[idx, labels[idx]],
    )
