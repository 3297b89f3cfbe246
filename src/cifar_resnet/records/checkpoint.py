"""Checkpoint files: reading one back safely, and the config it holds.

What a checkpoint holds is listed once, in ``records.TrainState``; this module reads
the file (``torch.load``), checks and upgrades its format through ``TrainState`` and
turns every failure into a one-line ``CheckpointError``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import RESUME_OVERRIDES, TrainConfig, as_saved_run
from ..errors import CheckpointError, ConfigError, oneline
from .layout import checkpoint_file
from .records import CHECKPOINT_FORMAT, TrainState

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_path", "load_checkpoint"]


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file a ``--checkpoint``/``--resume`` value names (a run folder or a file)."""
    path = Path(path)
    if path.is_dir():
        candidate = checkpoint_file(path)
        if not candidate.exists():
            raise CheckpointError(f"no checkpoint in {path}: expected {candidate}")
        return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run folder")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
    """Read a checkpoint file or a run folder's; CheckpointError if it is missing or not ours.

    Older formats are upgraded to the current one (``TrainState.from_dict``).
    """
    path = checkpoint_path(path)
    try:
        # weights_only=False: checkpoints hold plain Python objects (config, metrics) besides
        # tensors; only load checkpoints you trust, as with any pickle.
        raw = torch.load(path, map_location=map_location, weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        TypeError,
    ) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated: {oneline(e, 160)}); "
            "use another checkpoint or train again"
        ) from None
    return TrainState.from_dict(raw, source=str(path))


def config_from_checkpoint(state: TrainState) -> TrainConfig:
    """The training config saved in a checkpoint.

    Configs saved before ``precision`` existed trained in fp32 on the CPU (the only
    device they ran on), so they load as ``fp32``: evaluating them in bf16 would not
    reproduce their recorded accuracy. Those saved before recipes had Adam without
    weight decay, as their own ``weight_decay`` says. Those saved before
    ``crop_pad_mode`` and ``drop_last`` padded their crops with zeros and trained on
    every batch, whatever their recipe.
    """
    values = as_saved_run(state.config)
    values.setdefault("precision", "fp32")
    try:
        return TrainConfig.from_dict(values)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint config is invalid: {oneline(e)}") from None


def resumed_config(state: TrainState, given: Mapping[str, Any]) -> TrainConfig:
    """A checkpoint's config, with the settings a resumed run may change (``RESUME_OVERRIDES``:
    where the data and the device are) taken from ``given`` where it has them."""
    overrides = {name: given[name] for name in RESUME_OVERRIDES if name in given}
    return config_from_checkpoint(state).replace(**overrides)
