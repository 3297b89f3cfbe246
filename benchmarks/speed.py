"""cifar-resnet's trainer against a plain PyTorch baseline, side by side in one run.

    python benchmarks/speed.py --data-dir D --width 0.25 --images 10240 --rounds 3

(a) ``cifar-resnet``: ``train_one_epoch`` with the data resident on the device as
uint8 and batched on-device augmentation, in the layout ``runtime`` picks (the path
``fit`` uses); on the CPU also (a') the same in the other memory layout and (a'')
with glibc's default malloc instead of ``keep_freed_memory``, to show what each
choice is worth there. The baseline runs with the default malloc.
(b) the baseline as the assignment's users wrote it: a Dataset of HWC uint8 arrays
with per-image torchvision transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize, an 8x8 CutOut), a DataLoader with
worker processes, fp32, torch's OneCycleLR, and ``loss.item()`` every step.

Same model, optimizer, batch size and number of images; the paths alternate one
epoch at a time for ``--rounds`` rounds, so machine noise hits both alike. The
figures (images/s of each and their ratio) are printed and recorded in
``benchmarks/results/<date>-<device>-speed-w<width>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from results_file import RESULTS, write_result
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cifar_resnet.config import TrainConfig
from cifar_resnet.data import channel_stats, load_cifar10
from cifar_resnet.runtime import Runtime, keep_freed_memory, resolve_runtime
from cifar_resnet.train import (
    TrainData,
    build_model,
    build_optimizer,
    build_scheduler,
    train_one_epoch,
)

BASELINE = "baseline (DataLoader, per-image transforms, fp32)"


class _Cutout:
    """Zero one size x size square, wholly inside the image (per-image, as users wrote it)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        y = np.random.randint(h - self.size + 1)
        x = np.random.randint(w - self.size + 1)
        img[:, y : y + self.size, x : x + self.size] = 0
        return img


class _ArrayDataset(Dataset):
    """torchvision-CIFAR10-style dataset: HWC uint8 arrays, PIL per item, transforms per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: T.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _baseline_epoch(model, optimizer, scheduler, loader, device) -> tuple[float, float]:
    model.train()
    criterion = nn.CrossEntropyLoss()
    running, correct = 0.0, 0
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = criterion(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item()
        correct += (out.argmax(1) == y).sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, running


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=10240, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="epochs timed per path")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    data = load_cifar10(args.data_dir, args.cache_dir, progress=False)
    runtime = resolve_runtime(args.device)
    dev = runtime.device
    images, labels = data.train_images[: args.images], data.train_labels[: args.images]
    mean, std = channel_stats(images)
    config = TrainConfig(
        width=args.width,
        batch_size=args.batch_size,
        epochs=args.rounds + 1,
        peak_epoch=1,
        max_lr=2e-3,
        min_lr=2e-4,
        device=str(dev),
    )

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(config).to(dev)
        if runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, build_optimizer(model, config, runtime)

    paths: dict[str, dict] = {}
    split = TrainData(images.to(dev), labels.to(dev), mean.to(dev), std.to(dev))
    spe = -(-args.images // args.batch_size)
    layout = "channels_last" if runtime.channels_last else "NCHW"
    on_cpu = dev.type == "cpu"
    variants = [(f"cifar-resnet ({layout})", runtime, on_cpu)]
    if on_cpu:
        other = Runtime(dev, None, channels_last=not runtime.channels_last)
        other_layout = "channels_last" if other.channels_last else "NCHW"
        variants += [
            (f"cifar-resnet ({other_layout})", other, True),
            (f"cifar-resnet ({layout}, default malloc)", runtime, False),
        ]
    for name, rt, keep_memory in variants:
        model, opt = fresh()
        model = model.to(
            memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format
        )
        sched = build_scheduler(opt, config, args.images)
        gen = torch.Generator(device=dev).manual_seed(0)
        paths[name] = {"state": (model, opt, sched, rt, gen), "keep": keep_memory, "seconds": []}

    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean.tolist(), std.tolist()),
            _Cutout(8),
        ]
    )
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    loader = DataLoader(
        _ArrayDataset(hwc, labels.numpy(), tf),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=dev.type == "cuda",
    )
    base_model, base_opt = fresh()
    base_model = base_model.to(memory_format=torch.contiguous_format)
    base_opt = torch.optim.Adam(base_model.parameters(), lr=2e-3)  # plain, not fused
    base_sched = torch.optim.lr_scheduler.OneCycleLR(
        base_opt,
        max_lr=2e-3,
        total_steps=spe * config.epochs,
        pct_start=1 / config.epochs,
        anneal_strategy="linear",
        div_factor=10,
        final_div_factor=1,
        cycle_momentum=False,
    )
    paths[BASELINE] = {"keep": False, "seconds": []}

    # one untimed warm-up epoch each, then alternate timed epochs
    for rnd in range(args.rounds + 1):
        for name, entry in paths.items():
            if on_cpu:
                keep_freed_memory(entry["keep"])
            if "state" in entry:
                model, opt, sched, rt, gen = entry["state"]
                seconds = train_one_epoch(
                    model, opt, sched, split, config, rt, gen, progress=False
                )["seconds"]
            else:
                seconds, _ = _baseline_epoch(base_model, base_opt, base_sched, loader, dev)
            if rnd > 0:
                entry["seconds"].append(seconds)
            print(f"round {rnd} {name}: {seconds:.2f} s" + (" (warm-up)" if rnd == 0 else ""))

    rows = {}
    for name, entry in paths.items():
        total = sum(entry["seconds"])
        rows[name] = {
            "seconds_per_epoch": entry["seconds"],
            "median_seconds": statistics.median(entry["seconds"]),
            "images_per_second": args.images * len(entry["seconds"]) / total,
        }
    base = rows[BASELINE]["images_per_second"]
    for row in rows.values():
        row["ratio_vs_baseline"] = row["images_per_second"] / base
    device = runtime.describe()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "width": args.width,
        "batch_size": args.batch_size,
        "images_per_epoch": args.images,
        "timed_epochs": args.rounds,
        "baseline_workers": args.workers,
        "paths": rows,
    }
    out = write_result(result, f"speed-w{args.width:g}", args.results_dir)
    print(f"\n{'path':52} {'images/s':>9} {'vs baseline':>12}")
    for name, row in rows.items():
        print(f"{name:52} {row['images_per_second']:9.1f} {row['ratio_vs_baseline']:11.2f}x")
    print(f"recorded in {out}")
    return result


if __name__ == "__main__":
    main()
