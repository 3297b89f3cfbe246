"""A run's output folder: resolved config, per-epoch metrics, checkpoints, final figures.

``RunFolder`` writes one: every file atomically (a temporary file in the same folder,
then ``os.replace``), so an interrupted write never leaves a truncated file in place
of a good one; a folder that already holds a run is refused unless ``force``.
``RunRecord.open`` reads one back (or a loose checkpoint file): the one reader that
``report``, ``load_model`` and ``train --resume`` share.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from .checkpoint import checkpoint_path, config_from_checkpoint, load_checkpoint, train_state
from .config import TrainConfig
from .errors import CheckpointError, oneline
from .records import TrainState

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "final.json",
    "lr_finder.json",
    "report.html",
    "checkpoints/last.pt",
)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)``: readers see the old or the new file, never half.

    A failed write (a full disk, say) leaves the old file in place and raises
    CheckpointError naming the file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "; the previous version is kept" if path.exists() else ""
        raise CheckpointError(
            f"cannot write {path} ({e.strerror or e}){kept}; free space or fix permissions, "
            "then continue with --resume"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


class RunFolder:
    """Writes one training run into ``path``; refuses a folder holding another run unless forced."""

    def __init__(self, path: str | Path, *, force: bool = False, resume: bool = False) -> None:
        self.path = Path(path)
        checkpoints = self.path / "checkpoints"
        self._made = [] if checkpoints.exists() else [checkpoints]  # made here, deepest first
        missing = self.path
        while not missing.exists() and missing != missing.parent:
            self._made.append(missing)
            missing = missing.parent
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"--out {self.path} is a file, not a folder; choose another path")
        held = [] if resume else [name for name in RUN_FILES if (self.path / name).exists()]
        if held and not force:
            raise CheckpointError(
                f"--out {self.path} already holds a run ({held[0]}); "
                "choose a new folder or pass --force to overwrite it"
            )
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write to --out {self.path} ({e.strerror or e}); choose a writable folder"
            ) from None
        for name in held:  # forced: start clean, so no stale file mixes with the new run
            (self.path / name).unlink()

    def remove_if_unused(self) -> None:
        """Remove the folders this object created, where nothing was written into them.

        For a run that failed before its first file (bad data, say): no empty folder is
        left behind, and a folder that existed before is never touched.
        """
        for folder in self._made:
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as pretty JSON to ``name`` inside the run folder."""
        path = self.path / name
        atomic_write(path, lambda f: f.write(_json_bytes(obj)))
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write raw bytes (e.g. a PNG) to ``name`` inside the run folder."""
        path = self.path / name
        atomic_write(path, lambda f: f.write(data))
        return path

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Append one epoch's metrics to metrics.jsonl (the whole file is rewritten atomically)."""
        path = self.path / "metrics.jsonl"
        old = path.read_bytes() if path.exists() else b""
        line = (json.dumps(metrics) + "\n").encode()
        atomic_write(path, lambda f: f.write(old + line))

    def rewrite_metrics(self, epochs: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with these epochs (resuming drops lines past the checkpoint)."""
        data = "".join(json.dumps(m) + "\n" for m in epochs).encode()
        atomic_write(self.path / "metrics.jsonl", lambda f: f.write(data))

    def save_checkpoint(self, state: dict[str, Any], name: str = "last.pt") -> Path:
        """Save a checkpoint dict under checkpoints/."""
        path = self.path / "checkpoints" / name
        atomic_write(path, lambda f: torch.save(state, f))
        return path


def read_json(path: Path) -> Any:
    """A run folder's JSON file; CheckpointError (one line) if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path} ({oneline(e, 160)}); is it a run folder?"
        ) from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one dict per epoch."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path} ({oneline(e, 160)}); is it a run folder?"
        ) from None


@dataclass(frozen=True)
class RunRecord:
    """A finished or interrupted run as saved: its folder (if any) and its checkpoint."""

    folder: Path | None  # None for a checkpoint file outside a run folder
    checkpoint: Path
    state: TrainState

    @classmethod
    def open(cls, path: str | Path) -> RunRecord:
        """A run folder, or a checkpoint file (inside ``RUN/checkpoints/`` or loose)."""
        file = checkpoint_path(path)
        state = train_state(load_checkpoint(file))
        folder = Path(path) if Path(path).is_dir() else None
        if folder is None and file.parent.name == "checkpoints":
            candidate = file.parent.parent
            if (candidate / "config.json").exists():
                folder = candidate
        return cls(folder, file, state)

    @property
    def config(self) -> TrainConfig:
        """The run's resolved training config."""
        return config_from_checkpoint(self.state)

    def _file(self, name: str) -> Path | None:
        if self.folder is None or not (self.folder / name).exists():
            return None
        return self.folder / name

    def config_json(self) -> dict[str, Any]:
        """config.json (the resolved config and lr_source), or the checkpoint's config."""
        path = self._file("config.json")
        return read_json(path) if path else {**self.state.config, "lr_source": self.state.lr_source}

    def final(self) -> dict[str, Any]:
        """final.json; empty when the run did not finish."""
        path = self._file("final.json")
        return read_json(path) if path else {}

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl, or the checkpoint's copy of the epochs so far."""
        path = self._file("metrics.jsonl")
        return read_metrics(path) if path else list(self.state.metrics)

    def lr_finder_json(self) -> dict[str, Any] | None:
        """lr_finder.json, when the range test chose the run's LRs."""
        path = self._file("lr_finder.json")
        return read_json(path) if path else None
