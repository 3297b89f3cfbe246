"""What a run writes and reads back: the records and their fields (``records``), the
files' names (``layout``), checkpoint files (``checkpoint``) and run folders (``run_folder``)."""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, loaded on first use (PEP 562): the command
# line's help names the files through ``layout`` without loading torch.
_PUBLIC = {
    "EpochMetrics": "records",
    "LRFinderResult": "records",
    "RunFolder": "run_folder",
    "RunRecord": "run_folder",
    "RunSummary": "records",
    "TrainState": "records",
    "load_checkpoint": "checkpoint",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
