"""The splits a run sees, and the batches of one training epoch.

``limit_splits`` is the one rule for ``--limit-train`` / ``--limit-test`` (the first
N images of a split), used alike by training, the report and ``evaluate``.
``prepare_splits`` puts both splits on the training device as uint8 with the
training split's mean/std attached; ``train_batches`` then normalises and augments
each batch there with batched ops (no per-image work, no loader processes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..distributed import SINGLE_PROCESS, Dist, shard
from ..runtime import Runtime
from .augment import augment, normalize
from .load import Cifar10, channel_stats


@dataclass(frozen=True)
class Split:
    """A split's images (uint8, on the training device) with labels and normalisation."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    mean: torch.Tensor  # (3,) in [0, 1] units, from the training split
    std: torch.Tensor  # (3,)

    def __len__(self) -> int:
        return self.images.shape[0]


def limit_splits(data: Cifar10, limit_train: int | None, limit_test: int | None) -> Cifar10:
    """``data`` with only the first ``limit_train`` / ``limit_test`` images (None: all)."""
    return dataclasses.replace(
        data,
        train_images=data.train_images[:limit_train],
        train_labels=data.train_labels[:limit_train],
        test_images=data.test_images[:limit_test],
        test_labels=data.test_labels[:limit_test],
    )


def prepare_splits(data: Cifar10, config: TrainConfig, runtime: Runtime) -> tuple[Split, Split]:
    """Limit, move to the device and attach the training split's mean/std to both splits."""
    data = limit_splits(data, config.limit_train, config.limit_test)
    mean, std = channel_stats(data.train_images)
    dev = runtime.device
    mean, std = mean.to(dev), std.to(dev)
    return (
        Split(data.train_images.to(dev), data.train_labels.to(dev), mean, std),
        Split(data.test_images.to(dev), data.test_labels.to(dev), mean, std),
    )


@dataclass(frozen=True)
class EpochLength:
    """How long one training epoch is: the images it uses and the optimizer steps they make.

    The one place ``--drop-last`` shortens an epoch; it decides where One Cycle peaks and
    where a resumed epoch continues.
    """

    images: int  # all training images, or with drop_last the full batches' only
    steps: int  # the last batch may be smaller, unless drop_last

    @classmethod
    def of(cls, n_train: int, batch_size: int, drop_last: bool) -> EpochLength:
        """The epoch of ``n_train`` images in batches of ``batch_size``."""
        images = n_train - n_train % batch_size if drop_last else n_train
        return cls(images, math.ceil(images / batch_size))


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """An epoch's data order: a permutation of ``n`` drawn from ``generator`` on its device."""
    return torch.randperm(n, generator=generator, device=generator.device)


def train_batches(
    split: Split,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    *,
    order: torch.Tensor | None = None,
    start_step: int = 0,
    dist: Dist = SINGLE_PROCESS,
    aug_generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, normalised, augmented batches ``(x (B,3,32,32), y (B,))``.

    ``order`` (``epoch_order`` of ``generator`` when not given) and
    ``start_step`` let an interrupted epoch continue where it stopped. With
    ``dist``, each rank gets its shard of every global batch. With ``config.drop_last``
    the epoch ends before a last batch smaller than the others.
    """
    n = EpochLength.of(len(split), config.batch_size, config.drop_last).images
    if order is None:
        order = epoch_order(len(split), generator)
    aug_generator = aug_generator or generator
    for start in range(start_step * config.batch_size, n, config.batch_size):
        idx = shard(order[start : start + config.batch_size], dist.rank, dist.world)
        x = normalize(split.images[idx], split.mean, split.std)
        x = augment(
            x,
            padding=config.crop_padding,
            cutout=config.cutout_size,
            flip_prob=config.flip_prob,
            pad_mode=config.crop_pad_mode,
            generator=aug_generator,
        )
        yield runtime.layout(x), split.labels[idx]
