"""The ``cifar-resnet`` command line: it parses, calls the library and prints.

Training flags are generated from ``TrainConfig`` and grouped by its stages; what a run
is (new, resumed, reported on) is decided in ``runs``. Errors the user can fix print one
line and exit 2, with no traceback; an unexpected one prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import DEVICE_FORMS, MODEL_OPTIONS, is_device
from .config_flags import (
    LR_FIND_ALIASES,
    LR_FIND_FIELDS,
    add_config_flags,
    config_from_args,
    given_settings,
    typed_arg,
    whole,
)
from .errors import (
    PROG,
    CifarResnetError,
    ConfigError,
    TrainingInterrupted,
    UnexpectedError,
    oneline,
)
from .records.layout import CHECKPOINT, CONFIG_JSON, LR_FINDER_JSON, LR_FINDER_PNG, REPORT

TRACEBACK_ENV = "CIFAR_RESNET_TRACEBACK"  # set: an unexpected error also prints its traceback


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_summary(args: argparse.Namespace) -> int:
    from .model import model_summary
    from .training.setup import build_model

    config = config_from_args(args)
    options = ", ".join(f"{k} {_shown(v)}" for k, v in config.model_options().items())
    print(f"recipe {config.recipe}: {options}")
    if config.whiten:
        print("(the whitening filters are fitted to the training images when a run starts)")
    print(model_summary(build_model(config), depth=args.depth))
    return 0


def _shown(value: object) -> str:
    """A setting as the summary lists it: yes/no for flags, numbers as typed."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import runs
    from .records.layout import checkpoint_file

    if args.print_config is not None:
        from .config_file import file_format, format_config

        kind = args.print_config or (file_format(args.config) if args.config else "toml")
        print(format_config(config_from_args(args), kind), end="")
        return 0
    if args.resume and args.config:
        raise ConfigError("--config starts a new run; a resumed run keeps its own settings")
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    if args.resume:
        plan = runs.resume_run(args.resume, out=args.out, overrides=given_settings(args),
                               report=args.report, force=args.force)  # fmt: skip
        if not args.quiet and writer:
            print(plan.message)
    else:
        out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        plan = runs.new_run(config_from_args(args), out, force=args.force,
                            report=args.report is not False)  # fmt: skip
    try:
        runs.train_run(plan, progress=not args.quiet, writer=writer, on_trained=_trained(plan.out))
    except TrainingInterrupted as e:
        print(f"{PROG}: {signal.Signals(e.signum).name} in epoch {e.epoch} after step {e.step}; "
              f"checkpoint saved in {checkpoint_file(plan.out)}; continue with: "
              f"{PROG} train --resume {plan.out}", file=sys.stderr)  # fmt: skip
        return 128 + e.signum
    except runs.ReportInterrupted as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130
    if plan.report and writer:
        print(f"report in {plan.out / REPORT}")
    return 0


def _trained(out: Path) -> Callable[[Any], None]:
    def show(history: Any) -> None:
        f = history.final
        tta = f", {f['test_acc_tta']:.2%} with flip TTA" if f.get("test_acc_tta") else ""
        print(
            f"test accuracy {f['test_acc']:.2%}{tta} (test loss {f['test_loss']:.4f}) after "
            f"{f['epochs']} epochs; {f['train_seconds']:.1f} s training, "
            f"{f['images_per_second']:.0f} images/s on {f['device']} ({f['precision']}); "
            f"LR {f['min_lr']:.2e} -> {f['max_lr']:.2e} ({f['lr_source']}); run in {out}"
        )

    return show


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .training.range_test import lr_find

    result = lr_find(config_from_args(args), args.out, seeds=args.seeds, force=args.force,
                          progress=not args.quiet)  # fmt: skip
    stop = "diverged" if result.diverged else "ran all steps"
    print(
        f"LRMAX {result.max_lr:.3e}  LRMIN {result.min_lr:.3e}  ({result.rule} rule, "
        f"{len(result.lrs)} steps, {stop}); curve in {Path(args.out) / LR_FINDER_PNG}"
    )
    if result.spread is not None:
        s = result.spread
        pairs = zip(s["seeds"], s["max_lrs"], strict=True)
        choices = ", ".join(f"seed {seed}: {lr:.2e}" for seed, lr in pairs)
        print(f"LRMAX over {len(s['seeds'])} seeds: {choices}; spread {s['ratio']:.2f}x "
              f"(train uses seed {s['seeds'][0]}'s: {result.max_lr:.2e})")  # fmt: skip
    return 0


def _test_split(args: argparse.Namespace, model: Any, quiet: bool) -> tuple[Any, Any, Any, Any]:
    """The data, its test images and labels (limited as asked), and the limit."""
    from . import runs
    from .inference.predict import select_test_split

    data = runs.run_data(model.config, args.data_dir, args.cache_dir, progress=not quiet)
    limit = model.config.limit_test if args.limit_test is None else args.limit_test or None
    return (data, *select_test_split(model, data, limit), limit)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference.calibration import calibration_table
    from .inference.predict import evaluate_model, load_model
    from .inference.tables import evaluation_record, evaluation_table

    model = load_model(args.checkpoint, device=args.device)
    data, images, labels, limit = _test_split(args, model, args.quiet or args.json)
    result = evaluate_model(model, images, labels, tta=args.tta)
    tta = None if result.tta is None else result.tta.calibration
    if args.json:
        record = evaluation_record(model, result, data.source, limit, args.checkpoint)
        record["calibration"] = result.calibration.to_dict()
        if tta is not None:
            record["tta"]["calibration"] = tta.to_dict()
        print(json.dumps(record, indent=2))
        return 0
    recorded, config = model.recorded_test_acc, model.config
    print(
        f"checkpoint {model.path or args.checkpoint} (epoch {model.epoch}, width "
        f"{config.width:g}, {config.norm} norm) on {model.runtime.describe()}"
        + (f"; test accuracy recorded in training {recorded:.2%}" if recorded is not None else "")
    )
    print(f"data {data.source}, test split" + (f", first {limit:,} images" if limit else ""))
    print(evaluation_table(result))
    print()
    print(calibration_table(result.calibration, tta))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict import load_model, predict, to_batch
    from .inference.tables import prediction_records, prediction_table

    model = load_model(args.checkpoint, device=args.device)
    predictions = predict(model, to_batch(args.images), tta=args.tta)  # every file read first
    if not args.json:
        print(prediction_table(args.images, predictions, args.top_k))
        return 0
    rows = prediction_records(args.images, predictions, args.top_k)
    print(json.dumps({"checkpoint": str(model.path), "tta": args.tta, "predictions": rows}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_model
    from .inference.hub import CARD, CONFIG, WEIGHTS, export_folder
    from .inference.predict import evaluate_model, load_model

    model = load_model(args.checkpoint, device="cpu")
    if args.format != "safetensors":
        r = export_model(model, args.out, args.format, overwrite=args.force)
        print(f"wrote {r.path} ({r.format}, {r.size_bytes / 1e6:.1f} MB): input images float32 "
              f"(N, 3, 32, 32) in [0, 1], normalisation inside; output logits "
              f"(N, {len(model.classes)}); classes and mean/std in its metadata; "
              f"max |logit| difference from PyTorch {r.max_abs_diff:.1e}")  # fmt: skip
        return 0
    data, images, labels, _ = _test_split(args, model, args.quiet)  # the card's figures, now
    evaluation = evaluate_model(model, images, labels)
    diff = export_folder(model, args.out, evaluation, data.source, overwrite=args.force)
    print(f"wrote {args.out}/ ({WEIGHTS}, {CONFIG}, {CARD}): test accuracy "
          f"{evaluation.acc:.2%} on {evaluation.n:,} images in the model card; reloaded weights "
          f"match to {diff:.1e} in the logits")  # fmt: skip
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .insight.analysis import analyse_data, format_summary

    summary, figures = analyse_data(
        args.data_dir, args.cache_dir, args.out, per_class=args.per_class, seed=args.seed,
        force=args.force, progress=not args.quiet,
    )  # fmt: skip
    print(format_summary(summary))
    print(f"wrote data.json, {', '.join(f'{n}.png' for n in figures)} in {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .insight.gradcam import GRADCAM_LAYERS
    from .insight.report import write_report

    if args.gradcam_layer is not None and args.gradcam_layer not in GRADCAM_LAYERS:
        raise ConfigError(f"--gradcam-layer must be one of {', '.join(GRADCAM_LAYERS)}, "
                          f"got {args.gradcam_layer!r}")  # fmt: skip
    path = write_report(args.run, args.data_dir, args.cache_dir, args.device,
                        args.gradcam_layer, progress=not args.quiet)  # fmt: skip
    print(f"report in {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .inference.predict import load_model
    from .insight.demo_app import build_page, require_gradio, serve

    require_gradio()  # before the model loads: without the extra, one line naming it
    model = load_model(args.model, device=args.device)
    page = build_page(model, _demo_strip(args, model), name=str(args.model))
    url = serve(page, host=args.host, port=args.port)
    try:
        print(f"demo of {args.model} on {model.runtime.describe()} at {url} (Ctrl+C stops it)",
              flush=True)  # fmt: skip
        while True:
            time.sleep(3600)
    finally:
        page.close()


def _demo_strip(args: argparse.Namespace, model: Any) -> Any:
    """The demo's test images: from --data-dir, else the data the run trained on; none for
    an exported folder (it keeps no local paths) or when the run's data cannot be read."""
    from . import runs
    from .inference.hub import is_model_folder
    from .inference.predict import select_test_split
    from .insight.demo import make_strip

    if args.data_dir is None and is_model_folder(args.model):
        return None
    try:
        data = runs.run_data(model.config, args.data_dir, args.cache_dir)
    except CifarResnetError as e:
        if args.data_dir is not None:
            raise
        warnings.warn(f"no test images to click on: {oneline(e)} (--data-dir names a copy)",
                      stacklevel=1)  # fmt: skip
        return None
    return make_strip(model, *select_test_split(model, data))


# ---------------------------------------------------------------------------------------------
# Argument types and the parser


_device_arg = typed_arg(is_device, str, DEVICE_FORMS)
_positive_int = typed_arg(whole(1), int, "a whole number of at least 1")
_limit_arg = typed_arg(  # evaluate's and export's --limit-test: N, or all (0)
    lambda v: v == "all" or whole(1)(v), lambda v: 0 if v == "all" else int(v),
    "a whole number of at least 1 or all",
)  # fmt: skip


def _option(p: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    """The flags several commands share: --quiet, --force, --data-dir, --cache-dir, --device."""
    kinds = {"--quiet": {"action": "store_true"}, "--force": {"action": "store_true"},
             "--data-dir": {"metavar": "PATH"}, "--cache-dir": {"metavar": "PATH"},
             "--device": {"type": _device_arg, "default": "cpu"}}  # fmt: skip
    p.add_argument(name, help=help, **{**kinds.get(name, {}), **kwargs})


def _add_train_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="train and evaluate on the test split after every epoch")
    add_config_flags(p)
    p.add_argument("--out", help="run folder to write (default runs/<date-time>)")
    _option(p, "--force", "overwrite a run already in --out")
    _option(p, "--quiet", "no progress bars or epoch lines")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its folder or "
                   "checkpoint) with its saved settings")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="settings from a TOML, YAML or JSON file (a "
                   f"run's {CONFIG_JSON} too); flags typed override it")  # fmt: skip
    p.add_argument("--print-config", nargs="?", const="", choices=("", "toml", "yaml", "json"),
                   metavar="FORMAT", help="print the resolved settings (toml, yaml or json; "
                   "default: --config's format, else toml) and exit")  # fmt: skip
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help=f"write {REPORT} after training (default: yes; --resume: as the run "
                   f"was started); {PROG} report RUN builds it later")  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("lr-find", help="run the LR range test alone and plot it")
    add_config_flags(p, only=LR_FIND_FIELDS, aliases=LR_FIND_ALIASES)
    p.add_argument("--out", required=True, help=f"folder for {LR_FINDER_JSON} and {LR_FINDER_PNG}")
    p.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="run the test for "
                   "N seeds (--seed, --seed+1, ...) and show how far their choices spread; the "
                   "first is the one train makes (default: 3)")  # fmt: skip
    _option(p, "--force", "overwrite results already in --out")
    _option(p, "--quiet", "no progress bars")
    p.set_defaults(func=_cmd_lr_find)


def _add_model_commands(sub: Any) -> None:
    model = (f"a checkpoint .pt file, a run folder (uses {CHECKPOINT}) or an exported "
             "safetensors folder")  # fmt: skip
    device = f"{DEVICE_FORMS} (default: cpu)"
    p = sub.add_parser(
        "evaluate", help="test accuracy, loss, per-class accuracy, confusion, calibration"
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=model)
    _option(p, "--data-dir", "CIFAR-10 copy (default: the one the model trained on)")
    _option(p, "--cache-dir", "cache folder (default: the training run's)")
    p.add_argument("--limit-test", type=_limit_arg, metavar="N|all", help="evaluate the first N "
                   "test images, or all (default: as in training)")  # fmt: skip
    p.add_argument("--tta", action="store_true", help="also with horizontal-flip TTA")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _option(p, "--device", device)
    _option(p, "--quiet", "no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of image files")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=model)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any size: center-cropped, 32x32)")  # fmt: skip
    p.add_argument("--top-k", type=_positive_int, default=3, metavar="K",
                   help="classes shown (default: 3)")  # fmt: skip
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _option(p, "--device", device)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write the model as ONNX, TorchScript, or a safetensors "
                       "folder with a card")  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=model)
    p.add_argument("--format", choices=("onnx", "torchscript", "safetensors"), default="onnx",
                   help="onnx or torchscript: one file; safetensors: a folder in the Hugging "
                   "Face layout (the weights as safetensors, their config and a README.md model "
                   "card with the test accuracy measured now) (default: onnx)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="PATH", help="file (folder for safetensors)")
    _option(p, "--force", "overwrite an existing --out")
    _option(p, "--data-dir", "safetensors: test data (default: the run's)")
    _option(p, "--cache-dir", "safetensors: cache (default: the run's)")
    p.add_argument("--limit-test", type=_limit_arg, metavar="N|all", help="safetensors: measure "
                   "on the first N test images (default: as in training)")  # fmt: skip
    _option(p, "--quiet", "no progress bars")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="a local web page: drop an image, see the top-5 classes and "
                       "Grad-CAM (needs the demo extra)")  # fmt: skip
    p.add_argument("model", metavar="MODEL", help=model)
    p.add_argument("--port", type=typed_arg(whole(1, 65535), int, "a port number in [1, 65535]"),
                   help="port to serve on (default: 7860, or the next free one)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 serves "
                   "other machines too (default: 127.0.0.1)")  # fmt: skip
    _option(p, "--data-dir", "CIFAR-10 copy whose test images the page offers (default: the "
            "run's; an exported folder's page has none without it)")  # fmt: skip
    _option(p, "--cache-dir", "cache folder (default: the run's)")
    _option(p, "--device", device)
    p.set_defaults(func=_cmd_demo)


def _add_insight_commands(sub: Any) -> None:
    p = sub.add_parser("data", help="class counts, channel mean/std, sample and augmented grids")
    _option(p, "--data-dir", "local CIFAR-10 (default: download the official archive)")
    _option(p, "--cache-dir", "cache folder (default ~/.cache/cifar_resnet)")
    p.add_argument("--out", required=True, help="folder for data.json and the PNG figures")
    p.add_argument("--per-class", type=_positive_int, default=4, help="samples per class shown")
    seed = typed_arg(whole(0, 2**62), int, f"a whole number in [0, {2**62}]")
    p.add_argument("--seed", type=seed, default=0, help="seed for the samples and augmentation")
    _option(p, "--force", "overwrite an analysis already in --out")
    _option(p, "--quiet", "no progress bars")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("report", help=f"(re)build {REPORT} of a run folder")
    p.add_argument("run", metavar="RUN", help="run folder written by train --out")
    _option(p, "--data-dir", "CIFAR-10 copy (default: the one the run trained on)")
    _option(p, "--cache-dir", "cache folder (default: the run's)")
    p.add_argument("--gradcam-layer", metavar="{layer1,layer2,layer3}",
                   help="block whose output Grad-CAM explains (default: layer2)")  # fmt: skip
    _option(p, "--device", "auto (default), cpu, cuda, cuda:N", default="auto")
    _option(p, "--quiet", "no progress bars")
    p.set_defaults(func=_cmd_report)


def build_parser() -> argparse.ArgumentParser:
    """The full ``cifar-resnet`` argument parser."""
    from . import __version__

    parser = _Parser(prog=PROG, description="Train David Page's ResNet-9 on CIFAR-10 with an LR "
                     "range test and One Cycle.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("summary", help="print the model summary table of a recipe's network")
    add_config_flags(p, only=("recipe", *MODEL_OPTIONS))
    p.add_argument("--depth", type=typed_arg(whole(0, 10), int, "a whole number in [0, 10]"),
                   default=3, help="nesting depth of the table")  # fmt: skip
    p.set_defaults(func=_cmd_summary)
    _add_train_commands(sub)
    _add_model_commands(sub)
    _add_insight_commands(sub)
    return parser


def _one_line_warnings() -> None:
    """Show library warnings (a cache that cannot be written, say) as one line each."""

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        print(f"{PROG}: warning: {oneline(str(message))}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cifar-resnet`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
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
        shown = os.environ.get(TRACEBACK_ENV)
        if shown:
            traceback.print_exception(e)
        error = e if isinstance(e, UnexpectedError) else UnexpectedError(e)
        where = "" if shown else f" ({TRACEBACK_ENV}=1 shows the traceback)"
        print(f"{PROG}: error: {oneline(error)}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
