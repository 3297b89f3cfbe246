"""Test accuracy against training time: one line per recipe and machine kind, from results files.

    python benchmarks/accuracy_vs_time.py                  # results_table.HEADLINE's runs
    python benchmarks/accuracy_vs_time.py --files A.json B.json --out figure.png

Reads finished training runs from results files written by ``train_bench.py``, groups
them as the README's results table does (``results_table.groups``: the recipe and the
flags the runs changed, the kind of machine each ran on and its precision), and draws
each group's mean test accuracy after every epoch against its mean training seconds so
far (evaluation excluded; a pause for tests inside an epoch counts, as the file records
it). Prints each group's runs and its mean time to each target accuracy
(``records.time_to_accuracy``), and writes the figure as a PNG that records the files'
names and digest (``results_table.digest``) under its "Source" key.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt  # noqa: E402
from results_file import RESULTS, fail  # noqa: E402
from results_table import HEADLINE, digest, find, groups  # noqa: E402

from cifar_resnet.records.records import EpochMetrics, time_to_accuracy  # noqa: E402

OUT = RESULTS / "accuracy-vs-time.png"


def curve(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean training seconds after each epoch and mean test accuracy then, over ``runs``."""
    epochs = min(len(r["epochs"]) for r in runs)
    seconds, accs = [], []
    for i in range(epochs):
        seconds.append(statistics.fmean(sum(e["seconds"] for e in r["epochs"][: i + 1])
                                        for r in runs))  # fmt: skip
        accs.append(statistics.fmean(r["epochs"][i]["test_acc"] for r in runs))
    return seconds, accs


def mean_times(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each target's mean time to accuracy over ``runs``; None unless every run reached it."""
    each = [time_to_accuracy([EpochMetrics.from_dict(e) for e in r["epochs"]]) for r in runs]
    return {
        t: None if any(x[t] is None for x in each) else statistics.fmean(x[t] for x in each)
        for t in each[0]
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=list(HEADLINE),
                        help="results files (paths, or names in --results-dir)")  # fmt: skip
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--out", default=str(OUT), help="the PNG to write")
    args = parser.parse_args(argv)

    paths = [find(name, args.results_dir, "accuracy_vs_time") for name in args.files]
    lines = groups(paths)
    if not lines:
        fail("accuracy_vs_time", "the files hold no finished training run with its epochs")

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    summary = {}
    for label, runs in lines.items():
        seconds, accs = curve(runs)
        ax.plot([s / 60 for s in seconds], [100 * a for a in accs], marker=".", label=
                f"{label} ({len(runs)} run{'s' if len(runs) > 1 else ''})")  # fmt: skip
        summary[label] = {"runs": len(runs), "files": sorted({r["file"] for r in runs}),
                          "final_test_acc": accs[-1], "train_seconds": seconds[-1],
                          "time_to_accuracy": mean_times(runs)}  # fmt: skip
        times = ", ".join(f"{float(t):.0%}: {'-' if v is None else f'{v / 60:.1f} min'}"
                          for t, v in summary[label]["time_to_accuracy"].items())  # fmt: skip
        print(f"{label}: {len(runs)} runs, {accs[-1]:.2%} after {seconds[-1] / 60:.1f} min; "
              f"time to {times}")  # fmt: skip
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(60, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Test accuracy against training time (mean over seeds), 2-core CPUs")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The inputs' digest, which a test compares with the files' to know the figure current
    fig.savefig(out, dpi=110, metadata={"Source": f"{', '.join(p.name for p in paths)}; sha256 "
                                        f"{digest(paths)}"})  # fmt: skip
    print(f"figure in {out}")
    return summary


if __name__ == "__main__":
    main()
