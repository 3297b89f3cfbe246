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
    step: int, *, total_steps: int, peak_step: int, min_lr: float, max_lr: float,
    end_step: int | None = None, end_lr: float | None = None,
) -> float:  # fmt: skip
    """LR of optimizer step ``step`` (0-based) in a ``total_steps`` run peaking at ``peak_step``.

    The fall ends at ``end_step`` (default: the last step) at ``end_lr`` (default, or when
    lower: ``min_lr``), and the LR stays there to the last step.
    """
    last = total_steps - 1 if end_step is None else end_step
    end = min_lr if end_lr is None else max(end_lr, min_lr)
    step = min(max(step, 0), last)
    if step <= peak_step:
        frac = step / peak_step if peak_step > 0 else 1.0
        return max(min_lr, min_lr + (max_lr - min_lr) * frac)
    frac = (last - step) / (last - peak_step)
    return max(min_lr, end + (max_lr - end) * frac)


def one_cycle_scheduler(
    optimizer: Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    peak_epoch: int,
    min_lr: float,
    max_lr: float,
    hold_epochs: int = 0,
    end_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` that sets every param group's LR to ``one_cycle_lr`` at each step
    (times the group's ``lr_scale``, when it has one). The fall ends ``hold_epochs`` early,
    at ``end_lr_ratio`` times ``max_lr`` or at ``min_lr``, whichever is higher."""
    total_steps = steps_per_epoch * epochs
    peak_step = steps_per_epoch * peak_epoch - 1  # the last step of the peak epoch
    end_step = steps_per_epoch * (epochs - hold_epochs) - 1
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = max_lr * group.get("lr_scale", 1.0)
    shape = {"total_steps": total_steps, "peak_step": peak_step, "min_lr": min_lr,
             "max_lr": max_lr, "end_step": end_step, "end_lr": end_lr_ratio * max_lr}  # fmt: skip

    def factor(step: int) -> float:
        return one_cycle_lr(step, **shape) / max_lr

    return LambdaLR(optimizer, factor)
