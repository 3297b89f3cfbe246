"""Load CIFAR-10 as uint8 tensors from a download, a local folder or a local archive.

``load_cifar10`` accepts the official ``cifar-10-batches-py`` pickles (downloaded on demand or
already on disk), an image-folder tree ``train/<class>/*`` + ``test/<class>/*``, or a ``.tar.gz``
of either, and returns both splits as ``(N, 3, 32, 32)`` uint8 tensors with int64 labels. This
module only decides which source it is and in what order the steps run: ``download`` fetches,
``archive`` unpacks, ``formats`` finds the layout and decodes it, ``cache`` keeps the decoded
arrays (in a cache folder, never in the data folder, which may be read-only). Those helpers
are called through their modules, so a test patches each one in the module that defines it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, oneline
from . import archive, cache, download, formats

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True, eq=False)
class Cifar10:
    """Both splits as uint8 tensors, decoded once."""

    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, 3, 32, 32) uint8
    test_labels: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]
    source: str  # human-readable description of where it came from


def default_cache_dir() -> Path:
    """Return $CIFAR_RESNET_CACHE if set, else ~/.cache/cifar_resnet."""
    env = os.environ.get("CIFAR_RESNET_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cifar_resnet"


def load_cifar10(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    url: str = download.OFFICIAL_URL,
    md5: str = download.OFFICIAL_MD5,
    progress: bool = True,
) -> Cifar10:
    """Load CIFAR-10 from data_dir (folder or .tar.gz), or download it when data_dir is None."""
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if data_dir is None:
        _ensure_dir(cache_root)
        batches = download._download(url, md5, cache_root)
        return _load_folder(batches, cache_root, progress, origin=f"downloaded from {url}")
    path = Path(data_dir).expanduser()
    hint = formats._LOCAL_COPY_HINT
    if not path.exists():
        raise DataError(f"{path} does not exist: {hint}")
    if path.is_file():
        if not path.name.lower().endswith(archive._ARCHIVE_SUFFIXES):
            raise DataError(f"{path} is a file but not a .tar.gz or .tgz archive: {hint}")
        return _load_archive(path, cache_root, progress)
    if not path.is_dir():
        raise DataError(f"{path} is neither a folder nor a file: {hint}")
    return _load_folder(path, cache_root, progress, origin=None)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, 3, H, W) batch, as float32 (3,) tensors."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"channel_stats needs a uint8 (N, 3, H, W) tensor, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError("channel_stats needs at least one image")
    # Sums are accumulated in float64; chunks keep the float64 copy small (the full training
    # set at once would need about 1.2 GB).
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return (mean / 255.0).to(torch.float32), (var.sqrt() / 255.0).to(torch.float32)


def check_same_classes(
    data_classes: Sequence[str], saved_classes: Sequence[str], whose: str = "the checkpoint's"
) -> None:
    """DataError unless a data set's classes are, in order, those a model was trained on.

    ``whose`` names the saved classes in the message ("the checkpoint's", "the run's").
    """
    if tuple(data_classes) != tuple(saved_classes):
        raise DataError(
            f"the data's classes ({', '.join(data_classes)}) differ from {whose} "
            f"({', '.join(saved_classes)}); pass --data-dir with the data it was trained on"
        )


# ---------------------------------------------------------------------------------------------
# Sources


def _load_archive(path: Path, cache_dir: Path, progress: bool) -> Cifar10:
    """Read a .tar.gz of pickles or of an image tree, via the array cache."""
    _ensure_dir(cache_dir)
    key = cache._archive_key(path)
    cached = cache._read_cache(cache_dir, key)
    if cached is not None:
        return Cifar10(**cached)
    extracted = archive._extract(path, cache_dir / f"extract-{key}", progress)
    try:
        kind, folder = formats._find_layout(extracted, shown=path)
        data = formats._decode(kind, folder, progress)
    except DataError as exc:
        named = archive._name_members(str(exc), extracted, path)
        if named == str(exc):
            raise
        # The same error told with the archive's names; its cause (Pillow's, say) kept.
        raise DataError(named).with_traceback(exc.__traceback__) from exc.__cause__
    finally:
        # The arrays are all that is needed from now on; the unpacked files would double the
        # disk space the cache takes.
        shutil.rmtree(extracted, ignore_errors=True)
    inner = folder.relative_to(extracted).as_posix()
    where = f"{inner} in archive" if inner != "." else "archive"
    source = f"{formats._describe(kind)} in {where} {path.resolve()}"
    result = _assemble(data, source)
    cache._write_cache(cache_dir, key, _fields(result), progress)
    return result


def _load_folder(path: Path, cache_dir: Path, progress: bool, origin: str | None) -> Cifar10:
    """Read a pickles folder or an image tree, via the array cache."""
    kind, folder = formats._find_layout(path, shown=path)
    cache_ok = True
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        cache_ok = False
        warnings.warn(
            f"cannot create cache folder {cache_dir} ({oneline(exc)}); reading without a cache "
            "(pass --cache-dir to a writable folder to cache)",
            stacklevel=3,
        )
    key = cache._folder_key(kind, folder, cache_dir)
    if cache_ok:
        cached = cache._read_cache(cache_dir, key)
        if cached is not None:
            return Cifar10(**cached)
    data = formats._decode(kind, folder, progress)
    source = f"{formats._describe(kind)} in {folder.resolve()}"
    if origin:
        source = f"{source}, {origin}"
    result = _assemble(data, source)
    if cache_ok:
        cache._write_cache(cache_dir, key, _fields(result), progress)
    return result


# ---------------------------------------------------------------------------------------------
# Small helpers


def _assemble(data: formats._Arrays, source: str) -> Cifar10:
    train_x, train_y, test_x, test_y, classes = data
    return Cifar10(
        train_images=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_labels=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        classes=classes,
        source=source,
    )


def _fields(result: Cifar10) -> dict[str, Any]:
    """The fields of result by name, as ``cache`` stores them (the tensors are not copied)."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create cache folder {folder} ({oneline(exc)}): pass --cache-dir (or set "
            f"CIFAR_RESNET_CACHE) to a writable folder"
        ) from exc
