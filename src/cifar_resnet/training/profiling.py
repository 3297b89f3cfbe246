"""Where a training step's time goes: a lap timer for the phases of ``fit``'s training step.

A ``PhaseTimer`` passed as ``Callbacks(timer=PhaseTimer(device))`` to the ``StepMonitor``
of an epoch (``fit``, whose ``train_step`` takes the monitor's ``lap``) marks the end of
each phase of every step: augmentation (gather, normalise, crop/flip/cutout, layout),
forward (model and loss), backward (zero_grad and the backward pass), optimizer (the
step, the scheduler, the EMA's update) and bookkeeping (device-side sums, progress bar,
NaN checks). Time between two marks goes to the later one.

On CUDA each mark records a CUDA event as well as the host clock, so nothing
synchronises inside the loop: device time per phase is read once, at the end,
from the events; host time per phase shows what launching the work costs. On the
CPU the work runs as it is issued, so the host clock is the whole story.

torch.profiler attributes time to operators, not to our phases, and its own
overhead distorts a step of a few milliseconds; ``benchmarks/profile_epoch.py``
uses it beside this timer for the operator table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise

import torch


@dataclass
class PhaseTimer:
    """Accumulates host and device seconds per named phase between ``mark`` and ``lap`` calls."""

    device: torch.device
    _marks: list[tuple[str | None, float, torch.cuda.Event | None]] = field(
        default_factory=list, repr=False
    )

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _now(self) -> tuple[float, torch.cuda.Event | None]:
        event = None
        if self.on_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
        return time.perf_counter(), event

    def mark(self) -> None:
        """Start timing: the next ``lap`` measures from here."""
        self._marks.append((None, *self._now()))

    def lap(self, phase: str) -> None:
        """Attribute the time since the previous mark or lap to ``phase``."""
        if not self._marks:
            raise RuntimeError("PhaseTimer.lap before mark")
        self._marks.append((phase, *self._now()))

    def totals(self) -> dict[str, dict[str, float]]:
        """Per phase, in first-seen order: ``host_seconds``, ``seconds`` and ``count``.

        ``seconds`` is device time on CUDA (synchronises once) and host time elsewhere.
        """
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
        out: dict[str, dict[str, float]] = {}
        for (_, t0, e0), (phase, t1, e1) in pairwise(self._marks):
            if phase is None:  # a fresh mark: nothing between it and what came before
                continue
            row = out.setdefault(phase, {"host_seconds": 0.0, "seconds": 0.0, "count": 0})
            row["host_seconds"] += t1 - t0
            row["seconds"] += e0.elapsed_time(e1) / 1000 if e0 is not None else t1 - t0
            row["count"] += 1
        return out


def no_lap(phase: str) -> None:
    """The lap function of an untimed run."""
