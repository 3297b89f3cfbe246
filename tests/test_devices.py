"""What a GPU or Apple-silicon user meets, checked on the CPU with fakes.

No GPU runs these tests: the device queries (compute capability, device counts, MPS)
are monkeypatched, models sit on the ``meta`` device, and MPS's rule (no float64 on the
device) is checked by watching every tensor the training step creates.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, make_synthetic, run_cli, write_pickles
from torch.utils._python_dispatch import TorchDispatchMode

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.splits import EpochLength, epoch_order, prepare_splits, train_batches
from cifar_resnet.errors import ConfigError, TrainingInterrupted
from cifar_resnet.inference.evaluation import evaluate
from cifar_resnet.inference.predict import load_model
from cifar_resnet.insight import report
from cifar_resnet.model.custom_resnet import CustomResNet
from cifar_resnet.model.summary import model_summary
from cifar_resnet.records.checkpoint import load_checkpoint
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.runtime import Runtime, resolve_precision, resolve_runtime
from cifar_resnet.training import lifecycle
from cifar_resnet.training.epoch import Callbacks, EpochState, StepMonitor
from cifar_resnet.training.fit import fit, train_step
from cifar_resnet.training.setup import (
    build_criterion,
    build_model,
    build_optimizer,
    build_scheduler,
)

TINY = TrainConfig(width=0.25, epochs=2, peak_epoch=1, batch_size=100, max_lr=2e-3, device="cpu")


def _assert_one_line_error(code, err, *needles, exit_code=2):
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert lines[-1].startswith("cifar-resnet: error: ") and "Traceback" not in err, err
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


# 1. The model summary and the report leave the model on its device ------------------------


def test_model_summary_leaves_a_model_where_it_is():
    model = CustomResNet(width=0.25).to("meta").eval()
    stats = model_summary(model)
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert not model.training  # the training flag as it was
    model.train()
    model_summary(model)
    assert model.training


def test_the_report_predicts_with_its_model_on_the_device_load_model_chose(
    tiny_run, synthetic, monkeypatch
):
    def on_meta(state, device):  # as a CUDA machine would: the model on its accelerator
        trained = load_model(state, device="cpu")
        return dataclasses.replace(trained, model=trained.model.to("meta"))

    seen = []

    def predict(model, images, mean, std, runtime, *, batch_size):
        seen.append(next(model.parameters()).device.type)
        return torch.zeros(len(images), 10)

    monkeypatch.setattr(report, "load_model", on_meta)
    monkeypatch.setattr(report, "predict_logits", predict)
    results = report.load_run(tiny_run, data=synthetic, device="cpu")
    assert seen == ["meta"] and "Total params" in results.summary


# 2. --precision auto on CUDA follows the GPU's compute capability --------------------------


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16"), ((6, 1), "fp32")],
)
def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation too
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_runtime("cuda").precision == expected
    assert resolve_runtime("cuda", "fp32").precision == "fp32"  # an explicit choice stays


def test_fp16_scales_the_loss_and_bf16_and_fp32_do_not():
    fp16 = Runtime(torch.device("cpu"), torch.float16, channels_last=True)
    assert fp16.precision == "fp16" and fp16.grad_scaler().is_enabled()
    for precision in ("fp32", "bf16"):
        assert not resolve_runtime("cpu", precision).grad_scaler().is_enabled()
    with pytest.raises(ConfigError, match="--precision fp16 is for CUDA GPUs"):
        resolve_runtime("cpu", "fp16")


def _stop_after_first_epoch(metrics, epochs):
    if metrics.epoch == 1:
        signal.raise_signal(signal.SIGINT)  # the run checkpoints the epoch, then stops


def test_loss_scaling_is_part_of_the_run_and_of_its_checkpoint(tmp_path, synthetic, monkeypatch):
    """The T4's fp16 path scales the loss with a GradScaler; its state (scale, growth count)
    is checkpointed, so a resumed run scales on as an unbroken one. Checked with fp32
    kernels (fp16 convolutions on a CPU are far too slow for a test) and a scaler whose
    scale grows every other step."""

    def scaler(self):
        return torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=2)

    monkeypatch.setattr(Runtime, "grad_scaler", scaler)
    config = TINY.replace(precision="fp32", epochs=3)
    whole = fit(config, synthetic, run=RunFolder(tmp_path / "whole"), progress=False)
    assert whole.epochs[-1]["train_loss"] < whole.epochs[0]["train_loss"]
    final = load_checkpoint(tmp_path / "whole").scaler
    assert final["scale"] > 2.0**4  # grown over the run's 18 steps

    stopped = Callbacks(on_epoch=_stop_after_first_epoch)
    with pytest.raises(TrainingInterrupted):
        fit(config, synthetic, run=RunFolder(tmp_path / "part"), callbacks=stopped)
    state = load_checkpoint(tmp_path / "part")
    assert state.epoch == 1 and 2.0**4 < state.scaler["scale"] < final["scale"]
    resumed = fit(
        config, synthetic, run=RunFolder(tmp_path / "part", resume=True), resume=state,
        progress=False,
    )  # fmt: skip
    assert load_checkpoint(tmp_path / "part").scaler == final
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_model_trained_in_fp16_on_a_gpu_is_evaluated_in_fp32_on_the_cpu(tiny_run):
    state = load_checkpoint(tiny_run)
    state.config["precision"] = "fp16"  # as a T4 records it
    assert load_model(state, device="cpu").runtime.precision == "fp32"
    state.config["precision"] = "bf16"
    assert load_model(state, device="cpu").runtime.precision == "bf16"


# 3. A run resumes on another kind of device -------------------------------------------------


def _checkpoint_from(tmp_path: Path, synthetic) -> Path:
    """A run folder stopped after its first of two epochs."""
    out = tmp_path / "run"
    stopped = Callbacks(on_epoch=_stop_after_first_epoch)
    with pytest.raises(TrainingInterrupted):
        fit(TINY, synthetic, run=RunFolder(out), callbacks=stopped)
    return out


def _as_if_saved_on_cuda(out: Path, *, with_device: bool) -> None:
    """Rewrite the checkpoint as a CUDA run writes it: Philox generator states (16 bytes),
    one state per GPU, fused optimizer kernels."""
    path = out / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    rng = state["rng"]
    rng["generator"] = torch.arange(16, dtype=torch.uint8)
    rng["cuda"] = [torch.arange(16, dtype=torch.uint8)] * 2
    if with_device:
        rng["device"] = "cuda"
    else:
        rng.pop("device", None)  # checkpoints written before the device was recorded
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True
    state["config"]["precision"] = "fp16"  # a T4's choice
    state["scaler"] = {"scale": 2.0**15, "growth_factor": 2.0, "backoff_factor": 0.5,
                       "growth_interval": 2000, "_growth_tracker": 7}  # fmt: skip
    torch.save(state, path)


@pytest.mark.parametrize("with_device", [True, False])
def test_a_run_saved_on_cuda_resumes_on_the_cpu_with_one_warning(
    tmp_path, synthetic, pickle_dir, capsys, with_device
):
    out = _checkpoint_from(tmp_path, synthetic)
    _as_if_saved_on_cuda(out, with_device=with_device)
    code, stdout, err = run_cli(
        ["train", "--resume", str(out), "--data-dir", str(pickle_dir), "--device", "cpu",
         "--quiet", "--no-report"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("cifar-resnet: warning:")]
    assert len(warnings) == 1 and "no longer bit for bit" in warnings[0], err
    assert "saved on cuda" in warnings[0] and "it trained in fp16" in warnings[0]
    assert "Traceback" not in err
    final = json.loads((out / "final.json").read_text())
    assert final["epochs"] == 2 and final["resumed"]
    assert final["precision"] == resolve_runtime("cpu").precision  # auto's choice here


def test_restoring_a_state_saved_with_more_gpus_sets_only_the_gpus_present(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append(i))
    monkeypatch.setattr(
        torch.cuda, "set_rng_state_all", lambda states: pytest.fail("assumes as many GPUs")
    )
    generator = torch.Generator().manual_seed(0)
    state = {
        "torch": torch.get_rng_state(),
        "device": "cpu",
        "generator": generator.get_state(),
        "cuda": [torch.zeros(16, dtype=torch.uint8)] * 4,
    }
    assert lifecycle.restore_rng(state, generator, None) is True
    assert calls == [0]
    state["device"] = "cuda"
    assert lifecycle.restore_rng(state, generator, None) is False


# 4. MPS: no float64 on the device -----------------------------------------------------------


class _NoFloat64(TorchDispatchMode):
    """Fails on any operation that produces a float64 tensor (MPS has no float64)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        for t in results:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.seen.append(str(func))
        return out


def test_a_training_epoch_and_evaluation_create_no_float64_tensor_where_mps_forbids_it(
    synthetic,
):
    runtime = Runtime(torch.device("cpu"), None, channels_last=False, sum_dtype=torch.float32)
    config = TINY.replace(ema_decay=0.9, tta=True, min_lr=2e-4)
    train, test = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config, runtime)
    epoch = EpochLength.of(len(train), config.batch_size, config.drop_last)
    scheduler = build_scheduler(optimizer, config, epoch)
    criterion = build_criterion(config)
    generator = torch.Generator().manual_seed(0)
    state = EpochState(epoch_order(len(train), generator))
    batches = train_batches(train, config, runtime, generator, order=state.order)
    with _NoFloat64() as watch:
        monitor = StepMonitor(state, runtime, epoch)
        for x, y in monitor.steps(batches):  # the steps of an epoch as fit takes them
            lr = optimizer.param_groups[0]["lr"]
            loss, logits = train_step(model, criterion, optimizer, (x, y), runtime)
            scheduler.step()
            monitor.stepped(lr, loss, logits, y)
        result = monitor.result()
        ev = evaluate(model, test, runtime, tta=True)
    assert watch.seen == []
    assert result.loss > 0 and 0 <= ev.acc <= 1 and ev.tta_acc is not None


def test_mps_trains_in_fp32_without_float64_or_channels_last(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    mps = resolve_runtime("mps")
    assert mps.precision == "fp32" and mps.sum_dtype == torch.float32 and not mps.channels_last
    assert resolve_runtime("cpu").sum_dtype == torch.float64
    with pytest.raises(ConfigError, match="MPS trains in fp32"):
        resolve_runtime("mps", "bf16")


# 5. --sync-bn without CUDA, one GPU named for several processes -----------------------------


def test_sync_bn_without_cuda_is_a_one_line_error(pickle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(pickle_dir), "--out", str(out), *TINY_RUN, "--sync-bn",
         "--max-lr", "2e-3", "--quiet", "--no-report"],
        capsys,
    )  # fmt: skip
    _assert_one_line_error(code, err, "--sync-bn", "CUDA")
    assert not out.exists()


def test_one_named_gpu_for_several_torchrun_processes_is_a_one_line_error(
    pickle_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined NCCL")
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(pickle_dir), "--out", str(out), *TINY_RUN,
         "--device", "cuda:0", "--precision", "fp32", "--max-lr", "2e-3", "--quiet",
         "--no-report"],
        capsys,
    )  # fmt: skip
    _assert_one_line_error(code, err, "--device cuda:0", "--device cuda", "LOCAL_RANK")
    assert not (out / "checkpoints" / "last.pt").exists()


# 6. The EMA of the weights on a GPU: no read-back per step, nothing on the host broadcast ---


def test_the_ema_of_a_model_on_a_gpu_updates_without_reading_anything_back():
    """A model on ``meta`` stands in for one on a GPU: nothing can be read back from it, as
    reading back from a GPU would wait for it. The EMA's update count stays on the host."""
    from cifar_resnet.training.setup import build_ema

    model = CustomResNet(width=0.25).to("meta")
    ema = build_ema(model, TINY.replace(ema_decay=0.99))
    for _ in range(3):
        ema.update_parameters(model)
    assert {t.device.type for t in ema.module.state_dict().values()} == {"meta"}
    assert ema.n_averaged.device.type == "cpu" and int(ema.n_averaged) == 3


def test_a_page_fast_step_on_a_gpu_reads_nothing_back():
    """Ghost BatchNorm's groups and running statistics, CELU, the whitening and the bias
    group's LR, on ``meta`` (a GPU stand-in that cannot be read back), in half precision."""
    from cifar_resnet.training.setup import build_model, build_optimizer, build_scheduler

    config = TrainConfig(recipe="page-fast", width=0.25, max_lr=1.0, min_lr=0.0)
    model = build_model(config).to("meta")
    runtime = Runtime(torch.device("meta"), None, channels_last=True)
    optimizer = build_optimizer(model, config, runtime)
    scheduler = build_scheduler(optimizer, config, EpochLength.of(1024, 512, True))
    x = torch.empty(512, 3, 32, 32, device="meta", dtype=torch.float16)
    model.train()
    loss = model.half()(x).float().sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    norm = model.layer2[2]
    assert {norm.running_mean.device.type, norm.num_batches_tracked.device.type} == {"meta"}
    assert [g.get("lr_scale", 1.0) for g in optimizer.param_groups] == [1.0, 64.0]


# 7. An unexpected exception: one line that says what is saved ------------------------------


def _train_args(pickle_dir: Path, out: Path) -> list[str]:
    return ["train", "--data-dir", str(pickle_dir), "--out", str(out), *TINY_RUN,
            "--max-lr", "2e-3", "--quiet"]  # fmt: skip


@pytest.fixture
def small_pickle_dir(tmp_path: Path) -> Path:
    """200 training and 100 test images: a run of two steps, a quick report."""
    return write_pickles(tmp_path / "data", make_synthetic(200, 100))


def _device_mismatch(*args, **kwargs):
    raise RuntimeError("Expected all tensors to be on the same device")  # as on a CUDA machine


def test_an_unexpected_error_after_the_last_checkpoint_says_the_run_is_saved(
    small_pickle_dir, tmp_path, capsys, monkeypatch
):
    from cifar_resnet.training import fit as train

    monkeypatch.setattr(train, "_summary", _device_mismatch)
    out = tmp_path / "run"
    code, _, err = run_cli([*_train_args(small_pickle_dir, out), "--no-report"], capsys)
    _assert_one_line_error(
        code, err, "unexpected RuntimeError", "the run is saved in", f"cifar-resnet report {out}",
        exit_code=1,
    )  # fmt: skip
    assert (out / "checkpoints" / "last.pt").is_file()
    code, stdout, err = run_cli(["report", str(out), "--quiet"], capsys)
    assert code == 0 and (out / "report.html").is_file(), err


def test_an_unexpected_error_in_the_report_keeps_the_run_and_says_how_to_build_it(
    small_pickle_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(report, "build_report", _device_mismatch)
    out = tmp_path / "run"
    code, stdout, err = run_cli(_train_args(small_pickle_dir, out), capsys)
    _assert_one_line_error(
        code, err, "the run is saved but its report is not", "unexpected RuntimeError",
        f"cifar-resnet report {out}",
    )  # fmt: skip
    assert "test accuracy" in stdout and (out / "final.json").is_file()


def test_an_unexpected_error_elsewhere_is_one_line_and_its_traceback_on_request(
    tmp_path, capsys, monkeypatch
):
    from cifar_resnet.model import custom_resnet

    def broken(*args, **kwargs):
        raise KeyError("width")

    monkeypatch.setattr(custom_resnet.CustomResNet, "__init__", broken)
    code, _, err = run_cli(["summary"], capsys)
    _assert_one_line_error(code, err, "unexpected KeyError", "CIFAR_RESNET_TRACEBACK", exit_code=1)
    monkeypatch.setenv("CIFAR_RESNET_TRACEBACK", "1")
    code, _, err = run_cli(["summary"], capsys)
    assert code == 1 and "Traceback" in err and "KeyError" in err
