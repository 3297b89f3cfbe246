"""Where one training epoch's time goes, phase by phase and operator by operator.

    python benchmarks/profile_epoch.py --data-dir D --width 1.0            # GPU: the spec epoch
    python benchmarks/profile_epoch.py --data-dir D --width 0.25 --images 5120

Builds the run exactly as ``fit`` does (``setup_training``), trains one untimed
warm-up epoch (cuDNN autotuning, lazy initialisation), then:

1. one epoch of ``fit``'s steps (``fit_epoch.py``) with a ``PhaseTimer``: seconds per phase
   (augmentation, forward, backward, optimizer, bookkeeping; device time on CUDA,
   read from CUDA events without syncing inside the loop) and each phase's share
   of the step, then ``evaluate`` on the test split, timed the same way;
2. one more epoch under torch.profiler: the operators that take the most time.

Prints both tables and records them in
``benchmarks/results/<date>-<device>-profile-w<width>.json``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from fit_epoch import train_epoch
from results_file import RESULTS, write_result
from torch.profiler import ProfilerActivity, profile

from cifar_resnet.config import TrainConfig
from cifar_resnet.inference.evaluation import evaluate
from cifar_resnet.training.profiling import PhaseTimer
from cifar_resnet.training.setup import build_criterion, build_scheduler, setup_training

TRAIN_PHASES = ("augmentation", "forward", "backward", "optimizer", "bookkeeping")


def _self_device_us(row) -> float:
    """A profiler row's own device time in microseconds (torch renamed the attribute)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(row, name):
            return float(getattr(row, name))
    return 0.0


def _top_operators(prof, on_cuda: bool, top: int) -> list[dict]:
    """The ``top`` operators by self time (device time on CUDA), with call counts."""
    rows = []
    for row in prof.key_averages():
        self_us = _self_device_us(row) if on_cuda else row.self_cpu_time_total
        rows.append(
            {
                "op": row.key,
                "calls": row.count,
                "self_ms": self_us / 1000,
                "self_cpu_ms": row.self_cpu_time_total / 1000,
            }
        )
    rows.sort(key=lambda r: r["self_ms"], reverse=True)
    total = sum(r["self_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["self_ms"] / total
    return rows[:top]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, help="training images per epoch (default: all)")
    parser.add_argument("--test-images", type=int, help="test images evaluated (default: all)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--top", type=int, default=20, help="operators listed")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    config = TrainConfig(
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        width=args.width,
        batch_size=args.batch_size,
        epochs=24,
        max_lr=4e-3,
        min_lr=4e-4,
        limit_train=args.images,
        limit_test=args.test_images,
        device=args.device,
        precision=args.precision,
    )
    s = setup_training(config, None, progress=False)
    runtime, train, test, model, optimizer = s.runtime, s.train, s.test, s.model, s.optimizer
    on_cuda = runtime.device.type == "cuda"
    spe = s.epoch.steps
    scheduler = build_scheduler(optimizer, config, s.epoch)

    criterion = build_criterion(config)

    def epoch(timer: PhaseTimer | None = None):
        return train_epoch(
            model, optimizer, scheduler, train, config,
            runtime=runtime, generator=s.generator, criterion=criterion, timer=timer,
        )  # fmt: skip

    warm = epoch()
    print(f"warm-up epoch: {warm.seconds:.2f} s")

    timer = PhaseTimer(runtime.device)
    timed = epoch(timer)
    timer.mark()
    ev = evaluate(model, test, runtime, batch_size=config.eval_batch_size)
    timer.lap("eval")
    phases = timer.totals()
    step_seconds = sum(phases[p]["seconds"] for p in TRAIN_PHASES if p in phases)
    for name, row in phases.items():
        row["share_of_step"] = row["seconds"] / step_seconds if name in TRAIN_PHASES else None

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        epoch()
        runtime.synchronize()
    operators = _top_operators(prof, on_cuda, args.top)

    n = train.images.shape[0]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": runtime.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "width": args.width,
        "batch_size": config.batch_size,
        "train_images": n,
        "test_images": test.images.shape[0],
        "steps": spe,
        "precision": runtime.precision,
        "epoch_seconds": timed.seconds,
        "images_per_second": n / timed.seconds,
        "time_base": "device (CUDA events)" if on_cuda else "host clock",
        "phases": phases,
        "augmentation_share_of_step": phases["augmentation"]["seconds"] / step_seconds,
        "eval_seconds": phases["eval"]["seconds"],
        "test_acc_after_two_epochs": ev.acc,
        "top_operators": operators,
    }
    out = write_result(result, f"profile-w{args.width:g}", args.results_dir)

    print(
        f"\none epoch: {n} images, {spe} steps, {timed.seconds:.3f} s "
        f"({result['images_per_second']:.0f} images/s) on {result['device']}"
    )
    print(f"\n{'phase':14} {'seconds':>9} {'host s':>9} {'ms/step':>9} {'share':>7}")
    for name, row in phases.items():
        share = "" if row["share_of_step"] is None else f"{row['share_of_step']:7.1%}"
        per = row["seconds"] / row["count"] * 1000
        print(f"{name:14} {row['seconds']:9.3f} {row['host_seconds']:9.3f} {per:9.2f} {share}")
    print(f"\n{'operator':44} {'calls':>6} {'self ms':>9} {'share':>7}")
    for r in operators:
        print(f"{r['op'][:44]:44} {r['calls']:6d} {r['self_ms']:9.1f} {r['share']:7.1%}")
    print(f"recorded in {out}")
    return result


if __name__ == "__main__":
    main()
