"""``--force``: an earlier run is moved aside, not deleted, until the run replacing it is saved.

``move_aside`` puts the earlier run's files into ``.replaced-<time>-<pid>/`` in its folder.
If the new run fails before its first checkpoint, ``put_back`` deletes what it wrote and
restores the earlier run; once that checkpoint is written the earlier run is deleted
(``RunFolder.save_checkpoint``): an earlier run is never lost for a run that never was.
``recover`` and ``settle_replaced`` finish the job for a ``--force`` process that was
killed mid-way. ``RunFolder`` calls these under its folder's lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from ..errors import CheckpointError
from ..files import process_alive
from .folder_lock import FolderLock
from .layout import CHECKPOINT, RUN_FILES, TB_DIR, checkpoint_file

ASIDE_PREFIX = ".replaced-"  # an earlier run moved aside by --force until the new one checkpoints


def move_aside(folder: Path, names: list[str]) -> Path:
    """Move ``names`` (files and folders of ``folder``) into a new aside folder; its path.

    A move that fails puts back what was moved and raises CheckpointError.
    """
    aside = folder / f"{ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        for name in names:
            target = aside / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / name, target)
    except OSError as e:
        _restore(folder, aside)
        raise CheckpointError(
            f"cannot move the earlier run in {folder} aside ({e.strerror or e}); "
            "nothing was replaced"
        ) from None
    return aside


def put_back(folder: Path, aside: Path, owns: tuple[str, ...]) -> None:
    """Delete the files ``owns`` of a run that replaced nothing, then restore the earlier
    run from ``aside``."""
    for name in owns:
        with contextlib.suppress(OSError):
            (folder / name).unlink(missing_ok=True)
    if CHECKPOINT in owns:
        shutil.rmtree(folder / TB_DIR, ignore_errors=True)
    _restore(folder, aside)


def _restore(folder: Path, aside: Path) -> None:
    for path in sorted(aside.rglob("*")):
        if path.is_file():
            dest = folder / path.relative_to(aside)
            with contextlib.suppress(OSError):
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    shutil.rmtree(aside, ignore_errors=True)


def _stale_asides(folder: Path) -> list[Path]:
    """Earlier runs moved aside by ``--force`` processes that are gone."""
    stale = []
    for aside in sorted(folder.glob(f"{ASIDE_PREFIX}*")):
        pid = aside.name.rsplit("-", 1)[-1]
        if aside.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            stale.append(aside)
    return stale


def recover(folder: Path, owns: tuple[str, ...] = RUN_FILES) -> None:
    """Settle, in a folder whose lock the caller holds, what killed ``--force`` runs left:
    an earlier run is put back unless the run replacing it saved a checkpoint."""
    for aside in _stale_asides(folder):
        if checkpoint_file(folder).exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            put_back(folder, aside, owns)


def settle_replaced(folder: str | Path) -> None:
    """Settle what a ``--force`` killed mid-way (``kill -9``, a power cut) left in ``folder``.

    Its earlier run waits in ``.replaced-<time>-<pid>/``. If the replacing run saved no
    checkpoint, it never stood in for the earlier one: its few files go and the earlier
    run is put back, as if the forced run had not started. If it did, the earlier run
    was already replaced, and the folder it waited in is removed. Only folders of
    processes that are gone are touched, under the folder's lock (a folder another
    process writes is left alone). Opening a ``RunFolder`` does this first, and
    ``train --resume`` before it reads the folder.
    """
    folder = Path(folder)
    if not folder.is_dir() or not _stale_asides(folder):
        return
    try:
        lock = FolderLock(folder)
    except CheckpointError:
        return  # written by another process: not ours to settle
    try:
        recover(folder)
    finally:
        lock.release()
