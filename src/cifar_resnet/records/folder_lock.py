"""One writer per run folder: an OS lock on the folder's lock file, held while it writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are not locked there
    fcntl = None

from ..errors import CheckpointError
from .layout import LOCK_FILE


class FolderLock:
    """An exclusive OS lock on a run folder (``flock`` on its .lock file), held until released.

    The kernel drops it when the process ends, however it ends, so ``kill -9`` leaves no
    stale lock. The file holds the holder's PID, for the error a second writer gets.
    Where ``fcntl`` does not exist (Windows), folders are not locked.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._file: IO[str] | None = None
        if fcntl is None:
            return
        try:
            f = open(self.path, "a+")  # noqa: SIM115 (held open while the lock lives)
        except OSError as e:
            raise CheckpointError(
                f"cannot write to {folder} ({e.strerror or e}); choose a writable folder"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise CheckpointError(
                f"{folder} is being written by another cifar-resnet process (PID {holder}); "
                "wait for it to finish, stop it, or choose another folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self, remove: bool = False) -> None:
        """Drop the lock (and delete the lock file, when the folder is being removed)."""
        if self._file is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
