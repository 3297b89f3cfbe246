"""Interrupt a real CLI training run (SIGINT, SIGTERM, SIGKILL), resume it, compare."""

import functools
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import CliChild, make_synthetic, write_pickles

# Small batches of bf16 steps (slow on a CPU without bf16 units): 10 of the 82 images an
# epoch and 2 left over, which --drop-last skips.
N_TRAIN, BATCH_SIZE = 82, 8
STEPS_PER_EPOCH = N_TRAIN // BATCH_SIZE
ARGS = [
    "--width",
    "0.25",
    "--epochs",
    "3",
    "--peak-epoch",
    "1",
    "--batch-size",
    str(BATCH_SIZE),
    "--drop-last",
    "--crop-pad-mode",
    "reflect",
    "--max-lr",
    "2e-3",
    "--device",
    "cpu",
    "--precision",
    "bf16",  # autocast on the CPU: the path a GPU user runs must resume exactly too
    "--seed",
    "5",
    "--dropout",
    "0.05",
    "--quiet",
    "--no-report",
]
SIGNAL_EPOCH, SIGNAL_STEP = 2, 4  # where an interrupted run receives its signal
# One thread in every process: runs compared bit for bit must split their work alike.
THREADS = 1


def _signal_in_step(sig: int, epoch: int, step: int, steps_per_epoch: int) -> None:
    """Make this process's run send itself ``sig`` in one step, at the step's bookkeeping
    (its optimizer update done): the run stops after that very step, every time."""
    from cifar_resnet.training.epoch import StepMonitor

    stepped = StepMonitor.stepped

    def stepped_after_a_signal(self, *args, **kwargs):
        if self.step_offset == (epoch - 1) * steps_per_epoch and self.state.step == step - 1:
            os.kill(os.getpid(), sig)
        return stepped(self, *args, **kwargs)

    StepMonitor.stepped = stepped_after_a_signal


def _train(*argv: str, signalled: int | None = None) -> CliChild:
    """``cifar-resnet train ARGV`` in a child process; with ``signalled``, the run sends
    itself that signal in step ``SIGNAL_STEP`` of epoch ``SIGNAL_EPOCH``."""
    prepare = None
    if signalled is not None:
        where = (signalled, SIGNAL_EPOCH, SIGNAL_STEP, STEPS_PER_EPOCH)
        prepare = functools.partial(_signal_in_step, *where)
    return CliChild(["train", *argv], THREADS, prepare)


def _train_new_run(data_dir: Path, out: Path, signalled: int | None = None) -> CliChild:
    return _train(
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(data_dir / "cache"),
        "--out",
        str(out),
        *ARGS,
        signalled=signalled,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_pickles(root, make_synthetic(n_train=N_TRAIN, n_test=50))
    return root


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _train_new_run(data_dir, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _wait_for_epochs(out: Path, k: int, proc: CliChild, timeout: float = 240) -> None:
    metrics = out / "metrics.jsonl"  # written after the epoch's checkpoint
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= k:
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("training did not reach the epoch in time")


def _assert_same_run(a: Path, b: Path) -> None:
    sa = torch.load(a / "checkpoints" / "last.pt", weights_only=False)
    sb = torch.load(b / "checkpoints" / "last.pt", weights_only=False)
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ma = [json.loads(s) for s in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(s) for s in (b / "metrics.jsonl").read_text().splitlines()]
    assert drop(ma) == drop(mb)
    assert sa["step_lrs"] == sb["step_lrs"]
    fa, fb = (json.loads((p / "final.json").read_text()) for p in (a, b))
    assert fa["test_acc"] == fb["test_acc"] and fa["test_loss"] == fb["test_loss"]
    assert fb["resumed"] is True
    assert fa["precision"] == fb["precision"] == "bf16"
    assert fa["drop_last"] is fb["drop_last"] is True
    assert len(sb["step_lrs"]) == 3 * STEPS_PER_EPOCH


def _start_and_wait_for_first_epoch(data_dir: Path, out: Path) -> CliChild:
    proc = _train_new_run(data_dir, out)
    _wait_for_epochs(out, 1, proc)
    return proc


def _resume_and_compare(out: Path, reference: Path) -> None:
    """The checkpoint left behind is whole; resuming from it ends exactly like the reference."""
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] >= 1
    resumed = _train("--resume", str(out), "--quiet", "--no-report")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _assert_same_run(reference, out)


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
)
def test_a_signal_checkpoints_mid_epoch_and_resume_ends_bit_exact(
    sig, code, data_dir, reference, tmp_path
):
    out = tmp_path / "run"
    proc = _train_new_run(data_dir, out, signalled=sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    assert f"in epoch {SIGNAL_EPOCH} after step {SIGNAL_STEP};" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == SIGNAL_EPOCH - 1  # epochs done: it stopped inside the next
    assert state["epoch_state"]["step"] == SIGNAL_STEP
    _resume_and_compare(out, reference)


@pytest.mark.slow
def test_sigkill_loses_at_most_the_current_epoch_and_resume_ends_bit_exact(
    data_dir, reference, tmp_path
):
    out = tmp_path / "run"
    proc = _start_and_wait_for_first_epoch(data_dir, out)
    proc.kill()
    proc.communicate(timeout=60)
    _resume_and_compare(out, reference)


def test_resume_refuses_changed_settings_and_finished_runs(reference, capsys):
    from cifar_resnet import cli

    assert cli.main(["train", "--resume", str(reference), "--epochs", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--epochs" in err
    assert cli.main(["train", "--resume", str(reference)]) == 2
    assert "already finished" in capsys.readouterr().err
