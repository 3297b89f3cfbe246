"""training/fit.py: a run as fit trains it (the step, the schedule, the range test's effect, the
records it writes) and the builders of training/setup.py."""

import dataclasses
import json
import signal

import numpy as np
import pytest
import torch
from torch import nn

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.splits import prepare_splits
from cifar_resnet.errors import CheckpointError, ConfigError, TrainingInterrupted
from cifar_resnet.inference.evaluation import evaluate
from cifar_resnet.records.checkpoint import load_checkpoint
from cifar_resnet.records.records import EpochMetrics, duration
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.runtime import resolve_runtime
from cifar_resnet.training import fit as fit_module
from cifar_resnet.training.epoch import Callbacks, Remaining, console
from cifar_resnet.training.fit import fit
from cifar_resnet.training.setup import build_model, build_optimizer

QUICK = {"width": 0.25, "batch_size": 100, "epochs": 2, "peak_epoch": 1, "device": "cpu"}


def test_one_adam_step_lowers_the_loss_on_a_fixed_batch(synthetic):
    config = TrainConfig(max_lr=1e-3, **QUICK)
    runtime = resolve_runtime("cpu")
    train, _ = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config)
    opt = build_optimizer(model, config, runtime)
    from cifar_resnet.data.augment import normalize

    x, y = normalize(train.images[:64], train.mean, train.std), train.labels[:64]
    model.eval()  # BatchNorm in eval: the same function before and after the step
    loss_fn = nn.CrossEntropyLoss()
    before = loss_fn(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = loss_fn(model(x), y)
    assert after.item() < before.item()


def test_a_small_net_learns_the_synthetic_task_far_above_chance(synthetic):
    history = fit(
        TrainConfig(max_lr=4e-3, **{**QUICK, "epochs": 4, "peak_epoch": 1}),
        synthetic,
        progress=False,
    )
    accs = [e["test_acc"] for e in history.epochs]
    assert accs[-1] >= 0.6  # chance is 0.1
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_the_time_left_goes_by_the_first_epochs_training_then_by_the_wall_clock():
    now = [100.0]
    remaining = Remaining(clock=lambda: now[0])
    epoch = lambda n: EpochMetrics(n, 0.1, 1.0, 0.5, 1.0, 0.5, seconds=50.0)  # noqa: E731
    assert remaining.after(epoch(3), 10) == 7 * 50.0  # a resumed run's first line: 7 to go
    now[0] += 80.0  # an epoch of 50 s training plus its evaluation and the rest
    assert remaining.after(epoch(4), 10) == 6 * 80.0
    now[0] += 100.0
    assert remaining.after(epoch(5), 10) == 5 * 90.0  # the mean since the first line
    now[0] += 90.0
    assert remaining.after(epoch(10), 10) is None  # the last epoch: nothing left
    now[0] += 5000.0
    assert remaining.after(epoch(1), 10) == 9 * 50.0  # another run shown by the same callbacks
    assert [duration(s) for s in (40, 89.4, 90, 14 * 60, 89 * 60, 90 * 60, 7560)] == [
        "40 s", "89 s", "2 min", "14 min", "89 min", "1.5 h", "2.1 h",
    ]  # fmt: skip


def test_each_epoch_line_but_the_last_says_the_time_left(synthetic, capsys):
    config = TrainConfig(max_lr=2e-3, **{**QUICK, "epochs": 3, "peak_epoch": 1})
    fit(config, synthetic, callbacks=dataclasses.replace(console(), progress=False))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch")]
    assert [x[:11] for x in lines] == [f"epoch   {n}/3" for n in (1, 2, 3)]
    assert [", about " in x and x.endswith(" left") for x in lines] == [True, True, False]


def test_fit_steps_the_schedule_of_the_spec_and_records_every_step(synthetic):
    config = TrainConfig(max_lr=2e-3, min_lr=2e-4, **{**QUICK, "epochs": 3, "peak_epoch": 1})
    history = fit(config, synthetic, progress=False)
    spe = 6  # 600 images / batch 100
    expected = np.interp(np.arange(3 * spe), [0, spe - 1, 3 * spe - 1], [2e-4, 2e-3, 2e-4])
    np.testing.assert_allclose(history.step_lrs, expected, rtol=1e-12)
    assert [e["lr"] for e in history.epochs] == [history.step_lrs[i * spe - 1] for i in (1, 2, 3)]


def test_drop_last_skips_the_partial_batch_in_the_epoch_and_in_the_schedule(synthetic, tmp_path):
    from cifar_resnet.data.splits import train_batches

    config = TrainConfig(max_lr=2e-3, min_lr=2e-4, drop_last=True, **{**QUICK, "batch_size": 160})
    runtime = resolve_runtime("cpu")
    train, _ = prepare_splits(synthetic, config, runtime)
    sizes = [len(y) for _, y in train_batches(train, config, runtime, torch.Generator())]
    assert sizes == [160, 160, 160]  # 600 images: the last 120 are skipped
    every = config.replace(drop_last=False)
    kept = [len(y) for _, y in train_batches(train, every, runtime, torch.Generator())]
    assert kept == [160, 160, 160, 120]
    losses = []
    record = Callbacks(progress=False, on_step=lambda step, lr, loss: losses.append(float(loss)))
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False,
                  callbacks=record)  # fmt: skip
    spe = 3
    state = load_checkpoint(tmp_path / "run")
    assert history.final["steps_per_epoch"] == state.steps_per_epoch == spe  # as recorded
    # each epoch's loss is the mean over the 480 images it trained on (3 equal batches)
    for i, e in enumerate(history.epochs):
        assert e["train_loss"] == pytest.approx(np.mean(losses[i * spe : (i + 1) * spe]))
    expected = np.interp(np.arange(2 * spe), [0, spe - 1, 2 * spe - 1], [2e-4, 2e-3, 2e-4])
    np.testing.assert_allclose(history.step_lrs, expected, rtol=1e-12)  # ends at LRMIN
    final = history.final
    assert final["images_per_second"] * final["train_seconds"] == pytest.approx(2 * 480)
    # a checkpoint whose epochs had another length does not resume on this data
    state.epoch, state.steps_per_epoch = 1, spe + 1
    with pytest.raises(CheckpointError, match="epochs had 4 steps, this data makes 3"):
        fit(config, synthetic, progress=False, resume=state)


def test_drop_last_with_fewer_images_than_a_batch_says_so(synthetic):
    config = TrainConfig(max_lr=1e-3, drop_last=True, limit_train=90, **QUICK)
    with pytest.raises(ConfigError, match="--drop-last leaves no batch: 90 training images"):
        fit(config, synthetic, progress=False)


def test_cpu_runs_are_reproducible_with_a_seed(synthetic):
    config = TrainConfig(max_lr=2e-3, seed=7, dropout=0.1, **QUICK)
    a = fit(config, synthetic, progress=False)
    b = fit(config, synthetic, progress=False)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h.epochs]  # noqa: E731
    assert strip(a) == strip(b)
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    c = fit(config.replace(seed=8), synthetic, progress=False)
    assert strip(c) != strip(a)


def test_evaluate_uses_plain_normalised_test_images_in_eval_mode(synthetic):
    config = TrainConfig(**QUICK)
    runtime = resolve_runtime("cpu", "fp32")
    _, test = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config).train()
    from cifar_resnet.data.augment import normalize

    result = evaluate(model, test, runtime, batch_size=64)
    assert model.training  # flag restored
    model.eval()
    with torch.no_grad():
        logits = model(normalize(test.images, test.mean, test.std))
    expected_acc = (logits.argmax(1) == test.labels).float().mean().item()
    expected_loss = nn.functional.cross_entropy(logits, test.labels).item()
    assert result.acc == pytest.approx(expected_acc)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.n == len(synthetic.test_labels)
    assert result.tta_acc is None and result.tta_loss is None  # TTA not asked for


def test_limits_take_the_first_images_and_stats_come_from_the_train_split(synthetic):
    config = TrainConfig(limit_train=300, limit_test=50, **QUICK)
    train, test = prepare_splits(synthetic, config, resolve_runtime("cpu"))
    assert torch.equal(train.images, synthetic.train_images[:300])
    assert torch.equal(test.labels, synthetic.test_labels[:50])
    expected_mean = synthetic.train_images[:300].double().div(255).mean((0, 2, 3))
    assert torch.allclose(train.mean.double(), expected_mean, atol=1e-6)
    assert torch.equal(test.mean, train.mean)


def test_a_run_resumed_on_another_machine_names_each_epochs_machine(
    synthetic, tmp_path, monkeypatch
):
    def stop_after_first_epoch(metrics, epochs):
        if metrics.epoch == 1:
            signal.raise_signal(signal.SIGINT)  # the run checkpoints the epoch, then stops

    config, run = TrainConfig(max_lr=2e-3, **QUICK), tmp_path / "run"
    xeon, epyc = {"cpu": "Xeon", "amx_bf16": True}, {"cpu": "EPYC", "amx_bf16": False}
    monkeypatch.setattr(fit_module, "machine", lambda: xeon)
    with pytest.raises(TrainingInterrupted):
        fit(
            config,
            synthetic,
            run=RunFolder(run),
            callbacks=Callbacks(on_epoch=stop_after_first_epoch),
        )
    monkeypatch.setattr(fit_module, "machine", lambda: epyc)  # resumed elsewhere
    state = load_checkpoint(run)
    fit(config, synthetic, run=RunFolder(run, resume=True), resume=state, progress=False)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["machine"] for m in lines] == [{**xeon, "device": "cpu"}, {**epyc, "device": "cpu"}]
    assert json.loads((run / "final.json").read_text())["machine"] == epyc


def test_run_folder_holds_config_metrics_checkpoint_and_final(synthetic, tmp_path):
    config = TrainConfig(max_lr=2e-3, ema_decay=0.0, **QUICK)  # the saved model is the raw one
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["max_lr"] == 2e-3 and saved["min_lr"] == pytest.approx(2e-4)
    assert saved["lr_source"] == "given"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    keys = {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}
    assert all(set(m) == keys | {"machine"} for m in lines)
    assert all(m["machine"]["device"] == "cpu" and m["machine"]["cpu"] for m in lines)
    assert all(0 <= m["train_acc"] <= 1 and 0 <= m["test_acc"] <= 1 for m in lines)
    final = json.loads((run / "final.json").read_text())
    for key in (
        "test_acc",
        "test_loss",
        "epochs",
        "train_seconds",
        "images_per_second",
        "device",
        "machine",
        "params",
        "seed",
        "max_lr",
        "min_lr",
    ):
        assert key in final, key
    assert final["test_acc"] == lines[-1]["test_acc"] == history.final["test_acc"]
    assert final["params"] == sum(p.numel() for p in history.model.parameters())

    def first(target):  # training seconds to the first epoch at or above target
        for i, m in enumerate(lines):
            if m["test_acc"] >= target:
                return sum(e["seconds"] for e in lines[: i + 1])
        return None

    assert final["time_to_accuracy"] == {str(t): first(t) for t in (0.85, 0.9, 0.91, 0.92)}
    assert final["time_to_accuracy_tta"] is None  # the run measured no TTA
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2
    assert TrainConfig.from_dict(ckpt["config"]).max_lr == 2e-3
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    for (k, a), b in zip(
        model.state_dict().items(), history.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_without_max_lr_the_range_test_chooses_and_says_so(synthetic, tmp_path):
    config = TrainConfig(finder_num_iter=12, **QUICK)
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    assert history.final["lr_source"] == "found"
    assert history.final["max_lr"] == history.lr_finder.max_lr
    assert history.final["min_lr"] == history.lr_finder.min_lr
    saved = json.loads((tmp_path / "run" / "lr_finder.json").read_text())
    assert saved["max_lr"] == history.lr_finder.max_lr
    assert len(saved["lrs"]) == len(saved["losses"]) == len(saved["smoothed"])


def test_range_test_does_not_change_the_training_that_follows(synthetic):
    """Same initial weights and data order whether or not the finder ran first."""
    found = fit(TrainConfig(finder_num_iter=12, **QUICK), synthetic, progress=False)
    given = fit(
        TrainConfig(max_lr=found.final["max_lr"], min_lr=found.final["min_lr"], **QUICK),
        synthetic,
        progress=False,
    )
    assert [e["train_loss"] for e in found.epochs] == [e["train_loss"] for e in given.epochs]


def test_a_nan_loss_stops_at_once_naming_step_and_lr_and_keeps_the_last_checkpoint(
    synthetic, tmp_path, monkeypatch
):
    from cifar_resnet.errors import TrainingDiverged

    calls = {"n": 0}
    real_forward = nn.CrossEntropyLoss.forward

    def poisoned(self, logits, target):  # the 8th training step (epoch 2, step 2) gives NaN
        loss = real_forward(self, logits, target)
        if self.reduction != "mean":  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", poisoned)
    config = TrainConfig(max_lr=1e-3, min_lr=1e-4, **{**QUICK, "epochs": 3})
    with pytest.raises(TrainingDiverged) as info:
        fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    message = str(info.value)
    assert "\n" not in message and "--max-lr" in message
    assert "at step 2 of the epoch" in message
    lr_step_8 = 1e-4 + (1e-3 - 1e-4) * (17 - 7) / (17 - 5)  # index 7 of 0..17, peak at 5
    assert f"LR {lr_step_8:.3e}" in message
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def _reference_batch(train, config, seed, device="cpu"):
    """The first training batch rebuilt image by image from the same random draws."""
    from cifar_resnet.data.augment import sample_augment

    gen = torch.Generator(device=device).manual_seed(seed)
    order = torch.randperm(train.images.shape[0], generator=gen, device=device)
    idx = order[: config.batch_size]
    p = sample_augment(
        len(idx),
        padding=config.crop_padding,
        cutout=config.cutout_size,
        flip_prob=config.flip_prob,
        generator=gen,
        device=device,
    )
    pad, cut = config.crop_padding, config.cutout_size
    images = []
    for i, j in enumerate(idx.tolist()):
        img = train.images[j].float().div(255)  # (3, 32, 32)
        img = (img - train.mean.view(3, 1, 1)) / train.std.view(3, 1, 1)
        mode = "reflect" if config.crop_pad_mode == "reflect" else "constant"
        img = nn.functional.pad(img, (pad,) * 4, mode=mode)
        y0, x0 = int(p.crop_y[i]), int(p.crop_x[i])
        img = img[:, y0 : y0 + 32, x0 : x0 + 32]
        if p.flip[i]:
            img = img.flip(2)  # width axis of (C, H, W)
        img = img.clone()
        cy, cx = int(p.cut_y[i]), int(p.cut_x[i])
        img[:, cy : cy + cut, cx : cx + cut] = 0
        images.append(img)
    return torch.stack(images), train.labels[idx]


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_fast_path_gives_the_loss_of_a_per_image_reference_on_the_same_draws(synthetic, pad_mode):
    from cifar_resnet.data.splits import train_batches

    config = TrainConfig(max_lr=1e-3, crop_pad_mode=pad_mode, **QUICK)
    runtime = resolve_runtime("cpu")
    train, _ = prepare_splits(synthetic, config, runtime)
    x_fast, y_fast = next(train_batches(train, config, runtime, torch.Generator().manual_seed(4)))
    x_ref, y_ref = _reference_batch(train, config, 4)
    assert torch.equal(y_fast, y_ref)
    torch.testing.assert_close(x_fast, x_ref, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    model = build_model(config).eval()
    loss_fast = nn.functional.cross_entropy(model(x_fast), y_fast)
    loss_ref = nn.functional.cross_entropy(model(x_ref), y_ref)
    assert loss_fast.item() == pytest.approx(loss_ref.item(), rel=1e-5)


_DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ),
]


@pytest.mark.parametrize("device", _DEVICES)
def test_bf16_fast_path_matches_the_fp32_reference_within_bf16_tolerance(synthetic, device):
    from cifar_resnet.data.splits import train_batches

    config = TrainConfig(max_lr=1e-3, precision="bf16", **{**QUICK, "device": device})
    runtime = resolve_runtime(device, "bf16")
    train, _ = prepare_splits(synthetic, config, runtime)
    gen = torch.Generator(device=device).manual_seed(4)
    x_fast, y_fast = next(train_batches(train, config, runtime, gen))
    x_ref, y_ref = _reference_batch(train, config, 4, device=device)
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    with runtime.autocast():
        logits = model(x_fast)
        loss_fast = nn.functional.cross_entropy(logits, y_fast)
    assert logits.dtype == torch.bfloat16 and loss_fast.dtype == torch.float32
    loss_ref = nn.functional.cross_entropy(model(x_ref.contiguous()), y_ref)
    assert torch.equal(y_fast, y_ref)
    assert loss_fast.item() == pytest.approx(loss_ref.item(), rel=2e-2)


@pytest.mark.parametrize("device", _DEVICES)
def test_a_bf16_training_step_agrees_with_fp32_within_bf16_tolerance(synthetic, device):
    """Same weights, same batch: bf16 autocast and fp32 give the same loss and gradients
    within bf16's tolerance; weights and BatchNorm statistics stay fp32.

    bf16 keeps 8 significant bits, and the backward pass compounds its rounding layer by
    layer (a max-pool window whose values round to a tie routes its gradient elsewhere):
    at initialisation the head's gradient agrees to 1%, the first conv's only in
    direction (cosine about 0.94 at width 0.25).
    """
    config = TrainConfig(max_lr=1e-3, **{**QUICK, "device": device})
    fp32, bf16 = resolve_runtime(device, "fp32"), resolve_runtime(device, "bf16")
    train, _ = prepare_splits(synthetic, config, fp32)
    from cifar_resnet.data.splits import train_batches

    x, y = next(train_batches(train, config, fp32, torch.Generator(device=device).manual_seed(1)))
    results = {}
    for runtime in (fp32, bf16):
        torch.manual_seed(0)
        model = build_model(config).to(device).to(memory_format=torch.channels_last)
        with runtime.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.flatten() for p in model.parameters()]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())
        results[runtime.precision] = (loss.item(), grads, model.layer1.conv[2].running_mean)
    (loss32, g32, bn32), (loss16, g16, bn16) = results["fp32"], results["bf16"]
    cos = nn.functional.cosine_similarity
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    assert cos(torch.cat(g16), torch.cat(g32), dim=0) > 0.97
    assert all(cos(a, b, dim=0) > 0.85 for a, b in zip(g16, g32, strict=True))
    head = g32[-2]  # the Linear layer's weight: one bf16 matmul from the loss
    assert (g16[-2] - head).norm() / head.norm() < 0.02
    torch.testing.assert_close(bn16, bn32, rtol=0.05, atol=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("drop_last", [False, True])
def test_compile_trains_the_same_run_and_reports_its_time_apart(synthetic, drop_last):
    # Batch 140 over 600 images: a last batch of 40, trained (a second shape the warm-up
    # compiles) or skipped with drop_last (4 steps an epoch, one shape).
    quick = {**QUICK, "batch_size": 140}
    config = TrainConfig(max_lr=2e-3, precision="fp32", drop_last=drop_last, **quick)
    eager = fit(config, synthetic, progress=False)
    compiled = fit(config.replace(compile=True), synthetic, progress=False)
    assert eager.final["compile_seconds"] is None
    assert compiled.final["compile_seconds"] > 0
    assert compiled.final["drop_last"] is drop_last
    images = 560 if drop_last else 600
    assert compiled.final["images_per_second"] == pytest.approx(
        images * config.epochs / compiled.final["train_seconds"]
    )
    # Same initial weights, data order and augmentations: only kernel rounding differs,
    # which training then amplifies a little from step to step.
    first_eager, first_compiled = eager.epochs[0], compiled.epochs[0]
    assert first_compiled["train_loss"] == pytest.approx(first_eager["train_loss"], rel=1e-3)
    for a, b in zip(eager.epochs, compiled.epochs, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=5e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-2)


def test_label_smoothing_is_the_mixture_of_cross_entropy_and_the_uniform_target():
    from cifar_resnet.training.setup import build_criterion

    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    eps = 0.2
    log_p = logits.log_softmax(1)
    direct = ((1 - eps) * -log_p[torch.arange(8), labels] + eps * -log_p.mean(1)).mean()
    loss = build_criterion(TrainConfig(label_smoothing=eps))(logits, labels)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    plain = build_criterion(TrainConfig(label_smoothing=0.0))(logits, labels)
    assert plain.item() == pytest.approx(nn.functional.cross_entropy(logits, labels).item())


def test_the_ema_is_the_decayed_average_of_every_steps_weights(synthetic):
    """Weights and BatchNorm buffers: e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from cifar_resnet.data.splits import EpochLength, train_batches
    from cifar_resnet.training.fit import train_step
    from cifar_resnet.training.setup import build_criterion, build_scheduler

    decay = 0.7
    config = TrainConfig(max_lr=2e-3, min_lr=2e-4, ema_decay=decay, **QUICK)
    runtime = resolve_runtime("cpu")
    train, _ = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config)
    opt = build_optimizer(model, config, runtime)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    expected: dict[str, torch.Tensor] = {}

    def after_step() -> None:
        ema.update_parameters(model)
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            prev = expected.get(name)
            expected[name] = value.clone() if prev is None else decay * prev + (1 - decay) * value

    gen = torch.Generator().manual_seed(0)
    criterion = build_criterion(config)
    scheduler = build_scheduler(opt, config, EpochLength.of(len(train), config.batch_size, False))
    for batch in train_batches(train, config, runtime, gen):
        train_step(model, criterion, opt, batch, runtime)
        scheduler.step()
        after_step()
    averaged = ema.module.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-5, atol=1e-6)
    last = model.state_dict()["layer1.conv.0.weight"]
    assert not torch.equal(averaged["layer1.conv.0.weight"], last)  # an average, not the last


def test_the_ema_follows_recent_weights_first_then_decays_at_its_rate():
    """e_1 = w_1, then e = d e + (1 - d) w with d = min(decay, (1 + n) / (10 + n)), n the
    updates before: a short run's average is of its recent weights, not its random start."""
    from cifar_resnet.training.setup import build_ema

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = build_ema(model, TrainConfig(ema_decay=0.9))
    expected = None
    for n in range(120):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update_parameters(model)
        w = model.weight.detach().clone()
        d = min(0.9, (1 + n) / (10 + n))  # n: the updates before this one
        expected = w if expected is None else d * expected + (1 - d) * w
        torch.testing.assert_close(ema.module.weight, expected, rtol=1e-5, atol=1e-6)
    assert d == 0.9  # reached once (1 + n) / (10 + n) passes the decay
    assert build_ema(model, TrainConfig(ema_decay=0.0)) is None


def test_an_ema_run_evaluates_and_saves_the_averaged_weights(synthetic, tmp_path):
    from cifar_resnet.inference.predict import model_from_checkpoint

    config = TrainConfig(max_lr=2e-3, ema_decay=0.9, **QUICK)
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    state = load_checkpoint(tmp_path / "run")
    saved = model_from_checkpoint(state)
    for name, value in saved.state_dict().items():  # the EMA's, not the last step's
        assert torch.equal(value, history.model.state_dict()[name]), name
    raw = state.model["layer1.conv.0.weight"]
    assert not torch.equal(saved.state_dict()["layer1.conv.0.weight"], raw)
    runtime = resolve_runtime("cpu", history.config.precision)
    _, test = prepare_splits(synthetic, config, runtime)
    ev = evaluate(saved.to(memory_format=torch.channels_last), test, runtime, batch_size=1024)
    assert ev.acc == history.final["test_acc"]


def test_tta_accuracy_is_the_mean_softmax_of_each_image_and_its_mirror(synthetic):
    config = TrainConfig(**QUICK)
    runtime = resolve_runtime("cpu", "fp32")
    _, test = prepare_splits(synthetic, config, runtime)
    torch.manual_seed(0)
    model = build_model(config).eval()
    from cifar_resnet.data.augment import normalize

    result = evaluate(model, test, runtime, batch_size=64, tta=True)
    x = normalize(test.images, test.mean, test.std)
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert result.tta_acc == (probs.argmax(1) == test.labels).float().mean().item()
    expected_loss = nn.functional.nll_loss(probs.log(), test.labels).item()
    assert result.tta_loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.acc == evaluate(model, test, runtime, batch_size=64).acc


def test_a_page_recipe_run_records_its_recipe_and_tta_accuracy(synthetic, tmp_path):
    config = TrainConfig(recipe="page", **QUICK)
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    final = history.final
    assert (final["recipe"], final["optimizer"], final["label_smoothing"]) == ("page", "sgd", 0.2)
    assert (final["head_bias"], final["logit_scale"]) == (False, 0.125)
    assert (final["crop_pad_mode"], final["drop_last"]) == ("reflect", True)
    assert history.step_lrs[0] == 0.0 and max(history.step_lrs) == pytest.approx(0.4)
    assert (
        0 <= final["test_acc_tta"] <= 1
        and final["test_acc_tta"] == history.epochs[-1]["test_acc_tta"]
    )
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["recipe"], saved["tta"], saved["max_lr"]) == ("page", True, 0.4)
    assert (saved["crop_pad_mode"], saved["drop_last"]) == ("reflect", True)
    assert isinstance(history.model.head[2], nn.Linear) and history.model.head[2].bias is None


def test_pages_pooling_order_trains_records_and_reloads_as_it_ran(synthetic, tmp_path):
    from cifar_resnet.inference.predict import model_from_checkpoint

    config = TrainConfig(recipe="page", pool_after_relu=True, **QUICK)
    assert all(
        block.pool_after_relu
        for block in (build_model(config).layer1.conv, build_model(config).layer2)
    )
    assert not build_model(config.replace(pool_after_relu=False)).layer2.pool_after_relu
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    assert history.final["pool_after_relu"] is True
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pool_after_relu"] is True
    reloaded = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert reloaded.layer3.conv.pool_after_relu
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), history.model.eval()(x))


def test_an_ema_updated_every_k_steps_uses_the_decay_to_the_kth_power():
    """Updated every k steps, e = d^k e + (1 - d^k) w with d = min(decay, (1 + m) / (10 + m)),
    m = k n the steps before: the per-step average, sampled every k steps."""
    from cifar_resnet.training.setup import build_ema

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = build_ema(model, TrainConfig(ema_decay=0.99, ema_every=5))
    expected = None
    for n in range(200):  # the warm-up ends after 890 steps, 178 updates
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update_parameters(model)
        w = model.weight.detach().clone()
        d = min(0.99, (1 + 5 * n) / (10 + 5 * n)) ** 5
        expected = w if expected is None else d * expected + (1 - d) * w
        torch.testing.assert_close(ema.module.weight, expected, rtol=1e-5, atol=1e-6)
    assert d == pytest.approx(0.99**5)


def test_the_bias_lr_factor_puts_the_norm_biases_in_a_group_of_their_own():
    from cifar_resnet.training.setup import parameter_groups

    model = build_model(TrainConfig(width=0.25, freeze_bn_scale=True))
    groups = parameter_groups(model, 64.0, 5e-4)
    weights, biases = groups
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in norms}
    assert (biases["lr_scale"], biases["weight_decay"]) == (64.0, 5e-4 / 64)
    assert (weights.get("lr_scale", 1.0), weights["weight_decay"]) == (1.0, 5e-4)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trained  # frozen scales left out
    assert not any(id(m.weight) in trained for m in norms)
    (single,) = parameter_groups(model, 1.0, 5e-4)  # the spec's: one group of everything
    assert len(single["params"]) == len(trained)


def test_page_fast_trains_with_its_tricks_and_reloads_as_it_ran(synthetic, tmp_path):
    """The recipe end to end: the whitening fitted at setup, the biases' LR 64 times the
    weights' at every step, the EMA updated every 5 steps, the LR held at a tenth of the
    peak over the last epoch; the saved model predicts as the trained one."""
    from cifar_resnet.inference.predict import model_from_checkpoint

    config = TrainConfig(recipe="page-fast", width=0.125, batch_size=64, epochs=3,
                         peak_epoch=1, hold_epochs=1, ghost_batch=16, device="cpu")  # fmt: skip
    history = fit(config, synthetic, run=RunFolder(tmp_path / "run"), progress=False)
    steps = 600 // 64  # drop_last: 9 full batches an epoch
    assert len(history.step_lrs) == 3 * steps
    assert history.step_lrs[-steps:] == pytest.approx([0.1] * steps)  # held at 1.0 / 10
    assert max(history.step_lrs) == pytest.approx(1.0)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    groups = state.optimizer["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 64.0]
    assert groups[1]["lr"] == pytest.approx(64 * groups[0]["lr"])
    assert int(state.ema["n_averaged"]) == len(range(0, 3 * steps, 5))
    whitening = state.model["prep_layer.0.weight"]
    assert not torch.equal(whitening, torch.eye(27).reshape(27, 3, 3, 3))  # fitted
    assert torch.equal(state.ema["module.prep_layer.0.weight"], whitening)
    reloaded = model_from_checkpoint(state)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), history.model.eval()(x))
    assert history.final["test_acc_tta"] is not None
