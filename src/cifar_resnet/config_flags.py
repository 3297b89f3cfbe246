"""``TrainConfig`` on the command line: one flag per field, grouped by stage.

``add_config_flags`` adds them to a parser (``cifar-resnet train`` and ``lr-find``, and
the benchmark scripts); ``config_from_args`` turns parsed flags back into a config, over
a ``--config FILE`` when one is given. Each flag's help names its range and default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import MODEL_OPTIONS, PATH_FIELDS, RECIPES, STAGES, TrainConfig, field_types

# The config fields the range test reads (training-only ones such as --epochs are not flags).
LR_FIND_FIELDS = (
    "recipe", "data_dir", "cache_dir", "limit_train", "crop_padding", "crop_pad_mode",
    "flip_prob", "cutout_size", *MODEL_OPTIONS, "batch_size", "drop_last", "optimizer",
    "momentum", "min_lr_divisor", "weight_decay", "bias_lr_factor", "label_smoothing",
    "finder_start_lr", "finder_end_lr", "finder_num_iter", "finder_rule", "seed", "device",
    "precision",
)  # fmt: skip
LR_FIND_ALIASES = {"finder_start_lr": "--start-lr", "finder_end_lr": "--end-lr",
                   "finder_num_iter": "--num-iter", "finder_rule": "--rule"}  # fmt: skip


def typed_arg(check: Callable[[str], bool], convert: Callable[[str], Any], wants: str):
    """An argparse type: ``convert(value)`` where ``check(value)``, else one line naming it."""

    def parse(value: str) -> Any:
        if check(value):
            return convert(value)
        shown = value if len(value) <= 24 else value[:20] + "..."
        raise argparse.ArgumentTypeError(f"must be {wants}, got {shown!r}")

    return parse


def whole(low: int, high: float = float("inf")) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        digits = value[1:] if value[:1] == "-" else value
        return digits.isdigit() and len(digits) <= 30 and low <= int(value) <= high

    return check


# train's --limit-*: N, or all (None: every image); TrainConfig checks the range.
_limit_or_all = typed_arg(
    lambda v: v == "all" or whole(-(10**30))(v), lambda v: None if v == "all" else int(v),
    "a whole number of at least 1 or all",
)  # fmt: skip


def add_config_flags(
    parser: argparse.ArgumentParser,
    aliases: dict[str, str] | None = None,
    only: Sequence[str] | None = None,
) -> None:
    """One flag per ``TrainConfig`` field (``--max-lr`` for ``max_lr``), in one argument
    group per stage; ``only`` limits the flags to those fields. Each flag's help names
    its range and default."""
    aliases, types = aliases or {}, field_types()
    recipe_fields = {name for values in RECIPES.values() for name in values}
    groups = {stage: parser.add_argument_group(f"{stage} settings") for stage in STAGES}
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        kind = types[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": _flag_help(f, recipe_fields)}  # fmt: skip
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name in ("limit_train", "limit_test"):
            kwargs["type"], kwargs["metavar"] = _limit_or_all, "N|all"
        elif "choices" in f.metadata:
            kwargs["type"], kwargs["choices"] = kind, f.metadata["choices"]
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.metadata.get("metavar", kind.__name__.upper())
        flags = [f"--{f.name.replace('_', '-')}", *([aliases[f.name]] if f.name in aliases else [])]
        groups[f.metadata["stage"]].add_argument(*flags, **kwargs)


def _flag_help(f: dataclasses.Field, recipe_fields: set[str]) -> str:
    text = f.metadata["help"]
    bounds = f.metadata.get("bounds")
    if bounds is not None:
        low, high, ends = bounds
        text += f"; {ends[0]}{low:g}, {high:g}{ends[1]}"
    if "default" in text or "spec:" in text:  # the help names its own default
        return text
    if f.default is None:
        return text + (" (default: the recipe's)" if f.name in recipe_fields else "")
    return f"{text} (default: {f.default})"


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` settings typed on the command line (paths made absolute, so a
    run's saved config finds its data from any folder)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    for key in PATH_FIELDS:
        if values.get(key):
            values[key] = str(Path(values[key]).expanduser().absolute())
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed flags: defaults < ``--config FILE`` < flags typed."""
    values = given_settings(args)
    if getattr(args, "config", None):
        from .config import without_recipe_values
        from .config_file import read_config_file

        saved = read_config_file(args.config)
        if values.get("recipe", saved.get("recipe", "spec")) != saved.get("recipe", "spec"):
            saved = without_recipe_values(saved)  # another recipe fills in its own values
        values = {**saved, **values}
    return TrainConfig(**values)
