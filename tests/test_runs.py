"""runs.py and the run folder it trains into, through the command line: nothing a user types
destroys a run (hostile flags, shared folders, full disks, kill -9).

Every refusal is exit 2 with one line on stderr, and every file of an earlier run is
byte-identical afterwards (compared by SHA-256 before and after).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import CliChild, make_synthetic, run_cli, write_pickles

from cifar_resnet import files
from cifar_resnet.records import folder_lock, layout, run_folder

SRC = Path(__file__).resolve().parents[1] / "src"
# The threads of the pytest process too: runs compared bit for bit must split their work alike.
THREADS = torch.get_num_threads()
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(THREADS)}
# A tiny run: 3 epochs of 2 steps (the 200 images of data_dir); the LR given, so no range
# test; the precision given, as "auto" may time its probe differently in each process on a
# CPU that probes.
RUN = ["--width", "0.25", "--epochs", "3", "--peak-epoch", "1", "--batch-size", "100",
       "--max-lr", "2e-3", "--device", "cpu", "--precision", "fp32", "--seed", "5",
       "--quiet"]  # fmt: skip


def _checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (the lock file aside: it only holds a PID)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != layout.LOCK_FILE
    }


def _one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cifar-resnet: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_pickles(tmp_path_factory.mktemp("data"), make_synthetic(200, 100))


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    cache = data_dir / "cache"
    return ["train", "--data-dir", str(data_dir), "--cache-dir", str(cache), "--out", str(out),
            *RUN, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """An unbroken run with a report: the earlier run of the refusal tests, and the target
    that interrupted runs must end at."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code, err = _run(_args(data_dir, out))
    assert code == 0, err
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def _same_final_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture
def earlier(reference, tmp_path) -> Path:
    """A copy of the finished reference run, to be attacked."""
    out = tmp_path / "earlier"
    for path in reference.rglob("*"):
        if path.is_file() and path.name != layout.LOCK_FILE:
            target = out / path.relative_to(reference)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return out


# ---------------------------------------------------------------------------------------------
# 1. --force replaces a run only once the new one has a checkpoint; lr-find keeps to its files


def test_force_with_bad_data_keeps_the_earlier_run(earlier, tmp_path, capsys):
    before = _checksums(earlier)
    argv = _args(tmp_path / "nope", earlier, "--force")
    _one_line(*run_cli(argv, capsys)[::2], "does not exist")
    assert _checksums(earlier) == before
    assert not list(earlier.glob(".replaced-*"))


def test_force_that_fails_before_its_first_checkpoint_puts_the_earlier_run_back(
    earlier, data_dir, capsys, monkeypatch
):
    before = _checksums(earlier)

    def no_space(self, state, name="last.pt"):
        raise run_folder.CheckpointError(f"cannot write {self.path / name} (No space left)")

    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", no_space)
    code, _, err = run_cli(_args(data_dir, earlier, "--force", "--seed", "9"), capsys)
    _one_line(code, err, "No space left")
    assert _checksums(earlier) == before  # the new run's config.json gave way again
    assert not list(earlier.glob(".replaced-*"))


def test_force_replaces_the_earlier_run_once_the_new_one_checkpoints(earlier, data_dir, capsys):
    code, _, err = run_cli(
        _args(data_dir, earlier, "--force", "--seed", "9", "--no-report"), capsys
    )
    assert code == 0, err
    assert json.loads((earlier / "final.json").read_text())["seed"] == 9
    assert not (earlier / "report.html").exists()  # the earlier run's report went with it
    assert not list(earlier.glob(".replaced-*"))


def test_a_force_killed_before_its_first_checkpoint_gives_the_earlier_run_back(
    earlier, data_dir, capsys
):
    """kill -9 while a forced run replaces an earlier one, before its first checkpoint: the
    next process to open the folder (a resume here) finds the earlier run as it was."""
    before = _checksums(earlier)
    proc = _start(_args(data_dir, earlier, "--force", "--seed", "9"))
    _wait_for(lambda: (earlier / "config.json").exists() and list(earlier.glob(".replaced-*")),
              proc)  # fmt: skip
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list(earlier.glob(".replaced-*"))  # the earlier run waits aside
    code, _, err = run_cli(["train", "--resume", str(earlier), "--quiet"], capsys)
    _one_line(code, err, "already finished")  # the earlier, finished run: nothing to resume
    assert _checksums(earlier) == before and not list(earlier.glob(".replaced-*"))


def test_resuming_a_checkpoint_that_is_not_its_runs_last_needs_a_new_folder(
    earlier, tmp_path, capsys
):
    before = _checksums(earlier)
    backup = earlier / "checkpoints" / "epoch1.pt"  # a copy kept beside the run's own
    backup.write_bytes((earlier / "checkpoints" / "last.pt").read_bytes())
    for extra in ([], ["--out", str(earlier)]):
        code, _, err = run_cli(["train", "--resume", str(backup), "--quiet", *extra], capsys)
        _one_line(code, err, "epoch1.pt", "new")
    backup.unlink()
    assert _checksums(earlier) == before


def test_lr_find_never_touches_a_training_run(earlier, data_dir, capsys):
    before = _checksums(earlier)
    argv = ["lr-find", "--data-dir", str(data_dir), "--cache-dir", str(data_dir / "cache"),
            "--out", str(earlier), "--width", "0.25", "--batch-size", "100",
            "--finder-num-iter", "12", "--seeds", "1", "--force", "--quiet"]  # fmt: skip
    _one_line(*run_cli(argv, capsys)[::2], "holds a training run")
    assert _checksums(earlier) == before


def test_lr_find_force_replaces_its_own_files_only_on_success(data_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    argv = ["lr-find", "--data-dir", str(data_dir), "--cache-dir", str(data_dir / "cache"),
            "--out", str(out), "--width", "0.25", "--batch-size", "25",
            "--finder-num-iter", "10", "--seeds", "1", "--quiet"]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    before = _checksums(out)
    bad = [*argv, "--force", "--data-dir", str(tmp_path / "nope")]
    _one_line(*run_cli(bad, capsys)[::2], "does not exist")
    assert _checksums(out) == before
    assert run_cli([*argv, "--force", "--seed", "4"], capsys)[0] == 0
    after = _checksums(out)
    assert after["notes.txt"] == before["notes.txt"]
    assert after["lr_finder.json"] != before["lr_finder.json"]


# ---------------------------------------------------------------------------------------------
# 2. A checkpoint outside its run folder resumes only into an explicit --out


def test_a_loose_checkpoint_needs_out_and_its_neighbours_are_kept(
    reference, data_dir, tmp_path, capsys
):
    backups = tmp_path / "some" / "backups"
    backups.mkdir(parents=True)
    state = torch.load(reference / "checkpoints" / "last.pt", weights_only=False)
    state["epoch"], state["metrics"] = 1, state["metrics"][:1]  # pretend: saved after epoch 1
    torch.save(state, backups / "epoch1.pt")
    (tmp_path / "some" / "config.json").write_text('{"mine": true}')
    before = _checksums(tmp_path / "some")
    code, _, err = run_cli(["train", "--resume", str(backups / "epoch1.pt")], capsys)
    _one_line(code, err, "not inside a run folder", "--out")
    assert _checksums(tmp_path / "some") == before
    out = tmp_path / "continued"
    code, stdout, err = run_cli(
        ["train", "--resume", str(backups / "epoch1.pt"), "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, err
    assert _checksums(tmp_path / "some") == before
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# 3. One writer per run folder: an OS lock that dies with its process


def _start(argv: list[str]) -> CliChild:
    return CliChild(argv, THREADS)


def _run(argv: list[str]) -> tuple[int, str]:
    """Run ``cifar-resnet ARGV`` to its end in a forked process: (exit code, output)."""
    child = CliChild(argv, THREADS)
    _, err = child.communicate(timeout=300)
    return child.returncode, err


def _wait_for(predicate, proc: CliChild, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_kill_9_leaves_no_lock(
    data_dir, tmp_path, capsys
):
    out = tmp_path / "shared"
    first = _start([*_args(data_dir, out, "--no-report"), "--epochs", "6"])
    lock = out / layout.LOCK_FILE
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first)
    _wait_for(lambda: (out / "checkpoints" / "last.pt").exists(), first)
    first.send_signal(signal.SIGSTOP)  # alive, holding the lock, for as long as the checks take
    for extra in ([], ["--force"]):
        code, _, err = run_cli(_args(data_dir, out, "--no-report", *extra), capsys)
        _one_line(code, err, f"PID {first.pid}", "another cifar-resnet process")
    for argv in (["train", "--resume", str(out), "--quiet"], ["report", str(out), "--quiet"]):
        code, _, err = run_cli(argv, capsys)
        _one_line(code, err, f"PID {first.pid}")
    assert not (out / "report.html").exists()
    finder = tmp_path / "finder"  # an lr-find folder being written (here, by this process)
    finder.mkdir()
    held = folder_lock.FolderLock(finder)
    argv = ["lr-find", "--data-dir", str(data_dir), "--cache-dir", str(data_dir / "cache"),
            "--out", str(finder), "--quiet"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    _one_line(code, err, f"PID {os.getpid()}")
    held.release()
    assert not (finder / "lr_finder.json").exists()
    first.kill()
    first.communicate(timeout=60)
    code, _, err = run_cli(["train", "--resume", str(out), "--quiet", "--epochs", "6"], capsys)
    _one_line(code, err, "--epochs")  # settings are the run's own
    code, _, err = run_cli(["train", "--resume", str(out), "--quiet", "--no-report"], capsys)
    assert code == 0, err  # the lock died with its process


# ---------------------------------------------------------------------------------------------
# 4. Every number has a finite range; JSON files hold no NaN or Infinity


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-lr", "inf"),
        ("--max-lr", "nan"),
        ("--weight-decay", "inf"),
        ("--finder-end-lr", "inf"),
        ("--width", "inf"),
        ("--seed", "99999999999999999999999"),
        ("--seed", "1" + "0" * 400),  # beyond every float
        ("--crop-padding", "3000"),
        ("--batch-size", "10000000"),
        ("--epochs", "1e9"),
        ("--label-smoothing", "-inf"),
    ],
)
def test_infinite_and_huge_numbers_are_refused(flag, value, earlier, data_dir, capsys):
    before = _checksums(earlier)
    code, _, err = run_cli([*_args(data_dir, earlier, "--force"), flag, value], capsys)
    assert code == 2 and "Traceback" not in err
    assert flag in err.strip().splitlines()[-1] and len(err.strip().splitlines()) == 1
    assert _checksums(earlier) == before


@pytest.mark.parametrize(
    "args",
    [["data", "--out", "X", "--seed", "1" + "0" * 400], ["summary", "--depth", "1" + "0" * 400]],
)
def test_the_other_commands_numbers_have_ranges_too(args, tmp_path, capsys):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "must be a whole number in" in err
    assert not (tmp_path / "X").exists()


def test_json_files_never_hold_nan_or_infinity(tmp_path):
    run = run_folder.RunFolder(tmp_path / "run")
    run.write_json("final.json", {"test_loss": float("inf"), "x": [float("nan"), 1.0]})
    run.log_epoch({"epoch": 1, "test_loss": float("-inf")})

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))

    assert strict((tmp_path / "run" / "final.json").read_text()) == {
        "test_loss": None,
        "x": [None, 1.0],
    }
    assert strict((tmp_path / "run" / "metrics.jsonl").read_text())["test_loss"] is None
    run.close()


# ---------------------------------------------------------------------------------------------
# 5. A full disk at each write of a run: one line, exit 2, and a run that continues


_SLOW = pytest.mark.slow  # make test keeps the first and a later checkpoint, and config.json
_TARGETS = [("config.json", 1), ("last.pt", 1), pytest.param("metrics.jsonl", 2, marks=_SLOW),
            ("last.pt", 2), pytest.param("final.json", 1, marks=_SLOW),
            pytest.param("report.html", 1, marks=_SLOW)]  # fmt: skip


@pytest.mark.parametrize(("name", "nth"), _TARGETS)
def test_a_full_disk_at_each_write_ends_in_one_line_and_the_run_continues(
    name, nth, reference, data_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = files.atomic_write
    seen = []

    def full_disk(path: Path, write, **how) -> None:
        if path.name == name:
            seen.append(path)
            if len(seen) == nth:

                def fail(f) -> None:
                    raise OSError(errno.ENOSPC, "No space left on device")

                return real(path, fail, **how)
        return real(path, write, **how)

    monkeypatch.setattr(files, "atomic_write", full_disk)
    code, _, err = run_cli(_args(data_dir, out), capsys)
    _one_line(code, err, "No space left on device", name)
    monkeypatch.setattr(files, "atomic_write", real)  # space freed
    if name == "config.json":  # nothing was trained: the same command starts afresh
        assert "then run the same command again" in err
        assert not out.exists()
        assert run_cli(_args(data_dir, out), capsys)[0] == 0
    elif name == "report.html":  # the run is whole; its report is rebuilt on its own
        assert f"build it with: cifar-resnet report {out}" in err and "--resume" not in err
        assert run_cli(["report", str(out), "--quiet"], capsys)[0] == 0
    else:  # the first checkpoint too: a run with none yet starts again from its settings
        assert f"then continue with: cifar-resnet train --resume {out}" in err
        code, _, err = run_cli(["train", "--resume", str(out), "--quiet"], capsys)
        assert code == 0, err
    _same_final_weights(reference, out)
    assert (
        json.loads((out / "final.json").read_text())["test_acc"]
        == json.loads((reference / "final.json").read_text())["test_acc"]
    )
    assert (out / "report.html").exists()


# ---------------------------------------------------------------------------------------------
# kill -9 at random moments: the folder always resumes to the unbroken run's weights


def _until(predicate, proc: CliChild, timeout: float = 120) -> bool:
    """Wait for ``predicate``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out")


def _trial(data_dir: Path, out: Path, reference: Path, moment: str, rng: random.Random) -> bool:
    proc = _start(_args(data_dir, out))
    first = out / "checkpoints" / "last.pt"
    if moment == "starting":  # after config.json, before the first checkpoint
        _until((out / "config.json").exists, proc)
        time.sleep(rng.uniform(0, 0.3))
    elif moment == "training":
        _until(first.exists, proc)
        time.sleep(rng.uniform(0, 1.0))
    elif moment == "checkpointing":  # a checkpoint after the first is being written
        _until(first.exists, proc)
        _until(lambda: (out / "checkpoints" / ".last.pt.tmp").exists(), proc)
    else:  # report: training finished
        _until((out / "final.json").exists, proc)
        time.sleep(rng.uniform(0, 1.0))
    proc.kill()
    proc.communicate(timeout=60)
    if proc.returncode == 0:  # it finished before the signal: nothing to recover
        _same_final_weights(reference, out)
        return False
    assert proc.returncode == -signal.SIGKILL
    # The report is rebuilt only where the kill hit it: the weights are what is compared.
    code, err = _run(["train", "--resume", str(out), "--quiet",
                      *([] if moment == "report" else ["--no-report"])])  # fmt: skip
    finished = "already finished" in err and "report" in err
    assert code == 0 or finished, err
    _same_final_weights(reference, out)
    return True


@pytest.mark.slow
def test_kill_9_at_random_moments_always_leaves_a_run_that_resumes_exactly(
    reference, data_dir, tmp_path
):
    rng = random.Random(0)
    moments = ["starting"] * 4 + ["training"] * 10 + ["checkpointing"] * 6 + ["report"] * 4
    killed = [_trial(data_dir, tmp_path / f"trial{i}", reference, moment, rng)
              for i, moment in enumerate(moments)]  # fmt: skip
    assert sum(killed) >= 20  # a trial that finished before its kill proves nothing


# ---------------------------------------------------------------------------------------------
# 6. The smaller cases


def _image_tree(root: Path, per_class: int = 2) -> Path:
    from PIL import Image

    from cifar_resnet.data.load import CLASSES

    for split in ("train", "test"):
        for i, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (32, 32), (i * 20, k * 50, 90)).save(folder / f"{k}.png")
    return root


def test_a_dangling_symlink_is_named_as_such(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    argv = ["data", "--data-dir", str(tree), "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "d"), "--quiet"]  # fmt: skip
    _one_line(*run_cli(argv, capsys)[::2], "gone.png", "broken symbolic link")


def test_an_unwritable_cache_is_one_warning_line_naming_cache_dir(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree")
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    argv = ["data", "--data-dir", str(tree), "--cache-dir", str(tmp_path / "blocker" / "c"),
            "--out", str(tmp_path / "d"), "--quiet"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-resnet: warning: "), err
    assert "--cache-dir" in lines[0] and "UserWarning" not in err


def test_a_truncated_checkpoint_reason_is_not_cut_mid_word(reference, tmp_path, capsys):
    raw = (reference / "checkpoints" / "last.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(raw[: len(raw) // 2])
    line = _one_line(*run_cli(["evaluate", "--checkpoint", str(bad)], capsys)[::2], "truncated")
    reason = line.split("corrupt or truncated: ", 1)[1].split("); use another", 1)[0]
    assert reason.endswith((".", "...")) or len(reason) < 100, reason


def test_a_checkpoint_of_another_width_is_one_line(reference, tmp_path, capsys):
    state = torch.load(reference / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["width"] = 0.5
    torch.save(state, tmp_path / "edited.pt")
    code, _, err = run_cli(["evaluate", "--checkpoint", str(tmp_path / "edited.pt")], capsys)
    _one_line(code, err, "do not fit", "size mismatch")


def test_evaluate_into_a_closed_pipe_is_quiet(reference):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_resnet", "evaluate", "--checkpoint", str(reference),
         "--quiet"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline()  # `| head -1`: read one line, then leave
    proc.stdout.close()
    proc.wait(timeout=120)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception" not in err


@pytest.mark.parametrize("stage", ["unpacking", "downloading"])
def test_a_full_cache_disk_says_so_and_names_cache_dir(stage, tmp_path, capsys, monkeypatch):
    import tarfile

    import torchvision.datasets.utils as tv_utils

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "d"
    argv = ["data", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]
    if stage == "unpacking":
        tree = _image_tree(tmp_path / "tree")
        archive = tmp_path / "cifar.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tree, arcname="cifar")
        monkeypatch.setattr(tarfile.TarFile, "extract", full)
        argv += ["--data-dir", str(archive)]
    else:
        monkeypatch.setattr(tv_utils, "download_and_extract_archive", full)
    code, _, err = run_cli(argv, capsys)
    line = _one_line(code, err, "No space left on device", "free space", "--cache-dir")
    assert "damaged" not in line and "--data-dir" not in line
    assert not out.exists()
    assert not [p for p in (tmp_path / "cache").glob("*") if p.name.startswith(("extract", "dow"))]


def test_a_half_unpacked_archive_of_a_killed_process_is_cleaned_up(tmp_path):
    import tarfile

    from cifar_resnet.data.load import load_cifar10

    tree = _image_tree(tmp_path / "tree")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar")
    cache = tmp_path / "cache"
    load_cifar10(archive, cache, progress=False)
    arrays = next(cache.glob("arrays-*.pt"))
    key = arrays.name[len("arrays-") : -len(".pt")]
    arrays.unlink()  # so the next load unpacks again
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = cache / f"extract-{key}.partial-{dead}-k9"  # what kill -9 mid-unpacking leaves
    (stale / "cifar" / "train").mkdir(parents=True)
    (stale / "cifar" / "train" / "half.bin").write_bytes(b"x" * 1000)
    alive = cache / f"extract-{key}.partial-{os.getpid()}-busy"  # a live process's: kept
    alive.mkdir()
    from cifar_resnet.data.archive import _host

    here = cache / f"extract-{key}.partial-{dead}@{_host()}-k9"  # named with its host
    here.mkdir()
    # another host's (a cache folder shared by the nodes of a cluster): its PID means nothing here
    elsewhere = cache / f"extract-{key}.partial-{dead}@{_host()}x-node-2-k9"
    elsewhere.mkdir()
    load_cifar10(archive, cache, progress=False)
    assert not stale.exists() and not here.exists()
    assert alive.is_dir() and elsewhere.is_dir()


def test_a_relative_data_dir_is_saved_absolute(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(data_dir.parent)
    out = tmp_path / "run"
    argv = ["train", "--data-dir", data_dir.name, "--cache-dir", str(data_dir / "cache"),
            "--out", str(out), *RUN, "--epochs", "1", "--no-report"]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    saved = json.loads((out / "config.json").read_text())["data_dir"]
    assert Path(saved).is_absolute() and Path(saved) == data_dir
    monkeypatch.chdir(tmp_path)
    assert run_cli(["evaluate", "--checkpoint", str(out), "--quiet"], capsys)[0] == 0


def test_ctrl_c_during_the_final_report_names_the_command_that_rebuilds_it(
    data_dir, tmp_path, capsys, monkeypatch
):
    from cifar_resnet.insight import report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build_report", interrupted)
    out = tmp_path / "run"
    code, _, err = run_cli([*_args(data_dir, out), "--epochs", "1"], capsys)
    assert code == 130 and "Traceback" not in err
    assert f"cifar-resnet report {out}" in err.strip().splitlines()[-1]
    assert (out / "final.json").exists()


def test_resume_says_where_it_resumes_and_remembers_no_report(
    reference, data_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    assert run_cli([*_args(data_dir, out), "--no-report"], capsys)[0] == 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    state["epoch"], state["metrics"] = 1, state["metrics"][:1]
    (out / "final.json").unlink()
    (out / "checkpoints" / "last.pt").unlink()
    torch.save(state, out / "checkpoints" / "last.pt")  # as if stopped after epoch 1
    code, stdout, err = run_cli(["train", "--resume", str(out)], capsys)
    assert code == 0, err
    assert f"resuming {out} at epoch 2 of 3" in stdout
    assert not (out / "report.html").exists()  # --no-report, remembered
    assert json.loads((out / "config.json").read_text())["report"] is False
