"""Writing a file so that a reader sees the old version or the new one, never half of one.

``staged(path)`` yields a temporary path beside ``path`` and, when the block ends without
an error, flushes it to disk and moves it into place (``os.replace``, atomic on one
file system); the temporary file is removed either way. ``atomic_write`` writes through
it and turns a failed write (a full disk, say) into one line. Every file the package
writes goes through here: run folders, the decode cache, exported models.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import CheckpointError, oneline


@contextlib.contextmanager
def staged(path: Path, *, unique: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds.

    The temporary file is ``.<name>.tmp``, or, with ``unique`` (for files that several
    processes may write at once, as a shared cache), a name no other process uses.
    """
    if unique:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], then: str = "") -> None:
    """Write ``path`` through ``write(file)``: readers see the old or the new file, never half.

    A failed write leaves the old file in place and raises CheckpointError naming the file
    and, after ``then``, how to go on. ``torch.save`` reports a full disk as a RuntimeError,
    so that counts as a failed write too.
    """
    try:
        with staged(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else oneline(e, 120)
        kept = "; the previous version is kept" if path.exists() else ""
        raise CheckpointError(
            f"cannot write {path} ({reason}){kept}; free space or fix permissions"
            + (f", then {then}" if then else "")
        ) from None


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, for strict JSON readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """Strict JSON (no NaN or Infinity: those become null), pretty-printed unless ``indent``
    is None (one line)."""
    return (json.dumps(finite_json(obj), indent=indent, allow_nan=False) + "\n").encode()


def read_json(path: Path) -> Any:
    """A run folder's JSON file; CheckpointError (one line) if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path} ({oneline(e, 160)}); is it a run folder?"
        ) from None


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists (the owner of a temporary folder, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
