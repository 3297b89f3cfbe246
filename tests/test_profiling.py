import time

import pytest
import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.splits import EpochLength, epoch_order, train_batches
from cifar_resnet.training.epoch import Callbacks, EpochState, StepMonitor
from cifar_resnet.training.fit import train_step
from cifar_resnet.training.profiling import PhaseTimer
from cifar_resnet.training.setup import build_criterion, build_scheduler, setup_training

PHASES = ["augmentation", "forward", "backward", "optimizer", "bookkeeping"]


def test_laps_go_to_the_phase_named_at_their_end():
    timer = PhaseTimer(torch.device("cpu"))
    timer.mark()
    time.sleep(0.03)
    timer.lap("a")
    time.sleep(0.01)
    timer.lap("b")
    timer.lap("a")
    time.sleep(0.5)  # between a lap and a fresh mark: counted nowhere
    timer.mark()
    timer.lap("c")
    totals = timer.totals()
    assert list(totals) == ["a", "b", "c"]
    assert totals["a"]["count"] == 2 and totals["b"]["count"] == 1
    assert 0.03 <= totals["a"]["seconds"] < 0.25
    assert 0.01 <= totals["b"]["seconds"] < 0.2
    assert totals["c"]["seconds"] < 0.1
    assert totals["a"]["seconds"] == totals["a"]["host_seconds"]  # the CPU has one clock


def test_a_lap_needs_a_mark():
    with pytest.raises(RuntimeError, match="mark"):
        PhaseTimer(torch.device("cpu")).lap("a")


def _epoch(synthetic, timer=None):
    config = TrainConfig(width=0.25, batch_size=100, max_lr=2e-3, min_lr=2e-4, device="cpu", seed=3)
    runtime, _, train, _, _, model, optimizer, generator = setup_training(config, synthetic, False)
    epoch = EpochLength.of(len(train), config.batch_size, config.drop_last)
    scheduler, criterion = build_scheduler(optimizer, config, epoch), build_criterion(config)
    state = EpochState(epoch_order(len(train), generator))
    batches = train_batches(train, config, runtime, generator, order=state.order)
    monitor = StepMonitor(state, runtime, epoch, callbacks=Callbacks(timer=timer))
    model.train()
    for x, y in monitor.steps(batches):  # the steps of an epoch as fit takes them
        lr = optimizer.param_groups[0]["lr"]
        loss, logits = train_step(model, criterion, optimizer, (x, y), runtime, lap=monitor.lap)
        scheduler.step()
        monitor.lap("optimizer")
        monitor.stepped(lr, loss, logits, y)
    return monitor.result(), model


def test_an_epoch_is_timed_phase_by_phase_without_changing_what_is_trained(synthetic):
    timer = PhaseTimer(torch.device("cpu"))
    timed, timed_model = _epoch(synthetic, timer)
    plain, plain_model = _epoch(synthetic)
    assert timed.loss == plain.loss and timed.acc == plain.acc
    timed_state, plain_state = timed_model.state_dict(), plain_model.state_dict()
    for name, value in timed_state.items():
        assert torch.equal(value, plain_state[name]), name

    totals = timer.totals()
    assert list(totals) == PHASES
    assert all(row["count"] == 6 for row in totals.values())  # 600 images / batch 100
    phase_sum = sum(row["seconds"] for row in totals.values())
    assert 0.8 * timed.seconds <= phase_sum <= timed.seconds
    # the convolutions dominate: forward and backward outweigh augmentation
    assert (
        totals["forward"]["seconds"] + totals["backward"]["seconds"]
        > (totals["augmentation"]["seconds"])
    )
