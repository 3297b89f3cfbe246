"""What each of page-fast's tricks costs per training image, side by side in one run.

    python benchmarks/trick_cost.py --data-dir D --width 0.25 --images 5120 --rounds 3
    python benchmarks/trick_cost.py --data-dir D --width 1.0 --images 2048 --rounds 2

The variants, each a config of ``fit``'s training steps (``fit_epoch.py``, with the EMA
update where the config has one) on the same images: ``spec`` (its LR given, not found),
``page``, ``page`` with one trick added (CELU, ghost BatchNorm, frozen norm scales with
their bias group, patch whitening), and ``page-fast`` whole. The variants alternate one
epoch at a time for ``--rounds`` rounds after an untimed warm-up epoch each, so machine
noise hits them alike; the ratios to ``page`` are the figures to read.

A recipe's time to accuracy is its epochs times its cost per epoch, so this is the half of
page-fast's time ratio to the spec's that is not the epoch count (10 / 24).

Prints the table and records it in
``benchmarks/results/<date>-<device>-trick-cost-w<width>.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from fit_epoch import train_epoch
from results_file import RESULTS, fail, write_result

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.load import channel_stats, load_cifar10
from cifar_resnet.data.splits import EpochLength, Split
from cifar_resnet.errors import ConfigError
from cifar_resnet.runtime import keep_freed_memory, resolve_runtime
from cifar_resnet.training.setup import (
    build_criterion,
    build_ema,
    build_model,
    build_optimizer,
    build_scheduler,
    fit_whitening,
)

# Each variant: a recipe and the settings changed from it.
VARIANTS: dict[str, tuple[str, dict]] = {
    "spec": ("spec", {"max_lr": 2e-3}),
    "page": ("page", {}),
    "page + CELU": ("page", {"activation": "celu"}),
    "page + ghost BatchNorm": ("page", {"ghost_batch": 32}),
    "page + frozen scales": ("page", {"freeze_bn_scale": True, "bias_lr_factor": 64.0}),
    "page + whitening": ("page", {"whiten": True}),
    "page-fast": ("page-fast", {}),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=5120, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="epochs timed per variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.images < 512 or args.rounds < 1:
        fail("trick_cost.py", "--images must be at least 512 (one batch) and --rounds at least 1")
    try:
        runtime = resolve_runtime(args.device, args.precision)
    except ConfigError as e:
        fail("trick_cost.py", str(e))
    data = load_cifar10(args.data_dir, args.cache_dir, progress=False)
    images, labels = data.train_images[: args.images], data.train_labels[: args.images]
    if len(images) < 512:
        fail("trick_cost.py", f"{args.data_dir} holds {len(images)} training images; the "
             "recipes' batch is 512 (give a data set of at least 512)")  # fmt: skip
    dev = runtime.device
    mean, std = channel_stats(images)
    split = Split(images.to(dev), labels.to(dev), mean.to(dev), std.to(dev))
    if dev.type == "cpu":
        keep_freed_memory()

    runs = {}
    for name, (recipe, changes) in VARIANTS.items():
        config = TrainConfig(recipe=recipe, width=args.width, epochs=args.rounds + 1,
                             peak_epoch=1, hold_epochs=0, device=str(dev), **changes)  # fmt: skip
        torch.manual_seed(0)
        model = runtime.place(build_model(config))
        if config.whiten:
            fit_whitening(model, split)
        opt = build_optimizer(model, config, runtime)
        epoch = EpochLength.of(len(split), config.batch_size, config.drop_last)
        config = config.replace(min_lr=config.min_lr if config.min_lr is not None else 0.0)
        runs[name] = {
            "config": config, "model": model, "opt": opt, "ema": build_ema(model, config),
            "sched": build_scheduler(opt, config, epoch), "criterion": build_criterion(config),
            "gen": torch.Generator(device=dev).manual_seed(0), "seconds": [],
        }  # fmt: skip

    for rnd in range(args.rounds + 1):  # one untimed warm-up epoch each, then alternate
        for name, r in runs.items():
            result = train_epoch(
                r["model"], r["opt"], r["sched"], split, r["config"], runtime=runtime,
                generator=r["gen"], criterion=r["criterion"], ema=r["ema"],
            )  # fmt: skip
            if rnd > 0:
                r["seconds"].append(result.seconds)
            print(f"round {rnd} {name}: {result.seconds:.2f} s" + (" (warm-up)" * (rnd == 0)))

    rows = {}
    for name, r in runs.items():
        used = EpochLength.of(len(split), r["config"].batch_size, r["config"].drop_last).images
        rows[name] = {
            "seconds_per_epoch": r["seconds"],
            "median_seconds": statistics.median(r["seconds"]),
            "images_per_second": used * len(r["seconds"]) / sum(r["seconds"]),
            "settings": {"recipe": VARIANTS[name][0], **VARIANTS[name][1]},
        }
    base = rows["page"]["images_per_second"]
    for row in rows.values():
        row["cost_vs_page"] = base / row["images_per_second"]  # seconds per image, relative
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": runtime.describe(),
        "precision": runtime.precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "width": args.width,
        "images_per_epoch": args.images,
        "timed_epochs": args.rounds,
        "variants": rows,
    }
    out = write_result(result, f"trick-cost-w{args.width:g}", args.results_dir)
    print(f"\n{'variant':<26} {'images/s':>9} {'cost vs page':>13}")
    for name, row in rows.items():
        print(f"{name:<26} {row['images_per_second']:>9.0f} {row['cost_vs_page']:>12.2f}x")
    print(f"recorded in {out}")
    return result


if __name__ == "__main__":
    main()
