"""LR range test ("FIND"): the sweep's LRs, when it stops, and LRMAX and LRMIN from its curve.

The sweep itself is run by ``fit.find_lr`` with the training step (``fit.train_step``: same
model, optimizer, loss, batch size, precision and augmented batches) ``num_iter`` times while
the LR grows exponentially from ``start_lr`` to ``end_lr``; it records every raw loss and
stops early once the loss has clearly diverged (``diverged``); weights, BatchNorm
statistics, optimizer and RNG states and the train flag are restored afterwards
(``preserved_state``), so training starts as it would without the test. This module holds
what needs no model: the sweep's settings, the smoothing and the choice.

The curve is smoothed by a Gaussian over log10(LR), ``smooth_decades`` wide and centred
(so, unlike the exponential moving average of fastai and torch-lr-finder, it does not
lag by a step-count-dependent amount). The ``floor`` rule: the valley floor is the
stretch around the smoothed minimum within ``FLOOR_FRACTION`` of the curve's fall, its
edges interpolated between steps; LRMAX is its geometric centre times ``FLOOR_SCALE``,
LRMIN is LRMAX / ``min_lr_divisor``. Both edges are fixed by many points of the curve,
where the minimum itself wanders on a flat floor with batch noise. ``valley`` (minimum /
10) and ``steepest`` remain for comparison. docs/method.md ("LR range test") gives the
measured spread over seeds and the runs behind the band and the scale.

Why not torch-lr-finder, which the first version used: running this package's training
step (on-device batches, autocast, channels_last) took three adapter classes, a patched
progress bar and a redirected stdout, and it records only the lagging smoothed loss. The
sweep itself is a loop of a dozen lines over our own step.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, check_finder_rule, check_sweep
from ..errors import ConfigError
from ..records.records import LRFinderResult
from .lifecycle import capture_rng, restore_rng

FLOOR_FRACTION = 0.2  # the floor: smoothed loss within this fraction of its fall from the start
FLOOR_SCALE = 1.5  # LRMAX = geometric centre of the floor x this (module docstring)
VALLEY_DIVISOR = 10.0  # LRMAX = LR of the smoothed minimum / this
_DIVERGE_WINDOW = 5  # steps averaged for the early-stop test


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, generators: Sequence[torch.Generator] = ()
) -> Iterator[None]:
    """Restore weights, buffers, optimizer state, RNG states and the train flag on exit.

    ``generators``: the run's data-order generator and, when it has one, its augmentation's.
    """
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    rng = capture_rng(*generators)
    training = model.training
    try:
        yield
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        restore_rng(rng, *generators)
        model.train(training)


def smooth_curve(
    lrs: Sequence[float], losses: Sequence[float], decades: float = 0.2
) -> list[float]:
    """Losses smoothed by a centred Gaussian over log10(LR) with standard deviation ``decades``."""
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    weights = np.exp(-0.5 * ((x[:, None] - x[None, :]) / decades) ** 2)  # (n, n)
    return (weights @ y / weights.sum(1)).tolist()


def valley_floor(
    lrs: Sequence[float], smoothed: Sequence[float], fraction: float = FLOOR_FRACTION
) -> tuple[float, float]:
    """LR edges of the stretch around the smoothed minimum within ``fraction`` of the fall.

    Each edge is where the smoothed loss crosses the ceiling, interpolated linearly in
    log10(LR) between the two steps around the crossing, so the choice is not rounded to
    the sweep's grid (a 100-step sweep from 1e-6 to 1 moves 15% in LR a step).
    """
    loss = np.asarray(smoothed, dtype=np.float64)
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    lowest = int(np.argmin(loss))
    fall = loss[0] - loss[lowest]
    if not fall > 0:
        raise ConfigError(
            "the loss never fell during the LR range test; raise --finder-end-lr or "
            "--finder-num-iter, or give --max-lr"
        )
    ceiling = loss[lowest] + fraction * fall
    low = high = lowest
    while low > 0 and loss[low - 1] <= ceiling:
        low -= 1
    while high < len(loss) - 1 and loss[high + 1] <= ceiling:
        high += 1

    def crossing(inside: int, outside: int) -> float:  # log10 LR where the loss meets the ceiling
        if outside < 0 or outside >= len(loss):
            return float(x[inside])  # the floor runs to the end of the sweep
        t = (ceiling - loss[inside]) / (loss[outside] - loss[inside])
        return float(x[inside] + t * (x[outside] - x[inside]))

    return 10 ** crossing(low, low - 1), 10 ** crossing(high, high + 1)


def choose_lrs(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    rule: str = "floor",
    min_lr_divisor: float = 10.0,
    skip_start: int = 5,
    floor_fraction: float = FLOOR_FRACTION,
) -> tuple[float, float]:
    """(LRMAX, LRMIN) from a range-test curve by ``rule`` (see the module docstring)."""
    check_finder_rule(rule)
    if len(lrs) < 3:
        raise ConfigError(
            "the LR range test stopped after fewer than 3 steps; lower --finder-start-lr"
        )
    loss = np.asarray(smoothed, dtype=np.float64)
    log_lr = np.log10(np.asarray(lrs, dtype=np.float64))
    lowest = int(np.argmin(loss))
    if rule == "floor":
        low, high = valley_floor(lrs, smoothed, floor_fraction)
        max_lr = math.sqrt(low * high) * FLOOR_SCALE
    elif rule == "valley":
        max_lr = lrs[lowest] / VALLEY_DIVISOR
    else:
        start = min(skip_start, max(lowest - 2, 0))
        stop = max(lowest + 1, start + 2)
        slope = np.gradient(loss[start:stop], log_lr[start:stop])  # d loss / d log10(lr)
        max_lr = lrs[start + int(np.argmin(slope))]
    return float(max_lr), float(max_lr / min_lr_divisor)


def diverged(losses: list[float], factor: float) -> bool:
    """The last step's loss is not finite, or the recent mean is ``factor`` x its best so far."""
    if not math.isfinite(losses[-1]):
        return True
    if len(losses) < 2 * _DIVERGE_WINDOW:
        return False
    means = np.convolve(losses, np.ones(_DIVERGE_WINDOW) / _DIVERGE_WINDOW, mode="valid")
    return bool(means[-1] > factor * means.min())


@dataclass(frozen=True)
class Sweep:
    """How the range test sweeps and chooses (the module docstring says why so)."""

    start_lr: float = 1e-6
    end_lr: float = 1.0
    num_iter: int = 100  # steps, the LR growing geometrically from start_lr to end_lr
    smooth_decades: float = 0.2  # the smoothing's standard deviation, in decades of LR
    diverge_factor: float = 4.0  # stop once the recent mean loss is this x its best
    rule: str = "floor"
    min_lr_divisor: float = 10.0  # LRMIN = LRMAX / this

    def __post_init__(self) -> None:
        check_sweep(self.start_lr, self.end_lr, self.num_iter, self.rule)

    def lrs(self) -> list[float]:
        """The LR of each step: ``num_iter`` values growing geometrically."""
        return np.geomspace(self.start_lr, self.end_lr, self.num_iter).tolist()

    @classmethod
    def of(cls, config: TrainConfig) -> Sweep:
        """The sweep a training config asks for (its ``finder_*`` settings)."""
        return cls(
            start_lr=config.finder_start_lr,
            end_lr=config.finder_end_lr,
            num_iter=config.finder_num_iter,
            rule=config.finder_rule,
            min_lr_divisor=config.min_lr_divisor,
        )


@dataclass(frozen=True)
class LRs:
    """A run's LRMAX and LRMIN and where they come from."""

    max_lr: float
    min_lr: float
    source: str  # "found" by the range test or "given" (or saved, as the checkpoint says)
    finder: LRFinderResult | None = None  # the range test, when it ran


def curve_result(
    lrs: list[float], losses: list[float], stopped: bool, sweep: Sweep
) -> LRFinderResult:
    """The range test's record: its curve (raw and smoothed) and the LRs chosen from it.

    ``stopped``: the sweep ended early because the loss diverged.
    """
    if losses and not math.isfinite(losses[-1]):  # keep the JSON finite: the curve ends before
        lrs, losses = lrs[:-1], losses[:-1]
    smoothed = smooth_curve(lrs, losses, sweep.smooth_decades) if lrs else []
    max_lr, min_lr = choose_lrs(lrs, smoothed, rule=sweep.rule, min_lr_divisor=sweep.min_lr_divisor)
    floor = list(valley_floor(lrs, smoothed)) if sweep.rule == "floor" else None
    return LRFinderResult(
        lrs=lrs, losses=losses, smoothed=smoothed, max_lr=max_lr, min_lr=min_lr,
        rule=sweep.rule, min_lr_divisor=sweep.min_lr_divisor, diverged=stopped, floor=floor,
        smooth_decades=sweep.smooth_decades,
    )  # fmt: skip


def with_spread(result: LRFinderResult, seeds: Sequence[int], others: Sequence[LRFinderResult]):
    """``result`` (the first seed's test) with every seed's choice and their spread attached."""
    runs = [result, *others]
    max_lrs = [r.max_lr for r in runs]
    spread = {
        "seeds": list(seeds),
        "max_lrs": max_lrs,
        "ratio": max(max_lrs) / min(max_lrs),
        "curves": [{"lrs": r.lrs, "smoothed": r.smoothed} for r in others],
    }
    return LRFinderResult(**{**result.to_dict(), "spread": spread})
