"""The ``cifar-resnet`` command line: flags are generated from ``TrainConfig``.

Errors the user can fix print one line and exit 2, with no traceback; nothing of
an earlier run is overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import RECIPES, RESUME_OVERRIDES, TrainConfig, field_types
from .errors import (
    CheckpointError,
    CifarResnetError,
    ConfigError,
    TrainingInterrupted,
    oneline,
)

PROG = "cifar-resnet"
TRACEBACK_ENV = "CIFAR_RESNET_TRACEBACK"  # set: an unexpected error also prints its traceback


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(
    parser: argparse.ArgumentParser,
    aliases: dict[str, str] | None = None,
    only: Sequence[str] | None = None,
) -> None:
    """Add one flag per ``TrainConfig`` field (``--max-lr`` for ``max_lr``) to ``parser``.

    ``only`` limits the flags to those fields; each flag's help names its range and default.
    """
    aliases = aliases or {}
    types = field_types()
    recipe_fields = {name for values in RECIPES.values() for name in values}
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name in aliases:
            flags.append(aliases[f.name])
        kind = types[f.name]
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": _flag_help(f, recipe_fields),
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name in ("limit_train", "limit_test"):
            kwargs["type"], kwargs["metavar"] = _limit_or_all, "N|all"
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.metadata.get("metavar", kind.__name__.upper())
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        parser.add_argument(*flags, **kwargs)


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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed flags; flags not given keep their defaults, or the
    values of ``--config FILE`` where there is one (defaults < file < flags).

    Paths are made absolute, so a run's saved config finds its data from any folder.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    for key in ("data_dir", "cache_dir"):
        if values.get(key):
            values[key] = str(Path(values[key]).expanduser().absolute())
    if getattr(args, "config", None):
        from .config import without_recipe_values
        from .config_file import read_config_file

        saved = read_config_file(args.config)
        if values.get("recipe", saved.get("recipe", "spec")) != saved.get("recipe", "spec"):
            saved = without_recipe_values(saved)  # another recipe fills in its own values
        values = {**saved, **values}
    return TrainConfig(**values)


def _cmd_summary(args: argparse.Namespace) -> int:
    from .custom_resnet import CustomResNet
    from .summary import model_summary

    model = CustomResNet(width=args.width, norm=args.norm, dropout=args.dropout)
    print(model_summary(model, depth=args.depth))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .run_folder import RunFolder, settle_replaced
    from .train import fit

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    if args.print_config is not None:
        return _print_config(args)
    if args.resume and args.config:
        raise ConfigError("--config starts a new run; a resumed run keeps its own settings")
    if args.resume:
        settle_replaced(args.resume)  # a killed --force: its earlier run comes back first
    restart = _unstarted_run(args) if args.resume else None
    if restart is not None:  # stopped before its first checkpoint: it starts again
        out, config, saved_choice = restart
        state = None
        report = args.report if args.report is not None else saved_choice
        run = RunFolder(out, resume=True) if main_rank else None
        if not args.quiet and main_rank:
            print(f"resuming {out} from the start: it stopped before its first checkpoint")
    elif args.resume:
        out, config, record, in_place = _resume_target(args)
        state = record.state
        saved_choice = bool(record.config_json().get("report", True))
        report = args.report if args.report is not None else saved_choice
        run = RunFolder(out, resume=in_place, force=args.force) if main_rank else None
        if not args.quiet and main_rank:
            where = f"step {state.epoch_state['step']} of " if state.epoch_state else ""
            print(f"resuming {out} at {where}epoch {state.epoch + 1} of {config.epochs}")
    else:
        config, state, report = config_from_args(args), None, args.report is not False
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
        run = RunFolder(out, force=args.force) if main_rank else None
    if run is not None:
        run.extra["report"] = report  # recorded in config.json, so --resume remembers it
    try:
        history = fit(config, run=run, progress=not args.quiet, resume=state)
    except TrainingInterrupted as e:
        name = signal.Signals(e.signum).name
        print(
            f"{PROG}: {name} in epoch {e.epoch} after step {e.step}; checkpoint saved in "
            f"{out / 'checkpoints' / 'last.pt'}; continue with: {PROG} train --resume {out}",
            file=sys.stderr,
        )
        if run is not None:
            run.close()
        return 128 + e.signum
    except BaseException as e:
        if run is not None:
            run.abandon()
        if isinstance(e, Exception) and not isinstance(e, CifarResnetError):
            raise _Unexpected(e, _what_is_saved(out)) from e
        raise
    if not main_rank:
        return 0
    try:
        return _finish_train(args, run, history, out, config, report)
    finally:
        run.close()


class _Unexpected(Exception):
    """An exception the package did not foresee, with what is saved and how to go on."""

    def __init__(self, error: BaseException, then: str = "") -> None:
        text = f"unexpected {type(error).__name__}: {oneline(error, 240)}"
        super().__init__(f"{text}; {then}" if then else text)


def _what_is_saved(out: Path) -> str:
    """After a failure in ``train``: what its run folder holds and the command that goes on."""
    from .run_folder import RunRecord

    if not (out / "checkpoints" / "last.pt").is_file():
        return ""
    try:
        record = RunRecord.open(out)
        done, epochs = record.state.epoch, record.config.epochs
    except CifarResnetError:
        return ""
    if done >= epochs and record.state.epoch_state is None:
        return (
            f"the run is saved in {out} (all {epochs} epochs); build its report with: "
            f"{PROG} report {out}"
        )
    return f"the run is saved in {out} up to epoch {done}; continue: {PROG} train --resume {out}"


def _print_config(args: argparse.Namespace) -> int:
    from .config_file import file_format, format_config

    kind = args.print_config or (file_format(args.config) if args.config else "toml")
    print(format_config(config_from_args(args), kind), end="")
    return 0


def _finish_train(
    args: argparse.Namespace, run: Any, history: Any, out: Path, config: TrainConfig, report: bool
) -> int:
    """The finished run's summary line and report; the exit code."""
    from .lr_finder import plot_lr_finder

    if history.lr_finder is not None:
        _save_figure(run, "lr_finder.png", plot_lr_finder(history.lr_finder))
    final = history.final
    tta = f", {final['test_acc_tta']:.2%} with flip TTA" if final.get("test_acc_tta") else ""
    print(
        f"test accuracy {final['test_acc']:.2%}{tta} (test loss {final['test_loss']:.4f}) after "
        f"{final['epochs']} epochs; {final['train_seconds']:.1f} s training, "
        f"{final['images_per_second']:.0f} images/s on {final['device']} ({final['precision']}); "
        f"LR {final['min_lr']:.2e} -> {final['max_lr']:.2e} ({final['lr_source']}); run in {out}"
    )
    if not report:
        return 0
    try:
        path = _write_report(
            out, config.data_dir, config.cache_dir, config.device, progress=not args.quiet,
            lock=False,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted while writing the report; the run is saved; build the report "
            f"with: {PROG} report {out}",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # the run itself is saved; the report can be rebuilt
        unexpected = "" if isinstance(e, CifarResnetError) else f"unexpected {type(e).__name__}: "
        raise CifarResnetError(
            f"the run is saved but its report is not ({unexpected}{oneline(e, 240)}); "
            f"build it with: {PROG} report {out}"
        ) from None
    print(f"report in {path}")
    return 0


def _check_resume_flags(args: argparse.Namespace) -> None:
    """ConfigError unless every training setting given is one a resumed run may change."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    fixed = sorted(k for k in vars(args) if k in names and k not in RESUME_OVERRIDES)
    if fixed:
        flags = [f"--{k.replace('_', '-')}" for k in fixed]
        raise ConfigError(
            f"--resume continues the run with its saved settings; drop {', '.join(flags)} "
            "(only --data-dir, --cache-dir and --device may change)"
        )


def _unstarted_run(args: argparse.Namespace) -> tuple[Path, TrainConfig, bool] | None:
    """``--resume`` of a run folder that stopped before its first checkpoint (killed during
    the range test or epoch 1): its folder, saved config, and report choice; else None.

    Such a run starts again from its saved settings; LRs its range test found are found
    again (the test is deterministic on the CPU), so it ends as an unbroken run would.
    Files of the attempt that saved nothing (its TensorBoard events) are replaced.
    """
    from .config_file import read_config_file
    from .run_folder import read_json

    folder = Path(args.resume)
    saved = folder / "config.json"
    if not folder.is_dir() or (folder / "checkpoints" / "last.pt").exists() or not saved.is_file():
        return None
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise ConfigError(
            f"{folder} stopped before its first checkpoint, so there is nothing to continue "
            "elsewhere; drop --out to start it again in place"
        )
    _check_resume_flags(args)
    recorded = read_json(saved)
    values = read_config_file(saved)
    if recorded.get("lr_source") == "found":  # found by the range test: found again
        values.pop("max_lr", None)
        values.pop("min_lr", None)
    values.update({k: getattr(args, k) for k in RESUME_OVERRIDES if k in vars(args)})
    shutil.rmtree(folder / "tb", ignore_errors=True)
    return folder, TrainConfig(**values), bool(recorded.get("report", True))


def _resume_target(args: argparse.Namespace) -> tuple[Path, TrainConfig, Any, bool]:
    """Folder, config and checkpoint for ``train --resume``; whether it continues in place.

    A checkpoint inside a run folder continues there (or in ``--out``); a loose one needs
    ``--out``. Only --data-dir, --cache-dir and --device may change.
    """
    from .run_folder import RunRecord

    _check_resume_flags(args)
    record = RunRecord.open(args.resume)
    own = record.folder is not None and (
        record.checkpoint.resolve() == (record.folder / "checkpoints" / "last.pt").resolve()
    )  # a run's own last.pt continues in place; any other file would overwrite a later state
    if args.out is None and not own:
        where = "is not inside a run folder" if record.folder is None else "is not its run's"
        raise ConfigError(
            f"{record.checkpoint} {where} last checkpoint (RUN/checkpoints/last.pt); "
            "pass --out FOLDER to continue it in a new run folder"
        )
    out = Path(args.out) if args.out is not None else record.folder
    in_place = own and out.resolve() == record.folder.resolve()
    if not in_place and record.folder is not None and out.resolve() == record.folder.resolve():
        raise ConfigError(
            f"--out {out} is the run {record.checkpoint} came from; continuing that file there "
            "would overwrite the run's later checkpoint; choose a new folder"
        )
    if args.force and in_place:
        raise ConfigError("--force with --resume replaces nothing; drop --force")
    overrides = {k: getattr(args, k) for k in RESUME_OVERRIDES if k in vars(args)}
    config = record.config.replace(**overrides)
    state = record.state
    if state.epoch >= config.epochs and state.epoch_state is None and record.final():
        raise CheckpointError(
            f"the run in {out} already finished its {config.epochs} epochs; nothing to resume "
            f"(rebuild its report with: {PROG} report {out})"
        )
    if not state.resumable:
        raise CheckpointError(
            f"{record.checkpoint} holds weights but no optimizer, schedule or random states; "
            "it can be evaluated but not resumed"
        )
    return out, config, record, in_place


# The config fields the range test reads (training-only ones such as --epochs are not flags).
LR_FIND_FIELDS = (
    "recipe", "data_dir", "cache_dir", "limit_train", "crop_padding", "crop_pad_mode",
    "flip_prob", "cutout_size", "width", "norm", "dropout", "head_bias", "logit_scale",
    "pool_after_relu", "batch_size", "drop_last", "optimizer", "momentum", "min_lr_divisor",
    "weight_decay", "label_smoothing", "finder_start_lr", "finder_end_lr", "finder_num_iter",
    "finder_rule", "seed", "device", "precision",
)  # fmt: skip


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_finder import plot_lr_finder
    from .run_folder import LR_FIND_FILES, RUN_FILES, RunFolder
    from .train import lr_range_test_seeds

    config = config_from_args(args)
    training = [n for n in RUN_FILES if n not in LR_FIND_FILES and (Path(args.out) / n).exists()]
    if training:
        raise CheckpointError(
            f"--out {args.out} holds a training run ({training[0]}); lr-find writes only "
            "lr_finder.json and lr_finder.png into a folder of its own: choose another --out"
        )
    run = RunFolder(args.out, force=args.force, owns=LR_FIND_FILES)
    try:
        result = lr_range_test_seeds(config, seeds=args.seeds, progress=not args.quiet)
        run.write_json("lr_finder.json", result.to_dict())  # replaced only now, on success
        _save_figure(run, "lr_finder.png", plot_lr_finder(result))
    except BaseException:
        run.abandon()
        raise
    run.close()
    stop = "diverged" if result.diverged else "ran all steps"
    print(
        f"LRMAX {result.max_lr:.3e}  LRMIN {result.min_lr:.3e}  ({result.rule} rule, "
        f"{len(result.lrs)} steps, {stop}); curve in {Path(args.out) / 'lr_finder.png'}"
    )
    if result.spread is not None:
        spread = result.spread
        choices = ", ".join(
            f"seed {s}: {lr:.2e}" for s, lr in zip(spread["seeds"], spread["max_lrs"], strict=True)
        )
        print(
            f"LRMAX over {len(spread['seeds'])} seeds: {choices}; spread {spread['ratio']:.2f}x "
            f"(train uses seed {spread['seeds'][0]}'s: {result.max_lr:.2e})"
        )
    return 0


def _save_figure(run: Any, name: str, fig: Any) -> None:
    from .plots import figure_png

    run.write_bytes(name, figure_png(fig, dpi=110))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .data import load_cifar10
    from .inference import evaluate_model, evaluation_table, load_model, select_test_split

    model = load_model(args.checkpoint, device=args.device)
    config = model.config
    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    cache_dir = args.cache_dir if args.cache_dir is not None else config.cache_dir
    data = load_cifar10(data_dir, cache_dir, progress=not (args.quiet or args.json))
    limit = config.limit_test if args.limit_test is None else args.limit_test or None
    images, labels = select_test_split(model, data, limit)
    result = evaluate_model(model, images, labels, tta=args.tta)
    if args.json:
        report = {
            "checkpoint": str(model.path or args.checkpoint),
            "epoch": model.epoch,
            "device": model.runtime.describe(),
            "data": data.source,
            "split": "test",
            "limit_test": limit,
            "recorded_test_acc": model.recorded_test_acc,
            "classes": list(model.classes),
            **result.to_dict(),
        }
        print(json.dumps(report, indent=2))
        return 0
    recorded = model.recorded_test_acc
    print(
        f"checkpoint {model.path or args.checkpoint} (epoch {model.epoch}, width "
        f"{config.width:g}, {config.norm} norm) on {model.runtime.describe()}"
        + (f"; test accuracy recorded in training {recorded:.2%}" if recorded is not None else "")
    )
    print(f"data {data.source}, test split" + (f", first {limit:,} images" if limit else ""))
    print(evaluation_table(result))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .inference import load_model, predict, prediction_table, to_batch

    model = load_model(args.checkpoint, device=args.device)
    images = to_batch(args.images)  # every file is read before anything is printed
    predictions = predict(model, images, tta=args.tta)
    if args.json:
        rows = [
            {
                "image": name,
                "top_k": [{"class": c, "prob": p} for c, p in top],
                "probs": dict(zip(model.classes, probs, strict=True)),
            }
            for name, top, probs in zip(
                args.images, predictions.top_k(args.top_k), predictions.probs.tolist(), strict=True
            )
        ]
        print(json.dumps({"checkpoint": str(model.path), "tta": args.tta, "predictions": rows}))
        return 0
    print(prediction_table(args.images, predictions, args.top_k))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model
    from .inference import load_model

    model = load_model(args.checkpoint, device="cpu")
    if args.format == "safetensors":
        return _export_folder(args, model)
    result = export_model(model, args.out, args.format, overwrite=args.force)
    print(
        f"wrote {result.path} ({result.format}, {result.size_bytes / 1e6:.1f} MB): input images "
        f"float32 (N, 3, 32, 32) in [0, 1], normalisation inside; output logits "
        f"(N, {len(model.classes)}); classes and mean/std in its metadata; "
        f"max |logit| difference from PyTorch {result.max_abs_diff:.1e}"
    )
    return 0


def _export_folder(args: argparse.Namespace, model: Any) -> int:
    """``export --format safetensors``: the folder with its model card, whose figures are
    measured on the test split now."""
    from .data import load_cifar10
    from .hub import export_folder
    from .inference import evaluate_model, select_test_split

    config = model.config
    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    cache_dir = args.cache_dir if args.cache_dir is not None else config.cache_dir
    data = load_cifar10(data_dir, cache_dir, progress=not args.quiet)
    limit = config.limit_test if args.limit_test is None else args.limit_test or None
    images, labels = select_test_split(model, data, limit)
    evaluation = evaluate_model(model, images, labels)
    diff = export_folder(model, args.out, evaluation, data.source, overwrite=args.force)
    print(
        f"wrote {args.out}/ (model.safetensors, config.json, README.md): test accuracy "
        f"{evaluation.acc:.2%} on {evaluation.n:,} images in the model card; reloaded weights "
        f"match to {diff:.1e} in the logits"
    )
    return 0


def _device_arg(value: str) -> str:
    if value in ("auto", "cpu", "cuda", "mps") or (value[:5] == "cuda:" and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")


def _positive_int(value: str) -> int:
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value!r}")


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""

    def parse(value: str) -> int:
        digits = value[1:] if value[:1] == "-" else value
        if digits.isdigit() and len(digits) <= 30 and low <= int(value) <= high:
            return int(value)
        shown = value if len(value) <= 24 else value[:20] + "..."
        raise argparse.ArgumentTypeError(f"must be a whole number in [{low}, {high}], got {shown}")

    return parse


def _limit_or_all(value: str) -> int | None:
    """A --limit-* value of train: N, or all (None: every image)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of at least 1 or all, got {value!r}"
        ) from None


def _limit_arg(value: str) -> int:
    if value == "all":
        return 0
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 or all, got {value!r}")


def _add_inference_commands(sub: Any) -> None:
    """The evaluate, predict and export subcommands."""
    checkpoint_help = (
        "a checkpoint .pt file, a run folder (uses checkpoints/last.pt) or an exported "
        "safetensors folder"
    )
    device_help = "auto (cuda if present), cpu, cuda, cuda:N or mps (default: cpu)"

    p = sub.add_parser("evaluate", help="test accuracy, loss, per-class accuracy, confusion")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=checkpoint_help)
    p.add_argument("--data-dir", help="CIFAR-10 copy (default: the one the model trained on)")
    p.add_argument("--cache-dir", help="cache folder (default: the training run's)")
    p.add_argument(
        "--limit-test",
        type=_limit_arg,
        metavar="N|all",
        help="evaluate the first N test images, or all (default: as in training)",
    )
    p.add_argument("--tta", action="store_true", help="also with horizontal-flip TTA")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--device", type=_device_arg, default="cpu", help=device_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of image files")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=checkpoint_help)
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (any size: center-cropped, 32x32)"
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=3, metavar="K", help="classes shown (default: 3)"
    )
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", type=_device_arg, default="cpu", help=device_help)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "export", help="write the model as ONNX, TorchScript, or a safetensors folder with a card"
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=checkpoint_help)
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript", "safetensors"),
        default="onnx",
        help="onnx or torchscript: one file; safetensors: a folder in the Hugging Face layout "
        "(model.safetensors, config.json, README.md model card with the test accuracy measured "
        "now) (default: onnx)",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="file (folder for safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--data-dir", metavar="PATH", help="safetensors: test data (default: the run's)")
    p.add_argument("--cache-dir", metavar="PATH", help="safetensors: cache (default: the run's)")
    p.add_argument(
        "--limit-test",
        type=_limit_arg,
        metavar="N|all",
        help="safetensors: measure on the first N test images (default: as in training)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_export)


def _cmd_data(args: argparse.Namespace) -> int:
    import json

    from .analysis import data_figures, format_summary, summarize_data
    from .data import load_cifar10
    from .plots import figure_png
    from .run_folder import atomic_write

    out = Path(args.out)
    if (out / "data.json").exists() and not args.force:
        raise CifarResnetError(
            f"--out {out} already holds a data analysis (data.json); "
            "choose a new folder or pass --force to overwrite it"
        )
    data = load_cifar10(args.data_dir, args.cache_dir, progress=not args.quiet)
    summary = summarize_data(data)
    figures = data_figures(data, summary, per_class=args.per_class, seed=args.seed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarResnetError(f"cannot create --out {out} ({e.strerror or e})") from None
    blob = (json.dumps(summary.to_dict(), indent=2) + "\n").encode()
    again = "run the same command again"
    atomic_write(out / "data.json", lambda f: f.write(blob), then=again)
    for name, fig in figures.items():
        png = figure_png(fig)
        atomic_write(out / f"{name}.png", lambda f, png=png: f.write(png), then=again)
    print(format_summary(summary))
    print(f"wrote data.json, {', '.join(f'{n}.png' for n in figures)} in {out}")
    return 0


def _write_report(
    run_dir: Path,
    data_dir: str | None,
    cache_dir: str | None,
    device: str,
    layer: str | None = None,
    progress: bool = False,
    lock: bool = True,
) -> Path:
    """Build report.html for a run folder and write it there.

    ``lock``: hold the folder's lock while writing (a training process holds it already).
    """
    from .gradcam import DEFAULT_LAYER
    from .report import build_report, load_run
    from .run_folder import FolderLock, atomic_write

    path = Path(run_dir) / "report.html"
    held = FolderLock(Path(run_dir)) if lock and Path(run_dir).is_dir() else None
    try:
        results = load_run(
            run_dir, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress
        )
        page = build_report(results, gradcam_layer=layer or DEFAULT_LAYER, progress=progress)
        rebuild = f"build it with: {PROG} report {run_dir}"
        atomic_write(path, lambda f: f.write(page.encode()), then=rebuild if lock else "")
    finally:
        if held is not None:
            held.release()
    return path


def _cmd_report(args: argparse.Namespace) -> int:
    from .gradcam import GRADCAM_LAYERS

    layer = args.gradcam_layer
    if layer is not None and layer not in GRADCAM_LAYERS:
        choices = ", ".join(GRADCAM_LAYERS)
        raise ConfigError(f"--gradcam-layer must be one of {choices}, got {layer!r}")
    path = _write_report(
        Path(args.run),
        args.data_dir,
        args.cache_dir,
        args.device,
        layer,
        progress=not args.quiet,
    )
    print(f"report in {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _add_insight_commands(sub: Any) -> None:
    """The data and report subcommands, and train's --no-report."""
    p = sub.add_parser("data", help="class counts, channel mean/std, sample and augmented grids")
    p.add_argument("--data-dir", help="local CIFAR-10 (default: download the official archive)")
    p.add_argument("--cache-dir", help="cache folder (default ~/.cache/cifar_resnet)")
    p.add_argument("--out", required=True, help="folder for data.json and the PNG figures")
    p.add_argument("--per-class", type=_positive_int, default=4, help="samples per class shown")
    p.add_argument(
        "--seed", type=_bounded_int(0, 2**62), default=0,
        help="seed for the samples and augmentation",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite an analysis already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("report", help="(re)build report.html of a run folder")
    p.add_argument("run", metavar="RUN", help="run folder written by train --out")
    p.add_argument("--data-dir", help="CIFAR-10 copy (default: the one the run trained on)")
    p.add_argument("--cache-dir", help="cache folder (default: the run's)")
    p.add_argument(
        "--gradcam-layer",
        metavar="{layer1,layer2,layer3}",
        help="block whose output Grad-CAM explains (default: layer2)",
    )
    p.add_argument(
        "--device", type=_device_arg, default="auto", help="auto (default), cpu, cuda, cuda:N"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_report)

    sub.choices["train"].add_argument(
        "--report",
        dest="report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write report.html after training (default: yes; --resume: as the run was "
        "started); cifar-resnet report RUN builds it later",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``cifar-resnet`` argument parser."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Train David Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("summary", help="print the model summary table")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--norm", choices=("batch", "group", "layer"), default="batch")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--depth", type=_bounded_int(0, 10), default=3, help="nesting depth of the table"
    )
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("train", help="train and evaluate on the test split after every epoch")
    add_config_flags(p)
    p.add_argument("--out", help="run folder to write (default runs/<date-time>)")
    p.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run (its folder or checkpoint) with its saved settings",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a TOML, YAML or JSON file (a run's config.json too); flags typed "
        "override it",
    )
    p.add_argument(
        "--print-config",
        nargs="?",
        const="",
        choices=("", "toml", "yaml", "json"),
        metavar="FORMAT",
        help="print the resolved settings (toml, yaml or json; default: --config's format, "
        "else toml) and exit",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("lr-find", help="run the LR range test alone and plot it")
    add_config_flags(
        p,
        only=LR_FIND_FIELDS,
        aliases={
            "finder_start_lr": "--start-lr",
            "finder_end_lr": "--end-lr",
            "finder_num_iter": "--num-iter",
            "finder_rule": "--rule",
        },
    )
    p.add_argument("--out", required=True, help="folder for lr_finder.json and lr_finder.png")
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=3,
        metavar="N",
        help="run the test for N seeds (--seed, --seed+1, ...) and show how far their choices "
        "spread; the first is the one train makes (default: 3)",
    )
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_lr_find)

    _add_inference_commands(sub)
    _add_insight_commands(sub)
    return parser


def _one_line_warnings() -> None:
    """Show library warnings (a cache that cannot be written, say) as one line each."""

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        print(f"{PROG}: warning: {oneline(str(message))}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cifar-resnet`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_line_warnings()
    try:
        return args.func(args)
    except CifarResnetError as e:
        print(f"{PROG}: error: {oneline(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cifar-resnet evaluate ... | head -1`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
        return 0
    except Exception as e:  # a bug: one line, and the traceback when asked for
        error = e if isinstance(e, _Unexpected) else _Unexpected(e)
        shown = os.environ.get(TRACEBACK_ENV)
        if shown:
            traceback.print_exception(e)
        where = "" if shown else f" ({TRACEBACK_ENV}=1 shows the traceback)"
        print(f"{PROG}: error: {oneline(error)}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
