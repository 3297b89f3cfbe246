"""``TrainConfig``: every knob of a training run in one frozen, validated object.

Each field's ``help`` metadata is its documentation; the CLI builds its flags from
these fields, and the resolved config is saved with every run and checkpoint.

Recipes: ``recipe`` names a set of defaults (``RECIPES``). A field whose default is
``None`` and that every recipe lists takes the recipe's value unless it is given (its
annotation is the type it then holds: after construction it is never None), so
``TrainConfig(recipe="page", epochs=10)`` is Page's recipe in 10 epochs and
``--recipe page --optimizer adam`` is Page's with Adam. A recipe's LRs belong to its
optimizer: with another one they are left to the range test (or ``--max-lr``), since
SGD's 0.4 would make Adam diverge. ``spec`` (the default) is the assignment's
training (Adam, cross-entropy, One Cycle from found LRs, crop/flip/cutout), with what it
leaves open chosen by measurement (docs/results.md): weight decay, an EMA of the weights,
label smoothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import Bounds, ConfigError, check_range

# The choices and ranges of the knobs, owned here; the modules that use them import them.
OPTIMIZERS = ("adam", "adamw", "sgd")
PAD_MODES = ("zeros", "reflect")  # how a crop's padding is filled (``augment``)
NORMS = ("batch", "group", "layer")
ACTIVATIONS = ("relu", "celu")
CELU_ALPHA_BOUNDS: Bounds = (0.0, 10.0, "(]")
GHOST_BATCH_BOUNDS: Bounds = (0, 65_536, "[]")
WIDTH_BOUNDS: Bounds = (1 / 64, 8.0, "[]")  # 1 to 4,096 channels in the widest layer
DROPOUT_BOUNDS: Bounds = (0.0, 1.0, "[)")
LOGIT_SCALE_BOUNDS: Bounds = (0.0, 100.0, "(]")
FINDER_RULES = ("floor", "valley", "steepest")  # how the range test picks LRMAX
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"

# The stages a knob belongs to, in the order ``--help`` shows them.
STAGES = ("recipe", "data", "model", "optimisation", "schedule", "run")

# The config fields that shape the network (``CustomResNet``'s keyword arguments).
MODEL_OPTIONS = (
    "width", "norm", "dropout", "head_bias", "logit_scale", "pool_after_relu", "activation",
    "celu_alpha", "ghost_batch", "freeze_bn_scale", "whiten",
)  # fmt: skip

# The fields that name folders on this machine: made absolute when given, left out of the
# config an exported model ships, and free to change when a run resumes.
PATH_FIELDS = ("data_dir", "cache_dir")

# The fields a resumed run may change (where the data and the device are, not what is trained).
RESUME_OVERRIDES = (*PATH_FIELDS, "device")

# The weight decay of the spec recipe: Adam's coupled L2 penalty, as torch.optim.Adam applies
# it (the spec names Adam; AdamW stays available as --optimizer adamw). Screened at widths
# 0.25 and 0.5, it had the lowest test loss at the one and the best run at the other, so it
# is kept for the full width, which overfits more (docs/method.md;
# benchmarks/results/*wd-screen*.json and *wd-lr-screen*.json).
SPEC_WEIGHT_DECAY = 2.5e-4

# The spec recipe evaluates and saves an exponential moving average of its weights, and
# smooths its training labels (cross-entropy against 0.82 for the label and 0.02 for each
# other class). In a two-seed screen at width 0.5 each of the two gained more than the
# seeds' spread (docs/results.md; benchmarks/results/2026-12-04-cpu-screen-w0-5-*.json).
SPEC_EMA_DECAY = 0.99
SPEC_LABEL_SMOOTHING = 0.2

# What the spec and Page's DAWNBench recipe share and page-fast changes: 24 epochs with the
# LR at its peak after 5, cutout, and none of the 10-epoch recipe's tricks.
_PLAIN = {
    "epochs": 24,
    "peak_epoch": 5,
    "hold_epochs": 0,
    "end_lr_ratio": 0.0,
    "cutout_size": 8,
    "activation": "relu",
    "ghost_batch": 0,
    "freeze_bn_scale": False,
    "bias_lr_factor": 1.0,
    "whiten": False,
    "ema_every": 1,
}

RECIPES: dict[str, dict[str, Any]] = {
    # The assignment: Adam, LRs found by the range test, plain Linear head.
    "spec": {
        **_PLAIN,
        "optimizer": "adam",
        "crop_pad_mode": "zeros",
        "drop_last": False,
        "weight_decay": SPEC_WEIGHT_DECAY,
        "label_smoothing": SPEC_LABEL_SMOOTHING,
        "ema_decay": SPEC_EMA_DECAY,
        "head_bias": True,
        "logit_scale": 1.0,
        "tta": False,
    },
    # David Page's training of the same network (davidcpage/cifar10-fast). From his
    # DAWNBench run (dawn.py): SGD with Nesterov momentum 0.9, LR 0 -> 0.4 -> 0 (linear,
    # peak at epoch 5) on a mean loss, which is his 0.4 / 512 on a summed loss; weight decay
    # 5e-4 (his 5e-4 x 512 on the summed loss, the same step); a bias-free head whose logits
    # are scaled by 0.125; random crops padded by reflection; the epoch's last, partial
    # batch skipped. From his later notebooks, not the DAWNBench run: label smoothing 0.2
    # and flip TTA at evaluation.
    "page": {
        **_PLAIN,
        "optimizer": "sgd",
        "crop_pad_mode": "reflect",
        "drop_last": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.2,
        "ema_decay": 0.0,
        "head_bias": False,
        "logit_scale": 0.125,
        "tta": True,
        "max_lr": 0.4,
        "min_lr": 0.0,
    },
    # Page's bag of tricks (bag_of_tricks.ipynb, "How to train your ResNet 8"): his
    # 24-epoch accuracy in 10 epochs with flip TTA. On top of "page": CELU (alpha 0.3) for
    # every ReLU; BatchNorm statistics over ghost batches of 32; the norm scales frozen at 1
    # and their biases trained at 64x the LR with 1/64 of the weight decay; a fixed 3x3
    # patch-whitening first layer; peak LR 1.0 after 2 epochs, down to 0.1 at epoch 8 and
    # held there; an EMA of the weights (0.99 a step) updated every 5 steps; logits x 1/16;
    # no cutout. The pooling is the spec's order, conv -> pool -> norm, as in his post.
    # What each trick costs and gives on this data: docs/results.md.
    "page-fast": {
        "epochs": 10,
        "peak_epoch": 2,
        "hold_epochs": 2,
        "end_lr_ratio": 0.1,
        "cutout_size": 0,
        "activation": "celu",
        "ghost_batch": 32,
        "freeze_bn_scale": True,
        "bias_lr_factor": 64.0,
        "whiten": True,
        "ema_every": 5,
        "optimizer": "sgd",
        "crop_pad_mode": "reflect",
        "drop_last": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.2,
        "ema_decay": 0.99,
        "head_bias": False,
        "logit_scale": 0.0625,
        "tta": True,
        "max_lr": 1.0,
        "min_lr": 0.0,
    },
}


# Options added after runs were recorded, with what every run before them did: a saved
# config without them (config.json, a checkpoint, an exported model) loads as it trained,
# not as its recipe would fill them in today.
OPTIONS_ADDED = {
    "crop_pad_mode": "zeros", "drop_last": False, "ema_decay": 0.0, "activation": "relu",
    "celu_alpha": 0.3, "ghost_batch": 0, "freeze_bn_scale": False, "whiten": False,
    "bias_lr_factor": 1.0, "ema_every": 1, "end_lr_ratio": 0.0, "hold_epochs": 0,
}  # fmt: skip


def as_saved_run(values: dict[str, Any]) -> dict[str, Any]:
    """A saved run's settings, with the options it predates set to what it trained with."""
    return {**OPTIONS_ADDED, **values}


def without_recipe_values(values: dict[str, Any]) -> dict[str, Any]:
    """Settings (as a config file holds them) less the ones equal to their recipe's values.

    A saved config lists every field resolved; the ones its recipe filled in are dropped,
    so that another ``--recipe`` given with the file fills them in anew.
    """
    recipe = RECIPES.get(values.get("recipe", "spec"), {})
    return {k: v for k, v in values.items() if k not in recipe or recipe[k] != v}


def _knob(default: Any, help: str, stage: str, **meta: Any) -> Any:
    """A config field: its default, its help text, its stage (one of ``STAGES``), and its
    ``choices`` or finite ``bounds`` (low, high, and "[]", "[)", "(]" or "()" for which
    ends are included)."""
    return field(default=default, metadata={"help": help, "stage": stage, **meta})


def _stage(stage: str) -> Any:
    """The ``_knob`` of one stage's fields."""
    return functools.partial(_knob, stage=stage)


_recipe, _data, _model = _stage("recipe"), _stage("data"), _stage("model")
_optimisation, _schedule, _run = _stage("optimisation"), _stage("schedule"), _stage("run")


@dataclass(frozen=True)
class TrainConfig:
    """A training run: data, model, schedule and runtime settings (SPEC section 2 defaults)."""

    recipe: str = _recipe(
        "spec",
        "named defaults: spec (the assignment: Adam, LRs found by the range test), page "
        "(David Page's DAWNBench run: SGD Nesterov, LR 0.4, label smoothing 0.2, bias-free "
        "head x 0.125, flip TTA, reflection padding, last partial batch dropped) or page-fast "
        "(his bag of tricks in 10 epochs: page plus CELU, ghost BatchNorm, frozen norm scales "
        "with 64x bias LR, patch whitening, LR 1.0, EMA every 5 steps, no cutout); any flag "
        "still overrides",
        choices=tuple(RECIPES),
    )
    data_dir: str | None = _data(
        None,
        "local CIFAR-10: a cifar-10-batches-py folder, an image tree train/<class>/* and "
        "test/<class>/*, or a .tar.gz of either; without it the official archive is downloaded",
        metavar="PATH",
    )
    cache_dir: str | None = _data(
        None,
        "where downloads and decoded arrays are cached (default: $CIFAR_RESNET_CACHE, else "
        "~/.cache/cifar_resnet)",
        metavar="PATH",
    )
    limit_train: int | None = _data(
        None, "train on the first N training images only", bounds=(1, 10**9, "[]")
    )
    limit_test: int | None = _data(
        None, "evaluate on the first N test images only", bounds=(1, 10**9, "[]")
    )
    crop_padding: int = _data(
        4, "pixels of padding before the random 32x32 crop", bounds=(0, 32, "[]")
    )
    crop_pad_mode: str = _data(
        None,
        "how that padding is filled: zeros (the mean colour, as the images are normalised) "
        "or reflect (the edge mirrored) (spec: zeros; page, page-fast: reflect)",
        choices=PAD_MODES,
    )
    flip_prob: float = _data(0.5, "probability of a horizontal flip", bounds=(0, 1, "[]"))
    cutout_size: int = _data(
        None,
        "side in pixels of the one CutOut hole per image, 0: off (spec, page: 8; page-fast: 0)",
        bounds=(0, 32, "[]"),
    )
    width: float = _model(
        1.0, "channel width multiplier (0.25 gives a CPU-sized net)", bounds=WIDTH_BOUNDS
    )
    norm: str = _model("batch", "normalisation layer", choices=NORMS)
    dropout: float = _model(0.0, "dropout probability after each conv block", bounds=DROPOUT_BOUNDS)
    head_bias: bool = _model(
        None, "bias in the final Linear layer (spec: yes; page, page-fast: no)"
    )
    logit_scale: float = _model(
        None,
        "multiply the logits by this (spec: 1; page: 0.125; page-fast: 0.0625)",
        bounds=LOGIT_SCALE_BOUNDS,
    )
    pool_after_relu: bool = _model(
        False,
        "pool after BatchNorm and ReLU (conv, BN, ReLU, pool), the order of Page's network; "
        "the spec pools between the conv and BatchNorm",
    )
    activation: str = _model(
        None, "the nonlinearity of every block (spec, page: relu; page-fast: celu)",
        choices=ACTIVATIONS,
    )  # fmt: skip
    celu_alpha: float = _model(
        0.3, "CELU's alpha, with --activation celu", bounds=CELU_ALPHA_BOUNDS
    )
    ghost_batch: int = _model(
        None,
        "while training, BatchNorm's statistics over groups of this many images (the most "
        "equal groups of at least this size that divide the batch), 0: the whole batch "
        "(spec, page: 0; page-fast: 32)",
        bounds=GHOST_BATCH_BOUNDS,
    )
    freeze_bn_scale: bool = _model(
        None,
        "the norm layers' scales fixed at 1 (their biases still trained) "
        "(spec, page: no; page-fast: yes)",
    )
    whiten: bool = _model(
        None,
        "first layer: a fixed 3x3 patch-whitening convolution (3 -> 27 channels, from the "
        "first 10,000 training images) and a 1x1 convolution, instead of the 3x3 "
        "convolution (spec, page: no; page-fast: yes)",
    )
    epochs: int = _schedule(
        None, "epochs in total (spec, page: 24; page-fast: 10)", bounds=(1, 10_000, "[]")
    )
    peak_epoch: int = _schedule(
        None,
        "the LR peaks at the end of this epoch (spec, page: 5; page-fast: 2)",
        bounds=(1, 10_000, "[]"),
    )
    hold_epochs: int = _schedule(
        None,
        "the LR's fall ends this many epochs early and the LR stays there "
        "(spec, page: 0; page-fast: 2)",
        bounds=(0, 10_000, "[]"),
    )
    end_lr_ratio: float = _schedule(
        None,
        "the LR falls to this fraction of the peak LR, or to LRMIN if that is higher "
        "(spec, page: 0; page-fast: 0.1)",
        bounds=(0, 1, "[]"),
    )
    batch_size: int = _optimisation(
        512, "training images per optimizer step", bounds=(1, 65_536, "[]")
    )
    drop_last: bool = _optimisation(
        None,
        "skip each epoch's last batch when it is smaller than --batch-size "
        "(spec: no; page, page-fast: yes)",
    )
    optimizer: str = _optimisation(
        None,
        "adam (weight decay as coupled L2), adamw (decoupled weight decay) "
        "or sgd (Nesterov momentum) "
        "(spec: adam; page, page-fast: sgd)",
        choices=OPTIMIZERS,
    )
    momentum: float = _optimisation(0.9, "SGD's Nesterov momentum", bounds=(0, 1, "[)"))
    max_lr: float | None = _schedule(
        None,
        "peak LR (LRMAX); spec: found by the LR range test; page: 0.4; page-fast: 1.0",
        bounds=(0, 100, "(]"),
    )
    min_lr: float | None = _schedule(
        None,
        "start and end LR (LRMIN); spec: max_lr / min_lr_divisor; page, page-fast: 0",
        bounds=(0, 100, "[]"),
    )
    min_lr_divisor: float = _schedule(
        10.0, "LRMIN = LRMAX / this, when --min-lr is not given", bounds=(1, 1e6, "[]")
    )
    weight_decay: float = _optimisation(
        None, f"weight decay (spec: {SPEC_WEIGHT_DECAY:g}; page, page-fast: 5e-4)",
        bounds=(0, 1, "[]"),
    )  # fmt: skip
    bias_lr_factor: float = _optimisation(
        None,
        "the norm layers' biases train with this times the LR and the weight decay divided "
        "by it (spec, page: 1; page-fast: 64)",
        bounds=(1e-3, 1e4, "[]"),
    )
    label_smoothing: float = _optimisation(
        None,
        "label smoothing of the training loss "
        f"(spec: {SPEC_LABEL_SMOOTHING:g}; page, page-fast: 0.2)",
        bounds=(0, 1, "[)"),
    )
    ema_decay: float = _optimisation(
        None,
        "evaluate and save an exponential moving average of the weights, updated every step "
        "with this decay, or (1 + n) / (10 + n) after n updates while that is lower; 0: off "
        f"(spec: {SPEC_EMA_DECAY:g}; page: 0; page-fast: 0.99)",
        bounds=(0, 1, "[)"),
    )
    ema_every: int = _optimisation(
        None,
        "update that average every this many steps, with the decay raised to this power "
        "(spec, page: 1; page-fast: 5)",
        bounds=(1, 10_000, "[]"),
    )
    tta: bool = _run(
        None, "also measure test accuracy with horizontal-flip TTA (spec: no; page, page-fast: yes)"
    )
    finder_start_lr: float = _schedule(1e-6, "LR range test: first LR", bounds=(0, 1e3, "(]"))
    finder_end_lr: float = _schedule(1.0, "LR range test: last LR", bounds=(0, 1e3, "(]"))
    finder_num_iter: int = _schedule(
        100, "LR range test: number of steps (at most about one epoch)", bounds=(10, 100_000, "[]")
    )
    finder_rule: str = _schedule(
        "floor", "LR range test: rule picking LRMAX from the curve", choices=FINDER_RULES
    )
    eval_batch_size: int = _run(1024, "images per evaluation batch", bounds=(1, 65_536, "[]"))
    seed: int = _run(
        0, "seed for initialisation, shuffling and augmentation", bounds=(0, 2**62, "[]")
    )
    device: str = _run("auto", f"{DEVICE_FORMS} (auto: cuda if present, else cpu)")
    precision: str = _run(
        "auto",
        "bf16 or fp16 autocast (fp16 with loss scaling), or fp32; auto: bf16 on GPUs of "
        "compute capability 8.0+ (A100, L4), fp16 on 7.x (T4, V100), fp32 on older GPUs and "
        "MPS; on CPUs bf16 with AMX, or with AVX512-BF16 where a probe convolution runs "
        "1.2x faster in bf16, else fp32",
        choices=PRECISIONS,
    )
    sync_bn: bool = _run(False, "data-parallel runs: BatchNorm statistics over the global batch")
    compile: bool = _run(
        False, "torch.compile the training step; compile time is reported on its own"
    )
    tensorboard: bool = _run(
        False, "also write TensorBoard event files into RUN/tb (the tensorboard extra)"
    )

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        recipe = RECIPES[self.recipe]
        own_optimizer = self.optimizer in (None, recipe["optimizer"])
        for name, value in recipe.items():
            if name in ("max_lr", "min_lr") and not own_optimizer:
                continue  # a recipe's LRs are for its optimizer: another one finds its own
            if getattr(self, name) is None:  # not given: the recipe's value
                object.__setattr__(self, name, value)
        types = field_types()
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name), types[f.name])
        if self.peak_epoch > self.epochs - self.hold_epochs:
            held = f" less --hold-epochs ({self.hold_epochs})" if self.hold_epochs else ""
            raise ConfigError(
                f"--peak-epoch ({self.peak_epoch}) must not exceed --epochs ({self.epochs}){held}"
            )
        check_ghost_batch(self.ghost_batch, self.norm)
        if self.ghost_batch and self.sync_bn:
            raise ConfigError(
                "--sync-bn takes BatchNorm's statistics over every GPU's batch and "
                "--ghost-batch over parts of one; give one of them"
            )
        if self.crop_pad_mode == "reflect" and self.crop_padding >= 32:
            raise ConfigError(
                f"--crop-padding ({self.crop_padding}) must be below 32 with --crop-pad-mode "
                "reflect: a 32-pixel image mirrors at most 31 pixels"
            )
        if self.min_lr is not None and self.max_lr is not None and self.min_lr > self.max_lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must not exceed --max-lr ({self.max_lr})")
        check_sweep(self.finder_start_lr, self.finder_end_lr, self.finder_num_iter,
                    self.finder_rule)  # fmt: skip
        if not is_device(self.device):
            raise ConfigError(f"--device must be {DEVICE_FORMS}, got {self.device!r}")

    def model_options(self) -> dict[str, Any]:
        """``CustomResNet``'s keyword arguments for this run's network."""
        return {name: getattr(self, name) for name in MODEL_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as saved in config.json and checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config option(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def check_sweep(start_lr: float, end_lr: float, num_iter: int, rule: str) -> None:
    """The LR range test's settings, checked here alone: by ``TrainConfig`` for its
    ``finder_*`` fields and by ``lr_finder.Sweep`` for a sweep built by hand."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(
            f"--finder-start-lr ({start_lr}) must be below --finder-end-lr ({end_lr}), both "
            "above 0 (the range test needs 0 < start_lr < end_lr)"
        )
    if num_iter < 10:
        raise ConfigError(f"--finder-num-iter must be at least 10 steps, got {num_iter}")
    check_finder_rule(rule)


def check_ghost_batch(ghost_batch: int, norm: str) -> None:
    """ConfigError unless ``--ghost-batch`` goes with a norm that has batch statistics: by
    ``TrainConfig`` and by ``CustomResNet`` built by hand."""
    if ghost_batch and norm != "batch":
        raise ConfigError(
            f"--ghost-batch splits BatchNorm's batch; --norm {norm} has no batch statistics "
            "(give --norm batch or --ghost-batch 0)"
        )


def check_finder_rule(rule: str) -> None:
    """ConfigError unless ``rule`` is one of ``FINDER_RULES``."""
    if rule not in FINDER_RULES:
        raise ConfigError(f"--finder-rule must be one of {', '.join(FINDER_RULES)}, got {rule!r}")


def is_device(value: str) -> bool:
    """Whether ``value`` is a ``--device`` value (``DEVICE_FORMS``)."""
    return value in ("auto", "cpu", "cuda", "mps") or (
        value.startswith("cuda:") and value[5:].isdigit()
    )


def check_field(f: dataclasses.Field, value: Any, kind: type) -> None:
    """Type, choices and finite range of one field's value (None passes: not given)."""
    if value is None:
        return
    flag = f"--{_flag(f.name)}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{flag} must be true or false, got {value!r}")
    if kind is int and not (is_number and isinstance(value, int)):
        raise ConfigError(f"{flag} must be a whole number, got {value!r}")
    if kind is float and not is_number:
        raise ConfigError(f"{flag} must be a number, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{flag} must be text, got {value!r}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    bounds = f.metadata.get("bounds")
    if bounds is not None:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond every float is beyond every range
            number = math.inf if value > 0 else -math.inf
        check_range(flag, number, bounds)


def field_types() -> dict[str, type]:
    """The concrete type of each config field (``int | None`` -> ``int``)."""
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, type] = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out
