"""What watches the steps of an epoch: ``StepMonitor``, and the records it keeps.

The step itself is ``fit.train_step``; everything around it belongs to the monitor: the
epoch's position and running sums (``EpochState``, for an exact resume), the phase timer,
the NaN check, the stop vote of data-parallel ranks, the progress bar and the callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.splits import EpochLength
from ..distributed import SINGLE_PROCESS, Dist
from ..errors import TrainingDiverged
from ..records.records import EpochMetrics, duration
from ..runtime import Runtime
from .profiling import PhaseTimer, no_lap

# How often (in steps) a CUDA run reads back its loss to look for NaN/inf and, when
# distributed, agrees on a stop request; on the CPU every step is checked (no sync cost).
CUDA_CHECK_EVERY = 16


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


class Remaining:
    """The time left after an epoch line, from the wall clock between the lines shown.

    The first line can only go by its own training seconds (its evaluation and whatever
    came before it, data loading or the range test, are not an epoch's cost); from the
    second on, the mean wall-clock time per epoch since the first, evaluation included.
    A resumed run, or a second run shown by the same callbacks, starts counting again.
    ``clock`` is for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.first: tuple[int, float] | None = None  # (epoch, clock) of the first line

    def after(self, m: EpochMetrics, epochs: int) -> float | None:
        """Estimated seconds until epoch ``epochs`` ends; None after the last."""
        now = self.clock()
        if self.first is None or m.epoch <= self.first[0]:  # the first line, or a new run
            self.first = (m.epoch, now)
            per_epoch = m.seconds
        else:
            per_epoch = (now - self.first[1]) / (m.epoch - self.first[0])
        return per_epoch * (epochs - m.epoch) if m.epoch < epochs else None


def console(progress: bool = True) -> Callbacks:
    """Callbacks for a terminal or notebook: progress bars and the epoch line (via tqdm),
    which ends with the estimated time left (``Remaining``)."""
    if not progress:
        return Callbacks()
    remaining = Remaining()

    def on_epoch(m: EpochMetrics, epochs: int) -> None:
        left = remaining.after(m, epochs)
        tail = "" if left is None else f", about {duration(left)} left"
        tqdm.write(epoch_line(m, epochs) + tail)

    return Callbacks(progress=True, on_epoch=on_epoch)


class StepMonitor:
    """Watches the steps of one epoch: its position and sums, timings, losses, stop requests.

    ``epoch`` is the epoch's length over all ranks (``Setup.epoch``); ``max_lr`` is named
    when the loss diverges. ``stop()`` is asked at every check (every step on the CPU, every
    ``CUDA_CHECK_EVERY`` on CUDA, where reading the loss back synchronises), and the
    ranks vote; ``callbacks.on_step`` gets each step as ``step_offset`` + its step here.
    """

    def __init__(
        self,
        state: EpochState,
        runtime: Runtime,
        epoch: EpochLength,
        *,
        max_lr: float | None = None,
        dist: Dist = SINGLE_PROCESS,
        stop: Callable[[], bool] | None = None,
        callbacks: Callbacks = Callbacks(),  # noqa: B008 (frozen: safe to share)
        desc: str = "train",
        step_offset: int = 0,
    ) -> None:
        self.state, self.runtime, self.dist, self.stop = state, runtime, dist, stop
        self.callbacks, self.step_offset, self.max_lr = callbacks, step_offset, max_lr
        self.n_images, self.total = epoch.images, epoch.steps
        self.check_every = 1 if runtime.device.type == "cpu" else CUDA_CHECK_EVERY
        self.lap = no_lap if callbacks.timer is None else callbacks.timer.lap
        self.desc, self.stopped = desc, False
        self._sums: list[torch.Tensor] = []  # loss x batch size per step, summed at the end
        self._pending: list[torch.Tensor] = []  # per-step losses not yet checked for NaN/inf
        self._correct = torch.zeros((), device=runtime.device, dtype=torch.long)

    def steps(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches, timed from the first (the time to fetch one is its augmentation)."""
        show = self.callbacks.progress and self.dist.is_main
        self._bar = tqdm(total=self.total, initial=self.state.step, desc=self.desc, leave=False,
                         unit="step", disable=not show)  # fmt: skip
        self.runtime.synchronize()
        t0 = time.perf_counter()
        if self.callbacks.timer is not None:
            self.callbacks.timer.mark()
        try:
            for batch in batches:
                self.lap("augmentation")  # the batch generator's work: gather, augment
                yield batch
                if self.stopped:
                    break
        finally:
            self._bar.close()
            self.runtime.synchronize()
            self.state.seconds += time.perf_counter() - t0

    def stepped(self, lr: float, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Record a finished step (its LR, loss and hits); the epoch ends after the first
        step at which a stop was asked. ``TrainingDiverged`` at a NaN or infinite loss."""
        state = self.state
        loss = loss.detach().float()
        state.lrs.append(lr)
        self._pending.append(loss)
        self._sums.append(loss.to(self.runtime.sum_dtype) * y.shape[0])
        self._correct += (logits.detach().argmax(1) == y).sum()
        self._bar.update()
        state.step += 1
        if self.callbacks.on_step is not None:
            self.callbacks.on_step(self.step_offset + state.step, lr, loss)
        if state.step % self.check_every == 0 or state.step == self.total:
            self._check_finite()
            if self.stop is not None:  # every rank votes: they stop at the same step
                self.stopped = self.dist.any(self.stop(), self.runtime.device)
        self.lap("bookkeeping")

    def _check_finite(self) -> None:
        losses, self._pending = self._pending, []
        if not losses:
            return
        values = torch.stack(losses)
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            step = self.state.step - len(losses) + i
            raise TrainingDiverged(
                f"the loss became {values[i].item()} at step {step + 1} of the epoch "
                f"(LR {self.state.lrs[step]:.3e}); stopped, the last good checkpoint is kept; "
                f"try a lower --max-lr than {self.max_lr or self.state.lrs[step]:.3e}"
            )

    def result(self) -> EpochResult:
        """The epoch's figures over all ranks; ``EpochInterrupted`` if it stopped early."""
        state = self.state
        if self._sums:
            state.step_sums += torch.stack(self._sums).cpu().tolist()
            self._sums = []
        state.correct += int(self._correct.item())
        self._correct.zero_()
        if self.stopped and state.step < self.total:
            raise EpochInterrupted(state)
        # One sum over all steps in order, so a resumed epoch adds up as an unbroken one.
        dev, dtype = self.runtime.device, self.runtime.sum_dtype
        loss = self.dist.all_sum(torch.tensor(state.step_sums, dtype=dtype, device=dev).sum())
        correct = self.dist.all_sum(torch.tensor(state.correct, device=dev))
        return EpochResult(
            loss=loss.item() / self.n_images,
            acc=int(correct.item()) / self.n_images,
            seconds=state.seconds,
            lrs=state.lrs,
        )
