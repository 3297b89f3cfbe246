"""The model summary table (layer, output shape, parameters) via torchinfo."""

from __future__ import annotations

import torch
import torchinfo
from torch import nn


def model_summary(model: nn.Module, *, depth: int = 3) -> torchinfo.ModelStatistics:
    """torchinfo statistics of ``model`` for one 3x32x32 image; ``str()`` gives the table.

    The pass runs where the model is (torchinfo moves a model to the device it is given,
    and without one to CUDA when present), in eval mode, and leaves the model there.
    Multiply-adds are shown as a plain count: torchinfo 1.8 names its auto-chosen unit
    as ``Units.MEGABYTES`` on Python 3.11 and later.
    """
    first = next(model.parameters(), None)
    stats = torchinfo.summary(
        model,
        input_size=(1, 3, 32, 32),
        col_names=("output_size", "num_params"),
        row_settings=("var_names",),
        depth=depth,
        device=torch.device("cpu") if first is None else first.device,
        mode="eval",
        verbose=0,
    )
    stats.formatting.macs_units = torchinfo.Units.NONE
    return stats
