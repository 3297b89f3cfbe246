"""The records a run writes, each with one owner that lists its fields.

- ``TrainState``: a checkpoint (``checkpoints/last.pt``), every key it holds.
  ``to_dict`` adds the format tag; ``from_dict`` reads the current format and
  upgrades older ones, and names the format of anything else in a one-line error.
- ``EpochMetrics``: one line of ``metrics.jsonl``.
- ``RunSummary``: ``final.json``.
- ``LRFinderResult``: ``lr_finder.json``, the range test's curve and choice.
- ``RunSettings``: ``config.json``, the resolved config with how the LRs were chosen.

The files stay plain (a dict for ``torch.save``, JSON); these classes are the only
places their keys are spelled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import PROG, CheckpointError, ConfigError
from .layout import CHECKPOINT

if TYPE_CHECKING:  # tensors only in annotations: reading config.json needs no torch
    import torch

CHECKPOINT_FORMAT = "cifar-resnet/2"
# cifar-resnet/1: no ``ema``; train_seconds, lr_source, epoch_state, rng_ranks,
# optimizer and scheduler could be absent. Read with those fields at their defaults.
OLDER_FORMATS = ("cifar-resnet/1",)
_FORMAT_FAMILY = "cifar-resnet/"


@dataclass
class TrainState:
    """Everything a checkpoint holds (``checkpoint.load_checkpoint`` reads one back)."""

    model: dict[str, torch.Tensor]  # the trained weights (state_dict)
    config: dict[str, Any]  # the resolved TrainConfig, as TrainConfig.to_dict()
    classes: list[str]  # the class names, in label order
    mean: torch.Tensor  # (3,) the training split's normalisation, [0, 1] units
    std: torch.Tensor  # (3,)
    epoch: int  # epochs completed
    optimizer: dict[str, Any] | None = None  # the optimizer's state_dict (moments, param groups)
    scheduler: dict[str, Any] | None = None  # the LR schedule's state_dict (steps taken)
    epoch_state: dict[str, Any] | None = None  # position inside an interrupted epoch
    lr_source: str = "given"  # "found" by the range test or "given"
    metrics: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics dicts so far
    step_lrs: list[float] = field(default_factory=list)  # the LR of every step so far
    train_seconds: float = 0.0  # training time of the finished epochs
    rng: dict[str, Any] | None = None  # lifecycle.capture_rng of rank 0
    rng_ranks: list[dict[str, Any]] | None = None  # every rank's, when data-parallel
    ema: dict[str, Any] | None = None  # AveragedModel state_dict, with --ema-decay
    scaler: dict[str, Any] | None = None  # GradScaler state_dict, in fp16
    steps_per_epoch: int | None = None  # optimizer steps an epoch (None: saved before it was)

    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes: the format tag and every field (tensors not copied)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"format": CHECKPOINT_FORMAT, **values}

    @classmethod
    def from_dict(cls, values: Any, source: str = "the checkpoint") -> TrainState:
        """A checkpoint dict of the current or an older format; CheckpointError otherwise."""
        tag = values.get("format") if isinstance(values, dict) else None
        if not (isinstance(tag, str) and tag.startswith(_FORMAT_FAMILY)):
            raise CheckpointError(
                f"{source} is not a cifar-resnet checkpoint (expected format "
                f"{CHECKPOINT_FORMAT}); pass a {CHECKPOINT} written by {PROG} train"
            )
        if tag != CHECKPOINT_FORMAT and tag not in OLDER_FORMATS:
            readable = ", ".join((*OLDER_FORMATS, CHECKPOINT_FORMAT))
            raise CheckpointError(
                f"{source} has checkpoint format {tag}, which this version of cifar-resnet "
                f"cannot read (it reads {readable}); use the version that wrote it"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in ("format", *required) if k not in values]
        if missing:
            raise CheckpointError(f"{source} lacks {', '.join(missing)}; it is incomplete")
        state = cls(**{k: values[k] for k in names if k in values})
        state.train_seconds = float(state.train_seconds or 0.0)
        state.lr_source = state.lr_source or "given"
        return state

    @property
    def resumable(self) -> bool:
        """Whether training can continue from it (optimizer, scheduler and RNG states saved)."""
        return None not in (self.optimizer, self.scheduler, self.rng)


@dataclass
class EpochMetrics:
    """One finished epoch (a line of metrics.jsonl). Accuracies are fractions of the split."""

    epoch: int  # 1-based
    lr: float  # the LR of the epoch's last step
    train_loss: float  # mean training loss over the epoch (augmented batches)
    train_acc: float  # accuracy on the epoch's augmented training batches
    test_loss: float  # on the test split, un-augmented, eval mode
    test_acc: float  # accuracy on the test split
    seconds: float  # training time of the epoch (evaluation excluded)
    test_loss_tta: float | None = None  # with flip TTA, when the run measures it
    test_acc_tta: float | None = None  # the same with flip TTA
    # What trained the epoch: the CPU (cpu, logical_cores, amx_bf16, avx512_bf16) and the
    # device ("cpu", "cuda (...)"); a run resumed elsewhere shows it. None: not recorded.
    machine: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line; the TTA keys only when measured, the machine only when known."""
        out = dataclasses.asdict(self)
        if self.test_acc_tta is None:
            del out["test_loss_tta"], out["test_acc_tta"]
        if self.machine is None:
            del out["machine"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochMetrics:
        """Inverse of ``to_dict``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class RunSummary:
    """What a finished run measured; final.json holds it with the run's resolved settings."""

    test_acc: float  # the last epoch's, plain (no TTA)
    test_loss: float  # the last epoch's, plain
    train_acc: float  # the last epoch's, on its augmented training batches
    train_loss: float  # the last epoch's mean training loss
    train_seconds: float  # the epochs' training time, evaluation and range test excluded
    total_seconds: float  # wall time of the training loop in this process
    images_per_second: float  # training images x epochs / train_seconds
    train_images: int  # images in the training split (after --limit-train)
    test_images: int  # images in the test split (after --limit-test)
    steps_per_epoch: int  # optimizer steps in each epoch (the last batch kept unless drop_last)
    device: str  # what trained, e.g. "cuda (NVIDIA A100-SXM4-40GB)"
    machine: dict[str, Any]  # the CPU that finished it: cpu, logical_cores, amx_bf16, avx512_bf16
    precision: str  # fp32, bf16 or fp16 (autocast)
    processes: int  # training processes (more than 1 under torchrun)
    compile_seconds: float | None  # torch.compile's seconds before epoch 1 (--compile)
    torch: str  # torch's version
    params: int  # trained parameters
    lr_source: str  # "found" by the range test or "given"
    resumed: bool  # whether the run continued from a checkpoint
    data: str  # where the data came from (a folder, an archive or the download)
    mean: list[float]  # (3,) the training split's per-channel mean, [0, 1] units
    std: list[float]  # (3,) its standard deviation
    classes: list[str]  # the class names, in label order
    test_acc_tta: float | None = None  # with flip TTA, when the run measures it
    test_loss_tta: float | None = None  # with flip TTA, when the run measures it
    # Training seconds until the test accuracy first reached each target (``time_to_accuracy``)
    time_to_accuracy: dict[str, float | None] = field(default_factory=dict)
    time_to_accuracy_tta: dict[str, float | None] | None = None  # the same with flip TTA

    def to_dict(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """final.json: these figures, then every setting of ``settings`` (the run's resolved
        ``TrainConfig.to_dict()``) that they do not name. A new knob needs no edit here."""
        figures = dataclasses.asdict(self)
        rest = {k: v for k, v in (settings or {}).items() if k not in figures}
        return {**figures, **rest}


ACCURACY_TARGETS = (0.85, 0.90, 0.91, 0.92)  # the test accuracies time is measured to


def duration(seconds: float) -> str:
    """A rounded span for a person, as the epoch lines and the results table show it: "40 s",
    "14 min", "2.1 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_to_accuracy(
    epochs: list[EpochMetrics], *, tta: bool = False, targets: tuple[float, ...] = ACCURACY_TARGETS
) -> dict[str, float | None]:
    """Training seconds (evaluation excluded, as ``train_seconds``) at the end of the epoch
    whose test accuracy (with flip TTA: ``tta``) first reached each target; None if none did.

    Keys are the targets as strings ("0.9"), as final.json and the results files hold them.
    """
    out: dict[str, float | None] = {str(t): None for t in targets}
    seconds = 0.0
    for m in epochs:
        seconds += m.seconds
        acc = m.test_acc_tta if tta else m.test_acc
        for t in targets:
            if acc is not None and acc >= t and out[str(t)] is None:
                out[str(t)] = seconds
    return out


@dataclass(frozen=True)
class RunSettings:
    """A run's config.json: its resolved settings, how its LRs were chosen, whether it reports.

    Flat in the file: the config's keys, then ``lr_source``, then ``report`` when the run
    recorded that choice (``runs.train_run`` does; a ``RunFolder`` given to ``fit`` by
    hand does not, and such a run reports).
    """

    config: dict[str, Any]  # the resolved TrainConfig, as TrainConfig.to_dict()
    lr_source: str = "given"  # "found" by the range test or "given"
    report: bool | None = None  # build report.html after training; None: not recorded

    OWN_KEYS: ClassVar[tuple[str, ...]] = ("lr_source", "report")  # beside the config's

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object."""
        out = {**self.config, "lr_source": self.lr_source}
        if self.report is not None:
            out["report"] = self.report
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSettings:
        """Inverse of ``to_dict``; any file of settings reads as one, without its own keys."""
        config = {k: v for k, v in values.items() if k not in cls.OWN_KEYS}
        report = values.get("report")
        return cls(
            config, values.get("lr_source") or "given", None if report is None else bool(report)
        )

    @staticmethod
    def written_by_a_run(values: Mapping[str, Any]) -> bool:
        """Whether settings read from a file are a run's config.json (it names its lr_source)."""
        return "lr_source" in values

    @property
    def reports(self) -> bool:
        """Whether the run builds its report after training (yes, unless it recorded no)."""
        return self.report is not False


@dataclass(frozen=True)
class LRFinderResult:
    """The range test's curve and the LRs chosen from it."""

    lrs: list[float]  # LR used at each step
    losses: list[float]  # raw training loss at each step
    smoothed: list[float]  # smoothed loss (``lr_finder.smooth_curve``)
    max_lr: float  # LRMAX
    min_lr: float  # LRMIN
    rule: str  # how LRMAX was picked from the curve (floor, valley or steepest)
    min_lr_divisor: float  # LRMIN = LRMAX / this
    diverged: bool  # stopped early because the loss diverged
    floor: list[float] | None = None  # [low, high] LR edges of the valley floor
    smooth_decades: float = 0.2  # width of the smoothing in decades of LR
    # Several seeds' choices, when the test ran once per seed (``lr-find --seeds``)
    spread: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as saved in lr_finder.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LRFinderResult:
        """Inverse of ``to_dict``; files written before the newer fields load with defaults."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unexpected LR range test fields: {', '.join(unknown)}")
        return cls(**values)
