"""Errors a user can fix: the CLI prints their message on one line and exits 2."""

from __future__ import annotations


class CifarResnetError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""


class ConfigError(CifarResnetError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class DataError(CifarResnetError):
    """The data set cannot be found, downloaded, verified or decoded."""


class CheckpointError(CifarResnetError):
    """A checkpoint or run folder cannot be used as asked."""


class TrainingDiverged(CifarResnetError):
    """The loss became NaN or infinite; the message names the step and LR."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        super().__init__(f"interrupted by signal {signum} in epoch {epoch} after step {step}")
        self.signum = signum
        self.epoch = epoch
        self.step = step
