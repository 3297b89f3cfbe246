"""Training: ``train_one_epoch``, ``evaluate`` and ``fit(config) -> History``.

The fast path: both splits live on the training device as uint8; each batch is
normalised and augmented there with batched ops; losses and correct counts are
accumulated on the device and read once per epoch (no host sync per step).
Accuracy is always measured on the test split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import augment, normalize
from .checkpoint import CHECKPOINT_FORMAT
from .config import TrainConfig
from .custom_resnet import CustomResNet, count_parameters
from .data import Cifar10, channel_stats, load_cifar10
from .errors import ConfigError
from .lr_finder import LRFinderResult, find_lr
from .run_folder import RunFolder
from .runtime import Runtime, resolve_runtime
from .schedule import one_cycle_scheduler


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


def train_batches(
    split: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, normalised, augmented batches ``(x (B,3,32,32), y (B,))``."""
    n = split.images.shape[0]
    order = torch.randperm(n, generator=generator, device=split.images.device)
    for start in range(0, n, config.batch_size):
        idx = order[start : start + config.batch_size]
        x = normalize(split.images[idx], split.mean, split.std)
        x = augment(
            x,
            padding=config.crop_padding,
            cutout=config.cutout_size,
            flip_prob=config.flip_prob,
            generator=generator,
        )
        yield runtime.layout(x), split.labels[idx]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    split: TrainData,
    config: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    *,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over the training split; returns loss, accuracy, seconds and the LR of each step."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    lrs: list[float] = []
    steps = math.ceil(split.images.shape[0] / config.batch_size)
    runtime.synchronize()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, leave=False, disable=not progress, unit="step")
    for x, y in train_batches(split, config, runtime, generator):
        lrs.append(optimizer.param_groups[0]["lr"])
        with runtime.autocast():
            logits = model(x)  # (B, 10)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        bar.update()
    bar.close()
    runtime.synchronize()
    seconds = time.perf_counter() - t0
    n = split.images.shape[0]
    return {
        "loss": loss_sum.item() / n,
        "acc": correct.item() / n,
        "seconds": seconds,
        "lrs": lrs,
    }


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
) -> dict[str, Any]:
    """Loss and accuracy over a whole split, un-augmented, in eval mode (training flag restored)."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    n = split.images.shape[0]
    for start in range(0, n, batch_size):
        x = runtime.layout(
            normalize(split.images[start : start + batch_size], split.mean, split.std)
        )
        y = split.labels[start : start + batch_size]
        with runtime.autocast():
            logits = model(x)
        loss_sum += criterion(logits.float(), y)
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
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


def _setup(
    config: TrainConfig, data: Cifar10 | None, progress: bool
) -> tuple[Runtime, Cifar10, TrainData, TrainData, nn.Module, torch.optim.Adam, torch.Generator]:
    """Everything a run needs before its first step, in a fixed order (so seeds mean the same)."""
    runtime = resolve_runtime(config.device)
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress)
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
    runtime, data, train, _, model, optimizer, generator = _setup(config, data, progress)
    return find_training_lr(model, optimizer, train, config, runtime, generator, progress)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def fit(
    config: TrainConfig,
    data: Cifar10 | None = None,
    *,
    run: RunFolder | None = None,
    progress: bool = True,
) -> History:
    """Train a CustomResNet as ``config`` says; evaluate on the test split after every epoch.

    With ``run``, writes config.json, metrics.jsonl, checkpoints/last.pt (every
    epoch) and final.json there. Without ``max_lr`` the LR range test picks
    LRMAX and LRMIN first.
    """
    runtime, data, train, test, model, optimizer, generator = _setup(config, data, progress)
    history = History(config=config, model=model)
    lr_source = "given"
    if config.max_lr is None:
        result = find_training_lr(model, optimizer, train, config, runtime, generator, progress)
        history.lr_finder = result
        max_lr, min_lr, lr_source = result.max_lr, result.min_lr, "found"
        if config.min_lr is not None:
            min_lr = min(config.min_lr, max_lr)
    else:
        max_lr = config.max_lr
        min_lr = config.min_lr if config.min_lr is not None else max_lr / config.min_lr_divisor
    if min_lr > max_lr:
        raise ConfigError(f"--min-lr ({min_lr}) must not exceed the peak LR ({max_lr})")
    config = config.replace(max_lr=max_lr, min_lr=min_lr)
    history.config = config

    steps_per_epoch = math.ceil(train.images.shape[0] / config.batch_size)
    scheduler = one_cycle_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        peak_epoch=config.peak_epoch,
        min_lr=min_lr,
        max_lr=max_lr,
    )
    params = count_parameters(model)
    if run is not None:
        run.write_json("config.json", {**config.to_dict(), "lr_source": lr_source})
        if history.lr_finder is not None:
            run.write_json("lr_finder.json", history.lr_finder.to_dict())

    train_seconds = 0.0
    t_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        tr = train_one_epoch(
            model,
            optimizer,
            scheduler,
            train,
            config,
            runtime,
            generator,
            desc=f"epoch {epoch}/{config.epochs}",
            progress=progress,
        )
        ev = evaluate(model, test, runtime, batch_size=config.eval_batch_size)
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
        if run is not None:
            run.log_epoch(metrics)
            run.save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "config": config.to_dict(),
                    "classes": list(data.classes),
                    "mean": train.mean.cpu(),
                    "std": train.std.cpu(),
                    "metrics": history.epochs,
                    "step_lrs": history.step_lrs,
                    "rng": _rng_state(generator),
                }
            )

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
        "torch": torch.__version__,
        "params": params,
        "seed": config.seed,
        "max_lr": max_lr,
        "min_lr": min_lr,
        "lr_source": lr_source,
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
