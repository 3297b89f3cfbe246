"""The screen of page-fast's tricks: one row per step, each against the step before.

    python benchmarks/screen_table.py            # print the table
    python benchmarks/screen_table.py --write    # put it into docs/results.md between its markers
    python benchmarks/screen_table.py --check    # exit 1 if docs/results.md's table is stale

The steps are Page's tricks added one at a time, in his order, at a small width and with
two seeds each; SCREEN names each step's results file (``train_bench.py --from-run``
wrote it), and a step whose runs have not finished is one more entry once they have. Each
row gives what trained (``results_table.recipe_of``), the mean test accuracy and its
spread over the seeds (largest minus smallest), the same with flip TTA, the change of
both means from the row before, and the median epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from generated import ROOT, report, update
from results_table import find, recipe_of, runs_of

# (step, results file), in the order the tricks are added.
SCREEN = (
    ("Page's DAWNBench recipe in 10 epochs", "2026-12-07-cpu-screen-w0-25-page-10ep.json"),
    ("+ CELU (alpha 0.075)", "2026-12-07-cpu-screen-w0-25-celu.json"),
    ("+ ghost BatchNorm (32 images)", "2026-12-07-cpu-screen-w0-25-ghost.json"),
    ("+ frozen BatchNorm scales (CELU alpha 0.3)", "2026-12-07-cpu-screen-w0-25-frozen.json"),
    ("+ patch whitening", "2026-12-07-cpu-screen-w0-25-whiten.json"),
    ("+ peak LR 1.0 (from 0.4)", "2026-12-07-cpu-screen-w0-25-lr1.json"),
    (
        "+ EMA every 5 steps, LR held at a tenth (cutout kept)",
        "2026-12-07-cpu-screen-w0-25-ema.json",
    ),
    ("every trick: page-fast", "2026-12-07-cpu-screen-w0-25-page-fast.json"),
)
DOC = ROOT / "docs" / "results.md"
BLOCK = "page-fast-screen"


def _mean(values: list[float | None]) -> float | None:
    return None if not values or None in values else statistics.fmean(values)


def _change(now: float | None, before: float | None) -> str:
    return "" if now is None or before is None else f"{100 * (now - before):+.2f}"


def table(steps: list[tuple[str, Path]]) -> str:
    """The Markdown table of the screen's steps (files relative to docs/)."""
    head = ["step", "what trained", "seeds", "test accuracy", "flip TTA",
            "change (TTA)", "median epoch", "file"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    before: tuple[float | None, float | None] = (None, None)
    for step, path in steps:
        runs = runs_of(path)
        accs = [r["final"]["test_acc"] for r in runs]
        plain, tta = _mean(accs), _mean([r["final"].get("test_acc_tta") for r in runs])
        spread = f" (spread {100 * (max(accs) - min(accs)):.2f})" if len(runs) > 1 else ""
        change = _change(plain, before[0])
        if change and tta is not None:
            change += f" ({_change(tta, before[1])})"
        seconds = statistics.median(e["seconds"] for r in runs for e in r["epochs"])
        cells = [
            step, f"`{recipe_of(runs[0])}`",
            ", ".join(sorted(str(r["config"].get("seed", "?")) for r in runs)),
            f"{plain:.2%}{spread}", "" if tta is None else f"{tta:.2%}", change,
            f"{len(runs[0]['epochs'])} x {seconds:.0f} s",
            f"[`{path.name}`](../benchmarks/results/{path.name})",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        before = (plain, tta)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", default=str(DOC), help="the file holding the table's markers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the table into --doc")
    mode.add_argument("--check", action="store_true", help="exit 1 if --doc's table is stale")
    args = parser.parse_args(argv)
    steps = [(step, find(name, script="screen_table")) for step, name in SCREEN]
    text = table(steps)
    if not (args.write or args.check):
        print(text, end="")
        return 0
    doc = Path(args.doc)
    return report({doc: update(doc, {BLOCK: text}, write=args.write)}, write=args.write,
                  script="screen_table")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
