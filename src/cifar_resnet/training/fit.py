"""Training: the builders, one epoch (``train_one_epoch``), the run (``fit``), the range test.

``fit(config)`` reads as its steps: set up (device, data, model, optimizer, in a fixed
order so a seed means the same run), resolve the LRs (the range test, or the given
ones), wrap the model (DDP, torch.compile), restore a checkpoint when resuming, run
the epochs, summarise. Batches come from ``splits``, evaluation from ``evaluation``,
checkpoint and record fields from ``records``, signals and random streams from
``lifecycle``; this module prints nothing itself: what a caller sees goes through
``Callbacks`` (``fit(progress=True)`` shows tqdm bars and an epoch line).

Robustness: a checkpoint is written atomically after every epoch; SIGINT/SIGTERM
finish the current step, write a checkpoint holding the position inside the epoch,
and raise ``TrainingInterrupted``; ``fit(..., resume=state)`` continues from any
such checkpoint and, on the CPU with a seed, ends bit for bit where an unbroken run
ends. A NaN or infinite loss stops the run with the step and LR named, keeping the
last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config import RESUME_OVERRIDES, TrainConfig
from ..data.load import Cifar10, load_cifar10
from ..data.splits import Split, epoch_images, prepare_splits, steps_per_epoch, train_batches
from ..distributed import SINGLE_PROCESS, Dist, from_env, per_rank_batch
from ..errors import ConfigError, TrainingDiverged, TrainingInterrupted
from ..inference.evaluation import evaluate, predict_logits
from ..inference.metrics import confusion_matrix, select_misclassified
from ..model.custom_resnet import CustomResNet, count_parameters
from ..records.checkpoint import config_from_checkpoint, train_state
from ..records.records import EpochMetrics, RunSummary, TrainState
from ..records.run_folder import RunFolder
from ..runtime import Runtime, device_type, keep_freed_memory, resolve_runtime
from .lifecycle import (
    capture_rng,
    check_resumable,
    restore_rng,
    saved_device_type,
    stop_on_signals,
)
from .lr_finder import LRFinderResult, find_lr, preserved_state, with_spread
from .profiling import PhaseTimer, no_lap
from .schedule import one_cycle_scheduler
from .tensorboard_log import TensorBoardLog, check_available

# How often (in steps) a CUDA run reads back its loss to look for NaN/inf and, when
# distributed, agrees on a stop request; on the CPU every step is checked (no sync cost).
_CUDA_CHECK_EVERY = 16
_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # the plain backward and step


@dataclass
class History:
    """What a run produced: per-epoch metrics, the LR of every step, final figures, the model."""

    config: TrainConfig  # resolved: max_lr, min_lr and precision filled in
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics dicts
    step_lrs: list[float] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # RunSummary dict
    lr_finder: LRFinderResult | None = None  # when the range test chose the LRs
    model: nn.Module | None = None  # the evaluated weights (the EMA's, with --ema-decay)


# ---------------------------------------------------------------------------------------------
# Builders: what a config describes


def build_model(config: TrainConfig, num_classes: int = 10) -> CustomResNet:
    """The network a config describes (not yet moved to a device)."""
    return CustomResNet(num_classes, **config.model_options())


def build_optimizer(
    model: nn.Module, config: TrainConfig, runtime: Runtime
) -> torch.optim.Optimizer:
    """Adam (coupled L2), AdamW (decoupled) or SGD with Nesterov momentum, as ``config`` says.

    Fused (one kernel for all parameters) on CUDA, torch's default (foreach) elsewhere.
    """
    fused = (runtime.device.type == "cuda") or None
    params, lr, wd = model.parameters(), config.max_lr or 1e-3, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd, fused=fused
        )
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=lr, weight_decay=wd, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, n_train: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The One Cycle schedule of ``config`` (max_lr and min_lr resolved), stepped every batch."""
    return one_cycle_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch(n_train, config.batch_size, bool(config.drop_last)),
        epochs=config.epochs,
        peak_epoch=config.peak_epoch,
        min_lr=config.min_lr,
        max_lr=config.max_lr,
    )


def build_criterion(config: TrainConfig) -> nn.Module:
    """The training loss: cross-entropy with the config's label smoothing (mean over the batch)."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


# ---------------------------------------------------------------------------------------------
# One epoch


@dataclass
class EpochState:
    """Where an epoch stands: its data order, steps done and running sums (for exact resume)."""

    order: torch.Tensor
    step: int = 0
    step_sums: list[float] = field(default_factory=list)  # loss x batch size of each step
    correct: int = 0
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Checkpointable form (the order goes to the CPU)."""
        return {
            "order": self.order.cpu(),
            "step": self.step,
            "step_sums": list(self.step_sums),
            "correct": self.correct,
            "lrs": list(self.lrs),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> EpochState:
        """Inverse of ``to_dict``."""
        order = d["order"].to(device)
        return cls(
            order, d["step"], list(d["step_sums"]), d["correct"], list(d["lrs"]), d["seconds"]
        )


@dataclass(frozen=True)
class EpochResult:
    """A finished epoch's training figures."""

    loss: float  # mean training loss over the epoch's images
    acc: float  # fraction of training images classified right (augmented, train mode)
    seconds: float
    lrs: list[float]  # the LR of every step


class EpochInterrupted(Exception):
    """A stop request ended an epoch early; ``state`` says where, for the checkpoint."""

    def __init__(self, state: EpochState) -> None:
        super().__init__(f"stopped after step {state.step}")
        self.state = state


@dataclass(frozen=True)
class Callbacks:
    """What a caller sees of training; the library itself prints nothing."""

    progress: bool = False  # tqdm bars: data loading, range test, each epoch's steps
    on_epoch: Callable[[EpochMetrics, int], None] | None = None  # (metrics, epochs in total)
    timer: PhaseTimer | None = None  # seconds per phase of every step (see ``profiling``)
    on_step: Callable[[int, float, torch.Tensor], None] | None = None  # (step, lr, loss)


def epoch_line(m: EpochMetrics, epochs: int) -> str:
    """The one-line log of an epoch."""
    tta = f" (TTA {m.test_acc_tta:.2%})" if m.test_acc_tta is not None else ""
    return (
        f"epoch {m.epoch:>3}/{epochs}  lr {m.lr:.3e}  "
        f"train loss {m.train_loss:.4f} acc {m.train_acc:.2%}  "
        f"test loss {m.test_loss:.4f} acc {m.test_acc:.2%}{tta}  {m.seconds:.1f} s"
    )


def console(progress: bool = True) -> Callbacks:
    """Callbacks for a terminal or notebook: progress bars and the epoch line (via tqdm)."""
    if not progress:
        return Callbacks()
    return Callbacks(progress=True, on_epoch=lambda m, epochs: tqdm.write(epoch_line(m, epochs)))


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    *,
    state: EpochState,
    n_images: int,
    config: TrainConfig,
    dist: Dist = SINGLE_PROCESS,
    stop: Callable[[], bool] | None = None,
    after_step: Callable[[], None] | None = None,
    callbacks: Callbacks = Callbacks(),  # noqa: B008 (frozen: safe to share)
    desc: str = "train",
    step_offset: int = 0,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochResult:
    """Train on ``batches`` (the rest of the epoch ``state`` describes); return its figures.

    ``n_images`` is the split's size over all ranks (less the partial batch with
    ``config.drop_last``). Raises ``EpochInterrupted`` after
    the first step at which ``stop()`` is true, ``TrainingDiverged`` on a NaN or
    infinite loss. ``after_step`` runs after every optimizer step (the EMA of weights).
    ``scaler`` scales the loss in fp16 (``Runtime.grad_scaler``); None: no scaling.
    ``callbacks.on_step`` gets each step as ``step_offset`` + its step in the epoch.
    """
    n_images = epoch_images(n_images, config.batch_size, bool(config.drop_last))
    scaler = scaler or _NO_SCALING
    model.train()
    dev = runtime.device
    step_sums: list[torch.Tensor] = []  # loss x batch size per step, summed once at the end
    correct = torch.zeros((), device=dev, dtype=torch.long)
    pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN/inf
    total = steps_per_epoch(n_images, config.batch_size)
    check_every = 1 if dev.type == "cpu" else _CUDA_CHECK_EVERY
    timer = callbacks.timer
    lap = no_lap if timer is None else timer.lap
    bar = tqdm(total=total, initial=state.step, desc=desc, leave=False, unit="step",
               disable=not (callbacks.progress and dist.is_main))  # fmt: skip
    runtime.synchronize()
    t0 = time.perf_counter()
    if timer is not None:
        timer.mark()
    stopped = False
    for x, y in batches:
        lap("augmentation")  # the batch generator's work: gather, normalise, augment
        state.lrs.append(optimizer.param_groups[0]["lr"])
        with runtime.autocast():
            logits = model(x)  # (B, 10)
            loss = criterion(logits, y)
        lap("forward")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        lap("backward")
        scaler.step(optimizer)  # skipped (in fp16) when a gradient overflowed
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        lap("optimizer")
        loss = loss.detach().float()
        pending.append(loss)
        step_sums.append(loss.to(runtime.sum_dtype) * y.shape[0])
        correct += (logits.detach().argmax(1) == y).sum()
        bar.update()
        state.step += 1
        if callbacks.on_step is not None:
            callbacks.on_step(step_offset + state.step, state.lrs[-1], loss)
        if state.step % check_every == 0 or state.step == total:
            _check_finite(pending, state.step - len(pending), state.lrs, config)
            pending.clear()
            stopped = stop is not None and dist.any(stop(), dev)
        lap("bookkeeping")
        if stopped:
            break
    bar.close()
    runtime.synchronize()
    state.seconds += time.perf_counter() - t0
    if step_sums:
        state.step_sums += torch.stack(step_sums).cpu().tolist()
    state.correct += int(correct.item())
    if stopped and state.step < total:
        raise EpochInterrupted(state)
    return _epoch_result(state, n_images, dist, runtime)


def _epoch_result(state: EpochState, n_images: int, dist: Dist, runtime: Runtime) -> EpochResult:
    """The epoch's figures over all ranks, from its per-step sums."""
    # One sum over all steps in order, so a resumed epoch adds up exactly as an unbroken one.
    dev = runtime.device
    loss_total = torch.tensor(state.step_sums, dtype=runtime.sum_dtype, device=dev).sum()
    correct_total = torch.tensor(state.correct, device=dev)
    return EpochResult(
        loss=dist.all_sum(loss_total).item() / n_images,
        acc=int(dist.all_sum(correct_total).item()) / n_images,
        seconds=state.seconds,
        lrs=state.lrs,
    )


def _check_finite(
    losses: list[torch.Tensor], first_step: int, lrs: list[float], config: TrainConfig
) -> None:
    if not losses:
        return
    values = torch.stack(losses)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        step = first_step + i
        raise TrainingDiverged(
            f"the loss became {values[i].item()} at step {step + 1} of the epoch "
            f"(LR {lrs[step]:.3e}); stopped, the last good checkpoint is kept; "
            f"try a lower --max-lr than {config.max_lr:.3e}"
        )


# ---------------------------------------------------------------------------------------------
# Setting up, and the LR range test on its own


class Setup(NamedTuple):
    """Everything a run needs before its first step."""

    runtime: Runtime
    data: Cifar10
    train: Split
    test: Split
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the data order (and, in one process, the augmentation)


def setup_training(
    config: TrainConfig, data: Cifar10 | None, progress: bool, dist: Dist = SINGLE_PROCESS
) -> Setup:
    """Everything a run needs before its first step, in a fixed order (so seeds mean the same).

    On the CPU this also keeps freed memory for reuse, process-wide (``keep_freed_memory``).
    """
    runtime = resolve_runtime(
        config.device, config.precision, local_rank=dist.local_rank if dist.enabled else None
    )
    if dist.enabled and config.precision == "auto":  # every rank trains in rank 0's choice
        (bf16,) = dist.broadcast_floats([float(runtime.precision == "bf16")], runtime.device)
        runtime = dataclasses.replace(runtime, autocast_dtype=torch.bfloat16 if bf16 else None)
    if runtime.device.type == "cpu":
        keep_freed_memory()
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress and dist.is_main)
    train, test = prepare_splits(data, config, runtime)
    if steps_per_epoch(len(train), config.batch_size, bool(config.drop_last)) == 0:
        raise ConfigError(
            f"--drop-last leaves no batch: {len(train):,} training images are fewer than "
            f"--batch-size {config.batch_size}; lower --batch-size or give --no-drop-last"
        )
    torch.manual_seed(config.seed)
    model = build_model(config, len(data.classes)).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config, runtime)
    generator = torch.Generator(device=runtime.device).manual_seed(config.seed)
    return Setup(runtime, data, train, test, model, optimizer, generator)


def find_training_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Split,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    progress: bool = True,
) -> LRFinderResult:
    """The LR range test with the training step's data path, batch size, loss and precision."""
    return find_lr(
        model,
        optimizer,
        build_criterion(config),
        lambda: train_batches(train, config, runtime, generator),
        start_lr=config.finder_start_lr,
        end_lr=config.finder_end_lr,
        num_iter=config.finder_num_iter,
        rule=config.finder_rule,
        min_lr_divisor=config.min_lr_divisor,
        runtime=runtime,
        generators=(generator,),
        progress=progress,
    )


def lr_range_test(
    config: TrainConfig, data: Cifar10 | None = None, *, progress: bool = True
) -> LRFinderResult:
    """The LR range test that ``fit`` would run for ``config``, on its own."""
    s = setup_training(config, data, progress)
    return find_training_lr(s.model, s.optimizer, s.train, config, s.runtime, s.generator, progress)


def lr_range_test_seeds(
    config: TrainConfig, data: Cifar10 | None = None, seeds: int = 3, *, progress: bool = True
) -> LRFinderResult:
    """The range test of ``config`` with its spread: the test once for each of ``seeds`` seeds.

    The result is the first seed's (``config.seed``: the choice ``fit`` makes), with
    every seed's LRMAX and their spread (largest / smallest) in ``spread``.
    """
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress)
    results = []
    for i in range(seeds):
        if progress and seeds > 1:
            tqdm.write(f"LR range test, seed {config.seed + i} ({i + 1} of {seeds})")
        results.append(lr_range_test(config.replace(seed=config.seed + i), data, progress=progress))
    if seeds == 1:
        return results[0]
    return with_spread(results[0], [config.seed + i for i in range(seeds)], results[1:])


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """A run in progress: what ``fit``'s steps share."""

    config: TrainConfig
    setup: Setup
    dist: Dist
    history: History
    criterion: nn.Module
    aug_generator: torch.Generator | None  # per-rank augmentation stream when distributed
    scaler: torch.amp.GradScaler  # fp16's loss scaling; a pass-through otherwise
    lr_source: str = "given"
    net: nn.Module | None = None  # what trains: the model, or its DDP / compiled wrapper
    compile_seconds: float | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    ema: AveragedModel | None = None
    first_epoch: int = 1
    epoch_state: EpochState | None = None
    train_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def epoch_images(self) -> int:
        """Training images per epoch: all, or the full batches' with ``drop_last``."""
        config = self.config
        return epoch_images(len(self.setup.train), config.batch_size, bool(config.drop_last))

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.epoch_images, self.config.batch_size)

    @property
    def model(self) -> nn.Module:
        """The plain module (unwrapped): what is saved."""
        return self.setup.model

    @property
    def evaluated(self) -> nn.Module:
        """The weights evaluated, reported and used afterwards: the EMA's when there is one."""
        return self.model if self.ema is None else self.ema.module


def resumed_config(state: TrainState | dict[str, Any], given: TrainConfig) -> TrainConfig:
    """A checkpoint's config, with the fields a resumed run may change taken from ``given``."""
    saved = config_from_checkpoint(state)
    return saved.replace(**{name: getattr(given, name) for name in RESUME_OVERRIDES})


def _continued_here(config: TrainConfig, state: TrainState) -> TrainConfig:
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
        config = _continued_here(resumed_config(state, config), state)
    callbacks = console(progress) if callbacks is None else callbacks
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    device = resolve_runtime(config.device, "fp32").device  # a device that is not here: one line
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            f"--sync-bn synchronises BatchNorm across GPUs (SyncBatchNorm runs on CUDA only), "
            f"not on {device.type}; drop --sync-bn"
        )
    dist = from_env(config.device)
    try:
        return _fit(config, data, run, callbacks, state, dist)
    finally:
        if dist.enabled and not joined:  # leave the process group as we found it
            torch.distributed.destroy_process_group()


def _fit(
    config: TrainConfig,
    data: Cifar10 | None,
    folder: RunFolder | None,
    callbacks: Callbacks,
    resume: TrainState | None,
    dist: Dist,
) -> History:
    per_rank_batch(config.batch_size, dist.world)
    if not dist.is_main:
        folder, callbacks = None, Callbacks()
    if config.tensorboard:
        if folder is None and dist.is_main:
            raise ConfigError("--tensorboard writes into the run folder; give fit a run")
        check_available()
    r = _set_up(config, data, dist, callbacks)
    if resume is not None:
        check_resumable(resume, r.setup.data, r.setup.train)
    _resolve_lrs(r, resume, callbacks)
    _wrap(r)
    _schedule(r)
    if resume is not None:
        _restore(r, resume)
    tb = _tensorboard(r, folder, resume)
    try:
        if tb is not None:
            callbacks = _logged(callbacks, tb, r.steps_per_epoch)
        if folder is not None:
            _write_start(folder, r, resume, tb)
        _run_epochs(r, folder, callbacks)
        history = _summarise(r, folder, resumed=resume is not None)
        if tb is not None:
            _tensorboard_finish(r, tb)
        return history
    finally:
        if tb is not None:
            tb.close()


def _tensorboard(
    r: _Run, folder: RunFolder | None, resume: TrainState | None
) -> TensorBoardLog | None:
    """The run's event files, continued after the checkpoint's step when resuming."""
    if folder is None or not r.config.tensorboard:
        return None
    if resume is None:
        return TensorBoardLog(folder.path)
    step = resume.epoch * r.steps_per_epoch
    if resume.epoch_state is not None:
        step += int(resume.epoch_state["step"])
    return TensorBoardLog(folder.path, resume_step=step)


def _logged(callbacks: Callbacks, tb: TensorBoardLog, spe: int) -> Callbacks:
    """``callbacks`` that also log every step and epoch to ``tb``."""
    shown, stepped = callbacks.on_epoch, callbacks.on_step

    def on_epoch(metrics: EpochMetrics, epochs: int) -> None:
        tb.epoch(metrics, metrics.epoch * spe)
        if shown is not None:
            shown(metrics, epochs)

    def on_step(step: int, lr: float, loss: torch.Tensor) -> None:
        tb.step(step, lr, loss)
        if stepped is not None:
            stepped(step, lr, loss)

    return dataclasses.replace(callbacks, on_epoch=on_epoch, on_step=on_step)


def _tensorboard_finish(r: _Run, tb: TensorBoardLog) -> None:
    """Confusion matrix, the most confident mistakes and the hparams, at the last step."""
    from ..plots import plot_confusion_matrix, plot_misclassified  # matplotlib: only here

    s = r.setup
    logits = predict_logits(
        r.evaluated, s.test.images, s.test.mean, s.test.std, s.runtime,
        batch_size=r.config.eval_batch_size,
    )  # fmt: skip
    labels = s.test.labels.cpu()
    classes = list(s.data.classes)
    matrix = confusion_matrix(logits.argmax(1), labels, len(classes))
    mistakes = select_misclassified(logits, labels, limit=10)
    figures = {"confusion_matrix": plot_confusion_matrix(matrix, classes)}
    if len(mistakes):
        images = s.test.images[mistakes.indices.to(s.test.images.device)].cpu()
        figures["misclassified"] = plot_misclassified(images, mistakes, classes)
    final = r.history.final
    metrics = {k: final[k] for k in ("test_acc", "test_loss", "train_acc", "train_loss")}
    hparams = {**r.config.to_dict(), "lr_source": r.lr_source}
    tb.finish(r.config.epochs * r.steps_per_epoch, hparams, metrics, figures)


def _set_up(config: TrainConfig, data: Cifar10 | None, dist: Dist, callbacks: Callbacks) -> _Run:
    setup = setup_training(config, data, callbacks.progress, dist)
    config = config.replace(precision=setup.runtime.precision)  # record what "auto" chose
    # Ranks share the data order (``generator``) but draw their own augmentations.
    aug_generator = (
        torch.Generator(device=setup.runtime.device).manual_seed(config.seed + 1 + dist.rank)
        if dist.enabled
        else None
    )
    history = History(config=config, model=setup.model)
    scaler = setup.runtime.grad_scaler()
    return _Run(config, setup, dist, history, build_criterion(config), aug_generator, scaler)


def _resolve_lrs(r: _Run, resume: TrainState | None, callbacks: Callbacks) -> None:
    """LRMAX and LRMIN: saved (resume), found by the range test, or given."""
    config, s = r.config, r.setup
    if resume is not None:
        r.lr_source = resume.lr_source
        max_lr, min_lr = config.max_lr, config.min_lr
    elif config.max_lr is None:
        result = find_training_lr(
            s.model, s.optimizer, s.train, config, s.runtime, s.generator, callbacks.progress
        )
        r.history.lr_finder = result
        max_lr, min_lr = r.dist.broadcast_floats([result.max_lr, result.min_lr], s.runtime.device)
        r.lr_source = "found"
        if config.min_lr is not None:
            min_lr = min(config.min_lr, max_lr)
    else:
        max_lr = config.max_lr
        min_lr = config.min_lr if config.min_lr is not None else max_lr / config.min_lr_divisor
    if min_lr > max_lr:
        raise ConfigError(f"--min-lr ({min_lr}) must not exceed the peak LR ({max_lr})")
    r.config = r.history.config = config.replace(max_lr=max_lr, min_lr=min_lr)


def _wrap(r: _Run) -> None:
    """DDP around the model when distributed; torch.compile when asked (timed on its own)."""
    model, runtime = r.model, r.setup.runtime
    if r.dist.enabled:
        if r.config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        r.net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    else:
        r.net = model
    if r.config.compile:
        r.net, r.compile_seconds = _compiled(r)


def _compiled(r: _Run) -> tuple[nn.Module, float]:
    """``torch.compile(r.net)``, compiled before training so its time is measured on its own.

    One forward and backward pass on a full batch and on the epoch's smaller last batch
    (the two shapes training meets) trigger the compilation; weights, BatchNorm statistics,
    optimizer and RNG states are then restored, so training starts exactly as without it.
    """
    s, config, dist = r.setup, r.config, r.dist
    compiled = torch.compile(r.net)
    gens = (s.generator,) if r.aug_generator is None else (s.generator, r.aug_generator)
    n_rank = config.batch_size // dist.world
    last = r.epoch_images % config.batch_size // dist.world
    s.runtime.synchronize()
    t0 = time.perf_counter()
    with preserved_state(s.model, s.optimizer, gens):
        x, y = next(
            train_batches(
                s.train, config, s.runtime, s.generator, dist=dist, aug_generator=r.aug_generator
            )
        )
        for size in {min(n_rank, len(y)), last} - {0}:
            with s.runtime.autocast():
                loss = r.criterion(compiled(x[:size]), y[:size])
            loss.backward()
        s.optimizer.zero_grad(set_to_none=True)
    s.runtime.synchronize()
    return compiled, time.perf_counter() - t0


def _schedule(r: _Run) -> None:
    """The One Cycle scheduler and, with ``ema_decay``, the EMA of the weights."""
    r.scheduler = build_scheduler(r.setup.optimizer, r.config, len(r.setup.train))
    if r.config.ema_decay > 0:
        avg = get_ema_multi_avg_fn(r.config.ema_decay)
        r.ema = AveragedModel(r.model, multi_avg_fn=avg, use_buffers=True)
    r.history.model = r.evaluated


def _restore(r: _Run, state: TrainState) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, RNGs, records so far."""
    s = r.setup
    r.model.load_state_dict(state.model)
    _load_optimizer(s.optimizer, state.optimizer)
    r.scheduler.load_state_dict(state.scheduler)
    if r.ema is not None:
        r.ema.load_state_dict(state.ema)
    if state.scaler is not None and r.scaler.is_enabled():
        r.scaler.load_state_dict(state.scaler)
    ranks = state.rng_ranks or [state.rng]
    if len(ranks) == r.dist.world:  # each rank continues its own random streams
        carried = restore_rng(ranks[r.dist.rank], s.generator, r.aug_generator)
    else:  # another number of processes: shared streams from rank 0, fresh augmentation
        carried = restore_rng(state.rng, s.generator, r.aug_generator if r.dist.is_main else None)
    if not carried:
        _reseed(r, state)
    r.history.epochs = list(state.metrics)
    r.history.step_lrs = list(state.step_lrs)
    r.first_epoch = state.epoch + 1
    r.train_seconds = state.train_seconds
    if state.epoch_state is not None:
        r.epoch_state = EpochState.from_dict(state.epoch_state, s.runtime.device)


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer state, run by this device's implementation (a CUDA run's fused
    kernels do not follow it to another device)."""
    own = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    groups = [{**g, **o} for g, o in zip(saved["param_groups"], own, strict=True)]
    optimizer.load_state_dict({**saved, "param_groups": groups})  # places state by own kernels


def _reseed(r: _Run, state: TrainState) -> None:
    """Fresh data order and augmentation streams where the saved ones cannot be restored
    (saved on another kind of device: ``_continued_here`` says so)."""
    seed = r.config.seed + 1_000_003 * (state.epoch + 1) + r.dist.rank
    r.setup.generator.manual_seed(seed)
    if r.aug_generator is not None:
        r.aug_generator.manual_seed(seed + 1)


def _write_start(
    folder: RunFolder, r: _Run, resume: TrainState | None, tb: TensorBoardLog | None
) -> None:
    """config.json, the range test's curve, and (resuming) the metrics up to the checkpoint."""
    settings = {**r.config.to_dict(), "lr_source": r.lr_source, **folder.extra}
    folder.write_json("config.json", settings)
    if r.history.lr_finder is not None:
        folder.write_json("lr_finder.json", r.history.lr_finder.to_dict())
        if tb is not None and resume is None:
            tb.range_test(r.history.lr_finder)
    if resume is not None:
        folder.rewrite_metrics(r.history.epochs)


def _train_state(r: _Run, epoch: int, state: EpochState | None) -> TrainState:
    """The checkpoint of the run as it stands after ``epoch`` epochs (and ``state``'s steps)."""
    s = r.setup
    rngs = r.dist.gather_objects(capture_rng(s.generator, r.aug_generator))
    return TrainState(
        model=r.model.state_dict(),
        config=r.config.to_dict(),
        classes=list(s.data.classes),
        mean=s.train.mean.cpu(),
        std=s.train.std.cpu(),
        epoch=epoch,
        optimizer=s.optimizer.state_dict(),
        scheduler=r.scheduler.state_dict(),
        epoch_state=None if state is None else state.to_dict(),
        lr_source=r.lr_source,
        metrics=r.history.epochs,
        step_lrs=r.history.step_lrs,
        train_seconds=r.train_seconds,
        rng=rngs[0],
        rng_ranks=rngs if r.dist.enabled else None,
        ema=None if r.ema is None else r.ema.state_dict(),
        scaler=r.scaler.state_dict() or None,
    )


def _run_epochs(r: _Run, folder: RunFolder | None, callbacks: Callbacks) -> None:
    """The epochs from ``r.first_epoch``: train, evaluate, record, checkpoint."""
    config = r.config
    t_start = time.perf_counter()
    with stop_on_signals(folder is not None or r.dist.enabled) as received:
        for epoch in range(r.first_epoch, config.epochs + 1):
            try:
                result = _train_epoch(r, epoch, lambda: bool(received), callbacks)
            except EpochInterrupted as stop:
                checkpoint = _train_state(r, epoch - 1, stop.state)  # every rank: a collective
                if folder is not None:
                    folder.save_checkpoint(checkpoint.to_dict())
                signum = received[0] if received else signal.SIGTERM
                raise TrainingInterrupted(signum, epoch, stop.state.step) from None
            metrics = _evaluate_epoch(r, epoch, result)
            if callbacks.on_epoch is not None:
                callbacks.on_epoch(metrics, config.epochs)
            checkpoint = _train_state(r, epoch, None)  # every rank: a collective
            if folder is not None:  # checkpoint first: resuming rewrites metrics from it
                folder.save_checkpoint(checkpoint.to_dict())
                folder.log_epoch(metrics.to_dict())
            if received and epoch < config.epochs:
                raise TrainingInterrupted(received[0], epoch + 1, 0)
    r.total_seconds = time.perf_counter() - t_start


def _train_epoch(
    r: _Run, epoch: int, stop: Callable[[], bool], callbacks: Callbacks
) -> EpochResult:
    s = r.setup
    state = r.epoch_state or EpochState(
        torch.randperm(len(s.train), generator=s.generator, device=s.runtime.device)
    )
    r.epoch_state = None
    batches = train_batches(
        s.train, r.config, s.runtime, s.generator, order=state.order, start_step=state.step,
        dist=r.dist, aug_generator=r.aug_generator,
    )  # fmt: skip
    return train_one_epoch(
        r.net, r.criterion, s.optimizer, r.scheduler, batches, s.runtime,
        state=state, n_images=r.epoch_images, config=r.config, dist=r.dist, stop=stop,
        after_step=None if r.ema is None else lambda: r.ema.update_parameters(r.model),
        callbacks=callbacks, desc=f"epoch {epoch}/{r.config.epochs}",
        step_offset=(epoch - 1) * r.steps_per_epoch, scaler=r.scaler,
    )  # fmt: skip


def _evaluate_epoch(r: _Run, epoch: int, result: EpochResult) -> EpochMetrics:
    """Test-split figures of the epoch's weights; adds the epoch to the history."""
    # Evaluate the plain module (DDP's forward would expect every rank to join), with rank
    # 0's BatchNorm statistics everywhere, the EMA's too (it averages each rank's own): the
    # reported accuracy is the saved model's.
    r.dist.broadcast_buffers(r.model)
    if r.ema is not None:
        r.dist.broadcast_buffers(r.ema)
    ev = evaluate(
        r.evaluated, r.setup.test, r.setup.runtime,
        batch_size=r.config.eval_batch_size, dist=r.dist, tta=r.config.tta,
    )  # fmt: skip
    r.train_seconds += result.seconds
    r.history.step_lrs += result.lrs
    metrics = EpochMetrics(
        epoch=epoch,
        lr=result.lrs[-1],
        train_loss=result.loss,
        train_acc=result.acc,
        test_loss=ev["loss"],
        test_acc=ev["acc"],
        seconds=result.seconds,
        test_loss_tta=ev.get("tta_loss"),
        test_acc_tta=ev.get("tta_acc"),
    )
    r.history.epochs.append(metrics.to_dict())
    return metrics


def _summarise(r: _Run, folder: RunFolder | None, *, resumed: bool) -> History:
    """final.json's figures (``RunSummary``), written to the run folder."""
    config, s = r.config, r.setup
    last = EpochMetrics.from_dict(r.history.epochs[-1])
    n_train = len(s.train)
    summary = RunSummary(
        test_acc=last.test_acc, test_loss=last.test_loss,
        test_acc_tta=last.test_acc_tta, test_loss_tta=last.test_loss_tta,
        train_acc=last.train_acc, train_loss=last.train_loss,
        epochs=config.epochs, train_seconds=r.train_seconds, total_seconds=r.total_seconds,
        images_per_second=r.epoch_images * config.epochs / r.train_seconds,
        train_images=n_train, test_images=len(s.test),
        device=s.runtime.describe(), precision=s.runtime.precision, processes=r.dist.world,
        compile_seconds=r.compile_seconds, torch=torch.__version__,
        params=count_parameters(r.model), seed=config.seed,
        max_lr=config.max_lr, min_lr=config.min_lr, lr_source=r.lr_source, resumed=resumed,
        batch_size=config.batch_size, recipe=config.recipe, optimizer=config.optimizer,
        crop_pad_mode=config.crop_pad_mode, drop_last=config.drop_last,
        weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay, head_bias=config.head_bias, logit_scale=config.logit_scale,
        pool_after_relu=config.pool_after_relu, width=config.width, norm=config.norm,
        data=s.data.source,
        mean=s.train.mean.tolist(), std=s.train.std.tolist(), classes=list(s.data.classes),
    )  # fmt: skip
    r.history.final = summary.to_dict()
    if folder is not None:
        folder.write_json("final.json", r.history.final)
    return r.history
