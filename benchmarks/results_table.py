"""The README's results at a glance: one row per recipe, kind of machine and precision.

    python benchmarks/results_table.py            # print the table
    python benchmarks/results_table.py --write    # put it into README.md between its markers
    python benchmarks/results_table.py --check    # exit 1 if README.md's table is stale

Rows come from the results files HEADLINE names (``train_bench.py`` wrote them), in that
order; a new row is one more name there (``accuracy_vs_time.py`` draws the same runs).
A file's runs are grouped by what trained (the recipe, and the flags by which the run's
saved config differs from it), the kind of CPU each ran on (a file may hold seeds from
two machines: a run's own ``machine`` comes first) and the precision. Each row gives the
test accuracy (mean over its seeds, and the spread, largest minus smallest), the same
with flip TTA when every run measured it, the training time as recorded (a pause for
tests inside an epoch counts) and the median epoch (which such pauses hardly move).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from generated import ROOT, report, update
from results_file import RESULTS, fail

from cifar_resnet.config import PATH_FIELDS, TrainConfig, as_saved_run
from cifar_resnet.records.records import duration

# The full-width runs on the data as shipped: the README's rows and the figure's lines. A
# recipe's results go in with one more name here (then make docs).
HEADLINE = (
    "2026-12-04-cpu-spec-w1-ema-ls.json",
    "2026-12-04-cpu-page-w1.json",
    "2026-12-05-cpu-page-dawn-w1-2.json",
    "2026-12-08-cpu-page-fast-w1.json",
)
README = ROOT / "README.md"
BLOCK = "results-table"

# Settings that say where and how a run ran, not what it trained; the LRs when the range
# test found them (the row's recipe says that much).
_NOT_TRAINING = (*PATH_FIELDS, "seed", "device", "precision", "eval_batch_size", "compile",
                 "tensorboard", "lr_source", "report")  # fmt: skip


def machine_kind(machine: dict[str, Any] | None) -> str:
    """The kind of CPU a run trained on: the CPU's maker and its bf16 units."""
    if not machine:
        return "unknown CPU"
    cpu = str(machine.get("cpu", ""))
    if machine.get("amx_bf16"):
        return "Xeon with AMX"
    if "AMD" in cpu:
        return "EPYC with AVX512-BF16" if machine.get("avx512_bf16") else "EPYC, AVX2 only"
    return "Xeon, AMX hidden" if machine.get("avx512_bf16") else cpu or "unknown CPU"


def runs_of(path: Path) -> list[dict[str, Any]]:
    """A results file's finished runs, each with the machine it ran on and its file's name."""
    result = json.loads(path.read_text())
    runs = result.get("runs") or ([result] if "epochs" in result else [])
    return [
        {
            **run,
            "machine": run.get("machine") or result.get("machine"),
            "file": path.name,
            "name": result.get("name") or path.stem,
        }  # fmt: skip
        for run in runs
        if run.get("epochs")
    ]


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def recipe_of(run: dict[str, Any]) -> str:
    """What trained: the recipe and each flag by which the run's config differs from it
    (``page --pool-after-relu --label-smoothing 0``); the results' name without a config."""
    if not run.get("config"):
        return run["name"]
    saved = as_saved_run(run["config"])  # options added since keep what the run did
    recipe = saved.get("recipe", "spec")
    plain = TrainConfig(recipe=recipe).to_dict()
    skip = {*_NOT_TRAINING, *(("max_lr", "min_lr") if run.get("lr_source") == "found" else ())}
    flags = [_flag(k, v) for k, v in saved.items() if k not in skip and plain.get(k) != v]
    return " ".join([recipe, *flags])


def group_label(run: dict[str, Any]) -> str:
    """The recipe, the machine kind and the precision: one row of the table, one line of
    the figure."""
    precision = run["final"].get("precision", "fp32")
    return f"{recipe_of(run)}: {machine_kind(run['machine'])}, {precision}"


def find(name: str, results_dir: Path = RESULTS, script: str = "results_table") -> Path:
    """A results file, given as a path or by its name in ``results_dir``."""
    path = next((p for p in (Path(name), Path(results_dir) / name) if p.is_file()), None)
    if path is None:
        fail(script, f"no results file {name} (nor in {results_dir})")
    return path


def groups(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """The runs of ``paths`` by ``group_label``, in the order the files name them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for run in runs_of(path):
            out.setdefault(group_label(run), []).append(run)
    return out


def digest(paths: list[Path]) -> str:
    """SHA-256 over the files' names and bytes: what a figure drawn from them records."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def row(runs: list[dict[str, Any]]) -> dict[str, str]:
    """One row's cells: accuracy, flip TTA, times, seeds, files."""
    first = runs[0]
    accs = [r["final"]["test_acc"] for r in runs]
    acc = f"**{statistics.fmean(accs):.2%}**"
    if len(runs) > 1:
        acc += f" (spread {100 * (max(accs) - min(accs)):.2f})"
    tta = [r["final"].get("test_acc_tta") for r in runs]
    epoch_seconds = [e["seconds"] for r in runs for e in r["epochs"]]
    epochs = {len(r["epochs"]) for r in runs}
    files = sorted({r["file"] for r in runs})
    return {
        "recipe": f"`{recipe_of(first)}`",
        "machine": machine_kind(first["machine"]),
        "precision": first["final"].get("precision", "fp32"),
        "seeds": ", ".join(sorted(str(r.get("config", {}).get("seed", "?")) for r in runs)),
        "test accuracy": acc,
        "flip TTA": "not recorded" if None in tta else f"{statistics.fmean(tta):.2%}",
        "training time": duration(statistics.fmean(r["train_seconds"] for r in runs)),
        "median epoch": f"{'/'.join(map(str, sorted(epochs)))} x "
        f"{statistics.median(epoch_seconds):.0f} s",
        "file": ", ".join(f"[`{f}`](benchmarks/results/{f})" for f in files),
    }


def table(paths: list[Path]) -> str:
    """The Markdown table of the runs in ``paths``."""
    rows = [row(runs) for runs in groups(paths).values()]
    if not rows:
        fail("results_table", "the files hold no finished training run with its epochs")
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r[k] for k in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=list(HEADLINE),
                        help="results files (paths, or names in --results-dir)")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=README, help="the file to fill")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="fill the table into --readme")
    action.add_argument("--check", action="store_true", help="exit 1 if --readme's is stale")
    args = parser.parse_args(argv)

    text = table([find(name, args.results_dir) for name in args.files])
    if not (args.write or args.check):
        print(text, end="")
        return 0
    current = update(args.readme, {BLOCK: text}, write=args.write)
    return report({args.readme: current}, write=args.write, script="results_table")


if __name__ == "__main__":
    sys.exit(main())
