"""Unpacking a local ``.tar.gz`` safely into the cache folder.

Owns everything between the archive and a plain folder: members are checked before they are
written (no absolute path, no ``..``; Python's ``data`` filter, where it exists, also refuses
links that point outside, and without it only files and folders are unpacked), they land in a
folder of this process's own, named after its PID and host, which no other process reads (two
runs that unpack the same archive at once each read their own copy, and the first to finish
cannot delete the other's), and the folders that a killed process of this host left behind
are removed (another host's are left alone: its PIDs cannot be checked from here). A full or
read-only disk is told apart from a damaged archive, so that the message says which of the
two to fix.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tarfile
import tempfile
import zlib
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError, oneline
from ..files import process_alive

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
)


def _extract(archive: Path, target: Path, progress: bool) -> Path:
    """Unpack archive into a new folder ``<target>.partial-<pid>@<host>-*`` of this process's
    own, refusing members that would land outside it; the caller removes the folder when done."""
    _remove_stale_partials(target)
    folder = _make_temp_dir(target.parent, f"{target.name}.partial-{os.getpid()}@{_host()}-")
    try:
        with (
            tarfile.open(archive, "r:gz") as tar,
            tqdm(desc=f"unpacking {archive.name}", unit=" files", disable=not progress) as bar,
        ):
            for member in tar:
                _check_member(archive, member)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, folder, filter="data")
                elif member.isfile() or member.isdir():
                    tar.extract(member, folder)
                bar.update(1)
    except _FILTER_ERRORS as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(
            f"{archive} holds an unsafe member ({oneline(exc)}): refusing to unpack it; "
            f"unpack a trusted copy yourself and pass the folder"
        ) from exc
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if _disk_problem(exc):
            raise DataError(
                f"cannot unpack {archive} into {target.parent} ({oneline(exc)}): free space "
                "there or pass --cache-dir to another folder"
            ) from exc
        reason = _name_members(oneline(exc), folder, archive)
        raise DataError(
            f"cannot unpack {archive} ({reason}): the archive is damaged or not a .tar.gz; "
            "get a fresh copy"
        ) from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(
            f"cannot unpack {archive} ({oneline(exc)}): the archive is damaged or not a "
            f".tar.gz; get a fresh copy"
        ) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _name_members(message: str, extracted: Path, archive: Path) -> str:
    """message with the unpacked folder's path told as the archive's: ``data.tar.gz/train/
    cat/1.jpg`` for a member, ``data.tar.gz`` for the folder itself.

    The unpacked folder is deleted as soon as decoding stops, so a path into it names nothing
    the user can open. Only the folder's prefix is replaced, so a member's name may hold any
    character; an OSError's text quotes paths with doubled backslashes on Windows, so that
    spelling is replaced too.
    """
    folder = str(extracted)
    for spelled, shown in ((folder, str(archive)), (_quoted(folder), _quoted(str(archive)))):
        message = message.replace(spelled, shown)
    return message


def _quoted(path: str) -> str:
    """path as repr() writes it inside quotes (the doubled backslashes of Windows paths)."""
    return path.replace("\\", "\\\\")


def _disk_problem(exc: BaseException) -> bool:
    """An OSError of the disk being written (full, over quota, read-only, not permitted)."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
    )  # fmt: skip


def _host() -> str:
    """This machine's name, as it may stand in a folder name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _remove_stale_partials(target: Path) -> None:
    """Delete half-unpacked copies of ``target`` left by processes that died (``kill -9``).

    Each is named ``<target>.partial-<pid>@<host>-*`` (``<pid>-*`` before hosts were named:
    taken as this host's); one whose process still runs, or of another host, is kept.
    """
    for partial in target.parent.glob(f"{target.name}.partial-*"):
        owner = partial.name[len(target.name) + len(".partial-") :]
        pid, at, rest = owner.partition("@")
        if not at:
            pid = owner.split("-", 1)[0]
        elif rest.rpartition("-")[0] != _host():
            continue
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        shutil.rmtree(partial, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """DataError for a member with an absolute path, a drive letter or a ``..`` part."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(
            f"{archive} holds an unsafe path {member.name!r} (absolute or with '..'): refusing "
            f"to unpack it; unpack a trusted copy yourself and pass the folder"
        )


def _make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, empty staging folder in parent (the cache folder, which must be writable)."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise DataError(
            f"cannot write to cache folder {parent} ({oneline(exc)}): pass --cache-dir (or set "
            f"CIFAR_RESNET_CACHE) to a writable folder"
        ) from exc
