"""data/load.py (with download, archive, formats and cache): every source yields the same
tensors, the cache, and errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Served
from PIL import Image

from cifar_resnet.data import archive as data_archive
from cifar_resnet.data import download as data_download
from cifar_resnet.data import formats as data_formats
from cifar_resnet.data import load as data
from cifar_resnet.data.load import CLASSES, channel_stats, check_same_classes, load_cifar10
from cifar_resnet.errors import DataError

TRAIN_PER_CLASS = 2
TEST_PER_CLASS = 1


@dataclass
class Expected:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@pytest.fixture
def expected() -> Expected:
    rng = np.random.default_rng(1234)
    n_train = TRAIN_PER_CLASS * len(CLASSES)
    n_test = TEST_PER_CLASS * len(CLASSES)
    pixels = rng.integers(0, 256, size=(n_train + n_test, 3, 32, 32), dtype=np.uint8)
    # Round-robin over the classes, which is also the order in which an image tree is read.
    return Expected(
        train_images=pixels[:n_train],
        train_labels=np.tile(np.arange(len(CLASSES)), TRAIN_PER_CLASS),
        test_images=pixels[n_train:],
        test_labels=np.tile(np.arange(len(CLASSES)), TEST_PER_CLASS),
    )


def _save_png(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(path)


def write_tree(root: Path, exp: Expected) -> Path:
    for split, images, labels in (
        ("train", exp.train_images, exp.train_labels),
        ("test", exp.test_images, exp.test_labels),
    ):
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            _save_png(root / split / CLASSES[label] / f"{i:04d}.png", img)
    # Hidden entries must be ignored.
    (root / "train" / CLASSES[0] / ".DS_Store").write_bytes(b"not an image")
    (root / ".hidden").mkdir()
    return root


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_pickles(folder: Path, exp: Expected) -> Path:
    folder.mkdir(parents=True)
    per_batch = len(exp.train_images) // 5
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "data": exp.train_images[part].reshape(-1, 3072),
                "labels": [int(x) for x in exp.train_labels[part]],
            },
        )
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "data": exp.test_images.reshape(-1, 3072),
            "labels": [int(x) for x in exp.test_labels],
        },
    )
    _dump(folder / "batches.meta", {"label_names": list(CLASSES), "num_vis": 3072})
    return folder


def write_tgz(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return out


def assert_matches(result: data.Cifar10, exp: Expected, label: str = "") -> None:
    assert result.classes == CLASSES, label
    assert result.train_images.dtype == torch.uint8, label
    assert result.test_images.dtype == torch.uint8, label
    assert result.train_labels.dtype == torch.int64, label
    assert result.test_labels.dtype == torch.int64, label
    assert result.train_images.shape == (len(exp.train_images), 3, 32, 32), label
    assert result.test_images.shape == (len(exp.test_images), 3, 32, 32), label
    assert torch.equal(result.train_images, torch.from_numpy(exp.train_images)), label
    assert torch.equal(result.train_labels, torch.from_numpy(exp.train_labels)), label
    assert torch.equal(result.test_images, torch.from_numpy(exp.test_images)), label
    assert torch.equal(result.test_labels, torch.from_numpy(exp.test_labels)), label


def assert_one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert message
    assert "\n" not in message
    return message


def serve_fake_official(served: Served, tmp_path: Path, exp: Expected) -> tuple[str, str]:
    pickles = write_pickles(tmp_path / "fake" / "cifar-10-batches-py", exp)
    archive = write_tgz(pickles, served.root / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return f"{served.base_url}/cifar-10-python.tar.gz", md5


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


# ---------------------------------------------------------------------------------------------
# Every source gives the same tensors


def test_all_sources_agree(tmp_path: Path, expected: Expected, http_root: Served) -> None:
    tree = write_tree(tmp_path / "src" / "cifar10-png", expected)
    pickles = write_pickles(tmp_path / "src" / "cifar-10-batches-py", expected)
    pickles_tgz = write_tgz(pickles, tmp_path / "pickles.tar.gz")
    tree_tgz = write_tgz(tree, tmp_path / "tree.tgz")
    url, md5 = serve_fake_official(http_root, tmp_path, expected)

    results = {
        "tree": load_cifar10(tree, tmp_path / "c1", progress=False),
        "pickles": load_cifar10(pickles, tmp_path / "c2", progress=False),
        "pickles_tgz": load_cifar10(pickles_tgz, tmp_path / "c3", progress=False),
        "tree_tgz": load_cifar10(tree_tgz, tmp_path / "c4", progress=False),
        "download": load_cifar10(None, tmp_path / "c5", url=url, md5=md5, progress=False),
    }
    for name, result in results.items():
        assert_matches(result, expected, name)
        assert result.source
    assert "downloaded from" in results["download"].source


def test_parent_folder_of_tree_and_of_pickles(tmp_path: Path, expected: Expected) -> None:
    write_tree(tmp_path / "a" / "cifar10-png", expected)
    write_pickles(tmp_path / "b" / "cifar-10-batches-py", expected)
    assert_matches(load_cifar10(tmp_path / "a", tmp_path / "cache", progress=False), expected)
    assert_matches(load_cifar10(tmp_path / "b", tmp_path / "cache", progress=False), expected)


def test_download_is_not_repeated(tmp_path: Path, expected: Expected, http_root: Served) -> None:
    url, md5 = serve_fake_official(http_root, tmp_path, expected)
    cache = tmp_path / "cache"
    load_cifar10(cache_dir=cache, url=url, md5=md5, progress=False)
    seen = len(http_root.requests)
    assert seen >= 1
    assert (cache / "cifar-10-batches-py").is_dir()
    again = load_cifar10(cache_dir=cache, url=url, md5=md5, progress=False)
    assert len(http_root.requests) == seen
    assert_matches(again, expected)


def test_runs_that_need_the_download_at_once_download_it_once(
    tmp_path: Path, expected: Expected, http_root: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun's ranks on a first run: every process finds no copy, then they take turns, and
    # the ones after the first find its verified copy instead of downloading and replacing it.
    url, md5 = serve_fake_official(http_root, tmp_path, expected)
    load_cifar10(cache_dir=tmp_path / "alone", url=url, md5=md5, progress=False)
    one_download = len(http_root.requests)  # torchvision asks for redirects first
    cache = tmp_path / "cache"
    cache.mkdir()
    verified, first_look = data_download._verified, threading.Barrier(2, timeout=30)
    looked: set[int] = set()

    def both_look_before_either_downloads(*args: object) -> bool:
        answer = verified(*args)
        if threading.get_ident() not in looked:
            looked.add(threading.get_ident())
            first_look.wait()
        return answer

    monkeypatch.setattr(data_download, "_verified", both_look_before_either_downloads)
    results: list[object] = [None, None]

    def load(i: int) -> None:
        try:
            results[i] = load_cifar10(cache_dir=cache, url=url, md5=md5, progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread's assertions
            results[i] = exc

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for result in results:
        assert isinstance(result, data.Cifar10), result
        assert_matches(result, expected)
    assert len(http_root.requests) == 2 * one_download
    assert not [p for p in cache.iterdir() if p.name.startswith("download-")]


# ---------------------------------------------------------------------------------------------
# Array cache


@pytest.mark.parametrize("kind", ["tree", "pickles", "tree_tgz"])
def test_cache_is_used_on_second_call(
    tmp_path: Path, expected: Expected, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "pickles":
        source = write_pickles(tmp_path / "cifar-10-batches-py", expected)
    else:
        source = write_tree(tmp_path / "tree", expected)
        if kind == "tree_tgz":
            source = write_tgz(source, tmp_path / "tree.tar.gz")
    cache = tmp_path / "cache"
    first = load_cifar10(source, cache, progress=False)
    assert len(list(cache.glob("arrays-*.pt"))) == 1
    assert not list(cache.glob("extract-*"))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_formats, "_read_image_tree", boom)
    monkeypatch.setattr(data_formats, "_read_pickles", boom)
    monkeypatch.setattr(data_archive, "_extract", boom)
    second = load_cifar10(source, cache, progress=False)
    assert_matches(second, expected)
    assert torch.equal(first.train_images, second.train_images)
    assert "cached" in second.source


def test_two_loads_of_one_archive_at_once_do_not_share_the_unpacked_files(
    tmp_path: Path, expected: Expected, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs started together on one archive both miss the array cache and unpack it. The
    # first to finish removes what it unpacked; the other must still be reading its own copy.
    source = write_tgz(write_tree(tmp_path / "tree", expected), tmp_path / "tree.tar.gz")
    cache = tmp_path / "cache"
    decode = data_formats._decode
    folders: list[Path] = []

    def another_load_runs_first(kind: str, folder: Path, progress: bool):
        folders.append(folder)
        if len(folders) == 1:  # this load has unpacked; another does all its work meanwhile
            assert_matches(load_cifar10(source, cache, progress=False), expected, "other")
            assert folder.is_dir(), "the other load removed the files this one is reading"
        return decode(kind, folder, progress)

    monkeypatch.setattr(data_formats, "_decode", another_load_runs_first)
    assert_matches(load_cifar10(source, cache, progress=False), expected, "first")
    assert len(folders) == 2 and len({f.parts[len(cache.parts)] for f in folders}) == 2
    assert not list(cache.glob("extract-*"))


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path, expected: Expected) -> None:
    tree = write_tree(tmp_path / "tree", expected)
    cache = tmp_path / "cache"
    load_cifar10(tree, cache, progress=False)
    changed = 255 - expected.test_images[3]
    target = tree / "test" / CLASSES[3] / "0003.png"
    before = target.stat().st_mtime_ns
    _save_png(target, changed)
    os.utime(target, ns=(before + 5_000_000_000, before + 5_000_000_000))
    result = load_cifar10(tree, cache, progress=False)
    assert torch.equal(result.test_images[3], torch.from_numpy(changed))
    assert len(list(cache.glob("arrays-*.pt"))) == 2


def test_corrupt_cache_is_rebuilt(tmp_path: Path, expected: Expected) -> None:
    pickles = write_pickles(tmp_path / "cifar-10-batches-py", expected)
    cache = tmp_path / "cache"
    load_cifar10(pickles, cache, progress=False)
    (cached,) = cache.glob("arrays-*.pt")
    cached.write_bytes(b"garbage")
    assert_matches(load_cifar10(pickles, cache, progress=False), expected)
    assert cached.stat().st_size > 1000


def test_data_folder_is_not_written(tmp_path: Path, expected: Expected) -> None:
    tree = write_tree(tmp_path / "tree", expected)
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    load_cifar10(tree, tmp_path / "cache", progress=False)
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# Download errors


def test_md5_mismatch(tmp_path: Path, expected: Expected, http_root: Served) -> None:
    url, _ = serve_fake_official(http_root, tmp_path, expected)
    cache = tmp_path / "cache"
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DataError) as err:
        load_cifar10(cache_dir=cache, url=url, md5=wrong, progress=False)
    message = assert_one_line(err)
    assert wrong in message
    assert "--data-dir" in message
    assert not (cache / "cifar-10-batches-py").exists()
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_download_refused(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(DataError) as err:
        load_cifar10(cache_dir=tmp_path / "cache", url=url, md5="0" * 32, progress=False)
    message = assert_one_line(err)
    assert "--data-dir" in message
    assert url in message


# ---------------------------------------------------------------------------------------------
# Bad local data


def _missing(tmp_path: Path, exp: Expected) -> Path:
    return tmp_path / "nowhere"


def _empty(tmp_path: Path, exp: Expected) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _unrelated(tmp_path: Path, exp: Expected) -> Path:
    (tmp_path / "stuff" / "things").mkdir(parents=True)
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    return tmp_path / "stuff"


def _class_missing_from_test(tmp_path: Path, exp: Expected) -> Path:
    tree = write_tree(tmp_path / "tree", exp)
    for f in (tree / "test" / "frog").iterdir():
        f.unlink()
    (tree / "test" / "frog").rmdir()
    return tree


def _non_image(tmp_path: Path, exp: Expected) -> Path:
    tree = write_tree(tmp_path / "tree", exp)
    (tree / "train" / "cat" / "zz_notes.png").write_text("this is text")
    return tree


def _wrong_size(tmp_path: Path, exp: Expected) -> Path:
    tree = write_tree(tmp_path / "tree", exp)
    Image.fromarray(np.zeros((32, 31, 3), dtype=np.uint8)).save(tree / "test" / "dog" / "x.png")
    return tree


def _label_out_of_range(tmp_path: Path, exp: Expected) -> Path:
    folder = write_pickles(tmp_path / "cifar-10-batches-py", exp)
    with (folder / "data_batch_3").open("rb") as f:
        batch = pickle.load(f)
    batch["labels"][1] = 10
    _dump(folder / "data_batch_3", batch)
    return folder


def _corrupt_archive(tmp_path: Path, exp: Expected) -> Path:
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    return path


def _unsafe_archive(tmp_path: Path, exp: Expected) -> Path:
    payload = tmp_path / "payload.txt"
    payload.write_text("escape")
    path = tmp_path / "unsafe.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    return path


def _plain_file(tmp_path: Path, exp: Expected) -> Path:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_missing, "does not exist"),
        (_empty, "is empty"),
        (_unrelated, "no CIFAR-10 data"),
        (_class_missing_from_test, "'frog'"),
        (_non_image, "not an image"),
        (_wrong_size, "31x32"),
        (_label_out_of_range, "data_batch_3"),
        (_corrupt_archive, "broken.tar.gz"),
        (_unsafe_archive, "unsafe"),
        (_plain_file, ".tar.gz"),
    ],
)
def test_bad_data_raises_one_line_error(
    tmp_path: Path, expected: Expected, make, needle: str
) -> None:
    source = make(tmp_path, expected)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_cifar10(source, cache, progress=False)
    message = assert_one_line(err)
    assert needle in message
    assert not (tmp_path / "escaped.txt").exists()
    if cache.exists():
        assert not [p for p in cache.iterdir() if p.name.startswith("extract-")]


def test_non_image_message_names_file(tmp_path: Path, expected: Expected) -> None:
    tree = _non_image(tmp_path, expected)
    with pytest.raises(DataError, match="zz_notes.png"):
        load_cifar10(tree, tmp_path / "cache", progress=False)


def _odd_name(tmp_path: Path, exp: Expected) -> Path:
    tree = write_tree(tmp_path / "tree", exp)
    (tree / "train" / "cat" / "my cat (1); copy.png").write_text("this is text")
    return tree


@pytest.mark.parametrize(
    ("make", "member"),
    [
        (_non_image, "tree/train/cat/zz_notes.png"),
        (_odd_name, "tree/train/cat/my cat (1); copy.png"),
        (_wrong_size, "tree/test/dog/x.png"),
        (_label_out_of_range, "cifar-10-batches-py/data_batch_3"),
    ],
)
def test_a_bad_file_inside_an_archive_is_named_as_its_member(
    tmp_path: Path, expected: Expected, make, member: str
) -> None:
    source = make(tmp_path, expected)
    packed = write_tgz(source, tmp_path / "packed.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_cifar10(packed, cache, progress=False)
    message = assert_one_line(err)
    # The unpacked copy is gone by the time the message is read: it names the archive's member.
    assert f"{packed}/{member} " in message
    assert str(cache) not in message
    assert not list(cache.iterdir())
    # Called from Python, the traceback's cause holds no deleted path either.
    assert str(cache) not in str(err.value.__cause__ or "")


def test_label_error_mentions_value(tmp_path: Path, expected: Expected) -> None:
    folder = _label_out_of_range(tmp_path, expected)
    with pytest.raises(DataError, match="label 10"):
        load_cifar10(folder, tmp_path / "cache", progress=False)


# ---------------------------------------------------------------------------------------------
# Helpers


def test_channel_stats_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(37, 3, 5, 6), dtype=np.uint8)
    x[:, 2] //= 3  # make the channels differ
    mean, std = channel_stats(torch.from_numpy(x))
    assert mean.dtype == torch.float32 and std.dtype == torch.float32
    assert mean.shape == (3,) and std.shape == (3,)
    as_float = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean.numpy(), as_float.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), as_float.std(axis=(0, 2, 3)), rtol=1e-6)


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CIFAR_RESNET_CACHE", str(tmp_path / "here"))
    assert data.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("CIFAR_RESNET_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "cifar_resnet"


# ---------------------------------------------------------------------------------------------
# Real data


def _real_archive() -> Path:
    env = os.environ.get("CIFAR10_ARCHIVE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
def test_real_cifar10_archive(tmp_path: Path) -> None:
    archive = _real_archive()
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 archive {archive} absent")
    cache = tmp_path / "cache"
    first = load_cifar10(archive, cache, progress=False)
    assert first.classes == CLASSES
    assert first.train_images.shape == (50_000, 3, 32, 32)
    assert first.test_images.shape == (10_000, 3, 32, 32)
    assert first.train_labels.bincount().tolist() == [5_000] * 10
    assert first.test_labels.bincount().tolist() == [1_000] * 10
    # the first N images of a split (what --limit-train takes) hold every class equally
    assert first.train_labels[:1000].bincount().tolist() == [100] * 10
    assert first.test_labels[:500].bincount().tolist() == [50] * 10
    mean, std = channel_stats(first.train_images)
    torch.testing.assert_close(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-3, rtol=0)
    torch.testing.assert_close(std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=2e-3, rtol=0)

    start = time.perf_counter()
    second = load_cifar10(archive, cache, progress=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.train_labels, second.train_labels)
    assert torch.equal(first.test_images, second.test_images)
    assert torch.equal(first.test_labels, second.test_labels)


def test_data_of_other_classes_is_refused_naming_both():
    check_same_classes(list(CLASSES), CLASSES)  # the same names in the same order
    with pytest.raises(DataError) as info:
        check_same_classes(CLASSES[::-1], CLASSES, "the run's")
    message = str(info.value)
    assert "differ from the run's" in message and "truck, ship" in message
    assert "airplane, automobile" in message and "--data-dir" in message
