"""One epoch of cifar-resnet's training steps, taken as ``fit`` takes them, apart from a run.

``speed.py`` and ``profile_epoch.py`` time single epochs of a model they set up
themselves; ``fit`` runs its epochs inside a whole run (range test, evaluation,
checkpoints), so this is its epoch loop alone: the data order, the augmented batches,
``train_step``, the schedule's step and the ``StepMonitor``'s bookkeeping.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.splits import EpochLength, Split, epoch_order, train_batches
from cifar_resnet.runtime import Runtime
from cifar_resnet.training.epoch import Callbacks, EpochResult, EpochState, StepMonitor
from cifar_resnet.training.fit import train_step
from cifar_resnet.training.profiling import PhaseTimer
from cifar_resnet.training.setup import update_ema


def train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    split: Split,
    config: TrainConfig,
    *,
    runtime: Runtime,
    generator: torch.Generator,
    criterion: nn.Module,
    timer: PhaseTimer | None = None,
    ema: AveragedModel | None = None,
) -> EpochResult:
    """Train ``net`` for one epoch of ``split``; its loss, accuracy and seconds. With
    ``ema``, updated as ``fit`` updates it (every ``config.ema_every`` steps)."""
    epoch = EpochLength.of(len(split), config.batch_size, config.drop_last)
    state = EpochState(epoch_order(len(split), generator))
    monitor = StepMonitor(state, runtime, epoch, callbacks=Callbacks(timer=timer))
    net.train()
    for x, y in monitor.steps(train_batches(split, config, runtime, generator, order=state.order)):
        lr = optimizer.param_groups[0]["lr"]
        loss, logits = train_step(net, criterion, optimizer, (x, y), runtime, lap=monitor.lap)
        scheduler.step()
        update_ema(ema, net, scheduler.last_epoch, config.ema_every)
        monitor.lap("optimizer")
        monitor.stepped(lr, loss, logits, y)
    return monitor.result()
