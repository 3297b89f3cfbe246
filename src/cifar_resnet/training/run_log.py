"""Where a training run's records go as it trains: its folder and TensorBoard's event files.

``RunLog`` writes config.json (with the range test's lr_finder.json) when the run starts,
a checkpoint and a metrics line after every epoch (the checkpoint first: resuming
rewrites the metrics from it), and final.json at the end; with ``--tensorboard``, the
step and epoch curves, the range test, and the last step's figures and hparams. Without
a folder (a run kept in memory, or a data-parallel rank other than 0) it writes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data.splits import Split
from ..errors import ConfigError
from ..inference.evaluation import predict_logits
from ..inference.metrics import confusion_matrix, select_misclassified
from ..records.layout import CONFIG_JSON, FINAL, LR_FINDER_JSON
from ..records.records import EpochMetrics, RunSettings, RunSummary, TrainState
from ..records.run_folder import RunFolder
from ..runtime import Runtime
from .epoch import Callbacks
from .lr_finder import LRs
from .tensorboard_log import TensorBoardLog, check_available


def check_tensorboard(config: TrainConfig, folder: RunFolder | None, is_main: bool) -> None:
    """Before any training: --tensorboard needs a run folder and the tensorboard package."""
    if not config.tensorboard:
        return
    if folder is None and is_main:
        raise ConfigError("--tensorboard writes into the run folder; give fit a run")
    check_available()


class RunLog:
    """The records of one run as it trains (see the module docstring)."""

    def __init__(
        self,
        folder: RunFolder | None,
        config: TrainConfig,
        callbacks: Callbacks,
        steps_per_epoch: int,
        resume: TrainState | None = None,
    ) -> None:
        self.folder, self.steps_per_epoch = folder, steps_per_epoch
        self.tb: TensorBoardLog | None = None
        if folder is not None and config.tensorboard:
            step = None
            if resume is not None:  # the curves continue after the checkpoint's step
                step = resume.epoch * steps_per_epoch
                step += int(resume.epoch_state["step"]) if resume.epoch_state else 0
            self.tb = TensorBoardLog(folder.path, resume_step=step)
        if self.tb is not None:
            callbacks = _logged(callbacks, self.tb, steps_per_epoch)
        self.callbacks = callbacks

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tb is not None:
            self.tb.close()

    def start(self, config: TrainConfig, lrs: LRs, resume: TrainState | None) -> None:
        """config.json, the range test's curve, and (resuming) the metrics up to the checkpoint."""
        if self.folder is None:
            return
        settings = RunSettings(config.to_dict(), lrs.source, self.folder.report)
        self.folder.write_json(CONFIG_JSON, settings.to_dict())
        if lrs.finder is not None:
            self.folder.write_json(LR_FINDER_JSON, lrs.finder.to_dict())
            if self.tb is not None and resume is None:
                self.tb.range_test(lrs.finder)
        if resume is not None:
            self.folder.rewrite_metrics(list(resume.metrics))

    def checkpoint(self, state: TrainState) -> None:
        """checkpoints/last.pt (every rank builds ``state``: it gathers their RNG states)."""
        if self.folder is not None:
            self.folder.save_checkpoint(state.to_dict())

    def epoch(self, metrics: EpochMetrics, state: TrainState) -> None:
        """A finished epoch: shown, checkpointed, then its line in metrics.jsonl."""
        if self.callbacks.on_epoch is not None:
            self.callbacks.on_epoch(metrics, state.config["epochs"])
        self.checkpoint(state)
        if self.folder is not None:
            self.folder.log_epoch(metrics.to_dict())

    def finish(self, summary: RunSummary, config: TrainConfig, figures: Any) -> dict[str, Any]:
        """final.json; TensorBoard's last figures (``figures()``) and hparams. The final dict."""
        final = summary.to_dict(config.to_dict())
        if self.folder is not None:
            self.folder.write_json(FINAL, final)
        if self.tb is not None:
            metrics = {k: final[k] for k in ("test_acc", "test_loss", "train_acc", "train_loss")}
            hparams = {**config.to_dict(), "lr_source": final["lr_source"]}
            self.tb.finish(config.epochs * self.steps_per_epoch, hparams, metrics, figures())
        return final


def _logged(callbacks: Callbacks, tb: TensorBoardLog, steps_per_epoch: int) -> Callbacks:
    """``callbacks`` that also log every step and epoch to ``tb``."""
    shown, stepped = callbacks.on_epoch, callbacks.on_step

    def on_epoch(metrics: EpochMetrics, epochs: int) -> None:
        tb.epoch(metrics, metrics.epoch * steps_per_epoch)
        if shown is not None:
            shown(metrics, epochs)

    def on_step(step: int, lr: float, loss: torch.Tensor) -> None:
        tb.step(step, lr, loss)
        if stepped is not None:
            stepped(step, lr, loss)

    return dataclasses.replace(callbacks, on_epoch=on_epoch, on_step=on_step)


def final_figures(
    model: nn.Module, test: Split, classes: list[str], runtime: Runtime, eval_batch_size: int
) -> dict[str, Any]:
    """TensorBoard's last figures: the confusion matrix and the most confident mistakes."""
    from ..plots import plot_confusion_matrix, plot_misclassified  # matplotlib: only here

    logits = predict_logits(
        model, test.images, test.mean, test.std, runtime, batch_size=eval_batch_size
    )
    labels = test.labels.cpu()
    matrix = confusion_matrix(logits.argmax(1), labels, len(classes))
    mistakes = select_misclassified(logits, labels, limit=10)
    figures = {"confusion_matrix": plot_confusion_matrix(matrix, classes)}
    if len(mistakes):
        images = test.images[mistakes.indices.to(test.images.device)].cpu()
        figures["misclassified"] = plot_misclassified(images, mistakes, classes)
    return figures
