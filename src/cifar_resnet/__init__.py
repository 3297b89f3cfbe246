"""cifar-resnet: train David Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle.

Every public name is importable from here, and each is loaded on first use (PEP 562), so
``import cifar_resnet`` and ``cifar-resnet --version`` load neither matplotlib nor Captum.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "TrainConfig": "config",
    "CheckpointError": "errors",
    "CifarResnetError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "read_config_file": "config_file",
    "Cifar10": "data.load",
    "load_cifar10": "data.load",
    "CustomResNet": "model.custom_resnet",
    "count_parameters": "model.custom_resnet",
    "model_summary": "model.summary",
    "RunFolder": "records.run_folder",
    "LRFinderResult": "records.records",
    "Callbacks": "training.epoch",
    "History": "training.fit",
    "fit": "training.fit",
    "lr_range_test": "training.range_test",
    "train_step": "training.fit",
    "find_lr": "training.fit",
    "evaluate": "inference.evaluation",
    "SplitScores": "inference.evaluation",
    "predict_logits": "inference.evaluation",
    "select_misclassified": "inference.metrics",
    "Evaluation": "inference.types",
    "Predictions": "inference.types",
    "TrainedModel": "inference.types",
    "evaluate_model": "inference.predict",
    "load_model": "inference.predict",
    "predict": "inference.predict",
    "export_model": "inference.export",
    "plot_lr_finder": "plots",
    "data_figures": "insight.analysis",
    "format_summary": "insight.analysis",
    "summarize_data": "insight.analysis",
    "grad_cam": "insight.gradcam",
    "build_report": "insight.report",
    "load_run": "insight.report",
    "new_run": "runs",
    "resume_run": "runs",
    "train_run": "runs",
    "write_report": "insight.report",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
