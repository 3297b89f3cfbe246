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

from .data import Cifar10
from .errors import CheckpointError
from .records import TrainState
from .splits import Split


def capture_rng(generator: torch.Generator, aug_generator: torch.Generator | None) -> dict:
    """The random states a checkpoint keeps: torch's global ones and the run's generators."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if aug_generator is not None:
        state["aug_generator"] = aug_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(
    state: dict[str, Any], generator: torch.Generator, aug_generator: torch.Generator | None
) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if aug_generator is not None and "aug_generator" in state:
        aug_generator.set_state(state["aug_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def check_resumable(state: TrainState, data: Cifar10, train: Split) -> None:
    """The data must be the data the checkpoint was trained on (CheckpointError otherwise)."""
    if list(state.classes) != list(data.classes):
        raise CheckpointError(
            "the data's classes differ from the checkpoint's; pass the --data-dir it was trained on"
        )
    order = None if state.epoch_state is None else state.epoch_state["order"]
    if not torch.allclose(state.mean, train.mean.cpu()) or (
        order is not None and len(order) != len(train)
    ):
        raise CheckpointError(
            "the training images differ from the checkpoint's; "
            "pass the --data-dir it was trained on"
        )
