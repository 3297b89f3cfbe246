"""A run's output folder: resolved config, per-epoch metrics, checkpoints, final figures.

``RunFolder`` writes one: every file atomically (a temporary file in the same folder,
then ``os.replace``), so an interrupted write never leaves a truncated file in place
of a good one; a folder that already holds a run is refused unless ``force``. It holds
the folder's lock (``folder_lock``) while open, and replaces an earlier run as
``replace`` says.
``RunRecord.open`` reads one back (or a loose checkpoint file): the one reader that
``report``, ``load_model`` and ``train --resume`` share.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from .. import files
from ..config import TrainConfig
from ..errors import PROG, CheckpointError, oneline
from ..files import read_json
from . import replace
from .checkpoint import checkpoint_path, config_from_checkpoint, load_checkpoint
from .folder_lock import FolderLock
from .layout import (
    CHECKPOINT,
    CHECKPOINTS,
    CONFIG_JSON,
    FINAL,
    LAST,
    LOCK_FILE,
    LR_FINDER_JSON,
    METRICS,
    RUN_FILES,
    TB_DIR,
    checkpoint_file,
)
from .records import RunSettings, TrainState


class RunFolder:
    """Writes one run into ``path``, locked against other writers while it is open.

    A folder holding another run's files (``owns``) is refused unless ``force``. Forced,
    a training run's earlier files are moved aside into ``.replaced-<time>/`` and put
    back if the new run fails before its first checkpoint; once that checkpoint is
    written they are deleted: an earlier run is never lost for a run that never was.
    ``owns`` limits which files this writer may create or replace (``lr-find`` owns only
    its two files and leaves a training run's alone). ``report``: the run's choice to build
    its report after training, recorded in config.json (``RunSettings``) for ``--resume``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        force: bool = False,
        resume: bool = False,
        owns: tuple[str, ...] = RUN_FILES,
        report: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.owns = owns
        self.report = report
        self._aside: Path | None = None
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"--out {self.path} is a file, not a folder; choose another path")
        self._made = self._make_folders()
        try:
            self._lock = FolderLock(self.path)
        except CheckpointError:
            self._remove_made()
            raise
        try:
            replace.recover(self.path, self.owns)
            self._claim(force, resume)
        except BaseException:
            self.abandon()
            raise

    def _make_folders(self) -> list[Path]:
        """Create the folder (and checkpoints/ when this writer owns a checkpoint)."""
        wanted = self.path / CHECKPOINTS if CHECKPOINT in self.owns else self.path
        made = []  # deepest first
        missing = wanted
        while not missing.exists() and missing != missing.parent:
            made.append(missing)
            missing = missing.parent
        try:
            wanted.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"cannot write to --out {self.path} ({e.strerror or e}); choose a writable folder"
            ) from None
        return made

    def _claim(self, force: bool, resume: bool) -> None:
        held = [] if resume else [name for name in self.owns if (self.path / name).exists()]
        if held and not force:
            raise CheckpointError(
                f"--out {self.path} already holds a run ({held[0]}); choose a new folder, "
                "continue it with --resume, or pass --force to replace it"
            )
        try:
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write to --out {self.path} ({e.strerror or e}); choose a writable folder"
            ) from None
        if held and CHECKPOINT in self.owns:
            events = [TB_DIR] if (self.path / TB_DIR).is_dir() else []
            self._aside = replace.move_aside(self.path, held + events)

    def _remove_made(self) -> None:
        for folder in self._made:
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()

    def abandon(self) -> None:
        """After a failure: put back an earlier run moved aside if this one saved no checkpoint,
        remove the folders this object created if nothing was written into them, unlock.

        A folder that existed before is never removed.
        """
        if self._aside is not None:
            replace.put_back(self.path, self._aside, self.owns)
            self._aside = None
        empty = self._made and not any(
            p.name != LOCK_FILE for p in self.path.rglob("*") if p.is_file()
        )
        self._lock.release(remove=bool(empty))
        self._remove_made()

    def close(self) -> None:
        """The run is done (or interrupted with a checkpoint saved): unlock the folder."""
        self._lock.release()

    def how_to_go_on(self) -> str:
        """What a user does after a failed write: what follows "then" in the error."""
        if CHECKPOINT not in self.owns:
            return "run the same command again"
        if self._aside is not None:  # forced, nothing saved yet: the earlier run goes back
            return "run the same command again (the earlier run is put back as it was)"
        if not checkpoint_file(self.path).exists() and not (self.path / CONFIG_JSON).exists():
            return "run the same command again"  # nothing of this run written: the folder goes
        return f"continue with: {PROG} train --resume {self.path}"

    def _write(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        files.atomic_write(path, write, then=self.how_to_go_on())

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as pretty, strict JSON to ``name`` inside the run folder."""
        path = self.path / name
        data = files.json_bytes(obj)
        self._write(path, lambda f: f.write(data))
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write raw bytes (e.g. a PNG) to ``name`` inside the run folder."""
        path = self.path / name
        self._write(path, lambda f: f.write(data))
        return path

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Append one epoch's metrics to metrics.jsonl (the whole file is rewritten atomically)."""
        path = self.path / METRICS
        old = path.read_bytes() if path.exists() else b""
        line = files.json_bytes(metrics, indent=None)
        self._write(path, lambda f: f.write(old + line))

    def rewrite_metrics(self, epochs: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with these epochs (resuming drops lines past the checkpoint)."""
        data = b"".join(files.json_bytes(m, indent=None) for m in epochs)
        self._write(self.path / METRICS, lambda f: f.write(data))

    def save_checkpoint(self, state: dict[str, Any], name: str = LAST) -> Path:
        """Save a checkpoint dict under checkpoints/; the first one retires an earlier run."""
        path = self.path / CHECKPOINTS / name
        self._write(path, lambda f: torch.save(state, f))
        if self._aside is not None:  # the new run can now stand in the old one's place
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside = None
        return path


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
        state = load_checkpoint(file)
        folder = Path(path) if Path(path).is_dir() else None
        if folder is None and file.parent.name == CHECKPOINTS:
            candidate = file.parent.parent
            if (candidate / CONFIG_JSON).exists():
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

    def settings(self) -> RunSettings:
        """config.json, or what the checkpoint holds of it (its config and lr_source)."""
        path = self._file(CONFIG_JSON)
        if path is None:
            return RunSettings(self.state.config, self.state.lr_source)
        return RunSettings.from_dict(read_json(path))

    def final(self) -> dict[str, Any]:
        """final.json; empty when the run did not finish."""
        path = self._file(FINAL)
        return read_json(path) if path else {}

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl, or the checkpoint's copy of the epochs so far."""
        path = self._file(METRICS)
        return read_metrics(path) if path else list(self.state.metrics)

    def lr_finder_json(self) -> dict[str, Any] | None:
        """lr_finder.json, when the range test chose the run's LRs."""
        path = self._file(LR_FINDER_JSON)
        return read_json(path) if path else None
