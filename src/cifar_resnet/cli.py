"""The ``cifar-resnet`` command line: flags are generated from ``TrainConfig``.

Errors the user can fix print one line and exit 2, with no traceback; nothing of
an earlier run is overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import TrainConfig, field_types
from .errors import CifarResnetError

PROG = "cifar-resnet"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _add_config_flags(
    parser: argparse.ArgumentParser, aliases: dict[str, str] | None = None
) -> None:
    aliases = aliases or {}
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name in aliases:
            flags.append(aliases[f.name])
        kind = types[f.name]
        default = "none" if f.default is None else f.default
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata['help']} (default: {default})",
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = kind.__name__.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        parser.add_argument(*flags, **kwargs)


def _config(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _cmd_summary(args: argparse.Namespace) -> int:
    from .custom_resnet import CustomResNet
    from .summary import model_summary

    model = CustomResNet(width=args.width, norm=args.norm, dropout=args.dropout)
    print(model_summary(model, depth=args.depth))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .lr_finder import plot_lr_finder
    from .run_folder import RunFolder
    from .train import fit

    config = _config(args)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    run = RunFolder(out, force=args.force)
    history = fit(config, run=run, progress=not args.quiet)
    if history.lr_finder is not None:
        _save_figure(run, "lr_finder.png", plot_lr_finder(history.lr_finder))
    final = history.final
    print(
        f"test accuracy {final['test_acc']:.2%} (test loss {final['test_loss']:.4f}) after "
        f"{final['epochs']} epochs; {final['train_seconds']:.1f} s training, "
        f"{final['images_per_second']:.0f} images/s on {final['device']}; "
        f"LR {final['min_lr']:.2e} -> {final['max_lr']:.2e} ({final['lr_source']}); run in {out}"
    )
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_finder import plot_lr_finder
    from .run_folder import RunFolder
    from .train import lr_range_test

    config = _config(args)
    run = RunFolder(args.out, force=args.force)
    result = lr_range_test(config, progress=not args.quiet)
    run.write_json("lr_finder.json", result.to_dict())
    _save_figure(run, "lr_finder.png", plot_lr_finder(result))
    stop = "diverged" if result.diverged else "ran all steps"
    print(
        f"LRMAX {result.max_lr:.3e}  LRMIN {result.min_lr:.3e}  ({result.rule} rule, "
        f"{len(result.lrs)} steps, {stop}); curve in {Path(args.out) / 'lr_finder.png'}"
    )
    return 0


def _save_figure(run: Any, name: str, fig: Any) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    run.write_bytes(name, buf.getvalue())


def build_parser() -> argparse.ArgumentParser:
    """The full ``cifar-resnet`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Train David Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("summary", help="print the model summary table")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--norm", choices=("batch", "group", "layer"), default="batch")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--depth", type=int, default=3, help="nesting depth of the table")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("train", help="train and evaluate on the test split after every epoch")
    _add_config_flags(p)
    p.add_argument("--out", help="run folder to write (default runs/<date-time>)")
    p.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("lr-find", help="run the LR range test alone and plot it")
    _add_config_flags(
        p,
        aliases={
            "finder_start_lr": "--start-lr",
            "finder_end_lr": "--end-lr",
            "finder_num_iter": "--num-iter",
            "finder_rule": "--rule",
        },
    )
    p.add_argument("--out", required=True, help="folder for lr_finder.json and lr_finder.png")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_lr_find)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cifar-resnet`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CifarResnetError as e:
        message = " ".join(str(e).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
