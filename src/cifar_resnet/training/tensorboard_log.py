"""TensorBoard event files of a run (``train --tensorboard``), in ``RUN/tb/``.

Written with ``torch.utils.tensorboard`` (the ``tensorboard`` package, the optional extra
``cifar-resnet[tensorboard]``). Steps are global optimizer steps, counted from 1:

- ``train/lr`` and ``train/loss``: every step;
- ``epoch/train_loss``, ``epoch/train_acc``, ``epoch/test_loss``, ``epoch/test_acc``
  (and ``epoch/test_acc_tta``): at the last step of each epoch;
- ``final/confusion_matrix`` and ``final/misclassified`` (figures) at the last step, and
  the run's settings with its final metrics as hparams (``tb/hparams/``);
- the LR range test in ``tb/lr_find/``: ``lr_find/loss`` and ``lr_find/smoothed`` against
  the sweep's step, ``lr_find/lr`` the LR of each step.

A resumed run opens the writer with ``purge_step`` at its checkpoint's next step, so
TensorBoard drops whatever an interrupted process wrote after the checkpoint and the
curves continue without duplicate steps. Step losses are kept as tensors until the
epoch ends (or is interrupted), so logging adds no device synchronisation per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..records.layout import TB_DIR

INSTALL_HINT = "pip install 'cifar-resnet[tensorboard]'"


def summary_writer(log_dir: Path, purge_step: int | None = None) -> Any:
    """A ``SummaryWriter``, or a one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package; install it with: {INSTALL_HINT}"
        ) from None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def check_available() -> None:
    """Fail early (before any training) when the tensorboard package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package; install it with: {INSTALL_HINT}"
        ) from None


class TensorBoardLog:
    """The event files of one run folder."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None) -> None:
        self.dir = Path(run_dir) / TB_DIR
        # Events at or after the next step an interrupted process wrote are dropped.
        purge = None if resume_step is None else resume_step + 1
        self.writer = summary_writer(self.dir, purge_step=purge)
        self._steps: list[tuple[int, float, torch.Tensor]] = []

    def range_test(self, result: Any) -> None:
        """The LR range test's curve (an ``LRFinderResult``), in ``tb/lr_find/``."""
        writer = summary_writer(self.dir / "lr_find")
        try:
            for i, (lr, loss, smoothed) in enumerate(
                zip(result.lrs, result.losses, result.smoothed, strict=True), start=1
            ):
                writer.add_scalar("lr_find/lr", lr, i)
                writer.add_scalar("lr_find/loss", loss, i)
                writer.add_scalar("lr_find/smoothed", smoothed, i)
            writer.add_text(
                "lr_find/choice", f"LRMAX {result.max_lr:.3e}, LRMIN {result.min_lr:.3e}"
            )
        finally:
            writer.close()

    def step(self, step: int, lr: float, loss: torch.Tensor) -> None:
        """One optimizer step (global, from 1): its LR and its (device) loss."""
        self._steps.append((step, lr, loss))

    def flush_steps(self) -> None:
        """Write the kept step losses (one transfer) and flush the file."""
        if self._steps:
            losses = torch.stack([loss.float() for _, _, loss in self._steps]).cpu().tolist()
            for (step, lr, _), loss in zip(self._steps, losses, strict=True):
                self.writer.add_scalar("train/lr", lr, step)
                self.writer.add_scalar("train/loss", loss, step)
            self._steps.clear()
        self.writer.flush()

    def epoch(self, metrics: Any, step: int) -> None:
        """An epoch's figures (``EpochMetrics``) at its last step."""
        self.flush_steps()
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "test_acc_tta"):
            value = getattr(metrics, name)
            if value is not None:
                self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.flush()

    def finish(
        self,
        step: int,
        hparams: dict[str, Any],
        final: dict[str, float],
        figures: dict[str, Any],
    ) -> None:
        """The last step's figures and the run's hparams with its final metrics."""
        for name, fig in figures.items():
            self.writer.add_figure(f"final/{name}", fig, step)
        plain = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
        self.writer.add_hparams(plain, {f"hparam/{k}": v for k, v in final.items()},
                                run_name="hparams", global_step=step)  # fmt: skip
        self.writer.flush()

    def close(self) -> None:
        self.flush_steps()
        self.writer.close()
