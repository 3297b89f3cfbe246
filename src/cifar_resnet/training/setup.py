"""What a config builds before the first step: the parts of a run and their wrapping.

``setup_training`` builds the runtime, data, splits, epoch length, model, optimizer and
data-order generator in a fixed order, so a seed means the same run everywhere; the
``build_*`` functions make the loss, schedule and EMA; ``wrap`` puts DDP and
``torch.compile`` around the model. ``fit`` calls them; nothing here trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import PRECISIONS, TrainConfig
from ..data.augment import normalize
from ..data.load import Cifar10, load_cifar10
from ..data.splits import EpochLength, Split, prepare_splits, train_batches
from ..distributed import SINGLE_PROCESS, Dist
from ..errors import ConfigError
from ..model.custom_resnet import CustomResNet
from ..model.layers import WHITENING_IMAGES
from ..runtime import Runtime, keep_freed_memory, resolve_runtime
from .lr_finder import preserved_state
from .schedule import one_cycle_scheduler


def build_model(config: TrainConfig, num_classes: int = 10) -> CustomResNet:
    """The network a config describes (not yet moved to a device)."""
    return CustomResNet(num_classes, **config.model_options())


def build_optimizer(
    model: nn.Module, config: TrainConfig, runtime: Runtime
) -> torch.optim.Optimizer:
    """Adam (coupled L2), AdamW (decoupled) or SGD with Nesterov momentum, as ``config`` says.

    Fused (one kernel for all parameters) on CUDA, torch's default (foreach) elsewhere.
    The trained parameters only (not frozen norm scales); with ``bias_lr_factor`` the norm
    layers' biases are a second group, whose ``lr_scale`` the schedule multiplies its LR by.
    """
    fused = (runtime.device.type == "cuda") or None
    params = parameter_groups(model, config.bias_lr_factor, config.weight_decay)
    # The schedule (or, without max_lr, the range test from its start) sets every step's LR.
    lr = config.max_lr if config.max_lr is not None else config.finder_start_lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, fused=fused)
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=lr, fused=fused)


NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm)


def parameter_groups(
    model: nn.Module, bias_lr_factor: float, weight_decay: float
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every trained parameter with ``weight_decay``; with
    a ``bias_lr_factor`` other than 1, the norm layers' biases apart, with ``lr_scale`` set
    to it and the weight decay divided by it (Page's larger step for the biases of
    scale-frozen norms). The first group holds the weights, whose LR the run reports."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if bias_lr_factor == 1:
        return [{"params": trained, "weight_decay": weight_decay}]
    biases = {
        id(m.bias) for m in model.modules()
        if isinstance(m, NORM_LAYERS) and m.bias is not None and m.bias.requires_grad
    }  # fmt: skip
    return [
        {"params": [p for p in trained if id(p) not in biases], "weight_decay": weight_decay},
        {
            "params": [p for p in trained if id(p) in biases],
            "weight_decay": weight_decay / bias_lr_factor,
            "lr_scale": bias_lr_factor,
        },
    ]


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: EpochLength
) -> torch.optim.lr_scheduler.LambdaLR:
    """The One Cycle schedule of ``config`` (max_lr and min_lr resolved), stepped every batch."""
    return one_cycle_scheduler(
        optimizer,
        steps_per_epoch=epoch.steps,
        epochs=config.epochs,
        peak_epoch=config.peak_epoch,
        min_lr=config.min_lr,
        max_lr=config.max_lr,
        hold_epochs=config.hold_epochs,
        end_lr_ratio=config.end_lr_ratio,
    )


def build_criterion(config: TrainConfig) -> nn.Module:
    """The training loss: cross-entropy with the config's label smoothing (mean over the batch)."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def ema_update(
    decay: float, updates_so_far: Callable[[], int], every: int = 1
) -> Callable[[list, list, object], None]:
    """The EMA step for ``AveragedModel``: e = d e + (1 - d) w, with the decay held at
    d = (1 + n) / (10 + n) while that is below ``decay`` (n = ``updates_so_far()``).
    Updated every ``every`` steps, it uses d to the power ``every``, with n counted in
    steps (``every`` times the updates): the same average of the weights, sampled.

    The warm-up is TensorFlow's ``num_updates`` rule. Without it, a run of a few dozen steps
    would keep an average still close to its random start; with it the average follows the
    recent weights early on, and from about 100 / (1 - decay) steps on it is the plain EMA
    (in 24 epochs of 98 steps at decay 0.99 the first 900 steps carry a weight of 1e-6).

    n is read from the host: ``AveragedModel`` hands the step a copy of its count on the
    weights' device, and reading that back would wait for the GPU at every step.
    """

    @torch.no_grad()
    def update(averaged: list, current: list, _count_on_device: object) -> None:
        n = updates_so_far() * every
        d = min(decay, (1 + n) / (10 + n)) ** every
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # BatchNorm's batch counts
            for a, w in zip(averaged, current, strict=True):
                a.copy_(a * d + w * (1 - d))

    return update


def update_ema(ema: AveragedModel | None, model: nn.Module, steps_taken: int, every: int) -> None:
    """After a step (``steps_taken`` counts it): the EMA's update, every ``every`` steps from
    the first. ``fit`` counts the steps by its schedule, so a resumed run keeps the rhythm."""
    if ema is not None and (steps_taken - 1) % every == 0:
        ema.update_parameters(model)


def fit_whitening(model: CustomResNet, train: Split) -> None:
    """Set the whitening layer (``--whiten``) from the first ``WHITENING_IMAGES`` training
    images, normalised as the network sees them."""
    model.fit_whitening(normalize(train.images[:WHITENING_IMAGES], train.mean, train.std))


def build_ema(model: nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The EMA of ``model``'s weights and BatchNorm buffers, with ``config.ema_decay``
    (``fit`` updates it every ``config.ema_every`` steps).

    Its averaged copy (``.module``) sits on ``model``'s device; its update count stays on
    the CPU, so that no step reads a number back from a GPU, and it is not among the
    buffers a distributed run broadcasts (NCCL sends only CUDA tensors).
    """
    if not config.ema_decay:
        return None
    ema = AveragedModel(model, use_buffers=True)
    ema.n_averaged = torch.zeros((), dtype=torch.long, device="cpu")  # whatever the default device
    ema.multi_avg_fn = ema_update(config.ema_decay, lambda: int(ema.n_averaged), config.ema_every)
    return ema


class Setup(NamedTuple):
    """Everything a run needs before its first step."""

    runtime: Runtime
    data: Cifar10
    train: Split
    test: Split
    epoch: EpochLength  # of the training split, over all ranks
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
        (index,) = dist.broadcast_floats([PRECISIONS.index(runtime.precision)], runtime.device)
        runtime = runtime.in_precision(PRECISIONS[int(index)])
    if runtime.device.type == "cpu":
        keep_freed_memory()
    if data is None:
        data = load_cifar10(config.data_dir, config.cache_dir, progress=progress and dist.is_main)
    train, test = prepare_splits(data, config, runtime)
    epoch = EpochLength.of(len(train), config.batch_size, config.drop_last)
    if epoch.steps == 0:
        raise ConfigError(
            f"--drop-last leaves no batch: {len(train):,} training images are fewer than "
            f"--batch-size {config.batch_size}; lower --batch-size or give --no-drop-last"
        )
    torch.manual_seed(config.seed)
    model = runtime.place(build_model(config, len(data.classes)))
    if config.whiten:
        fit_whitening(model, train)
    optimizer = build_optimizer(model, config, runtime)
    generator = torch.Generator(device=runtime.device).manual_seed(config.seed)
    return Setup(runtime, data, train, test, epoch, model, optimizer, generator)


def wrap(
    setup: Setup, config: TrainConfig, criterion: nn.Module, dist: Dist,
    aug_generator: torch.Generator | None,
) -> tuple[nn.Module, float | None]:  # fmt: skip
    """What trains: the model, in DDP when distributed, compiled when asked; the seconds
    compiling took (None without ``--compile``)."""
    net: nn.Module = setup.model
    if dist.enabled:
        if config.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        device = setup.runtime.device
        device_ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    if not config.compile:
        return net, None
    return _compiled(net, setup, config, criterion, dist, aug_generator)


def _compiled(
    net: nn.Module, setup: Setup, config: TrainConfig, criterion: nn.Module, dist: Dist,
    aug_generator: torch.Generator | None,
) -> tuple[nn.Module, float]:  # fmt: skip
    """``torch.compile(net)``, compiled before training so its time is measured on its own.

    One forward and backward pass on a full batch and on the epoch's smaller last batch
    (the two shapes training meets) trigger the compilation; weights, BatchNorm statistics,
    optimizer and RNG states are then restored, so training starts exactly as without it.
    """
    s = setup
    compiled = torch.compile(net)
    generators = (s.generator,) if aug_generator is None else (s.generator, aug_generator)
    per_rank = config.batch_size // dist.world
    last = s.epoch.images % config.batch_size // dist.world
    s.runtime.synchronize()
    t0 = time.perf_counter()
    with preserved_state(s.model, s.optimizer, generators):
        x, y = next(
            train_batches(
                s.train, config, s.runtime, s.generator, dist=dist, aug_generator=aug_generator
            )
        )
        for size in {min(per_rank, len(y)), last} - {0}:
            with s.runtime.autocast():
                loss = criterion(compiled(x[:size]), y[:size])
            loss.backward()
        s.optimizer.zero_grad(set_to_none=True)
    s.runtime.synchronize()
    return compiled, time.perf_counter() - t0
