"""The calibration of finished runs on their test split, recorded side by side.

    python benchmarks/calibration_bench.py --name ls-w0-25 RUN [RUN ...]

For each run folder (or checkpoint): its model through ``evaluate_model`` with flip TTA,
as ``cifar-resnet evaluate --tta`` scores it, and from that the accuracy, mean confidence,
ECE (15 bins), NLL and Brier score, plain and with TTA, beside the settings that shape
confidence (recipe, label smoothing, logit scale, EMA). Records
``benchmarks/results/<date>-<device>-calibration-<name>.json``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from results_file import RESULTS, fail, slug, write_result

from cifar_resnet.data.load import load_cifar10
from cifar_resnet.errors import CifarResnetError
from cifar_resnet.inference.predict import evaluate_model, load_model, select_test_split

FIGURES = ("n", "acc", "confidence", "ece", "nll", "brier")
SETTINGS = ("recipe", "width", "epochs", "label_smoothing", "logit_scale", "ema_decay", "seed")


def measure(run: str, data_dir: str | None = None) -> dict:
    """One run's calibration figures, plain and with flip TTA, and its settings."""
    model = load_model(run, device="cpu")
    config = model.config
    data = load_cifar10(data_dir or config.data_dir, config.cache_dir, progress=False)
    images, labels = select_test_split(model, data, config.limit_test)
    result = evaluate_model(model, images, labels, tta=True)
    plain, tta = result.calibration.to_dict(), result.tta.calibration.to_dict()
    return {
        "run": str(run),
        "settings": {k: getattr(config, k) for k in SETTINGS},
        "recorded_test_acc": model.recorded_test_acc,
        "plain": {k: plain[k] for k in FIGURES},
        "tta": {k: tta[k] for k in FIGURES},
        "bins": plain["bins"],
        "tta_bins": tta["bins"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    parser.add_argument("--name", required=True, help="what the runs compare, e.g. ls-w0-25")
    parser.add_argument("--data-dir", help="the data (default: each run's own)")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    try:
        runs = [measure(run, args.data_dir) for run in args.runs]
    except CifarResnetError as e:
        fail("calibration_bench.py", str(e))
    result = {
        "name": args.name,
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "runs": runs,
    }
    out = write_result(result, f"calibration-{slug(args.name)}", args.results_dir)
    print(f"{'run':<40} {'LS':>4} {'acc':>7} {'conf':>7} {'ECE':>6} {'NLL':>6} {'Brier':>6}")
    for r in runs:
        for view in ("plain", "tta"):
            f = r[view]
            label = r["run"][-36:] + (" TTA" if view == "tta" else "")
            ls = r["settings"]["label_smoothing"]
            print(f"{label:<40} {ls:>4g} {f['acc']:>7.2%} {f['confidence']:>7.2%} "
                  f"{f['ece']:>6.2%} {f['nll']:>6.3f} {f['brier']:>6.3f}")  # fmt: skip
    print(f"recorded in {out}")
    return result


if __name__ == "__main__":
    main()
