"""The names of a run folder's files, spelled here and nowhere else.

Writers (``RunFolder``, the training's ``RunLog``), readers (``RunRecord``, resuming,
the report) and the messages that name a file all take them from here.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_JSON = "config.json"  # the resolved config, lr_source and report
METRICS = "metrics.jsonl"  # EpochMetrics, one line per epoch
FINAL = "final.json"  # RunSummary with the run's settings
LR_FINDER_JSON = "lr_finder.json"  # LRFinderResult
LR_FINDER_PNG = "lr_finder.png"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"  # the folder of checkpoint files
LAST = "last.pt"
CHECKPOINT = f"{CHECKPOINTS}/{LAST}"  # TrainState: what resume, evaluate and report read
TB_DIR = "tb"  # TensorBoard's event files: moved aside and put back with the run they belong to
LOCK_FILE = ".lock"

RUN_FILES = (CONFIG_JSON, METRICS, FINAL, LR_FINDER_JSON, LR_FINDER_PNG, REPORT, CHECKPOINT)
LR_FIND_FILES = (LR_FINDER_JSON, LR_FINDER_PNG)  # what ``lr-find`` writes


def checkpoint_file(folder: str | Path) -> Path:
    """The latest checkpoint of the run in ``folder`` (``checkpoints/last.pt``)."""
    return Path(folder) / CHECKPOINT
