"""What a run writes and reads back: the records and their fields (``records``),
checkpoint files (``checkpoint``) and run folders (``run_folder``)."""

from .checkpoint import load_checkpoint
from .records import EpochMetrics, LRFinderResult, RunSummary, TrainState
from .run_folder import RunFolder, RunRecord

__all__ = [
    "EpochMetrics",
    "LRFinderResult",
    "RunFolder",
    "RunRecord",
    "RunSummary",
    "TrainState",
    "load_checkpoint",
]
