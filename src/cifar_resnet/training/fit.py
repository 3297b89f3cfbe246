"""``fit``: a training run, read top to bottom as its recipe, and ``train_step``, the one
step that it and the LR range test (``find_lr``) take.

Set up (device, data, model, optimizer, in a fixed order so a seed means the same run),
resolve the LRs (the range test, or the given ones), wrap the model (DDP,
``torch.compile``), build the schedule, restore a checkpoint when resuming, then train
and evaluate epoch by epoch, and summarise. What the run holds as it goes is one
``Training``; the helpers below ``fit`` take it, not its parts.

Robustness: a checkpoint is written atomically after every epoch; SIGINT/SIGTERM finish
the current step, write a checkpoint holding the position inside the epoch, and raise
``TrainingInterrupted``; ``fit(..., resume=state)`` continues from any such checkpoint
and, on the CPU with a seed, ends bit for bit where an unbroken run ends. A NaN or
infinite loss stops the run with the step and LR named, keeping the last good checkpoint.

``find_lr``, the range test's sweep of steps, lives here beside the step it takes;
``lr_finder`` holds the sweep's settings and the choice from its curve and needs no model,
and ``range_test`` runs the test on its own (over seeds, into lr-find's folder).
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.load import Cifar10
from ..data.splits import epoch_order, train_batches
from ..distributed import Dist, per_rank_batch, process_group
from ..errors import ConfigError, TrainingInterrupted
from ..inference.evaluation import evaluate
from ..model.custom_resnet import count_parameters
from ..records.checkpoint import resumed_config
from ..records.machine import machine
from ..records.records import (
    EpochMetrics,
    LRFinderResult,
    RunSummary,
    TrainState,
    time_to_accuracy,
)
from ..records.run_folder import RunFolder
from ..runtime import Runtime, device_type, resolve_runtime
from .epoch import Callbacks, EpochInterrupted, EpochResult, EpochState, StepMonitor, console
from .lifecycle import (
    capture_rng,
    check_resumable,
    restore_rng,
    saved_device_type,
    stop_on_signals,
)
from .lr_finder import LRs, Sweep, curve_result, diverged, preserved_state
from .profiling import no_lap
from .run_log import RunLog, check_tensorboard, final_figures
from .setup import (
    Setup,
    build_criterion,
    build_ema,
    build_scheduler,
    setup_training,
    update_ema,
    wrap,
)

_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # the plain backward and step


@dataclass
class History:
    """What a run produced: per-epoch metrics, the LR of every step, final figures, the model."""

    config: TrainConfig  # resolved: max_lr, min_lr and precision filled in
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics dicts
    step_lrs: list[float] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # final.json
    lr_finder: LRFinderResult | None = None  # when the range test chose the LRs
    model: nn.Module | None = None  # the evaluated weights (the EMA's, with --ema-decay)


@dataclass
class Training:
    """A run in progress: what trains and with what (fixed once built), and how far it has
    come (``epochs`` and what follows, updated as it trains)."""

    config: TrainConfig  # resolved: precision, max_lr and min_lr filled in
    setup: Setup  # runtime, data, splits, epoch length, model, optimizer, data-order generator
    dist: Dist
    lrs: LRs
    net: nn.Module  # what trains: the model, or its DDP / compiled wrapper
    criterion: nn.Module
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler
    aug_generator: torch.Generator | None  # per-rank augmentation stream when distributed
    compile_seconds: float | None
    epochs: list[EpochMetrics] = field(default_factory=list)  # finished epochs
    step_lrs: list[float] = field(default_factory=list)  # the LR of every step so far
    train_seconds: float = 0.0
    epoch_state: EpochState | None = None  # where an interrupted epoch stands (resuming)

    def evaluated(self) -> nn.Module:
        """The weights evaluated, reported and saved as the model: the EMA's when there is one."""
        return self.setup.model if self.ema is None else self.ema.module

    def add(self, metrics: EpochMetrics, result: EpochResult) -> None:
        """A finished epoch."""
        self.epochs.append(metrics)
        self.step_lrs += result.lrs
        self.train_seconds += result.seconds


def train_step(
    net: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    runtime: Runtime,
    *,
    scaler: torch.amp.GradScaler = _NO_SCALING,
    lap: Callable[[str], None] = no_lap,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``batch``: forward in the runtime's precision, backward, update.

    Returns the loss and the logits (B, 10). ``scaler`` scales the loss in fp16
    (``Runtime.grad_scaler``); ``lap`` marks the end of each phase (``profiling``).
    """
    x, y = batch
    with runtime.autocast():
        logits = net(x)  # (B, 10)
        loss = criterion(logits, y)
    lap("forward")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    lap("backward")
    scaler.step(optimizer)  # skipped (in fp16) when a gradient overflowed
    scaler.update()
    return loss, logits


def fit(
    config: TrainConfig,
    data: Cifar10 | None = None,
    *,
    run: RunFolder | None = None,
    progress: bool = True,
    resume: TrainState | None = None,
    callbacks: Callbacks | None = None,
) -> History:
    """Train a CustomResNet as ``config`` says; evaluate on the test split after every epoch.

    With ``run``, writes config.json, metrics.jsonl, checkpoints/last.pt (every
    epoch, and on SIGINT/SIGTERM) and final.json there. Without ``max_lr`` the LR
    range test picks LRMAX and LRMIN first. ``resume`` is a checkpoint
    (``checkpoint.load_checkpoint``): training continues from it with its config.
    ``callbacks`` (default ``console(progress)``) is what the caller sees. Under
    torchrun, trains data-parallel (see ``distributed``).
    """
    if resume is not None:
        config = continued_here(resumed_config(resume, config.to_dict()), resume)
    callbacks = console(progress) if callbacks is None else callbacks
    check_devices(config)
    with process_group(config.device) as dist:
        if not dist.is_main:  # rank 0 alone writes and shows progress
            run, callbacks = None, Callbacks()
        per_rank_batch(config.batch_size, dist.world)
        check_tensorboard(config, run, dist.is_main)
        s = setup_training(config, data, callbacks.progress, dist)
        config = config.replace(precision=s.runtime.precision)  # record what "auto" chose
        if resume is not None:
            check_resumable(resume, s.data, s.train, s.epoch)
        lrs = resolve_lrs(config, s, resume, dist, callbacks.progress)
        config = config.replace(max_lr=lrs.max_lr, min_lr=lrs.min_lr)
        t = _training(s, config, dist, lrs)
        if resume is not None:
            _restore(t, resume)
        with RunLog(run, config, callbacks, s.epoch.steps, resume) as log:
            log.start(config, lrs, resume)
            t0 = time.perf_counter()
            with stop_on_signals(run is not None or dist.enabled) as received:
                for epoch in range(len(t.epochs) + 1, config.epochs + 1):
                    state = t.epoch_state or EpochState(epoch_order(len(s.train), s.generator))
                    t.epoch_state = None
                    batches = train_batches(
                        s.train, config, s.runtime, s.generator, order=state.order,
                        start_step=state.step, dist=dist, aug_generator=t.aug_generator,
                    )  # fmt: skip
                    monitor = StepMonitor(
                        state, s.runtime, s.epoch, max_lr=config.max_lr, dist=dist,
                        stop=lambda: bool(received), callbacks=log.callbacks,
                        desc=f"epoch {epoch}/{config.epochs}",
                        step_offset=(epoch - 1) * s.epoch.steps,
                    )  # fmt: skip
                    t.net.train()
                    for x, y in monitor.steps(batches):
                        lr = s.optimizer.param_groups[0]["lr"]
                        loss, logits = train_step(
                            t.net, t.criterion, s.optimizer, (x, y), s.runtime,
                            scaler=t.scaler, lap=monitor.lap,
                        )  # fmt: skip
                        t.scheduler.step()  # last_epoch: the steps taken, this one included
                        update_ema(t.ema, s.model, t.scheduler.last_epoch, config.ema_every)
                        monitor.lap("optimizer")
                        monitor.stepped(lr, loss, logits, y)
                    try:
                        result = monitor.result()
                    except EpochInterrupted as stop:
                        log.checkpoint(_checkpoint(t, stop.state))
                        signum = received[0] if received else signal.SIGTERM
                        raise TrainingInterrupted(signum, epoch, stop.state.step) from None
                    metrics = _evaluate_epoch(t, epoch, result)
                    t.add(metrics, result)
                    log.epoch(metrics, _checkpoint(t))
                    if received and epoch < config.epochs:
                        raise TrainingInterrupted(received[0], epoch + 1, 0)
            summary = _summary(t, time.perf_counter() - t0, resumed=resume is not None)
            model = t.evaluated()
            figures = lambda: final_figures(  # noqa: E731 (drawn only for TensorBoard)
                model, s.test, list(s.data.classes), s.runtime, config.eval_batch_size
            )
            final = log.finish(summary, config, figures)
    epochs = [m.to_dict() for m in t.epochs]
    return History(config, epochs, t.step_lrs, final, lrs.finder, model)


def check_devices(config: TrainConfig) -> None:
    """One-line errors, before any process group is joined, for devices that cannot train."""
    device = resolve_runtime(config.device, "fp32").device  # a device that is not here
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            f"--sync-bn synchronises BatchNorm across GPUs (SyncBatchNorm runs on CUDA only), "
            f"not on {device.type}; drop --sync-bn"
        )


def continued_here(config: TrainConfig, state: TrainState) -> TrainConfig:
    """A resumed run's config on this device. Saved on another kind of device (a Colab GPU,
    continued on a laptop), it trains on in the precision ``auto`` picks here, and with
    fresh random streams (``_reseed``): one warning says it is no longer bit-exact."""
    saved, here = saved_device_type(state.rng), device_type(config.device)
    if saved is None or saved == here:
        return config
    precision = resolve_runtime(config.device, "auto").precision
    change = "" if precision == config.precision else f" (it trained in {config.precision})"
    warnings.warn(
        f"resuming on {here} a run saved on {saved}: it trains on in {precision}{change}, and "
        "its random streams do not carry over (the data order after this epoch and the "
        "augmentation are drawn afresh); the run continues, but no longer bit for bit as an "
        "unbroken one",
        stacklevel=3,
    )
    return config.replace(precision=precision)


def _training(s: Setup, config: TrainConfig, dist: Dist, lrs: LRs) -> Training:
    """The wrapped network, loss, One Cycle schedule, EMA and loss scaling of a run."""
    criterion = build_criterion(config)
    # Ranks share the data order (``s.generator``) but draw their own augmentations.
    aug_generator = None
    if dist.enabled:
        aug_generator = torch.Generator(device=s.runtime.device)
        aug_generator.manual_seed(config.seed + 1 + dist.rank)
    net, compile_seconds = wrap(s, config, criterion, dist, aug_generator)
    scheduler = build_scheduler(s.optimizer, config, s.epoch)
    return Training(config, s, dist, lrs, net, criterion, scheduler, build_ema(s.model, config),
                    s.runtime.grad_scaler(), aug_generator, compile_seconds)  # fmt: skip


def _restore(t: Training, state: TrainState) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, RNGs, records so far."""
    s, dist = t.setup, t.dist
    s.model.load_state_dict(state.model)
    _load_optimizer(s.optimizer, state.optimizer)
    t.scheduler.load_state_dict(state.scheduler)
    if t.ema is not None:
        t.ema.load_state_dict(state.ema)
    if state.scaler is not None and t.scaler.is_enabled():
        t.scaler.load_state_dict(state.scaler)
    ranks = state.rng_ranks or [state.rng]
    if len(ranks) == dist.world:  # each rank continues its own random streams
        carried = restore_rng(ranks[dist.rank], s.generator, t.aug_generator)
    else:  # another number of processes: shared streams from rank 0, fresh augmentation
        aug = t.aug_generator if dist.is_main else None
        carried = restore_rng(state.rng, s.generator, aug)
    if not carried:  # saved on another kind of device (``continued_here`` said so)
        seed = t.config.seed + 1_000_003 * (state.epoch + 1) + dist.rank
        s.generator.manual_seed(seed)
        if t.aug_generator is not None:
            t.aug_generator.manual_seed(seed + 1)
    if state.epoch_state is not None:
        t.epoch_state = EpochState.from_dict(state.epoch_state, s.runtime.device)
    t.epochs = [EpochMetrics.from_dict(m) for m in state.metrics]
    t.step_lrs, t.train_seconds = list(state.step_lrs), state.train_seconds


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer state, run by this device's implementation (a CUDA run's fused
    kernels do not follow it to another device)."""
    own = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    groups = [{**g, **o} for g, o in zip(saved["param_groups"], own, strict=True)]
    optimizer.load_state_dict({**saved, "param_groups": groups})  # places state by own kernels


def _evaluate_epoch(t: Training, epoch: int, result: EpochResult) -> EpochMetrics:
    """Test-split figures of the epoch's weights."""
    # Evaluate the plain module (DDP's forward would expect every rank to join), with rank
    # 0's BatchNorm statistics everywhere, the EMA's too (it averages each rank's own): the
    # reported accuracy is the saved model's.
    t.dist.broadcast_buffers(t.setup.model)
    if t.ema is not None:
        t.dist.broadcast_buffers(t.ema.module)  # not its update count, the same everywhere
    ev = evaluate(
        t.evaluated(), t.setup.test, t.setup.runtime,
        batch_size=t.config.eval_batch_size, dist=t.dist, tta=t.config.tta,
    )  # fmt: skip
    return EpochMetrics(
        epoch=epoch, lr=result.lrs[-1], train_loss=result.loss, train_acc=result.acc,
        test_loss=ev.loss, test_acc=ev.acc, seconds=result.seconds,
        test_loss_tta=ev.tta_loss, test_acc_tta=ev.tta_acc,
        machine={**machine(), "device": t.setup.runtime.describe()},
    )  # fmt: skip


def _checkpoint(t: Training, epoch_state: EpochState | None = None) -> TrainState:
    """The run as it stands after its finished epochs (and ``epoch_state``'s steps).

    Every rank calls it: it gathers their random states.
    """
    s = t.setup
    rngs = t.dist.gather_objects(capture_rng(s.generator, t.aug_generator))
    return TrainState(
        model=s.model.state_dict(), config=t.config.to_dict(), classes=list(s.data.classes),
        mean=s.train.mean.cpu(), std=s.train.std.cpu(), epoch=len(t.epochs),
        optimizer=s.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
        epoch_state=None if epoch_state is None else epoch_state.to_dict(),
        lr_source=t.lrs.source, metrics=[m.to_dict() for m in t.epochs],
        step_lrs=list(t.step_lrs), train_seconds=t.train_seconds, rng=rngs[0],
        rng_ranks=rngs if t.dist.enabled else None,
        ema=None if t.ema is None else t.ema.state_dict(),
        scaler=t.scaler.state_dict() or None, steps_per_epoch=s.epoch.steps,
    )  # fmt: skip


def _summary(t: Training, total_seconds: float, *, resumed: bool) -> RunSummary:
    """What the finished run measured (final.json adds its settings)."""
    s, config, last = t.setup, t.config, t.epochs[-1]
    return RunSummary(
        test_acc=last.test_acc, test_loss=last.test_loss, train_acc=last.train_acc,
        train_loss=last.train_loss, train_seconds=t.train_seconds,
        total_seconds=total_seconds,
        images_per_second=s.epoch.images * config.epochs / t.train_seconds,
        train_images=len(s.train), test_images=len(s.test), steps_per_epoch=s.epoch.steps,
        device=s.runtime.describe(), machine=machine(), precision=s.runtime.precision,
        processes=t.dist.world,
        compile_seconds=t.compile_seconds, torch=torch.__version__,
        params=count_parameters(s.model), lr_source=t.lrs.source, resumed=resumed,
        data=s.data.source, mean=s.train.mean.tolist(), std=s.train.std.tolist(),
        classes=list(s.data.classes), test_acc_tta=last.test_acc_tta,
        test_loss_tta=last.test_loss_tta, time_to_accuracy=time_to_accuracy(t.epochs),
        time_to_accuracy_tta=time_to_accuracy(t.epochs, tta=True) if config.tta else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The LR range test: the training step at each LR of a sweep


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | Iterable[Any],
    sweep: Sweep = Sweep(),  # noqa: B008 (frozen: safe to share)
    *,
    runtime: Runtime | None = None,
    generators: tuple[torch.Generator, ...] = (),
    progress: bool = True,
) -> LRFinderResult:
    """Run the range test and choose LRMAX/LRMIN; model, optimizer and RNGs are left as found.

    ``batches`` is a function returning a fresh iterator of ``(inputs, labels)``
    (called again whenever one runs out) or a re-iterable such as a DataLoader.
    ``runtime`` (default: fp32 on the model's device) sets the step's precision.
    ``generators``: the run's data-order generator (and its augmentation's), restored too.
    """
    if runtime is None:
        runtime = Runtime(next(model.parameters()).device, None, channels_last=False)
    stream = _endless(batches if callable(batches) else batches.__iter__)
    scaler = runtime.grad_scaler()
    lrs: list[float] = []
    losses: list[float] = []
    stopped = False
    with preserved_state(model, optimizer, generators):
        model.train()
        for lr in tqdm(sweep.lrs(), desc="LR range test", unit="step", leave=False,
                       disable=not progress):  # fmt: skip
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, _ = train_step(model, criterion, optimizer, next(stream), runtime, scaler=scaler)
            lrs.append(lr)
            losses.append(loss.item())
            if diverged(losses, sweep.diverge_factor):
                stopped = True
                break
    return curve_result(lrs, losses, stopped, sweep)


def _endless(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Batches from ``make()``, calling it again whenever an iterator runs out."""
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch
        if empty:
            raise ConfigError("the LR range test got no batches; check the training data")


def find_training_lr(s: Setup, config: TrainConfig, progress: bool = True) -> LRFinderResult:
    """The LR range test with the training step's data path, batch size, loss and precision."""
    return find_lr(
        s.model, s.optimizer, build_criterion(config),
        lambda: train_batches(s.train, config, s.runtime, s.generator), Sweep.of(config),
        runtime=s.runtime, generators=(s.generator,), progress=progress,
    )  # fmt: skip


def resolve_lrs(
    config: TrainConfig, setup: Setup, resume: TrainState | None, dist: Dist, progress: bool
) -> LRs:
    """LRMAX and LRMIN: saved (resume), found by the range test, or given."""
    if resume is not None:
        return LRs(config.max_lr, config.min_lr, resume.lr_source)
    finder = None
    if config.max_lr is None:
        finder = find_training_lr(setup, config, progress)
        found = [finder.max_lr, finder.min_lr]
        max_lr, min_lr = dist.broadcast_floats(found, setup.runtime.device)
        if config.min_lr is not None:
            min_lr = min(config.min_lr, max_lr)
    else:
        max_lr = config.max_lr
        min_lr = config.min_lr if config.min_lr is not None else max_lr / config.min_lr_divisor
    if min_lr > max_lr:
        raise ConfigError(f"--min-lr ({min_lr}) must not exceed the peak LR ({max_lr})")
    return LRs(max_lr, min_lr, "found" if finder is not None else "given", finder)
