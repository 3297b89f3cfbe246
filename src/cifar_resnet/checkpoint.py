"""Checkpoints: what a run saves after every epoch, and loading one back safely.

A checkpoint is a dict saved with ``torch.save``: ``format``, ``model``,
``optimizer``, ``scheduler``, ``epoch``, ``config`` (a ``TrainConfig`` dict),
``classes``, ``mean`` and ``std`` (the training split's normalisation, (3,) in
[0, 1] units), ``metrics`` (per-epoch dicts so far), ``step_lrs`` and ``rng``.
Loading checks the format and the architecture and turns every failure into a
one-line ``CheckpointError``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .custom_resnet import CustomResNet
from .errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = "cifar-resnet/1"
REQUIRED = ("format", "model", "epoch", "config", "classes", "mean", "std")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file; CheckpointError if it is missing, truncated or not ours."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.exists():
            raise CheckpointError(f"no checkpoint in {path}: expected {candidate}")
        path = candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run folder")
    try:
        # weights_only=False: checkpoints hold plain Python objects (config, metrics) besides
        # tensors; only load checkpoints you trust, as with any pickle.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
        ImportError,
    ) as e:
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated: {reason}); "
            "use another checkpoint or train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a cifar-resnet checkpoint (expected format {CHECKPOINT_FORMAT}); "
            "pass a checkpoints/last.pt written by cifar-resnet train"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete")
    return state


def config_from_checkpoint(state: dict[str, Any]) -> TrainConfig:
    """The training config saved in a checkpoint.

    Configs saved before ``precision`` existed trained in fp32 on the CPU (the only
    device they ran on), so they load as ``fp32``: evaluating them in bf16 would not
    reproduce their recorded accuracy.
    """
    values = dict(state["config"])
    values.setdefault("precision", "fp32")
    try:
        return TrainConfig.from_dict(values)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None


def model_from_checkpoint(state: dict[str, Any]) -> CustomResNet:
    """The trained network of a checkpoint, in eval mode on the CPU."""
    config = config_from_checkpoint(state)
    model = CustomResNet(
        len(state["classes"]), width=config.width, norm=config.norm, dropout=config.dropout
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "state dict mismatch"
        raise CheckpointError(
            f"checkpoint weights do not fit the network its config describes ({first})"
        ) from None
    return model.eval()
