"""cifar-resnet: train David Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle."""

from .analysis import data_figures, summarize_data
from .config import TrainConfig
from .custom_resnet import CustomResNet, count_parameters
from .data import Cifar10, load_cifar10
from .errors import CheckpointError, CifarResnetError, ConfigError, DataError
from .evaluation import evaluate, predict_logits
from .export import export_model
from .gallery import select_misclassified
from .gradcam import grad_cam
from .inference import Evaluation, Predictions, TrainedModel, evaluate_model, load_model, predict
from .lr_finder import LRFinderResult, find_lr, plot_lr_finder
from .report import build_report, load_run
from .summary import model_summary
from .train import Callbacks, History, fit, lr_range_test, train_one_epoch

__all__ = [
    "Callbacks",
    "Cifar10",
    "CheckpointError",
    "CifarResnetError",
    "ConfigError",
    "CustomResNet",
    "DataError",
    "Evaluation",
    "History",
    "LRFinderResult",
    "Predictions",
    "TrainConfig",
    "TrainedModel",
    "build_report",
    "count_parameters",
    "data_figures",
    "evaluate",
    "evaluate_model",
    "export_model",
    "find_lr",
    "fit",
    "grad_cam",
    "load_cifar10",
    "load_model",
    "load_run",
    "lr_range_test",
    "model_summary",
    "plot_lr_finder",
    "predict_logits",
    "predict",
    "select_misclassified",
    "summarize_data",
    "train_one_epoch",
]

__version__ = "0.1.0"
