"""Running a model on un-augmented images: logits, loss, accuracy, flip TTA.

One batched forward pass (``batched_logits``: eval mode, no gradients, the run's
normalisation, layout and precision) serves training's per-epoch ``evaluate``,
``predict_logits`` for inference and the report, so all three compute the same
numbers from the same weights: ``cifar-resnet evaluate`` on a CPU reproduces a CPU
run's recorded ``test_acc`` exactly.

Test-time augmentation averages the softmax of each image and of its mirror image,
flipped along the width axis (the last axis of NCHW).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.augment import normalize
from ..data.splits import Split
from ..distributed import SINGLE_PROCESS, Dist
from ..runtime import Runtime


@dataclass(frozen=True)
class SplitScores:
    """What ``evaluate`` measures over a split: mean loss and accuracy, plain and with TTA."""

    loss: float  # mean cross-entropy in nats
    acc: float  # fraction of the split predicted right, in [0, 1]
    n: int  # images evaluated
    tta_loss: float | None = None  # the same with flip TTA; None when not measured
    tta_acc: float | None = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, its training flag restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    runtime: Runtime,
    *,
    batch_size: int,
    flip: bool = False,
    starts: Sequence[int] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """``(start, logits, flipped)`` per batch of uint8 ``images`` (N, 3, 32, 32), on the device.

    ``logits`` (B, C) in the runtime's precision; ``flipped`` the logits of the mirror
    images when ``flip``, else None. The caller holds eval mode and inference mode.
    """
    dev = runtime.device
    mean, std = mean.to(dev), std.to(dev)
    for start in range(0, images.shape[0], batch_size) if starts is None else starts:
        batch = images[start : start + batch_size].to(dev)
        x = runtime.layout(normalize(batch, mean, std))
        with runtime.autocast():
            logits = model(x)
            flipped = model(runtime.layout(x.flip(-1))) if flip else None  # width: last axis
        yield start, logits, flipped


def tta_log_probs(logits: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the softmaxes of images and their mirror images, (N, C) float32.

    Computed as a log-sum-exp, so a class both views rule out is a finite log
    probability rather than log(0).
    """
    a, b = logits.float().log_softmax(1), flipped.float().log_softmax(1)
    return torch.logaddexp(a, b) - math.log(2.0)


def scores(
    log_probs: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(2,) in ``dtype``: the summed cross-entropy of log-probabilities (N, C) and the number
    of right predictions (N,); every evaluation's loss and accuracy come from here."""
    loss = nn.functional.nll_loss(log_probs.float(), labels, reduction="sum")
    return torch.stack([loss.to(dtype), (predicted == labels).sum().to(dtype)])


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    runtime: Runtime,
    *,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Logits (N, num_classes), float32 on the CPU, of uint8 images (N, 3, 32, 32) in eval mode.

    The images are only normalised (never augmented); the model's training flag is
    restored afterwards.
    """
    with eval_mode(model):
        out = [
            logits.float().cpu()
            for _, logits, _ in batched_logits(
                model, images, mean, std, runtime, batch_size=batch_size
            )
        ]
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    runtime: Runtime,
    *,
    batch_size: int = 1024,
    dist: Dist = SINGLE_PROCESS,
    tta: bool = False,
) -> SplitScores:
    """Loss and accuracy over a whole split, un-augmented, in eval mode (training flag restored).

    With ``tta``, also ``tta_loss`` and ``tta_acc`` (see the module docstring). With
    ``dist``, each rank evaluates every ``world``-th batch and the sums are combined.
    """
    sums = torch.zeros(4, device=runtime.device, dtype=runtime.sum_dtype)  # loss, hits, TTA x2
    n = len(split)
    starts = range(0, n, batch_size)[dist.rank :: dist.world]
    with eval_mode(model):
        batches = batched_logits(
            model, split.images, split.mean, split.std, runtime,
            batch_size=batch_size, flip=tta, starts=starts,
        )  # fmt: skip
        for start, logits, flipped in batches:
            y = split.labels[start : start + batch_size]
            sums[:2] += scores(logits.float().log_softmax(1), logits.argmax(1), y, sums.dtype)
            if flipped is not None:
                log_probs = tta_log_probs(logits, flipped)
                sums[2:] += scores(log_probs, log_probs.argmax(1), y, sums.dtype)
    loss, correct, tta_loss, tta_correct = dist.all_sum(sums).tolist()
    if not tta:
        return SplitScores(loss / n, int(correct) / n, n)
    return SplitScores(loss / n, int(correct) / n, n, tta_loss / n, int(tta_correct) / n)
