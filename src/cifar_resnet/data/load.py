"""Load CIFAR-10 as uint8 tensors from a download, a local folder or a local archive.

``load_cifar10`` accepts the official ``cifar-10-batches-py`` pickles (downloaded on demand or
already on disk), an image-folder tree ``train/<class>/*`` + ``test/<class>/*``, or a ``.tar.gz``
of either, and returns both splits as ``(N, 3, 32, 32)`` uint8 tensors with int64 labels. The
decoded arrays are saved once in a cache folder (never in the data folder, which may be
read-only) and reloaded in a fraction of a second afterwards; the cache key follows the source's
path, sizes and modification times, so an edited copy is decoded again. The pickles are read with
a few lines of our own code rather than torchvision's ``CIFAR10`` class because that class
hard-codes the MD5 of every official file, so it refuses any other copy (a test fixture, a subset),
and it hands out one PIL image per item instead of one array. The download itself goes through
torchvision's ``download_and_extract_archive``, which verifies the archive's MD5 before it is
unpacked. A local archive is unpacked into the cache folder (members with absolute paths or
``..`` are refused), decoded, and the unpacked files are removed again. Pickles can run code
when loaded: only point this module at copies you trust.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import DataError, oneline
from ..files import process_alive, staged

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
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

_PICKLE_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_PICKLE_FILES = (*_TRAIN_BATCHES, _TEST_BATCH, _META)
_SIDE = 32
_CACHE_VERSION = "2"  # 2: image trees read round-robin over classes
_MAX_IMAGE_BYTES = 1 << 20
_LOCAL_COPY_HINT = (
    "pass --data-dir pointing at a local copy (a cifar-10-batches-py folder, an image-folder "
    "tree train/<class>/*, test/<class>/*, or a .tar.gz of either)"
)
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
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
    url: str = OFFICIAL_URL,
    md5: str = OFFICIAL_MD5,
    progress: bool = True,
) -> Cifar10:
    """Load CIFAR-10 from data_dir (folder or .tar.gz), or download it when data_dir is None."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if data_dir is None:
        _ensure_dir(cache)
        batches = _download(url, md5, cache)
        return _load_folder(batches, cache, progress, origin=f"downloaded from {url}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist: {_LOCAL_COPY_HINT}")
    if path.is_file():
        if not path.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise DataError(
                f"{path} is a file but not a .tar.gz or .tgz archive: {_LOCAL_COPY_HINT}"
            )
        return _load_archive(path, cache, progress)
    if not path.is_dir():
        raise DataError(f"{path} is neither a folder nor a file: {_LOCAL_COPY_HINT}")
    return _load_folder(path, cache, progress, origin=None)


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


# ---------------------------------------------------------------------------------------------
# Sources


def _download(url: str, md5: str, cache: Path) -> Path:
    """Download and unpack the pickles archive into cache unless a verified copy is there."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    filename = os.path.basename(url.split("?", 1)[0]) or "cifar-10-python.tar.gz"
    archive = cache / filename
    target = cache / _PICKLE_DIR
    stamp = cache / f"{_PICKLE_DIR}.md5"
    # The stamp records the MD5 and the size and mtime the archive had when it was verified and
    # unpacked; while they still match, hashing 170 MB again on every run is skipped.
    if target.is_dir() and archive.is_file() and _read_text(stamp) == _stamp(archive, md5):
        return target

    staging = _make_temp_dir(cache, "download-")
    try:
        try:
            download_and_extract_archive(
                url, download_root=str(cache), extract_root=str(staging), filename=filename, md5=md5
            )
        except (
            urllib.error.URLError,
            OSError,
            RuntimeError,
            tarfile.TarError,
            EOFError,
            zlib.error,
        ) as exc:
            if _disk_problem(exc):
                raise DataError(_cache_unwritable(cache, exc)) from exc
            # torchvision signals a checksum mismatch with a RuntimeError after the download.
            verified = archive.is_file() and check_integrity(str(archive), md5)
            if isinstance(exc, RuntimeError) and archive.is_file() and not verified:
                raise DataError(
                    f"{archive} downloaded from {url} does not have the expected MD5 {md5}: "
                    f"delete it and retry, or pass --data-dir pointing at a local copy"
                ) from exc
            if verified:
                raise DataError(
                    f"cannot unpack {archive} ({oneline(exc)}): delete it and retry, or "
                    f"{_LOCAL_COPY_HINT}"
                ) from exc
            raise DataError(
                f"cannot download CIFAR-10 from {url} ({oneline(exc)}): {_LOCAL_COPY_HINT}"
            ) from exc
        found = staging / _PICKLE_DIR
        if not found.is_dir():
            raise DataError(
                f"the archive from {url} has no {_PICKLE_DIR} folder: check the URL, or "
                f"{_LOCAL_COPY_HINT}"
            )
        try:
            if target.exists():
                shutil.rmtree(target)
            os.replace(found, target)
            stamp.write_text(_stamp(archive, md5))
        except OSError as exc:
            raise DataError(_cache_unwritable(cache, exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_archive(archive: Path, cache: Path, progress: bool) -> Cifar10:
    """Read a .tar.gz of pickles or of an image tree, via the array cache."""
    _ensure_dir(cache)
    st = archive.stat()
    key = _hash_parts(["archive", str(archive.resolve()), str(st.st_size), str(st.st_mtime_ns)])
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    extracted = _extract(archive, cache / f"extract-{key}", progress)
    try:
        kind, folder = _find_layout(extracted, shown=archive)
        data = _decode(kind, folder, progress)
    finally:
        # The arrays are all that is needed from now on; the unpacked files would double the
        # disk space the cache takes.
        shutil.rmtree(extracted, ignore_errors=True)
    inner = folder.relative_to(extracted).as_posix()
    where = f"{inner} in archive" if inner != "." else "archive"
    source = f"{_describe(kind)} in {where} {archive.resolve()}"
    result = _assemble(data, source)
    _write_cache(cache, key, result, progress)
    return result


def _load_folder(path: Path, cache: Path, progress: bool, origin: str | None) -> Cifar10:
    """Read a pickles folder or an image tree, via the array cache."""
    kind, folder = _find_layout(path, shown=path)
    cache_ok = True
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        cache_ok = False
        warnings.warn(
            f"cannot create cache folder {cache} ({oneline(exc)}); reading without a cache "
            "(pass --cache-dir to a writable folder to cache)",
            stacklevel=3,
        )
    key = _folder_key(kind, folder, cache)
    if cache_ok:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    data = _decode(kind, folder, progress)
    source = f"{_describe(kind)} in {folder.resolve()}"
    if origin:
        source = f"{source}, {origin}"
    result = _assemble(data, source)
    if cache_ok:
        _write_cache(cache, key, result, progress)
    return result


def _describe(kind: str) -> str:
    return "cifar-10-batches-py pickles" if kind == "pickles" else "image folders"


# ---------------------------------------------------------------------------------------------
# Layout detection


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _is_pickle_dir(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _PICKLE_FILES)


def _is_tree(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _find_layout(path: Path, shown: Path) -> tuple[str, Path]:
    """Return ("pickles" | "tree", folder) for the data set at or just below path."""
    try:
        entries = _visible(path)
    except OSError as exc:
        raise DataError(f"cannot list {shown} ({oneline(exc)}): {_LOCAL_COPY_HINT}") from exc
    if _is_pickle_dir(path):
        return "pickles", path
    if _is_tree(path):
        return "tree", path
    if (path / _PICKLE_DIR).is_dir():
        return "pickles", path / _PICKLE_DIR
    candidates = [p for p in entries if p.is_dir() and (_is_tree(p) or _is_pickle_dir(p))]
    if len(candidates) == 1:
        folder = candidates[0]
        return ("tree" if _is_tree(folder) else "pickles"), folder
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DataError(
            f"{shown} holds several CIFAR-10 copies ({names}): pass --data-dir pointing at one"
        )
    if not entries:
        raise DataError(f"{shown} is empty: {_LOCAL_COPY_HINT}")
    for split, other in (("train", "test"), ("test", "train")):
        if (path / split).is_dir() and not (path / other).is_dir():
            raise DataError(
                f"{shown} has {split}/ but no {other}/: an image-folder tree needs both "
                f"train/<class>/* and test/<class>/*"
            )
    raise DataError(
        f"no CIFAR-10 data in {shown}: expected train/<class>/* and test/<class>/* or "
        f"{_PICKLE_DIR}; pass --data-dir pointing at a local copy"
    )


# ---------------------------------------------------------------------------------------------
# Decoding

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


def _decode(kind: str, folder: Path, progress: bool) -> _Arrays:
    if kind == "pickles":
        return _read_pickles(folder)
    return _read_image_tree(folder, progress)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(
            f"{path} is missing: a {_PICKLE_DIR} folder needs "
            f"{', '.join(_PICKLE_FILES)}; {_LOCAL_COPY_HINT}"
        )
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as exc:  # unpickling can fail in many ways on a damaged file
        raise DataError(
            f"cannot read {path} ({oneline(exc)}): the file is damaged; replace it with a "
            f"fresh copy"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a dict: replace it with a fresh copy")
    return obj


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} has no 'data' or 'labels' entry: replace it with a fresh copy")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise DataError(
            f"{path} holds data of shape {data.shape} and type {data.dtype}, expected "
            f"(N, {3 * _SIDE * _SIDE}) uint8: replace it with a fresh copy"
        )
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{path} holds labels that are not integers: replace it") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path} holds {labels.size} labels for {data.shape[0]} images: replace it")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{path} holds label {int(labels[bad][0])}, outside 0..{num_classes - 1}: the file "
            f"is damaged; replace it with a fresh copy"
        )
    return data.reshape(-1, 3, _SIDE, _SIDE), labels


def _read_pickles(folder: Path) -> _Arrays:
    """Decode a cifar-10-batches-py folder."""
    meta_path = folder / _META
    meta = _load_pickle(meta_path)
    names = meta.get("label_names")
    if (
        not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise DataError(f"{meta_path} has no list of label_names: replace it with a fresh copy")
    classes = tuple(names)
    parts = [_read_batch(folder / name, len(classes)) for name in _TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / _TEST_BATCH, len(classes))
    return train_x, train_y, test_x, test_y, classes


def _scan(folder: Path, want_dirs: bool) -> list[str]:
    """Sorted paths of the visible sub-folders (or files) of folder."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"cannot list {folder} ({oneline(exc)}): check permissions") from exc
    for e in entries:
        _check_link(e)
    return sorted(e.path for e in entries if (e.is_dir() if want_dirs else e.is_file()))


def _check_link(entry: os.DirEntry) -> None:
    """DataError for a symbolic link whose target is gone."""
    if entry.is_symlink() and not os.path.exists(entry.path):
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        raise DataError(
            f"{entry.path} is a broken symbolic link (its target {target} does not exist): "
            "remove the link or restore its target"
        )


def _list_split(split_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for class_dir in _scan(split_dir, want_dirs=True):
        files = _scan(Path(class_dir), want_dirs=False)
        if not files:
            raise DataError(f"{class_dir} holds no images: every class folder needs at least one")
        out[os.path.basename(class_dir)] = files
    return out


def _decode_image(path: str) -> np.ndarray:
    try:
        # Reading the bytes in one go is faster than letting Pillow read the file piecemeal;
        # a file too large to be a 32x32 image is left to Pillow, which reports its size.
        with open(path, "rb") as f:
            raw = f.read(_MAX_IMAGE_BYTES + 1)
        source = io.BytesIO(raw) if len(raw) <= _MAX_IMAGE_BYTES else path
        with Image.open(source) as im:
            size = im.size
            if size == (_SIDE, _SIDE):
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                return np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(_SIDE, _SIDE, 3)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "unknown format" if isinstance(exc, UnidentifiedImageError) else oneline(exc)
        raise DataError(
            f"not an image: {path} (Pillow cannot read it: {reason}); remove or replace it"
        ) from exc
    raise DataError(
        f"{path} is {size[0]}x{size[1]}, expected {_SIDE}x{_SIDE}: images are not resized; "
        f"remove or replace it"
    )


def _read_image_tree(folder: Path, progress: bool) -> _Arrays:
    """Decode train/<class>/* and test/<class>/*; every image must already be 32x32.

    Images of another size are refused rather than resized: a resize would quietly change the
    data set, and CIFAR-10 is 32x32 by definition, so a wrong size means a wrong folder.
    Decoding is sequential: the images are so small that per-file Python work dominates, and
    threads measured slower than one loop.
    """
    train = _list_split(folder / "train")
    test = _list_split(folder / "test")
    if not train:
        raise DataError(f"{folder / 'train'} has no class folders: expected train/<class>/*")
    missing = sorted(set(train) - set(test))
    if missing:
        raise DataError(
            f"class {missing[0]!r} is in {folder / 'train'} but missing from "
            f"{folder / 'test'}: both splits need the same class folders"
        )
    extra = sorted(set(test) - set(train))
    if extra:
        raise DataError(
            f"class {extra[0]!r} is in {folder / 'test'} but missing from "
            f"{folder / 'train'}: both splits need the same class folders"
        )
    classes = tuple(sorted(train))
    total = sum(len(v) for v in train.values()) + sum(len(v) for v in test.values())
    with tqdm(
        total=total, desc="decoding CIFAR-10 images", unit="img", disable=not progress
    ) as bar:
        train_x, train_y = _decode_split(train, classes, bar)
        test_x, test_y = _decode_split(test, classes, bar)
    return train_x, train_y, test_x, test_y, classes


def _decode_split(
    files: dict[str, list[str]], classes: tuple[str, ...], bar: tqdm
) -> tuple[np.ndarray, np.ndarray]:
    count = sum(len(v) for v in files.values())
    images = np.empty((count, _SIDE, _SIDE, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    # Round-robin over the classes (the first file of each class, then the second, ...),
    # so that the first N images of a split, as --limit-train/--limit-test take them,
    # hold every class about equally rather than only the first class folder.
    longest = max(len(v) for v in files.values())
    order = [
        (label, files[name][k])
        for k in range(longest)
        for label, name in enumerate(classes)
        if k < len(files[name])
    ]
    for i, (label, path) in enumerate(order, start=1):
        images[i - 1] = _decode_image(path)
        labels[i - 1] = label
        if i % 256 == 0:
            bar.update(256)
    bar.update(count % 256)
    return images.transpose(0, 3, 1, 2), labels


# ---------------------------------------------------------------------------------------------
# Archives


def _extract(archive: Path, target: Path, progress: bool) -> Path:
    """Unpack archive into target (once), refusing members that would land outside it."""
    if target.is_dir():
        return target
    _remove_stale_partials(target)
    staging = _make_temp_dir(target.parent, f"{target.name}.partial-{os.getpid()}-")
    try:
        with (
            tarfile.open(archive, "r:gz") as tar,
            tqdm(desc=f"unpacking {archive.name}", unit=" files", disable=not progress) as bar,
        ):
            for member in tar:
                _check_member(archive, member)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, staging, filter="data")
                elif member.isfile() or member.isdir():
                    tar.extract(member, staging)
                bar.update(1)
    except _FILTER_ERRORS as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"{archive} holds an unsafe member ({oneline(exc)}): refusing to unpack it; "
            f"unpack a trusted copy yourself and pass the folder"
        ) from exc
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _disk_problem(exc):
            raise DataError(
                f"cannot unpack {archive} into {target.parent} ({oneline(exc)}): free space "
                "there or pass --cache-dir to another folder"
            ) from exc
        raise DataError(
            f"cannot unpack {archive} ({oneline(exc)}): the archive is damaged or not a "
            f".tar.gz; get a fresh copy"
        ) from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"cannot unpack {archive} ({oneline(exc)}): the archive is damaged or not a "
            f".tar.gz; get a fresh copy"
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, target)
    except OSError:
        # Another process finished first: keep its copy.
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def _disk_problem(exc: BaseException) -> bool:
    """An OSError of the disk being written (full, over quota, read-only, not permitted)."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
    )  # fmt: skip


def _cache_unwritable(cache: Path, exc: OSError) -> str:
    return (
        f"cannot write the download into the cache {cache} ({oneline(exc)}): free space "
        "there or pass --cache-dir to another folder"
    )


def _remove_stale_partials(target: Path) -> None:
    """Delete half-unpacked copies of ``target`` left by processes that died (``kill -9``).

    Each is named ``<target>.partial-<pid>-*``; one whose process still runs is kept.
    """
    for partial in target.parent.glob(f"{target.name}.partial-*"):
        pid = partial.name[len(target.name) + len(".partial-") :].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        shutil.rmtree(partial, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(
            f"{archive} holds an unsafe path {member.name!r} (absolute or with '..'): refusing "
            f"to unpack it; unpack a trusted copy yourself and pass the folder"
        )


# ---------------------------------------------------------------------------------------------
# Array cache


def _hash_parts(parts: list[str]) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for part in parts:
        h.update(b"\0")
        h.update(part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


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


def _read_cache(cache: Path, key: str) -> Cifar10 | None:
    path = cache / f"arrays-{key}.pt"
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        result = Cifar10(
            train_images=blob["train_images"],
            train_labels=blob["train_labels"],
            test_images=blob["test_images"],
            test_labels=blob["test_labels"],
            classes=tuple(str(c) for c in blob["classes"]),
            source=f"{blob['source']} (cached in {path})",
        )
        _check_result(result)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    return result


def _check_result(r: Cifar10) -> None:
    for images, labels in ((r.train_images, r.train_labels), (r.test_images, r.test_labels)):
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, _SIDE, _SIDE):
            raise ValueError("bad images")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError("bad labels")
    if not r.classes:
        raise ValueError("no classes")


def _write_cache(cache: Path, key: str, result: Cifar10, progress: bool = False) -> None:
    """Save the decoded arrays (about 180 MB for CIFAR-10; seconds on a slow disk)."""
    with tqdm(total=1, desc=f"caching decoded arrays in {cache}", disable=not progress) as bar:
        _save_arrays(cache, key, result)
        bar.update()


def _save_arrays(cache: Path, key: str, result: Cifar10) -> None:
    path = cache / f"arrays-{key}.pt"
    blob = {
        "train_images": result.train_images,
        "train_labels": result.train_labels,
        "test_images": result.test_images,
        "test_labels": result.test_labels,
        "classes": list(result.classes),
        "source": result.source,
    }
    try:
        with staged(path, unique=True) as tmp:  # other processes may cache the same arrays
            torch.save(blob, tmp)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError
        warnings.warn(
            f"cannot write cache file {path} ({oneline(exc)}); not caching (pass --cache-dir "
            "to a writable folder to cache)",
            stacklevel=5,
        )


# ---------------------------------------------------------------------------------------------
# Small helpers


def _assemble(data: _Arrays, source: str) -> Cifar10:
    train_x, train_y, test_x, test_y, classes = data
    return Cifar10(
        train_images=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_labels=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        classes=classes,
        source=source,
    )


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create cache folder {folder} ({oneline(exc)}): pass --cache-dir (or set "
            f"CIFAR_RESNET_CACHE) to a writable folder"
        ) from exc


def _make_temp_dir(parent: Path, prefix: str) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise DataError(
            f"cannot write to cache folder {parent} ({oneline(exc)}): pass --cache-dir (or set "
            f"CIFAR_RESNET_CACHE) to a writable folder"
        ) from exc


def _stamp(archive: Path, md5: str) -> str:
    st = archive.stat()
    return f"{md5} {st.st_size} {st.st_mtime_ns}"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
