"""Train on the real CIFAR-10 with ``fit`` and record the figures under benchmarks/results/.

    python benchmarks/train_bench.py --data-dir D --name spec [config flags ...]
    python benchmarks/train_bench.py --data-dir D --name spec --seeds 0 1 2
    python benchmarks/train_bench.py --from-run RUN [RUN ...] --name NAME   # finished runs

Writes ``benchmarks/results/<date>-<device>-<name>.json`` with the resolved config,
test accuracy per epoch, training seconds, images/s, torch version and device name.
With ``--seeds``, one run per seed (the data loaded once) and the mean, sample
standard deviation, minimum and maximum of test accuracy and training seconds.
``--from-run`` records run folders written by ``cifar-resnet train`` (the same
``fit``), for runs too long to repeat inside this script; several folders (one per
seed) are recorded with their spread as ``--seeds`` would be. ``--with-results``
adds the runs of earlier results files, given as paths or by their names in
``--results-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from results_file import RESULTS, fail, slug, write_result

from cifar_resnet.cli import add_config_flags, config_from_args
from cifar_resnet.data.load import load_cifar10
from cifar_resnet.records.records import EpochMetrics, time_to_accuracy
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.training.fit import fit


def _run_record(
    final: dict, epochs: list[dict], config: dict, lr_finder: dict | None
) -> dict[str, Any]:
    """What one finished run showed."""
    return {
        "test_acc": final["test_acc"],
        "test_loss": final["test_loss"],
        "test_acc_per_epoch": [e["test_acc"] for e in epochs],
        **_times_to_accuracy(epochs),
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
        **_machines(epochs),
    }


def _machines(epochs: list[dict]) -> dict[str, Any]:
    """The machine the run trained on, from its epochs' own records.

    ``machine``: the one that trained the most epochs (without the device the epochs add).
    ``machines`` too, when the epochs name more than one or some name none (written before
    epochs named it): each machine (None: not recorded) with the epochs it trained. When no
    epoch names one, nothing: the results file's machine, the recording one, stands in.
    """
    if not any(e.get("machine") for e in epochs):
        return {}
    spans: list[dict[str, Any]] = []
    for e in epochs:
        m = e.get("machine")
        m = None if m is None else {k: v for k, v in m.items() if k != "device"}
        same = next((s for s in spans if s["machine"] == m), None)
        if same is None:
            spans.append(same := {"machine": m, "epochs": []})
        same["epochs"].append(e["epoch"])
    known = [s for s in spans if s["machine"] is not None]
    most = max(known, key=lambda s: len(s["epochs"]))["machine"]
    return {"machine": most} if len(spans) == 1 else {"machine": most, "machines": spans}


def _times_to_accuracy(epochs: list[dict]) -> dict[str, Any]:
    """Training seconds to each target accuracy (``records.time_to_accuracy``), plain and,
    when the run measured it, with flip TTA: computed from the epochs, so runs recorded
    before final.json held them get them too."""
    metrics = [EpochMetrics.from_dict(e) for e in epochs]
    tta = bool(metrics) and all(m.test_acc_tta is not None for m in metrics)
    return {
        "time_to_accuracy": time_to_accuracy(metrics),
        "time_to_accuracy_tta": time_to_accuracy(metrics, tta=True) if tta else None,
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _record(
    name: str,
    runs: list[dict],
    command: list[str],
    conditions: str,
    results: Path,
) -> Path:
    """Write the results file: one run's record, or the seeds' spread and every run."""
    result: dict[str, Any] = {
        "name": name,
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "device": runs[0]["final"]["device"],
        "torch": runs[0]["final"].get("torch", torch.__version__),
        "python": platform.python_version(),
        "conditions": conditions,
    }
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result["seeds"] = [r["final"]["seed"] for r in runs]
        result["test_acc"] = _spread([r["test_acc"] for r in runs])
        result["train_seconds"] = _spread([r["train_seconds"] for r in runs])
        result["images_per_second"] = _spread([r["images_per_second"] for r in runs])
        result["runs"] = runs
    return write_result(result, slug(name), results)


_RUN_KEYS = ("test_acc", "test_loss", "test_acc_per_epoch", "train_seconds",
             "images_per_second", "lr_source", "max_lr", "min_lr", "lr_finder", "config",
             "epochs", "final", "machines")  # fmt: skip


def _results_file(name: str, results_dir: Path) -> Path:
    """A results file given as a path, or by its name in the results folder."""
    for path in (Path(name), results_dir / name):
        if path.is_file():
            return path
    fail(
        "train_bench",
        f"--with-results: no results file {name} (nor {results_dir / name}); give its path",
    )


def _finished_run(folder: str) -> Path:
    """A run folder with its final.json, or a one-line error saying how to finish it."""
    run = Path(folder)
    if not (run / "final.json").is_file():
        fail(
            "train_bench",
            f"--from-run: {run} is not a finished run (no final.json); "
            f"finish it with cifar-resnet train --resume {run}",
        )
    return run


def _recorded_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of a results file, each with the file, machine and conditions it came from
    (a run's own machine and conditions, where it names them, before the file's)."""
    result = json.loads(path.read_text())
    runs = result.get("runs") or [{k: result[k] for k in _RUN_KEYS if k in result}]
    return [
        {
            **run,
            **_times_to_accuracy(run.get("epochs", [])),
            "recorded_in": path.name,
            **{k: run.get(k) or result.get(k) for k in ("machine", "conditions")},
        }
        for run in runs
    ]


def _folder_record(run: Path) -> dict[str, Any]:
    """The record of a finished run folder written by ``cifar-resnet train``."""
    final = json.loads((run / "final.json").read_text())
    epochs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    finder = run / "lr_finder.json"
    lr_finder = json.loads(finder.read_text()) if finder.exists() else None
    return _run_record(final, epochs, config, lr_finder)


def _equivalent_command(config: dict) -> list[str]:
    """The ``cifar-resnet train`` flags that reproduce a saved config (non-defaults only)."""
    from dataclasses import fields

    from cifar_resnet.config import TrainConfig, as_saved_run, without_recipe_values

    own = without_recipe_values(as_saved_run(config))  # the recipe's values are its own
    command = ["cifar-resnet", "train"]
    for f in fields(TrainConfig):
        value, flag = own.get(f.name, f.default), f"--{f.name.replace('_', '-')}"
        if (
            value == f.default
            or value is None
            or (f.name in ("max_lr", "min_lr") and config.get("lr_source") == "found")
        ):
            continue
        if isinstance(value, bool):
            command.append(flag if value else f"--no-{flag[2:]}")
        else:
            command += [flag, str(value)]
    return command


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="what this run shows, e.g. spec-w1")
    parser.add_argument(
        "--from-run", nargs="+", metavar="RUN",
        help="record these finished run folders (one per seed) instead of training",
    )  # fmt: skip
    parser.add_argument("--out", help="run folder for the training (default: one under runs/)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="train once per seed (instead of --seed)"
    )
    parser.add_argument(
        "--conditions",
        help="with --from-run: how the run was made (threads, other load), recorded as given",
    )
    parser.add_argument(
        "--with-results", nargs="+", metavar="JSON", default=[],
        help="with --from-run: results files of earlier seeds of the same runs (another "
        "session's, another machine's); their runs join the spread, each with its machine",
    )  # fmt: skip
    parser.add_argument("--results-dir", default=str(RESULTS))
    add_config_flags(parser)
    args = parser.parse_args(argv)
    if args.from_run:
        finished = [_finished_run(run) for run in args.from_run]
        earlier = [_results_file(name, Path(args.results_dir)) for name in args.with_results]
        runs = [_folder_record(run) for run in finished]
        runs += [run for path in earlier for run in _recorded_runs(path)]
        command = _equivalent_command(runs[0]["config"])
        conditions = args.conditions or "recorded from run folders; conditions not stated"
    else:
        config = config_from_args(args)
        out = args.out or f"runs/bench-{slug(args.name)}-{time.strftime('%H%M%S')}"
        data = load_cifar10(config.data_dir, config.cache_dir)
        runs = []
        for seed in args.seeds or [config.seed]:
            folder = Path(out if not args.seeds else f"{out}-seed{seed}")
            history = fit(config.replace(seed=seed), data, run=RunFolder(folder))
            finder = None if history.lr_finder is None else history.lr_finder.to_dict()
            runs.append(
                _run_record(history.final, history.epochs, history.config.to_dict(), finder)
            )
        command = ["python", "benchmarks/train_bench.py", *(argv if argv else sys.argv[1:])]
        conditions = (
            f"trained by this script: {torch.get_num_threads()} CPU threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        )
    path = _record(args.name, runs, command, conditions, Path(args.results_dir))
    result = json.loads(path.read_text())
    for r in runs:
        print(
            f"{args.name} seed {r['final']['seed']}: test accuracy {r['test_acc']:.2%}, "
            f"{r['train_seconds']:.1f} s training, {r['images_per_second']:.0f} images/s "
            f"on {result['device']} (torch {result['torch']})"
        )
    if len(runs) > 1:
        acc, sec = result["test_acc"], result["train_seconds"]
        print(
            f"{args.name} over {len(runs)} seeds: test accuracy {acc['mean']:.2%} "
            f"+- {acc['std']:.2%} (min {acc['min']:.2%}), "
            f"training {sec['mean']:.1f} +- {sec['std']:.1f} s"
        )
    print(f"recorded in {path}")
    return result


if __name__ == "__main__":
    main()
