"""Training: ``train_one_epoch``, ``evaluate`` and ``fit(config) -> History``.

The fast path: both splits live on the training device as uint8; each batch is
normalised and augmented there with batched ops; losses and correct counts are
accumulated on the device and read once per epoch. Accuracy is always measured
on the test split.

Robustness: a checkpoint is written atomically after every epoch; SIGINT/SIGTERM
finish the current step, write a checkpoint holding the position inside the
epoch, and raise ``TrainingInterrupted``; ``fit(..., resume=state)`` continues
from any such checkpoint and, on the CPU with a seed, ends bit for bit where an
uninterrupted run ends. A NaN or infinite loss stops the run with the step and
LR named, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import augment, normalize
from .checkpoint import CHECKPOINT_FORMAT, config_from_checkpoint
from .config import TrainConfig
from .custom_resnet import CustomResNet, count_parameters
from .data import Cifar10, channel_stats, load_cifar10
from .distributed import SINGLE_PROCESS, Dist, from_env, per_rank_batch, shard
from .errors import CheckpointError, ConfigError, TrainingDiverged, TrainingInterrupted
from .lr_finder import LRFinderResult, find_lr, preserved_state
from .profiling import PhaseTimer, no_lap
from .run_folder import RunFolder
from .runtime import Runtime, keep_freed_memory, resolve_runtime
from .schedule import one_cycle_scheduler

# How often (in steps) a CUDA run reads back its loss to look for NaN/inf and, when
# distributed, agrees on a stop request; on the CPU every step is checked (no sync cost).
_CUDA_CHECK_EVERY = 16


@dataclass
class History:
    """What a run produced: per-epoch metrics, the LR of every step, final figures, the model."""

    config: TrainConfig  # resolved: max_lr and min_lr filled in
    epochs: list[dict[str, Any]] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    lr_finder: LRFinderResult | None = None  # when the range test chose the LRs
    model: nn.Module | None = None


@dataclass(frozen=True)
class TrainData:
    """A split's images (uint8, on the training device) with labels and normalisation."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    mean: torch.Tensor  # (3,) in [0, 1] units, from the training split
    std: torch.Tensor  # (3,)


def build_model(config: TrainConfig, num_classes: int = 10) -> CustomResNet:
    """The network a config describes (not yet moved to a device)."""
    return CustomResNet(num_classes, width=config.width, norm=config.norm, dropout=config.dropout)


def build_optimizer(model: nn.Module, config: TrainConfig, runtime: Runtime) -> torch.optim.Adam:
    """Adam, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    fused = runtime.device.type == "cuda"
    return torch.optim.Adam(
        model.parameters(),
        lr=config.max_lr or 1e-3,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, n_train: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The One Cycle schedule of ``config`` (max_lr and min_lr resolved), stepped every batch."""
    return one_cycle_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch(n_train, config.batch_size),
        epochs=config.epochs,
        peak_epoch=config.peak_epoch,
        min_lr=config.min_lr,
        max_lr=config.max_lr,
    )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller)."""
    return math.ceil(n_train / batch_size)


def train_batches(
    split: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    *,
    order: torch.Tensor | None = None,
    start_step: int = 0,
    dist: Dist = SINGLE_PROCESS,
    aug_generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, normalised, augmented batches ``(x (B,3,32,32), y (B,))``.

    ``order`` (a permutation drawn from ``generator`` when not given) and
    ``start_step`` let an interrupted epoch continue where it stopped. With
    ``dist``, each rank gets its shard of every global batch.
    """
    n = split.images.shape[0]
    if order is None:
        order = torch.randperm(n, generator=generator, device=split.images.device)
    aug_generator = aug_generator or generator
    for start in range(start_step * config.batch_size, n, config.batch_size):
        idx = shard(order[start : start + config.batch_size], dist.rank, dist.world)
        x = normalize(split.images[idx], split.mean, split.std)
        x = augment(
            x,
            padding=config.crop_padding,
            cutout=config.cutout_size,
            flip_prob=config.flip_prob,
            generator=aug_generator,
        )
        yield runtime.layout(x), split.labels[idx]


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
        return cls(
            d["order"].to(device),
            d["step"],
            list(d["step_sums"]),
            d["correct"],
            list(d["lrs"]),
            d["seconds"],
        )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    split: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    *,
    state: EpochState | None = None,
    stop: Callable[[], bool] | None = None,
    dist: Dist = SINGLE_PROCESS,
    aug_generator: torch.Generator | None = None,
    desc: str = "train",
    progress: bool = True,
    timer: PhaseTimer | None = None,
) -> dict[str, Any]:
    """One pass over the training split; returns loss, accuracy, seconds and the LR of each step.

    Returns early, with ``"stopped": EpochState``, after the first step at which
    ``stop()`` is true. Raises ``TrainingDiverged`` on a NaN or infinite loss.
    ``timer`` collects the time of each phase of the step (see ``profiling``).
    """
    model.train()
    n = split.images.shape[0]
    if state is None:
        state = EpochState(torch.randperm(n, generator=generator, device=split.images.device))
    criterion = nn.CrossEntropyLoss()
    dev = runtime.device
    step_sums: list[torch.Tensor] = []  # loss x batch size per step, summed once at the end
    correct = torch.zeros((), device=dev, dtype=torch.long)
    pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN/inf
    total = steps_per_epoch(n, config.batch_size)
    check_every = 1 if dev.type == "cpu" else _CUDA_CHECK_EVERY
    runtime.synchronize()
    t0 = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=state.step,
        desc=desc,
        leave=False,
        disable=not (progress and dist.is_main),
        unit="step",
    )
    batches = train_batches(
        split,
        config,
        runtime,
        generator,
        order=state.order,
        start_step=state.step,
        dist=dist,
        aug_generator=aug_generator,
    )
    stopped = False
    lap = no_lap if timer is None else timer.lap
    if timer is not None:
        timer.mark()
    for step, (x, y) in enumerate(batches, start=state.step):
        lap("augmentation")  # the batch generator's work: gather, normalise, augment
        state.lrs.append(optimizer.param_groups[0]["lr"])
        with runtime.autocast():
            logits = model(x)  # (B, 10)
            loss = criterion(logits, y)
        lap("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        optimizer.step()
        scheduler.step()
        lap("optimizer")
        loss = loss.detach().float()
        pending.append(loss)
        step_sums.append(loss.double() * y.shape[0])
        correct += (logits.detach().argmax(1) == y).sum()
        bar.update()
        state.step = step + 1
        if state.step % check_every == 0 or state.step == total:
            _check_finite(pending, state.step - len(pending), state.lrs, config)
            pending.clear()
            if stop is not None and dist.any(stop(), dev):
                stopped = True
                break
        lap("bookkeeping")
    bar.close()
    runtime.synchronize()
    state.seconds += time.perf_counter() - t0
    if step_sums:
        state.step_sums += torch.stack(step_sums).cpu().tolist()
    state.correct += int(correct.item())
    if stopped and state.step < total:
        return {"stopped": state}
    # One sum over all steps in order, so a resumed epoch adds up exactly as an unbroken one.
    loss_total = torch.tensor(state.step_sums, dtype=torch.float64, device=dev).sum()
    correct_total = torch.tensor(state.correct, device=dev)
    return {
        "loss": dist.all_sum(loss_total).item() / n,
        "acc": int(dist.all_sum(correct_total).item()) / n,
        "seconds": state.seconds,
        "lrs": state.lrs,
    }


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


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    runtime: Runtime,
    *,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Logits (N, num_classes), float32 on the CPU, of uint8 images (N, 3, 32, 32) in eval mode.

    The images are only normalised (never augmented); the model's training flag is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    dev = runtime.device
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(dev)
        x = runtime.layout(normalize(batch, mean.to(dev), std.to(dev)))
        with runtime.autocast():
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: TrainData,
    runtime: Runtime,
    *,
    batch_size: int = 1024,
    dist: Dist = SINGLE_PROCESS,
) -> dict[str, Any]:
    """Loss and accuracy over a whole split, un-augmented, in eval mode (training flag restored).

    With ``dist``, each rank evaluates every ``world``-th batch and the sums are combined.
    """
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    n = split.images.shape[0]
    starts = range(0, n, batch_size)[dist.rank :: dist.world]
    for start in starts:
        images = split.images[start : start + batch_size]
        x = runtime.layout(normalize(images, split.mean, split.std))
        y = split.labels[start : start + batch_size]
        with runtime.autocast():
            logits = model(x)
        loss_sum += criterion(logits.float(), y).double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    loss_sum, correct = dist.all_sum(loss_sum), dist.all_sum(correct)
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n, "n": n}


def prepare_splits(
    data: Cifar10, config: TrainConfig, runtime: Runtime
) -> tuple[TrainData, TrainData]:
    """Limit, move to the device and attach the training split's mean/std to both splits."""
    train_x, train_y = data.train_images, data.train_labels
    test_x, test_y = data.test_images, data.test_labels
    if config.limit_train is not None:
        train_x, train_y = train_x[: config.limit_train], train_y[: config.limit_train]
    if config.limit_test is not None:
        test_x, test_y = test_x[: config.limit_test], test_y[: config.limit_test]
    mean, std = channel_stats(train_x)
    dev = runtime.device
    mean, std = mean.to(dev), std.to(dev)
    return (
        TrainData(train_x.to(dev), train_y.to(dev), mean, std),
        TrainData(test_x.to(dev), test_y.to(dev), mean, std),
    )


def find_training_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    progress: bool = True,
) -> LRFinderResult:
    """The LR range test with the training step's data path, batch size and precision."""
    return find_lr(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
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


def setup_training(
    config: TrainConfig, data: Cifar10 | None, progress: bool, dist: Dist = SINGLE_PROCESS
) -> tuple[Runtime, Cifar10, TrainData, TrainData, nn.Module, torch.optim.Adam, torch.Generator]:
    """Everything a run needs before its first step, in a fixed order (so seeds mean the same).

    On the CPU this also keeps freed memory for reuse, process-wide (``keep_freed_memory``).
    """
    runtime = resolve_runtime(
        config.device, config.precision, local_rank=dist.local_rank if dist.enabled else None
    )
    if runtime.device.type == "cpu":
        keep_freed_memory()
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress and dist.is_main)
    train, test = prepare_splits(data, config, runtime)
    torch.manual_seed(config.seed)
    model = build_model(config, len(data.classes)).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config, runtime)
    generator = torch.Generator(device=runtime.device).manual_seed(config.seed)
    return runtime, data, train, test, model, optimizer, generator


def lr_range_test(
    config: TrainConfig, data: Cifar10 | None = None, *, progress: bool = True
) -> LRFinderResult:
    """The LR range test that ``fit`` would run for ``config``, on its own."""
    runtime, data, train, _, model, optimizer, generator = setup_training(config, data, progress)
    return find_training_lr(model, optimizer, train, config, runtime, generator, progress)


def _rng_state(generator: torch.Generator, aug_generator: torch.Generator | None) -> dict:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if aug_generator is not None:
        state["aug_generator"] = aug_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(
    state: dict[str, Any], generator: torch.Generator, aug_generator: torch.Generator | None
) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if aug_generator is not None and "aug_generator" in state:
        aug_generator.set_state(state["aug_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[list[int]]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second one acts at once.

    Yields the list of signals received; the previous handlers are restored on exit.
    """
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        for s in signals:  # a second signal interrupts immediately
            signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s in signals:
            signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)


def fit(
    config: TrainConfig,
    data: Cifar10 | None = None,
    *,
    run: RunFolder | None = None,
    progress: bool = True,
    resume: dict[str, Any] | None = None,
) -> History:
    """Train a CustomResNet as ``config`` says; evaluate on the test split after every epoch.

    With ``run``, writes config.json, metrics.jsonl, checkpoints/last.pt (every
    epoch, and on SIGINT/SIGTERM) and final.json there. Without ``max_lr`` the LR
    range test picks LRMAX and LRMIN first. ``resume`` is a checkpoint dict
    (``checkpoint.load_checkpoint``): training continues from it with its config.
    Under torchrun, trains data-parallel (see ``distributed``).
    """
    if resume is not None:
        config = config_from_checkpoint(resume).replace(
            data_dir=config.data_dir, cache_dir=config.cache_dir, device=config.device
        )
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist = from_env(resolve_runtime(config.device).device.type)
    try:
        return _fit(config, data, run, progress, resume, dist)
    finally:
        if dist.enabled and not joined:  # leave the process group as we found it
            torch.distributed.destroy_process_group()


def _fit(
    config: TrainConfig,
    data: Cifar10 | None,
    run: RunFolder | None,
    progress: bool,
    resume: dict[str, Any] | None,
    dist: Dist,
) -> History:
    per_rank_batch(config.batch_size, dist.world)
    if not dist.is_main:
        run, progress = None, False
    runtime, data, train, test, model, optimizer, generator = setup_training(
        config, data, progress, dist
    )
    config = config.replace(precision=runtime.precision)  # record what "auto" chose
    if resume is not None:
        _check_resumable(resume, data, train)
    # Ranks share the data order (``generator``) but draw their own augmentations.
    aug_generator = (
        torch.Generator(device=runtime.device).manual_seed(config.seed + 1 + dist.rank)
        if dist.enabled
        else None
    )

    history = History(config=config, model=model)
    if resume is not None:
        lr_source = resume.get("lr_source", "given")
        max_lr, min_lr = config.max_lr, config.min_lr
    elif config.max_lr is None:
        result = find_training_lr(model, optimizer, train, config, runtime, generator, progress)
        history.lr_finder = result
        max_lr, min_lr = dist.broadcast_floats([result.max_lr, result.min_lr], runtime.device)
        lr_source = "found"
        if config.min_lr is not None:
            min_lr = min(config.min_lr, max_lr)
    else:
        lr_source = "given"
        max_lr = config.max_lr
        min_lr = config.min_lr if config.min_lr is not None else max_lr / config.min_lr_divisor
    if min_lr > max_lr:
        raise ConfigError(f"--min-lr ({min_lr}) must not exceed the peak LR ({max_lr})")
    config = config.replace(max_lr=max_lr, min_lr=min_lr)
    history.config = config

    if dist.enabled:
        if config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    else:
        ddp = model
    compile_seconds = None
    if config.compile:
        ddp, compile_seconds = _compiled(
            ddp, model, optimizer, train, config, runtime, generator, aug_generator, dist
        )
    scheduler = build_scheduler(optimizer, config, train.images.shape[0])
    first_epoch, epoch_state, train_seconds = 1, None, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        ranks = resume.get("rng_ranks") or [resume["rng"]]
        if len(ranks) == dist.world:  # each rank continues its own random streams
            _set_rng_state(ranks[dist.rank], generator, aug_generator)
        else:  # another number of processes: shared streams from rank 0, fresh augmentation
            _set_rng_state(resume["rng"], generator, aug_generator if dist.is_main else None)
        history.epochs = list(resume["metrics"])
        history.step_lrs = list(resume["step_lrs"])
        first_epoch = resume["epoch"] + 1
        train_seconds = resume.get("train_seconds", 0.0)
        if resume.get("epoch_state") is not None:
            epoch_state = EpochState.from_dict(resume["epoch_state"], runtime.device)
    params = count_parameters(model)
    if run is not None:
        run.write_json("config.json", {**config.to_dict(), "lr_source": lr_source})
        if history.lr_finder is not None:
            run.write_json("lr_finder.json", history.lr_finder.to_dict())
        if resume is not None:
            run.rewrite_metrics(history.epochs)

    def checkpoint(epoch: int, state: EpochState | None, rngs: list[dict]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "epoch_state": None if state is None else state.to_dict(),
            "config": config.to_dict(),
            "lr_source": lr_source,
            "classes": list(data.classes),
            "mean": train.mean.cpu(),
            "std": train.std.cpu(),
            "metrics": history.epochs,
            "step_lrs": history.step_lrs,
            "train_seconds": train_seconds,
            "rng": rngs[0],
            "rng_ranks": rngs if dist.enabled else None,
        }

    t_start = time.perf_counter()
    with _stop_on_signals(run is not None or dist.enabled) as received:
        for epoch in range(first_epoch, config.epochs + 1):
            tr = train_one_epoch(
                ddp,
                optimizer,
                scheduler,
                train,
                config,
                runtime,
                generator,
                state=epoch_state,
                stop=lambda: bool(received),
                dist=dist,
                aug_generator=aug_generator,
                desc=f"epoch {epoch}/{config.epochs}",
                progress=progress,
            )
            epoch_state = None
            if "stopped" in tr:
                rngs = dist.gather_objects(_rng_state(generator, aug_generator))
                if run is not None:
                    run.save_checkpoint(checkpoint(epoch - 1, tr["stopped"], rngs))
                raise TrainingInterrupted(
                    received[0] if received else signal.SIGTERM, epoch, tr["stopped"].step
                )
            # Evaluate the plain module (DDP's forward would expect every rank to join), with
            # rank 0's BatchNorm statistics everywhere: the reported accuracy is the saved model's.
            dist.broadcast_buffers(model)
            ev = evaluate(model, test, runtime, batch_size=config.eval_batch_size, dist=dist)
            train_seconds += tr["seconds"]
            history.step_lrs += tr["lrs"]
            metrics = {
                "epoch": epoch,
                "lr": tr["lrs"][-1],
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "test_loss": ev["loss"],
                "test_acc": ev["acc"],
                "seconds": tr["seconds"],
            }
            history.epochs.append(metrics)
            if progress:
                tqdm.write(
                    f"epoch {epoch:>3}/{config.epochs}  lr {metrics['lr']:.3e}  "
                    f"train loss {tr['loss']:.4f} acc {tr['acc']:.2%}  "
                    f"test loss {ev['loss']:.4f} acc {ev['acc']:.2%}  {tr['seconds']:.1f} s"
                )
            rngs = dist.gather_objects(_rng_state(generator, aug_generator))
            if run is not None:  # checkpoint first: resuming rewrites metrics from it
                run.save_checkpoint(checkpoint(epoch, None, rngs))
                run.log_epoch(metrics)
            if received and epoch < config.epochs:
                raise TrainingInterrupted(received[0], epoch + 1, 0)

    last = history.epochs[-1]
    n_train = train.images.shape[0]
    history.final = {
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        "epochs": config.epochs,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "images_per_second": n_train * config.epochs / train_seconds,
        "train_images": n_train,
        "test_images": test.images.shape[0],
        "device": runtime.describe(),
        "precision": runtime.precision,
        "processes": dist.world,
        "compile_seconds": compile_seconds,
        "torch": torch.__version__,
        "params": params,
        "seed": config.seed,
        "max_lr": max_lr,
        "min_lr": min_lr,
        "lr_source": lr_source,
        "resumed": resume is not None,
        "batch_size": config.batch_size,
        "width": config.width,
        "norm": config.norm,
        "data": data.source,
        "mean": train.mean.tolist(),
        "std": train.std.tolist(),
        "classes": list(data.classes),
    }
    if run is not None:
        run.write_json("final.json", history.final)
    return history


def _compiled(
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    aug_generator: torch.Generator | None,
    dist: Dist,
) -> tuple[nn.Module, float]:
    """``torch.compile(net)``, compiled before training so its time is measured on its own.

    One forward and backward pass on a full batch and on the epoch's smaller last batch
    (the two shapes training meets) trigger the compilation; weights, BatchNorm statistics,
    optimizer and RNG states are then restored, so training starts exactly as without it.
    """
    compiled = torch.compile(net)
    gens = (generator,) if aug_generator is None else (generator, aug_generator)
    n_rank = config.batch_size // dist.world
    last = train.images.shape[0] % config.batch_size // dist.world
    runtime.synchronize()
    t0 = time.perf_counter()
    with preserved_state(model, optimizer, gens):
        x, y = next(
            train_batches(train, config, runtime, generator, dist=dist, aug_generator=aug_generator)
        )
        for size in {min(n_rank, len(y)), last} - {0}:
            with runtime.autocast():
                loss = nn.functional.cross_entropy(compiled(x[:size]), y[:size])
            loss.backward()
        optimizer.zero_grad(set_to_none=True)
    runtime.synchronize()
    return compiled, time.perf_counter() - t0


def _check_resumable(state: dict[str, Any], data: Cifar10, train: TrainData) -> None:
    """The data must be the data the checkpoint was trained on."""
    if list(state["classes"]) != list(data.classes):
        raise CheckpointError(
            "the data's classes differ from the checkpoint's; pass the --data-dir it was trained on"
        )
    if (
        not torch.allclose(state["mean"], train.mean.cpu())
        or "epoch_state" in state
        and (
            state["epoch_state"] is not None
            and len(state["epoch_state"]["order"]) != train.images.shape[0]
        )
    ):
        raise CheckpointError(
            "the training images differ from the checkpoint's; "
            "pass the --data-dir it was trained on"
        )
