"""A run's lifecycle around the training loop: random streams, signals, resumability.

- ``capture_rng`` / ``restore_rng``: the global and per-run generator states that a
  checkpoint keeps, so a resumed run draws exactly the batches and augmentations an
  unbroken one would.
- ``stop_on_signals``: the first SIGINT/SIGTERM becomes a stop request that the loop
  honours after its current step (a checkpoint is then written); a second one acts
  at once. Previous handlers are always restored.
- ``check_resumable``: a checkpoint continues only on the data it was trained on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..data.load import Cifar10, check_same_classes
from ..data.splits import EpochLength, Split
from ..errors import CheckpointError
from ..records.records import TrainState


def capture_rng(
    generator: torch.Generator | None = None, aug_generator: torch.Generator | None = None
) -> dict[str, Any]:
    """The random states a run depends on: torch's global ones (CPU, and every GPU's) and the
    run's generators. A checkpoint keeps it; the range test and compilation restore it."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if generator is not None:
        state["device"] = generator.device.type  # a generator's state fits only its kind
        state["generator"] = generator.get_state()
    if aug_generator is not None:
        state["aug_generator"] = aug_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(
    state: dict[str, Any],
    generator: torch.Generator | None = None,
    aug_generator: torch.Generator | None = None,
) -> bool:
    """Inverse of ``capture_rng``; False, leaving the run's generators as they are, when
    the state was saved on another kind of device (a CUDA generator's 16 bytes do not
    fit a CPU generator's 5,056). Each GPU present that the state has gets its own."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if generator is None or "generator" not in state:
        return True
    same_kind = saved_device_type(state) in (None, generator.device.type)
    if not same_kind or state["generator"].numel() != generator.get_state().numel():
        return False
    generator.set_state(state["generator"])
    if aug_generator is not None and "aug_generator" in state:
        aug_generator.set_state(state["aug_generator"])
    return True


# Sizes of a generator's state in bytes: mt19937 (CPU) and Philox (CUDA), for checkpoints
# written before the device type was recorded beside it.
_STATE_BYTES = {5056: "cpu", 16: "cuda"}


def saved_device_type(state: dict[str, Any] | None) -> str | None:
    """The kind of device (``cpu``, ``cuda``, ``mps``) whose generators ``capture_rng`` saved;
    None if it cannot be told."""
    if state is None:
        return None
    if "device" in state:
        return str(state["device"])
    return _STATE_BYTES.get(int(state["generator"].numel()))


@contextlib.contextmanager
def stop_on_signals(enabled: bool) -> Iterator[list[int]]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second one acts at once.

    Yields the list of signals received; the previous handlers are restored on exit.
    """
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def restore() -> None:
        for s in signals:
            signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        restore()  # a second signal interrupts immediately

    for s in signals:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        restore()


def check_resumable(state: TrainState, data: Cifar10, train: Split, epoch: EpochLength) -> None:
    """The data must be the data the checkpoint was trained on (DataError for other classes,
    CheckpointError for other images), cut into epochs of the same length."""
    check_same_classes(data.classes, state.classes)
    order = None if state.epoch_state is None else state.epoch_state["order"]
    if not torch.allclose(state.mean, train.mean.cpu()) or (
        order is not None and len(order) != len(train)
    ):
        raise CheckpointError(
            "the training images differ from the checkpoint's; "
            "pass the --data-dir it was trained on"
        )
    if state.steps_per_epoch is not None and state.steps_per_epoch != epoch.steps:
        raise CheckpointError(
            f"the checkpoint's epochs had {state.steps_per_epoch} steps, this data makes "
            f"{epoch.steps}; pass the --data-dir it was trained on"
        )
