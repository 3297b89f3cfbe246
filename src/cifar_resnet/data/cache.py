"""The cache of decoded arrays, so that a data set is decoded once rather than on every run.

Owns the cache keys (a hash of the source's path, sizes and modification times, so an edited
copy is decoded again) and the ``arrays-<key>.pt`` files. The arrays travel as a dict of
``Cifar10``'s fields, so this module needs nothing of ``load``. A cache file that cannot be
read is rebuilt, never trusted; one that cannot be written is a warning, not an error. Several
processes may write the same file at once, hence ``staged(..., unique=True)``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import DataError, oneline
from ..files import staged
from .formats import _SIDE, _check_link

_CACHE_VERSION = "2"  # 2: image trees read round-robin over classes
_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")

# ---------------------------------------------------------------------------------------------
# Keys


def _hash_parts(parts: list[str]) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for part in parts:
        h.update(b"\0")
        h.update(part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _archive_key(archive: Path) -> str:
    """Hash the archive's path, size and mtime_ns."""
    st = archive.stat()
    return _hash_parts(["archive", str(archive.resolve()), str(st.st_size), str(st.st_mtime_ns)])


def _folder_key(kind: str, folder: Path, cache: Path) -> str:
    """Hash the folder's path and the (relative path, size, mtime_ns) of each visible file.

    Only the levels that are read count: the folder itself for pickles, and down to
    <split>/<class>/<file> for an image tree.
    """
    root = str(folder.resolve())
    skip = str(cache.resolve())
    prefix = os.path.join(root, "")
    max_depth = 0 if kind == "pickles" else 2
    parts = [kind, root]
    stack = [(root, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=_entry_name)
            for entry in entries:
                _check_link(entry)
                if entry.is_dir():
                    if depth < max_depth and entry.path != skip:
                        stack.append((entry.path, depth + 1))
                    continue
                st = entry.stat()
                parts.append(f"{entry.path[len(prefix) :]}|{st.st_size}|{st.st_mtime_ns}")
        except OSError as exc:
            raise DataError(f"cannot list {current} ({oneline(exc)}): check permissions") from exc
    return _hash_parts(parts)


def _entry_name(entry: os.DirEntry) -> str:
    return entry.name


# ---------------------------------------------------------------------------------------------
# Cache files


def _cache_file(cache: Path, key: str) -> Path:
    return cache / f"arrays-{key}.pt"


def _read_cache(cache: Path, key: str) -> dict[str, Any] | None:
    """The fields of the cached ``Cifar10`` for key, or None when absent or damaged."""
    path = _cache_file(cache, key)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        fields = {name: blob[name] for name in _TENSORS}
        fields["classes"] = tuple(str(c) for c in blob["classes"])
        fields["source"] = f"{blob['source']} (cached in {path})"
        _check_fields(fields)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    return fields


def _check_fields(fields: dict[str, Any]) -> None:
    for kind in ("train", "test"):
        images, labels = fields[f"{kind}_images"], fields[f"{kind}_labels"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, _SIDE, _SIDE):
            raise ValueError("bad images")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError("bad labels")
    if not fields["classes"]:
        raise ValueError("no classes")


def _write_cache(cache: Path, key: str, fields: dict[str, Any], progress: bool = False) -> None:
    """Save the decoded arrays (about 180 MB for CIFAR-10; seconds on a slow disk)."""
    with tqdm(total=1, desc=f"caching decoded arrays in {cache}", disable=not progress) as bar:
        _save_arrays(cache, key, fields)
        bar.update()


def _save_arrays(cache: Path, key: str, fields: dict[str, Any]) -> None:
    path = _cache_file(cache, key)
    blob = {name: fields[name] for name in _TENSORS}
    blob["classes"] = list(fields["classes"])
    blob["source"] = fields["source"]
    try:
        with staged(path, unique=True) as tmp:  # other processes may cache the same arrays
            torch.save(blob, tmp)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError
        # stacklevel 5: _save_arrays, _write_cache, load._load_*, load_cifar10, its caller.
        warnings.warn(
            f"cannot write cache file {path} ({oneline(exc)}); not caching (pass --cache-dir "
            "to a writable folder to cache)",
            stacklevel=5,
        )
