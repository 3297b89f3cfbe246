"""The model summary table (layer, output shape, parameters) via torchinfo."""

from __future__ import annotations

import torchinfo
from torch import nn


def model_summary(model: nn.Module, *, depth: int = 3) -> torchinfo.ModelStatistics:
    """torchinfo statistics of ``model`` for one 3x32x32 image; ``str()`` gives the table.

    Multiply-adds are shown as a plain count: torchinfo 1.8 names its auto-chosen unit
    as ``Units.MEGABYTES`` on Python 3.11 and later.
    """
    stats = torchinfo.summary(
        model,
        input_size=(1, 3, 32, 32),
        col_names=("output_size", "num_params"),
        row_settings=("var_names",),
        depth=depth,
        device="cpu",
        verbose=0,
    )
    stats.formatting.macs_units = torchinfo.Units.NONE
    return stats
