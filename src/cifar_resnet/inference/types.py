"""The types of a trained model in use: ``TrainedModel``, ``Predictions``, ``Evaluation``.

They are shared by loading and predicting (``predict``), exporting (``export``, ``hub``)
and the terminal's tables (``tables``), which import them from here and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import PATH_FIELDS, TrainConfig
from ..runtime import Runtime

if TYPE_CHECKING:
    from .calibration import Calibration

SIDE = 32  # CIFAR-10 images are SIDE x SIDE pixels


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained network with what it needs at inference: classes, normalisation, config."""

    model: nn.Module  # eval mode, on runtime.device; returns logits
    classes: tuple[str, ...]
    mean: torch.Tensor  # (3,) float32 in [0, 1] units, the training split's, on the CPU
    std: torch.Tensor  # (3,)
    config: TrainConfig
    runtime: Runtime
    epoch: int = 0  # epochs trained when the checkpoint was written
    recorded_test_acc: float | None = None  # test accuracy training measured at that epoch
    path: Path | None = None  # the checkpoint file, when loaded from one

    def shareable_config(self) -> dict[str, Any]:
        """The training config without local paths, for files meant to be shipped."""
        return {k: v for k, v in self.config.to_dict().items() if k not in PATH_FIELDS}


@dataclass(frozen=True, eq=False)
class Predictions:
    """Softmax probabilities of a batch of images, with the class names and their ranking."""

    probs: torch.Tensor  # (N, C) float32 on the CPU; rows sum to 1
    order: torch.Tensor  # (N, C) int64: class indices of each image, most probable first
    classes: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        """Index of the most probable class of each image, (N,) int64."""
        return self.order[:, 0]

    @property
    def names(self) -> list[str]:
        """Name of the most probable class of each image."""
        return [self.classes[i] for i in self.labels.tolist()]

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most probable (class name, probability) pairs of each image, best first."""
        k = max(1, min(k, len(self.classes)))
        indices = self.order[:, :k]
        values = self.probs.gather(1, indices)
        return [
            [(self.classes[i], p) for i, p in zip(idx, val, strict=True)]
            for idx, val in zip(indices.tolist(), values.tolist(), strict=True)
        ]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Loss, accuracy and confusion counts over a labelled split (optionally with flip TTA)."""

    classes: tuple[str, ...]
    loss: float  # mean cross-entropy in nats
    acc: float  # fraction in [0, 1]
    confusion: torch.Tensor  # (C, C) int64: row = true class, column = predicted class
    tta: Evaluation | None = None  # the same figures with flip TTA, when asked for
    calibration: Calibration | None = None  # ECE, NLL, Brier (``calibration``)

    @property
    def n(self) -> int:
        """Number of images evaluated."""
        return int(self.confusion.sum())

    @property
    def per_class_acc(self) -> list[float | None]:
        """Accuracy of each class (None for a class without images)."""
        totals = self.confusion.sum(1).tolist()
        hits = self.confusion.diagonal().tolist()
        return [h / t if t else None for h, t in zip(hits, totals, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: test_loss, test_acc, per_class_acc, confusion and the TTA figures."""
        out: dict[str, Any] = {
            "n": self.n,
            "test_loss": self.loss,
            "test_acc": self.acc,
            "per_class_acc": dict(zip(self.classes, self.per_class_acc, strict=True)),
            "confusion": self.confusion.tolist(),
        }
        if self.tta is not None:
            out["tta"] = {k: v for k, v in self.tta.to_dict().items() if k != "n"}
            out["tta_gain"] = self.tta.acc - self.acc
        return out
