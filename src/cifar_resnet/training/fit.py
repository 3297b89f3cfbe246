"""``fit``: a training run, read top to bottom as its recipe.

Set up (device, data, model, optimizer, in a fixed order so a seed means the same run),
resolve the LRs (the range test, or the given ones), wrap the model (DDP,
``torch.compile``), build the schedule, restore a checkpoint when resuming, then train
and evaluate epoch by epoch, and summarise. Each step returns what the next one takes.

Robustness: a checkpoint is written atomically after every epoch; SIGINT/SIGTERM finish
the current step, write a checkpoint holding the position inside the epoch, and raise
``TrainingInterrupted``; ``fit(..., resume=state)`` continues from any such checkpoint
and, on the CPU with a seed, ends bit for bit where an unbroken run ends. A NaN or
infinite loss stops the run with the step and LR named, keeping the last good checkpoint.
"""

from __future__ import annotations

import signal
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import TrainConfig
from ..data.load import Cifar10
from ..data.splits import epoch_images, steps_per_epoch, train_batches
from ..distributed import Dist, per_rank_batch, process_group
from ..errors import ConfigError, TrainingInterrupted
from ..inference.evaluation import evaluate
from ..model.custom_resnet import count_parameters
from ..records.checkpoint import resumed_config, train_state
from ..records.records import EpochMetrics, LRFinderResult, RunSummary, TrainState
from ..records.run_folder import RunFolder
from ..runtime import device_type, resolve_runtime
from .epoch import (
    Callbacks,
    EpochInterrupted,
    EpochResult,
    EpochState,
    StepMonitor,
    console,
    train_one_epoch,
)
from .lifecycle import (
    capture_rng,
    check_resumable,
    restore_rng,
    saved_device_type,
    stop_on_signals,
)
from .run_log import RunLog, check_tensorboard, final_figures
from .setup import (
    LRs,
    Setup,
    build_criterion,
    build_ema,
    build_scheduler,
    resolve_lrs,
    setup_training,
    wrap,
)


@dataclass
class History:
    """What a run produced: per-epoch metrics, the LR of every step, final figures, the model."""

    config: TrainConfig  # resolved: max_lr, min_lr and precision filled in
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics dicts
    step_lrs: list[float] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # final.json
    lr_finder: LRFinderResult | None = None  # when the range test chose the LRs
    model: nn.Module | None = None  # the evaluated weights (the EMA's, with --ema-decay)


@dataclass(frozen=True)
class Stepper:
    """What each training step uses besides the set-up: the wrapped network, the loss, the
    schedule, the EMA of the weights, fp16's loss scaling, a rank's augmentation stream."""

    net: nn.Module  # what trains: the model, or its DDP / compiled wrapper
    criterion: nn.Module
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler
    aug_generator: torch.Generator | None  # per-rank augmentation stream when distributed
    compile_seconds: float | None

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The weights evaluated, reported and saved as the model: the EMA's when there is one."""
        return model if self.ema is None else self.ema.module


@dataclass
class Progress:
    """How far a run has come: its finished epochs, every step's LR, the seconds trained,
    and where an interrupted epoch stands."""

    epochs_done: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics dicts
    step_lrs: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    epoch_state: EpochState | None = None

    def add(self, metrics: EpochMetrics, result: EpochResult) -> None:
        self.epochs_done = metrics.epoch
        self.epochs.append(metrics.to_dict())
        self.step_lrs += result.lrs
        self.train_seconds += result.seconds


def fit(
    config: TrainConfig,
    data: Cifar10 | None = None,
    *,
    run: RunFolder | None = None,
    progress: bool = True,
    resume: TrainState | dict[str, Any] | None = None,
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
    state = None if resume is None else train_state(resume)
    if state is not None:
        config = continued_here(resumed_config(state, config.to_dict()), state)
    callbacks = console(progress) if callbacks is None else callbacks
    check_devices(config)
    with process_group(config.device) as dist:
        if not dist.is_main:  # rank 0 alone writes and shows progress
            run, callbacks = None, Callbacks()
        return _fit(config, data, run, callbacks, state, dist)


def _fit(
    config: TrainConfig,
    data: Cifar10 | None,
    folder: RunFolder | None,
    callbacks: Callbacks,
    resume: TrainState | None,
    dist: Dist,
) -> History:
    per_rank_batch(config.batch_size, dist.world)
    check_tensorboard(config, folder, dist.is_main)
    s = setup_training(config, data, callbacks.progress, dist)
    config = config.replace(precision=s.runtime.precision)  # record what "auto" chose
    if resume is not None:
        check_resumable(resume, s.data, s.train)
    lrs = resolve_lrs(config, s, resume, dist, callbacks.progress)
    config = config.replace(max_lr=lrs.max_lr, min_lr=lrs.min_lr)
    step = _stepper(s, config, dist)
    so_far = Progress() if resume is None else _restore(resume, s, step, config, dist)
    spe = steps_per_epoch(len(s.train), config.batch_size, bool(config.drop_last))
    with RunLog(folder, config, callbacks, spe, resume) as log:
        log.start(config, lrs, resume)
        t0 = time.perf_counter()
        with stop_on_signals(folder is not None or dist.enabled) as received:
            for epoch in range(so_far.epochs_done + 1, config.epochs + 1):
                try:
                    result = _train_epoch(s, step, config, dist, so_far, epoch, received, log)
                except EpochInterrupted as stop:
                    log.checkpoint(_checkpoint(s, step, config, lrs, so_far, dist, stop.state))
                    signum = received[0] if received else signal.SIGTERM
                    raise TrainingInterrupted(signum, epoch, stop.state.step) from None
                metrics = _evaluate_epoch(s, step, config, dist, epoch, result)
                so_far.add(metrics, result)
                log.epoch(metrics, _checkpoint(s, step, config, lrs, so_far, dist))
                if received and epoch < config.epochs:
                    raise TrainingInterrupted(received[0], epoch + 1, 0)
        summary = _summary(s, step, config, lrs, so_far, dist, time.perf_counter() - t0, resume)
        model = step.evaluated(s.model)
        final = log.finish(summary, config, lambda: final_figures(
            model, s.test, list(s.data.classes), s.runtime, config.eval_batch_size))  # fmt: skip
    return History(config, so_far.epochs, so_far.step_lrs, final, lrs.finder, model)


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


def _stepper(s: Setup, config: TrainConfig, dist: Dist) -> Stepper:
    """The wrapped network, loss, One Cycle schedule, EMA and loss scaling of a run."""
    criterion = build_criterion(config)
    # Ranks share the data order (``s.generator``) but draw their own augmentations.
    aug_generator = None
    if dist.enabled:
        aug_generator = torch.Generator(device=s.runtime.device)
        aug_generator.manual_seed(config.seed + 1 + dist.rank)
    net, compile_seconds = wrap(s, config, criterion, dist, aug_generator)
    scheduler = build_scheduler(s.optimizer, config, len(s.train))
    return Stepper(net, criterion, scheduler, build_ema(s.model, config),
                   s.runtime.grad_scaler(), aug_generator, compile_seconds)  # fmt: skip


def _restore(
    state: TrainState, s: Setup, step: Stepper, config: TrainConfig, dist: Dist
) -> Progress:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, RNGs, records so far."""
    s.model.load_state_dict(state.model)
    _load_optimizer(s.optimizer, state.optimizer)
    step.scheduler.load_state_dict(state.scheduler)
    if step.ema is not None:
        step.ema.load_state_dict(state.ema)
    if state.scaler is not None and step.scaler.is_enabled():
        step.scaler.load_state_dict(state.scaler)
    ranks = state.rng_ranks or [state.rng]
    if len(ranks) == dist.world:  # each rank continues its own random streams
        carried = restore_rng(ranks[dist.rank], s.generator, step.aug_generator)
    else:  # another number of processes: shared streams from rank 0, fresh augmentation
        aug = step.aug_generator if dist.is_main else None
        carried = restore_rng(state.rng, s.generator, aug)
    if not carried:  # saved on another kind of device (``continued_here`` said so)
        seed = config.seed + 1_000_003 * (state.epoch + 1) + dist.rank
        s.generator.manual_seed(seed)
        if step.aug_generator is not None:
            step.aug_generator.manual_seed(seed + 1)
    epoch_state = None
    if state.epoch_state is not None:
        epoch_state = EpochState.from_dict(state.epoch_state, s.runtime.device)
    return Progress(state.epoch, list(state.metrics), list(state.step_lrs),
                    state.train_seconds, epoch_state)  # fmt: skip


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer state, run by this device's implementation (a CUDA run's fused
    kernels do not follow it to another device)."""
    own = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    groups = [{**g, **o} for g, o in zip(saved["param_groups"], own, strict=True)]
    optimizer.load_state_dict({**saved, "param_groups": groups})  # places state by own kernels


def _train_epoch(
    s: Setup, step: Stepper, config: TrainConfig, dist: Dist, so_far: Progress, epoch: int,
    received: list[int], log: RunLog,
) -> EpochResult:  # fmt: skip
    """Train one epoch (or the rest of an interrupted one)."""
    state = so_far.epoch_state or EpochState(
        torch.randperm(len(s.train), generator=s.generator, device=s.runtime.device)
    )
    so_far.epoch_state = None
    batches = train_batches(
        s.train, config, s.runtime, s.generator, order=state.order, start_step=state.step,
        dist=dist, aug_generator=step.aug_generator,
    )  # fmt: skip
    n_images = epoch_images(len(s.train), config.batch_size, bool(config.drop_last))
    monitor = StepMonitor(
        state, s.runtime, config, n_images=n_images, dist=dist, stop=lambda: bool(received),
        callbacks=log.callbacks, desc=f"epoch {epoch}/{config.epochs}",
        step_offset=(epoch - 1) * log.steps_per_epoch,
    )  # fmt: skip
    ema = step.ema
    average = None if ema is None else lambda: ema.update_parameters(s.model)
    return train_one_epoch(
        step.net, step.criterion, s.optimizer, step.scheduler, batches, s.runtime, monitor,
        scaler=step.scaler, after_step=average,
    )  # fmt: skip


def _evaluate_epoch(
    s: Setup, step: Stepper, config: TrainConfig, dist: Dist, epoch: int, result: EpochResult
) -> EpochMetrics:
    """Test-split figures of the epoch's weights."""
    # Evaluate the plain module (DDP's forward would expect every rank to join), with rank
    # 0's BatchNorm statistics everywhere, the EMA's too (it averages each rank's own): the
    # reported accuracy is the saved model's.
    dist.broadcast_buffers(s.model)
    if step.ema is not None:
        dist.broadcast_buffers(step.ema.module)  # not its update count, the same everywhere
    ev = evaluate(
        step.evaluated(s.model), s.test, s.runtime,
        batch_size=config.eval_batch_size, dist=dist, tta=bool(config.tta),
    )  # fmt: skip
    return EpochMetrics(
        epoch=epoch, lr=result.lrs[-1], train_loss=result.loss, train_acc=result.acc,
        test_loss=ev["loss"], test_acc=ev["acc"], seconds=result.seconds,
        test_loss_tta=ev.get("tta_loss"), test_acc_tta=ev.get("tta_acc"),
    )  # fmt: skip


def _checkpoint(
    s: Setup, step: Stepper, config: TrainConfig, lrs: LRs, so_far: Progress, dist: Dist,
    epoch_state: EpochState | None = None,
) -> TrainState:  # fmt: skip
    """The run as it stands after ``so_far.epochs_done`` epochs (and ``epoch_state``'s steps).

    Every rank calls it: it gathers their random states.
    """
    rngs = dist.gather_objects(capture_rng(s.generator, step.aug_generator))
    return TrainState(
        model=s.model.state_dict(), config=config.to_dict(), classes=list(s.data.classes),
        mean=s.train.mean.cpu(), std=s.train.std.cpu(), epoch=so_far.epochs_done,
        optimizer=s.optimizer.state_dict(), scheduler=step.scheduler.state_dict(),
        epoch_state=None if epoch_state is None else epoch_state.to_dict(),
        lr_source=lrs.source, metrics=so_far.epochs, step_lrs=so_far.step_lrs,
        train_seconds=so_far.train_seconds, rng=rngs[0],
        rng_ranks=rngs if dist.enabled else None,
        ema=None if step.ema is None else step.ema.state_dict(),
        scaler=step.scaler.state_dict() or None,
    )  # fmt: skip


def _summary(
    s: Setup, step: Stepper, config: TrainConfig, lrs: LRs, so_far: Progress, dist: Dist,
    total_seconds: float, resume: TrainState | None,
) -> RunSummary:  # fmt: skip
    """What the finished run measured (final.json adds its settings)."""
    last = EpochMetrics.from_dict(so_far.epochs[-1])
    images = epoch_images(len(s.train), config.batch_size, bool(config.drop_last))
    return RunSummary(
        test_acc=last.test_acc, test_loss=last.test_loss, train_acc=last.train_acc,
        train_loss=last.train_loss, train_seconds=so_far.train_seconds,
        total_seconds=total_seconds,
        images_per_second=images * config.epochs / so_far.train_seconds,
        train_images=len(s.train), test_images=len(s.test), device=s.runtime.describe(),
        precision=s.runtime.precision, processes=dist.world,
        compile_seconds=step.compile_seconds, torch=torch.__version__,
        params=count_parameters(s.model), lr_source=lrs.source, resumed=resume is not None,
        data=s.data.source, mean=s.train.mean.tolist(), std=s.train.std.tolist(),
        classes=list(s.data.classes), test_acc_tta=last.test_acc_tta,
        test_loss_tta=last.test_loss_tta,
    )  # fmt: skip
