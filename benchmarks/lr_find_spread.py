"""How much the LR range test's choice moves from seed to seed, for every rule.

    python benchmarks/lr_find_spread.py --data-dir D --width 1.0 --seeds 0 1 2
    python benchmarks/lr_find_spread.py --data-dir D --width 0.25 --seeds 0 1 2 3 4 5

Runs the range test exactly as ``train`` does (``lr_range_test``: fresh weights of
each seed, that seed's data order and augmentation, the run's precision), keeps
each seed's raw curve, then applies every rule of ``config.FINDER_RULES`` to the same
curves, and for comparison the rules this package used before: ``floor-0.1`` (the
floor rule with a band of 10% of the fall instead of 20%) and ``valley-ema`` (the
smoothed minimum / 10 with torch-lr-finder's exponential smoothing, factor 0.2).
Prints, per rule, each seed's LRMAX and the spread (largest / smallest), and
records curves and choices in
``benchmarks/results/<date>-<device>-lr-find-spread-w<width>.json``.
``--rescore FILE`` applies the rules again to a recorded file's curves.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from results_file import RESULTS, write_result

from cifar_resnet.config import FINDER_RULES, TrainConfig
from cifar_resnet.data.load import load_cifar10
from cifar_resnet.runtime import resolve_runtime
from cifar_resnet.training.lr_finder import choose_lrs, smooth_curve
from cifar_resnet.training.range_test import lr_range_test


def _ema(losses: list[float], factor: float = 0.2) -> list[float]:
    """torch-lr-finder's smoothing: s_i = factor * loss_i + (1 - factor) * s_(i-1)."""
    out: list[float] = []
    for value in losses:
        out.append(value if not out else factor * value + (1 - factor) * out[-1])
    return out


def score_rules(sweeps: list[dict]) -> dict[str, dict]:
    """Every rule's LRMAX for each sweep (raw curve), and the spread over the sweeps."""
    rules = {}
    for rule in (*FINDER_RULES, "floor-0.1", "valley-ema"):
        chosen = []
        for s in sweeps:
            if rule == "valley-ema":
                chosen.append(choose_lrs(s["lrs"], _ema(s["losses"]), rule="valley")[0])
            elif rule == "floor-0.1":  # the floor rule with the narrower band used before
                smoothed = smooth_curve(s["lrs"], s["losses"], s["smooth_decades"])
                chosen.append(choose_lrs(s["lrs"], smoothed, floor_fraction=0.1)[0])
            else:
                smoothed = smooth_curve(s["lrs"], s["losses"], s["smooth_decades"])
                chosen.append(choose_lrs(s["lrs"], smoothed, rule=rule)[0])
        rules[rule] = {"max_lrs": chosen, "spread": max(chosen) / min(chosen)}
    return rules


def _print_rules(rules: dict[str, dict]) -> None:
    print(f"\n{'rule':10} {'spread':>7}  LRMAX per seed")
    for rule, row in rules.items():
        lrs = "  ".join(f"{v:.2e}" for v in row["max_lrs"])
        print(f"{rule:10} {row['spread']:6.2f}x  {lrs}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--rescore", metavar="FILE", help="apply the rules to a recorded file")
    parser.add_argument("--cache-dir")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-iter", type=int, default=100, help="steps of each sweep")
    parser.add_argument("--limit-train", type=int, help="first N training images only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.rescore:
        import json
        from pathlib import Path

        path = Path(args.rescore)
        recorded = json.loads(path.read_text())
        recorded["rules"] = score_rules(recorded["sweeps"])
        recorded["rescored"] = time.strftime("%Y-%m-%d")
        path.write_text(json.dumps(recorded, indent=2) + "\n")
        _print_rules(recorded["rules"])
        return recorded
    if args.data_dir is None:
        parser.error("--data-dir is required (unless --rescore)")

    data = load_cifar10(args.data_dir, args.cache_dir, progress=False)
    runtime = resolve_runtime(args.device, args.precision)
    sweeps = []
    for seed in args.seeds:
        config = TrainConfig(
            width=args.width,
            seed=seed,
            finder_num_iter=args.num_iter,
            limit_train=args.limit_train,
            device=args.device,
            precision=args.precision,
        )
        t0 = time.perf_counter()
        result = lr_range_test(config, data, progress=False)
        seconds = time.perf_counter() - t0
        print(
            f"seed {seed}: LRMAX {result.max_lr:.3e} ({result.rule}), {len(result.lrs)} steps"
            f"{', diverged' if result.diverged else ''}, {seconds:.0f} s",
            flush=True,
        )
        sweeps.append({"seed": seed, "seconds": seconds, **result.to_dict()})

    rules = score_rules(sweeps)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": runtime.describe(),
        "precision": runtime.precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "width": args.width,
        "seeds": args.seeds,
        "num_iter": args.num_iter,
        "rules": rules,
        "sweeps": sweeps,
    }
    out = write_result(result, f"lr-find-spread-w{args.width:g}", args.results_dir)
    _print_rules(rules)
    print(f"recorded in {out}")
    return result


if __name__ == "__main__":
    main()
