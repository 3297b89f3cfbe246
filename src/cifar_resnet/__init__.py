"""cifar-resnet: train David Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle."""

from .config import TrainConfig
from .custom_resnet import CustomResNet, count_parameters
from .data import Cifar10, load_cifar10
from .errors import CheckpointError, CifarResnetError, ConfigError, DataError
from .lr_finder import LRFinderResult, find_lr, plot_lr_finder
from .summary import model_summary
from .train import History, evaluate, fit, lr_range_test, train_one_epoch

__all__ = [
    "Cifar10",
    "CheckpointError",
    "CifarResnetError",
    "ConfigError",
    "CustomResNet",
    "DataError",
    "History",
    "LRFinderResult",
    "TrainConfig",
    "count_parameters",
    "evaluate",
    "find_lr",
    "fit",
    "load_cifar10",
    "lr_range_test",
    "model_summary",
    "plot_lr_finder",
    "train_one_epoch",
]

__version__ = "0.1.0"
