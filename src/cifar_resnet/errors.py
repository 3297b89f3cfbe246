"""Errors a user can fix: the CLI prints their message on one line and exits 2."""

from __future__ import annotations

import math
import urllib.error

PROG = "cifar-resnet"  # the command's name, in messages that say what to run next
Bounds = tuple[float, float, str]  # low, high, and "[]", "[)", "(]" or "()": which ends count


def oneline(exc: BaseException | str, limit: int | None = None) -> str:
    """An error's message on one line, for embedding in another message.

    Whitespace runs (newlines, tabs) become one space; a URLError shows its reason, not
    its ``<urlopen error ...>`` wrapper; an empty message shows the exception's type.
    With ``limit``, a longer message is cut after its last whole sentence (or word)
    that fits, and marked with "...", never in the middle of a word.
    """
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        text = str(exc.reason)
    else:
        text = str(exc)
    text = " ".join(text.split())
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    if limit is None or len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind(". ")
    if cut >= limit // 3:
        return head[: cut + 1] + " ..."
    return head.rsplit(" ", 1)[0].rstrip(",;:") + " ..."


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


class UnexpectedError(Exception):
    """An exception the package did not foresee, with what is saved and how to go on.

    Not a ``CifarResnetError``: the command line exits 1 for it (a bug), not 2 (bad input).
    """

    def __init__(self, error: BaseException, then: str = "") -> None:
        text = f"unexpected {type(error).__name__}: {oneline(error, 240)}"
        super().__init__(f"{text}; {then}" if then else text)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        super().__init__(f"interrupted by signal {signum} in epoch {epoch} after step {step}")
        self.signum = signum
        self.epoch = epoch
        self.step = step


def check_range(flag: str, value: float, bounds: Bounds) -> None:
    """ConfigError naming ``flag`` unless ``value`` is finite and within ``bounds``."""
    low, high, ends = bounds
    above = value >= low if ends[0] == "[" else value > low
    below = value <= high if ends[1] == "]" else value < high
    if not (math.isfinite(value) and above and below):
        raise ConfigError(f"{flag} must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {value}")
