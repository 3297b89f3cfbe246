"""TensorBoard's event files of a run (training/tensorboard_log.py), through fit and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import TINY_RUN, run_cli

from cifar_resnet import TrainConfig, fit
from cifar_resnet.records.checkpoint import load_checkpoint
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.training.epoch import Callbacks


@pytest.fixture
def event_accumulator():
    """tensorboard's own event reader; only the TensorBoard tests skip without the extra."""
    return pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard extra is not installed",
    )


# 600 training images in batches of 100: 6 steps an epoch.
QUICK = {"width": 0.25, "batch_size": 100, "epochs": 3, "peak_epoch": 1, "device": "cpu"}
SPE = 6


def _events(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def _steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


class _Crash(Exception):
    pass


def test_event_files_hold_steps_epochs_range_test_figures_and_hparams(
    synthetic, tmp_path, event_accumulator
):
    run = tmp_path / "run"
    config = TrainConfig(tensorboard=True, finder_num_iter=12, **QUICK)
    history = fit(config, synthetic, run=RunFolder(run), progress=False)
    acc = _events(run / "tb")
    total = 3 * SPE
    assert _steps(acc, "train/loss") == list(range(1, total + 1))
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(history.step_lrs)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert _steps(acc, f"epoch/{key}") == [SPE, 2 * SPE, 3 * SPE]
        assert [e.value for e in acc.Scalars(f"epoch/{key}")] == pytest.approx(
            [m[key] for m in history.epochs]
        )
    images = set(acc.Tags()["images"])
    assert "final/confusion_matrix" in images
    assert ("final/misclassified" in images) == (history.final["test_acc"] < 1)
    finder = _events(run / "tb" / "lr_find")
    assert [e.value for e in finder.Scalars("lr_find/loss")] == pytest.approx(
        history.lr_finder.losses
    )
    hparams = _events(run / "tb" / "hparams")
    assert hparams.Scalars("hparam/test_acc")[0].value == pytest.approx(history.final["test_acc"])


def test_a_resumed_run_continues_the_curves_without_duplicate_steps(
    synthetic, tmp_path, event_accumulator
):
    run = tmp_path / "run"
    # Batches of 140 with the partial one (40 of the 600 images) skipped: 4 steps an epoch.
    quick = {**QUICK, "batch_size": 140}
    config = TrainConfig(tensorboard=True, max_lr=2e-3, drop_last=True, **quick)
    spe = 4

    def crash_after_logging(metrics, epochs) -> None:
        if metrics.epoch == 2:  # epoch 2 is logged and flushed, its checkpoint never written
            raise _Crash

    with pytest.raises(_Crash):
        fit(
            config, synthetic, run=RunFolder(run), callbacks=Callbacks(on_epoch=crash_after_logging)
        )
    assert max(_steps(_events(run / "tb"), "train/loss")) == 2 * spe
    state = load_checkpoint(run)
    assert state.epoch == 1
    history = fit(config, synthetic, run=RunFolder(run, resume=True), resume=state, progress=False)
    acc = _events(run / "tb")
    assert _steps(acc, "train/loss") == list(range(1, 3 * spe + 1))  # each step once
    assert _steps(acc, "epoch/test_acc") == [spe, 2 * spe, 3 * spe]
    assert [e.value for e in acc.Scalars("epoch/test_acc")] == pytest.approx(
        [m["test_acc"] for m in history.epochs]
    )


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(
    pickle_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(pickle_dir), "--out", str(out), "--tensorboard", *TINY_RUN,
         "--max-lr", "1e-3", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        "cifar-resnet: error: --tensorboard needs the tensorboard package; install it with: "
        "pip install 'cifar-resnet[tensorboard]'"
    ]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Config files
