"""The One Cycle learning-rate schedule of SPEC section 2, stepped once per batch.

The LR rises linearly from ``min_lr`` at the first step to ``max_lr`` at the last
step of epoch ``peak_epoch``, then falls linearly back to ``min_lr`` at the very
last step, and never goes below ``min_lr`` (no annihilation phase).

Why not ``torch.optim.lr_scheduler.OneCycleLR``: it places the peak at a float
fraction of the steps (``pct_start * total_steps - 1``), so an epoch boundary is
hit only up to rounding, and by default it also cycles Adam's beta1. The spec's
schedule is a plain piecewise-linear function of the step, so it is written here
in closed form and driven by ``LambdaLR``; the tests compare every step with it.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def one_cycle_lr(
    step: int, *, total_steps: int, peak_step: int, min_lr: float, max_lr: float
) -> float:
    """LR of optimizer step ``step`` (0-based) in a ``total_steps`` run peaking at ``peak_step``."""
    last = total_steps - 1
    step = min(max(step, 0), last)
    if step <= peak_step:
        frac = step / peak_step if peak_step > 0 else 1.0
    else:
        frac = (last - step) / (last - peak_step)
    return max(min_lr, min_lr + (max_lr - min_lr) * frac)


def one_cycle_scheduler(
    optimizer: Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    peak_epoch: int,
    min_lr: float,
    max_lr: float,
) -> LambdaLR:
    """A ``LambdaLR`` that sets every param group's LR to ``one_cycle_lr`` at each step."""
    total_steps = steps_per_epoch * epochs
    peak_step = steps_per_epoch * peak_epoch - 1  # the last step of the peak epoch
    for group in optimizer.param_groups:
        group["lr"] = max_lr
        group["initial_lr"] = max_lr

    def factor(step: int) -> float:
        return (
            one_cycle_lr(
                step, total_steps=total_steps, peak_step=peak_step, min_lr=min_lr, max_lr=max_lr
            )
            / max_lr
        )

    return LambdaLR(optimizer, factor)
