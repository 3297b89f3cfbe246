import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, run_cli

from cifar_resnet.data import load as data

TINY = [*TINY_RUN, "--quiet", "--no-report"]


def _assert_one_line_error(code, err, *needles):
    """Exit 2 and exactly one error line, the last thing printed (progress bars may precede it)."""
    assert code == 2
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]], err
    assert lines[-1].startswith("cifar-resnet: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_summary_prints_the_reference_total(capsys):
    code, out, _ = run_cli(["summary"], capsys)
    assert code == 0
    assert "Total params: 6,573,130" in out
    assert out.startswith("recipe spec: width 1, norm batch,")


def test_summary_shows_a_recipes_model_options_and_its_network(capsys):
    code, out, _ = run_cli(["summary", "--recipe", "page-fast", "--width", "0.5"], capsys)
    assert code == 0
    first = out.splitlines()[0]
    for shown in (
        "recipe page-fast",
        "width 0.5",
        "activation celu",
        "celu_alpha 0.3",
        "ghost_batch 32",
        "freeze_bn_scale yes",
        "whiten yes",
        "logit_scale 0.0625",
    ):
        assert shown in first  # fmt: skip
    assert "PatchWhitening" in out and "GhostBatchNorm" in out and "CELU" in out
    assert "Non-trainable params" in out
    code, _, err = run_cli(["summary", "--recipe", "page-fast", "--norm", "group"], capsys)
    assert code == 2 and "--ghost-batch" in err and len(err.strip().splitlines()) == 1


def test_train_writes_a_run_and_refuses_to_overwrite_it(pickle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data-dir",
        str(pickle_dir.parent),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--max-lr",
        "2e-3",
        "--out",
        str(out),
        *TINY,
    ]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    assert "test accuracy" in stdout
    final = json.loads((out / "final.json").read_text())
    assert 0 <= final["test_acc"] <= 1 and final["lr_source"] == "given"
    before = _snapshot(out)

    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, "already holds a run", "--force")
    assert _snapshot(out) == before

    code, _, _ = run_cli([*argv, "--force", "--seed", "3"], capsys)
    assert code == 0
    assert json.loads((out / "final.json").read_text())["seed"] == 3


def test_train_without_lr_runs_the_range_test_and_plots_it(pickle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        [
            "train",
            "--data-dir",
            str(pickle_dir),
            "--cache-dir",
            str(tmp_path / "c"),
            "--finder-num-iter",
            "12",
            "--out",
            str(out),
            *TINY,
        ],
        capsys,
    )
    assert code == 0
    assert "(found)" in stdout
    assert (out / "lr_finder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "final.json").read_text())["lr_source"] == "found"


def test_lr_find_writes_json_and_png(pickle_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    code, stdout, _ = run_cli(
        [
            "lr-find",
            "--data-dir",
            str(pickle_dir),
            "--cache-dir",
            str(tmp_path / "c"),
            "--width",
            "0.25",
            "--batch-size",
            "25",  # three seeds of ten small steps: the sweep's shape is not what is checked
            "--num-iter",
            "10",
            "--start-lr",
            "1e-5",
            "--end-lr",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads((out / "lr_finder.json").read_text())
    assert f"LRMAX {result['max_lr']:.3e}" in stdout
    assert result["lrs"][0] == pytest.approx(1e-5)
    assert (out / "lr_finder.png").stat().st_size > 1000
    # three seeds by default: their choices and spread, the first being train's own choice
    spread = result["spread"]
    assert spread["seeds"] == [0, 1, 2] and spread["max_lrs"][0] == result["max_lr"]
    assert spread["ratio"] == pytest.approx(max(spread["max_lrs"]) / min(spread["max_lrs"]))
    assert f"spread {spread['ratio']:.2f}x" in stdout and "seed 2: " in stdout


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--epochs", "0"], ["--epochs"]),
        (["--epochs", "3", "--peak-epoch", "4"], ["--peak-epoch"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--epochs", "abc"], ["--epochs", "abc"]),
        (["--max-lr", "-1"], ["--max-lr"]),
        (["--width", "x"], ["--width"]),
        (["--norm", "instance"], ["--norm"]),
        (["--bogus"], ["--bogus"]),
    ],
)
def test_bad_flags_are_one_line_errors(extra, needles, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(tmp_path), "--out", str(out), *extra], capsys
    )
    _assert_one_line_error(code, err, *needles)
    assert not (out / "config.json").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "--finder-start-lr"),
        (["--start-lr", "0"], "--finder-start-lr"),
        (["--num-iter", "5"], "--finder-num-iter"),
        (["--end-lr", "-2"], "--finder-end-lr"),
    ],
)
def test_lr_find_flags_are_validated(extra, needle, tmp_path, capsys):
    code, _, err = run_cli(["lr-find", "--out", str(tmp_path / "o"), *extra], capsys)
    _assert_one_line_error(code, err, needle)


def _bad_tree(tmp_path: Path, case: str) -> Path:
    from PIL import Image

    root = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "0.png")
    if case == "missing-class":
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
        (root / "test" / "dog").rmdir()
    elif case == "not-image":
        (root / "train" / "cat" / "1.png").write_text("hello")
    elif case == "empty":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "missing":
        root = tmp_path / "nowhere"
    return root


@pytest.mark.parametrize(
    ("case", "needle"),
    [("missing", "nowhere"), ("empty", "empty"), ("missing-class", "dog"), ("not-image", "1.png")],
)
def test_bad_data_is_a_one_line_error_and_an_earlier_run_is_kept(case, needle, tmp_path, capsys):
    root = _bad_tree(tmp_path, case)
    keep = tmp_path / "keep.txt"
    keep.write_text("earlier")
    code, _, err = run_cli(
        [
            "train",
            "--data-dir",
            str(root),
            "--cache-dir",
            str(tmp_path / "c"),
            "--max-lr",
            "1e-3",
            "--out",
            str(tmp_path / "run"),
            *TINY,
        ],
        capsys,
    )
    _assert_one_line_error(code, err, needle)
    assert keep.read_text() == "earlier"
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_checksum_mismatch_and_offline_download_are_one_line_errors(
    pickle_dir, tmp_path, capsys, monkeypatch, http_root
):
    archive = http_root.root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(pickle_dir, arcname="cifar-10-batches-py")
    wrong = hashlib.md5(b"not the archive").hexdigest()
    url = f"{http_root.base_url}/cifar-10-python.tar.gz"
    patched = functools.partial(data.load_cifar10, url=url, md5=wrong)
    monkeypatch.setattr("cifar_resnet.training.setup.load_cifar10", patched)
    argv = [
        "train",
        "--cache-dir",
        str(tmp_path / "c"),
        "--max-lr",
        "1e-3",
        "--out",
        str(tmp_path / "run"),
        *TINY,
    ]
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, wrong)

    offline = functools.partial(data.load_cifar10, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setattr("cifar_resnet.training.setup.load_cifar10", offline)
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, "--data-dir")


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar_resnet",
            "train",
            "--data-dir",
            str(tmp_path / "none"),
            "--max-lr",
            "1e-3",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _robustness_case(case: str, tmp_path: Path, pickle_dir: Path) -> list[str]:
    """Set up one bad input; returns the CLI arguments that meet it."""
    import pickle

    from PIL import Image

    common = ["--cache-dir", str(tmp_path / "c"), "--max-lr", "1e-3", *TINY]
    if case == "resume-without-checkpoint":
        (tmp_path / "empty-run").mkdir()
        return ["train", "--resume", str(tmp_path / "empty-run")]
    if case in ("resume-corrupt", "resume-truncated"):
        ckpt = tmp_path / "bad-run" / "checkpoints" / "last.pt"
        ckpt.parent.mkdir(parents=True)
        buf = io.BytesIO()
        torch.save({"format": "cifar-resnet/1", "model": {"w": torch.zeros(1000)}}, buf)
        raw = buf.getvalue()
        ckpt.write_bytes(raw[: len(raw) // 3] if case == "resume-truncated" else raw[::-1])
        return ["train", "--resume", str(tmp_path / "bad-run")]
    if case == "unwritable-out":
        (tmp_path / "blocker").write_text("a file")
        return [
            "train",
            "--data-dir",
            str(pickle_dir),
            "--out",
            str(tmp_path / "blocker" / "run"),
            *common,
        ]
    if case == "wrong-image-size":
        for split in ("train", "test"):
            folder = tmp_path / "tree" / split / "cat"
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(folder / "0.png")
        Image.new("RGB", (48, 40)).save(tmp_path / "tree" / "train" / "cat" / "1.png")
        return [
            "train",
            "--data-dir",
            str(tmp_path / "tree"),
            "--out",
            str(tmp_path / "run"),
            *common,
        ]
    if case == "label-out-of-range":
        batch = pickle_dir / "data_batch_2"
        content = pickle.loads(batch.read_bytes())
        content["labels"][0] = 10
        batch.write_bytes(pickle.dumps(content))
        return ["train", "--data-dir", str(pickle_dir), "--out", str(tmp_path / "run"), *common]
    if case == "negative-seed":
        return [
            "train",
            "--data-dir",
            str(pickle_dir),
            "--seed",
            "-3",
            "--out",
            str(tmp_path / "run"),
        ]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("resume-without-checkpoint", "no checkpoint"),
        ("resume-corrupt", "last.pt"),
        ("resume-truncated", "last.pt"),
        ("unwritable-out", "blocker"),
        ("wrong-image-size", "1.png"),
        ("label-out-of-range", "data_batch_2"),
        ("negative-seed", "--seed"),
    ],
)
def test_robustness_inputs_are_one_line_errors_and_keep_earlier_files(
    case, needle, tmp_path, pickle_dir, capsys
):
    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / "final.json").write_text('{"test_acc": 0.9}')
    before = _snapshot(tmp_path)
    argv = _robustness_case(case, tmp_path, pickle_dir)
    prepared = _snapshot(tmp_path)
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, needle)
    assert _snapshot(earlier) == {"final.json": b'{"test_acc": 0.9}'}
    after = _snapshot(tmp_path)
    for name, content in prepared.items():  # nothing that existed was changed
        if name in before or not name.startswith("c/"):
            assert after.get(name) == content, name
