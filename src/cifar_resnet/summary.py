"""The model summary table (layer, output shape, parameters) via torchinfo."""

from __future__ import annotations

import torchinfo
from torch import nn


def model_summary(model: nn.Module, *, depth: int = 3) -> torchinfo.ModelStatistics:
    """torchinfo statistics of ``model`` for one 3x32x32 image; ``str()`` gives the table."""
    return torchinfo.summary(
        model,
        input_size=(1, 3, 32, 32),
        col_names=("output_size", "num_params"),
        row_settings=("var_names",),
        depth=depth,
        device="cpu",
        verbose=0,
    )
