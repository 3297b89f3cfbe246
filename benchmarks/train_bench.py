"""Train on the real CIFAR-10 with ``fit`` and record the figures under benchmarks/results/.

    python benchmarks/train_bench.py --data-dir D --name spec [config flags ...]
    python benchmarks/train_bench.py --from-run RUN --name NAME   # record a finished run

Writes ``benchmarks/results/<date>-<device>-<name>.json`` with the resolved config,
test accuracy per epoch, training seconds, images/s, torch version and device name.
``--from-run`` records a run folder written by ``cifar-resnet train`` (the same
``fit``), for runs too long to repeat inside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from cifar_resnet.cli import add_config_flags, config_from_args
from cifar_resnet.run_folder import RunFolder
from cifar_resnet.train import fit

RESULTS = Path(__file__).resolve().parent / "results"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _record(
    name: str,
    final: dict,
    epochs: list[dict],
    config: dict,
    lr_finder: dict | None,
    command: list[str],
    conditions: str,
) -> Path:
    device = final["device"]
    result = {
        "name": name,
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "device": device,
        "torch": final.get("torch", torch.__version__),
        "python": platform.python_version(),
        "conditions": conditions,
        "test_acc": final["test_acc"],
        "test_loss": final["test_loss"],
        "test_acc_per_epoch": [e["test_acc"] for e in epochs],
        "train_seconds": final["train_seconds"],
        "images_per_second": final["images_per_second"],
        "lr_source": final["lr_source"],
        "max_lr": final["max_lr"],
        "min_lr": final["min_lr"],
        "lr_finder": None
        if lr_finder is None
        else {k: lr_finder[k] for k in ("max_lr", "min_lr", "rule", "diverged")},
        "config": config,
        "epochs": epochs,
        "final": final,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['date']}-{_slug(device)}-{_slug(name)}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _equivalent_command(config: dict) -> list[str]:
    """The ``cifar-resnet train`` flags that reproduce a saved config (non-defaults only)."""
    from dataclasses import fields

    from cifar_resnet.config import TrainConfig

    command = ["cifar-resnet", "train"]
    for f in fields(TrainConfig):
        value = config.get(f.name, f.default)
        if value != f.default and not (
            f.name in ("max_lr", "min_lr") and config.get("lr_source") == "found"
        ):
            command += [f"--{f.name.replace('_', '-')}", str(value)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="what this run shows, e.g. spec-w1")
    parser.add_argument("--from-run", help="record this finished run folder instead of training")
    parser.add_argument("--out", help="run folder for the training (default: a temporary one)")
    parser.add_argument(
        "--conditions",
        help="with --from-run: how the run was made (threads, other load), recorded as given",
    )
    add_config_flags(parser)
    args = parser.parse_args()
    if args.from_run:
        run = Path(args.from_run)
        final = json.loads((run / "final.json").read_text())
        epochs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((run / "config.json").read_text())
        finder = run / "lr_finder.json"
        lr_finder = json.loads(finder.read_text()) if finder.exists() else None
        command = _equivalent_command(config)
        conditions = args.conditions or "recorded from a run folder; conditions not stated"
        path = _record(args.name, final, epochs, config, lr_finder, command, conditions)
    else:
        config = config_from_args(args)
        out = Path(args.out or f"runs/bench-{_slug(args.name)}-{time.strftime('%H%M%S')}")
        history = fit(config, run=RunFolder(out))
        path = _record(
            args.name,
            history.final,
            history.epochs,
            history.config.to_dict(),
            None if history.lr_finder is None else history.lr_finder.to_dict(),
            sys.argv,
            f"trained by this script: {torch.get_num_threads()} CPU threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        )
    result = json.loads(path.read_text())
    print(
        f"{result['name']}: test accuracy {result['test_acc']:.2%}, "
        f"{result['train_seconds']:.1f} s training, {result['images_per_second']:.0f} images/s "
        f"on {result['device']} (torch {result['torch']}) -> {path}"
    )


if __name__ == "__main__":
    main()
