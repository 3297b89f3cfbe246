"""What a CIFAR-10 copy on disk looks like, and how to read it into arrays.

Owns the two layouts (the official ``cifar-10-batches-py`` pickles and an image-folder tree
``train/<class>/*`` + ``test/<class>/*``): finding which one a folder holds, and decoding it
into ``_Arrays`` (uint8 images in (N, 3, 32, 32), int64 labels, class names). The pickles are
read with a few lines of our own code rather than torchvision's ``CIFAR10`` class, which
hard-codes the MD5 of every official file (so refuses a test fixture or a subset) and hands
out one PIL image per item. Pickles can run code when loaded: only read copies you trust.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import DataError, oneline

_PICKLE_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_PICKLE_FILES = (*_TRAIN_BATCHES, _TEST_BATCH, _META)
_SIDE = 32
_MAX_IMAGE_BYTES = 1 << 20
_LOCAL_COPY_HINT = (
    "pass --data-dir pointing at a local copy (a cifar-10-batches-py folder, an image-folder "
    "tree train/<class>/*, test/<class>/*, or a .tar.gz of either)"
)

# Training images, training labels, test images, test labels, class names.
_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


# ---------------------------------------------------------------------------------------------
# Layout detection


def _describe(kind: str) -> str:
    """How a layout found by ``_find_layout`` is named in ``Cifar10.source``."""
    return "cifar-10-batches-py pickles" if kind == "pickles" else "image folders"


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


def _decode(kind: str, folder: Path, progress: bool) -> _Arrays:
    """Read the folder ``_find_layout`` returned, with the reader of its layout."""
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
