"""Fetching the official CIFAR-10 archive into the cache folder.

Owns the official URL and MD5 and the unpacked ``cifar-10-batches-py`` copy in the cache. The
download goes through torchvision's ``download_and_extract_archive``, which verifies the MD5
before unpacking; a stamp file beside the folder records what was verified, so later runs
skip hashing 170 MB. Processes that need the download at once (torchrun's ranks on a first
run, two runs started together) take turns under a lock file (``filelock``, which torch
itself depends on): one downloads and unpacks, the others then find its verified copy, and
no process replaces a copy another may be reading. Failures are told apart (no network,
wrong MD5, damaged archive, full disk) so that the message says what to do.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import zlib
from pathlib import Path

from filelock import FileLock

from ..errors import DataError, oneline
from .archive import _disk_problem, _make_temp_dir
from .formats import _LOCAL_COPY_HINT, _PICKLE_DIR

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

_DOWNLOAD_ERRORS = (
    urllib.error.URLError,
    OSError,
    RuntimeError,
    tarfile.TarError,
    EOFError,
    zlib.error,
)


def _download(url: str, md5: str, cache: Path) -> Path:
    """Download and unpack the pickles archive into cache unless a verified copy is there."""
    filename = os.path.basename(url.split("?", 1)[0]) or "cifar-10-python.tar.gz"
    archive = cache / filename
    target = cache / _PICKLE_DIR
    stamp = cache / f"{_PICKLE_DIR}.md5"
    if _verified(target, archive, stamp, md5):
        return target
    lock = FileLock(cache / f"{_PICKLE_DIR}.lock")
    try:
        lock.acquire()
    except OSError as exc:
        raise DataError(_cache_unwritable(cache, exc)) from exc
    try:
        if not _verified(target, archive, stamp, md5):  # else another process got it meanwhile
            _fetch(url, md5, cache, archive, target, stamp)
    finally:
        lock.release()
    return target


def _verified(target: Path, archive: Path, stamp: Path, md5: str) -> bool:
    """Whether the unpacked folder is there and the stamp vouches for the archive as it is.

    The stamp records the MD5 and the size and mtime the archive had when it was verified
    and unpacked; while they still match, hashing 170 MB again on every run is skipped.
    """
    return target.is_dir() and archive.is_file() and _read_text(stamp) == _stamp(archive, md5)


def _fetch(url: str, md5: str, cache: Path, archive: Path, target: Path, stamp: Path) -> None:
    """Download (unless a verified archive is there), unpack and install; under the lock."""
    from torchvision.datasets.utils import download_and_extract_archive

    staging = _make_temp_dir(cache, "download-")
    try:
        try:
            download_and_extract_archive(
                url, download_root=str(cache), extract_root=str(staging), filename=archive.name,
                md5=md5,
            )  # fmt: skip
        except _DOWNLOAD_ERRORS as exc:
            raise _download_error(exc, url, md5, cache, archive) from exc
        found = staging / _PICKLE_DIR
        if not found.is_dir():
            raise DataError(
                f"the archive from {url} has no {_PICKLE_DIR} folder: check the URL, or "
                f"{_LOCAL_COPY_HINT}"
            )
        _install(found, target, stamp, archive, md5)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_error(exc: Exception, url: str, md5: str, cache: Path, archive: Path) -> DataError:
    """The DataError for a failed download: full disk, wrong MD5, damaged archive or no network."""
    from torchvision.datasets.utils import check_integrity

    if _disk_problem(exc):
        return DataError(_cache_unwritable(cache, exc))
    # torchvision signals a checksum mismatch with a RuntimeError after the download.
    verified = archive.is_file() and check_integrity(str(archive), md5)
    if isinstance(exc, RuntimeError) and archive.is_file() and not verified:
        return DataError(
            f"{archive} downloaded from {url} does not have the expected MD5 {md5}: "
            f"delete it and retry, or pass --data-dir pointing at a local copy"
        )
    if verified:
        return DataError(
            f"cannot unpack {archive} ({oneline(exc)}): delete it and retry, or {_LOCAL_COPY_HINT}"
        )
    return DataError(f"cannot download CIFAR-10 from {url} ({oneline(exc)}): {_LOCAL_COPY_HINT}")


def _install(found: Path, target: Path, stamp: Path, archive: Path, md5: str) -> None:
    """Move the unpacked pickles folder into place, then write the stamp that vouches for it."""
    try:
        if target.exists():
            shutil.rmtree(target)
        os.replace(found, target)
        stamp.write_text(_stamp(archive, md5))
    except OSError as exc:
        raise DataError(_cache_unwritable(target.parent, exc)) from exc


def _cache_unwritable(cache: Path, exc: OSError) -> str:
    return (
        f"cannot write the download into the cache {cache} ({oneline(exc)}): free space "
        "there or pass --cache-dir to another folder"
    )


def _stamp(archive: Path, md5: str) -> str:
    st = archive.stat()
    return f"{md5} {st.st_size} {st.st_mtime_ns}"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
