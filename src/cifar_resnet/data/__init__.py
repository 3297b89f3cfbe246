"""CIFAR-10 on the device: reading it (``load``, which uses ``download``, ``archive``,
``formats`` and ``cache``), the training and test splits with their batches (``splits``), and
the batched augmentation (``augment``)."""

from .augment import augment, normalize
from .load import CLASSES, Cifar10, channel_stats, default_cache_dir, load_cifar10
from .splits import EpochLength, Split, epoch_order, limit_splits, prepare_splits, train_batches

__all__ = [
    "CLASSES",
    "Cifar10",
    "EpochLength",
    "Split",
    "augment",
    "channel_stats",
    "default_cache_dir",
    "epoch_order",
    "limit_splits",
    "load_cifar10",
    "normalize",
    "prepare_splits",
    "train_batches",
]
