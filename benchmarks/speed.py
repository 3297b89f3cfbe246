"""cifar-resnet's trainer against plain PyTorch baselines, side by side in one run.

    python benchmarks/speed.py --data-dir D --width 1.0 --images 3072 --rounds 2
    python benchmarks/speed.py --data-dir D --width 0.25 --images 10240 --rounds 3

Paths, all on the same model, optimizer, batch size and images:

(a) ``cifar-resnet (default)``: an epoch of ``fit``'s steps (``fit_epoch.py``): the data on
    the device as uint8, batched on-device augmentation, channels_last, and the
    precision ``--precision auto`` picks (bf16 autocast on CUDA, on CPUs with AMX,
    and on CPUs with AVX512-BF16 alone where its probe times bf16 faster; the
    probe's ratio is recorded as ``hardware.bf16_probe_gain``);
(a') ``cifar-resnet (bf16, oneDNN convolutions)`` (bf16 on the CPU): (a) with every
    convolution left to oneDNN, i.e. without ``cpu_conv``'s matrix products on the
    small maps;
(b) ``cifar-resnet (fp32)``: the same in fp32 (``cifar-resnet (bf16)`` where
    ``auto`` chose fp32: the precision it did not choose);
(c) the baseline as the assignment's users wrote it (plain ``nn.Conv2d`` throughout):
    a Dataset of HWC uint8 arrays
    with per-image torchvision transforms (RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize, an 8x8 CutOut), a DataLoader with
    worker processes, NCHW, fp32, torch's OneCycleLR, ``loss.item()`` every step;
(d) the same baseline with ``torch.autocast(dtype=torch.bfloat16)`` around forward
    and loss: what a knowledgeable user would try first.

On a CPU without bf16 units (no AMX-BF16, no AVX512-BF16) bf16 is emulated, one to two
orders of magnitude slower than fp32 (a warm-up epoch of 1,024 images at width 1.0 took
848 s on an AVX2-only EPYC against 25 s in fp32), so ``--bf16-paths auto`` leaves out
the two bf16 paths and the bf16 matrix multiply there and records why; ``on`` times them
anyway, ``off`` never (where ``auto`` chose bf16 the default path stays bf16; only the
baseline's bf16 autocast and the bf16 matrix product are left out).

``--extras`` adds, on the CPU, (a) in NCHW, (a) with glibc's default malloc
instead of ``keep_freed_memory``, (a) with torch's fused Adam, and (a) with the model
under ``torch.compile`` (compiled during its untimed warm-up epoch; ``cpu_conv``'s
matrix products step aside under compile, so it runs oneDNN's convolutions). The
paths alternate one epoch at a time for ``--rounds`` rounds after an untimed warm-up
epoch each, so machine noise hits them alike.

Against the hardware: each path's training FLOP per second (3x the forward FLOP
of the convolutions and the Linear layer, counted from the model: 2.28 GFLOP per
image at width 1.0) as a fraction of (i) the AMX-BF16 peak, 1,024 bf16 FLOP per
cycle per core at the clock /proc/cpuinfo reports, when the CPU has AMX, and (ii)
the bf16 and fp32 rates of a large matrix multiply measured in the same run, which
is what this machine's kernels reach whatever its instruction set (the bf16 one only
where the bf16 paths are timed).

Prints the table and records it in
``benchmarks/results/<date>-<device>-speed-w<width>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from fit_epoch import train_epoch
from results_file import RESULTS, write_result
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.load import channel_stats, load_cifar10
from cifar_resnet.data.splits import EpochLength, Split
from cifar_resnet.model.cpu_conv import gemm_convolutions
from cifar_resnet.runtime import (
    Runtime,
    cpu_bf16_gain,
    cpu_has_amx,
    cpu_has_bf16,
    keep_freed_memory,
    resolve_runtime,
)
from cifar_resnet.training.setup import (
    build_criterion,
    build_model,
    build_optimizer,
    build_scheduler,
)

BASELINE = "baseline (DataLoader, per-image transforms, fp32)"
BASELINE_BF16 = "baseline + bf16 autocast"
ONEDNN_ONLY = "cifar-resnet (bf16, oneDNN convolutions)"
NO_BF16 = "this CPU has no bf16 units (AMX-BF16 or AVX512-BF16), so bf16 is emulated"
AMX_FLOP_PER_CYCLE = 1024  # bf16, per core (Intel AMX: TMUL 16x32 bf16 x 32x16 per cycle)


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


def _baseline_epoch(model, optimizer, scheduler, loader, device, bf16: bool) -> float:
    model.train()
    criterion = nn.CrossEntropyLoss()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    running, correct = 0.0, 0
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with amp:
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
    return time.perf_counter() - t0


def training_flop_per_image(model: nn.Module) -> float:
    """3x the forward FLOP (2 per multiply-add) of the convolutions and Linear layers."""
    flop = 0.0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flop
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            flop += 2 * k * output[0].numel() / module.groups
        elif isinstance(module, nn.Linear):
            flop += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    for h in hooks:
        h.remove()
    model.train()
    return 3 * flop


def _matmul_flops(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """FLOP per second of an n x n x n matrix multiply in ``dtype`` (best of 3)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _cpu_ghz() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else None
    return None


def bf16_paths(choice: str, device: torch.device) -> bool:
    """Whether to time the bf16 paths: ``on``, ``off``, or ``auto`` (where the device has
    bf16 units: every GPU path, and CPUs with AMX-BF16 or AVX512-BF16)."""
    if choice != "auto":
        return choice == "on"
    return device.type != "cpu" or cpu_has_bf16()


def _hardware(device: torch.device, matmul_size: int, bf16: bool = True) -> dict:
    """The ceilings each path is measured against (see the module docstring)."""
    amx = device.type == "cpu" and cpu_has_amx()
    ghz, cores = _cpu_ghz(), torch.get_num_threads()
    return {
        "cpu_ghz": ghz,
        "threads": cores,
        "amx_bf16": amx,
        "avx512_bf16_or_amx": device.type == "cpu" and cpu_has_bf16(),
        # what --precision auto timed: bf16's speed-up on a convolution (AVX512-BF16 alone)
        "bf16_probe_gain": cpu_bf16_gain() if device.type == "cpu" and cpu_has_bf16() else None,
        "amx_peak_flops": AMX_FLOP_PER_CYCLE * cores * ghz * 1e9 if amx and ghz else None,
        "matmul_size": matmul_size,
        "matmul_bf16_flops": _matmul_flops(torch.bfloat16, device, matmul_size) if bf16 else None,
        "matmul_fp32_flops": _matmul_flops(torch.float32, device, matmul_size),
    }


@dataclass(frozen=True)
class _Variant:
    """One of cifar-resnet's paths: its runtime and the choices each extra path changes."""

    runtime: Runtime
    keep: bool = True  # keep freed memory (keep_freed_memory)
    gemm: bool = True  # small-map convolutions as matrix products (cpu_conv)
    fused_adam: bool = False  # torch's fused Adam instead of the default (foreach) one
    compiled: bool = False  # torch.compile of the model (cpu_conv steps aside under it)


def _ours(net, opt, sched, config, runtime, split, generator) -> float:
    """One epoch of cifar-resnet's path; returns its seconds."""
    return train_epoch(
        net, opt, sched, split, config,
        runtime=runtime, generator=generator, criterion=build_criterion(config),
    ).seconds  # fmt: skip


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
    parser.add_argument(
        "--extras", action="store_true",
        help="also NCHW, default malloc, fused Adam and torch.compile",
    )  # fmt: skip
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the matmul timed")
    parser.add_argument(
        "--bf16-paths", choices=("auto", "on", "off"), default="auto",
        help="time the bf16 paths: auto = where the device has bf16 units (GPUs; CPUs with "
        "AMX-BF16 or AVX512-BF16), on, off",
    )  # fmt: skip
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    data = load_cifar10(args.data_dir, args.cache_dir, progress=False)
    default = resolve_runtime(args.device)
    dev = default.device
    on_cpu = dev.type == "cpu"
    images, labels = data.train_images[: args.images], data.train_labels[: args.images]
    mean, std = channel_stats(images)
    config = TrainConfig(
        width=args.width, batch_size=args.batch_size, epochs=args.rounds + 1, peak_epoch=1,
        max_lr=2e-3, min_lr=2e-4, weight_decay=0.0, device=str(dev),
    )  # fmt: skip
    split = Split(images.to(dev), labels.to(dev), mean.to(dev), std.to(dev))

    def fresh(v: _Variant):
        torch.manual_seed(0)
        model = build_model(config).to(dev)
        fmt = torch.channels_last if v.runtime.channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        if v.fused_adam:
            opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=0.0, fused=True)
        else:
            opt = build_optimizer(model, config, v.runtime)
        net = torch.compile(model) if v.compiled else model  # compiled in its warm-up epoch
        epoch = EpochLength.of(args.images, config.batch_size, config.drop_last)
        return net, opt, build_scheduler(opt, config, epoch)

    bf16 = bf16_paths(args.bf16_paths, dev)
    other = "fp32" if default.precision == "bf16" else "bf16"  # what "auto" did not choose
    ours = {f"cifar-resnet (default: {default.precision})": _Variant(default)}
    if on_cpu and default.precision == "bf16":
        ours[ONEDNN_ONLY] = _Variant(default, gemm=False)
    if other == "fp32" or bf16:
        ours[f"cifar-resnet ({other})"] = _Variant(resolve_runtime(args.device, other))
    if args.extras and on_cpu:
        p = default.precision
        ours[f"cifar-resnet ({p}, NCHW)"] = _Variant(
            Runtime(dev, default.autocast_dtype, channels_last=False))  # fmt: skip
        ours[f"cifar-resnet ({p}, default malloc)"] = _Variant(default, keep=False)
        ours[f"cifar-resnet ({p}, fused Adam)"] = _Variant(default, fused_adam=True)
        ours[f"cifar-resnet ({p}, torch.compile)"] = _Variant(default, compiled=True)
    paths: dict[str, dict] = {}
    for name, v in ours.items():
        gen = torch.Generator(device=dev).manual_seed(0)
        paths[name] = {
            "run": (fresh(v), v.runtime, gen), "keep": v.keep, "gemm": v.gemm, "seconds": []
        }  # fmt: skip

    tf = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(mean.tolist(), std.tolist()), _Cutout(8),
    ])  # fmt: skip
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    loader = DataLoader(
        _ArrayDataset(hwc, labels.numpy(), tf), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, pin_memory=dev.type == "cuda",
    )  # fmt: skip
    steps = -(-args.images // args.batch_size) * config.epochs
    baselines = [(BASELINE, False)] + ([(BASELINE_BF16, True)] if bf16 else [])
    for name, autocast in baselines:
        torch.manual_seed(0)
        model = build_model(config).to(dev)  # NCHW
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)  # plain, not fused
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=2e-3, total_steps=steps, pct_start=1 / config.epochs,
            anneal_strategy="linear", div_factor=10, final_div_factor=1, cycle_momentum=False,
        )  # fmt: skip
        paths[name] = {
            "baseline": (model, opt, sched, autocast), "keep": False, "gemm": False,
            "seconds": [],
        }  # fmt: skip

    for rnd in range(args.rounds + 1):  # one untimed warm-up epoch each, then alternate
        for name, entry in paths.items():
            if on_cpu:
                keep_freed_memory(entry["keep"])
            with gemm_convolutions(entry["gemm"]):  # baselines: plain nn.Conv2d throughout
                if "run" in entry:
                    (net, opt, sched), runtime, gen = entry["run"]
                    seconds = _ours(net, opt, sched, config, runtime, split, gen)
                else:
                    model, opt, sched, autocast = entry["baseline"]
                    seconds = _baseline_epoch(model, opt, sched, loader, dev, autocast)
            if rnd > 0:
                entry["seconds"].append(seconds)
            print(f"round {rnd} {name}: {seconds:.2f} s" + (" (warm-up)" if rnd == 0 else ""))
    if on_cpu:
        keep_freed_memory(True)

    hardware = _hardware(dev, args.matmul_size, bf16)
    flop = training_flop_per_image(build_model(config).to(dev))
    rows = {}
    for name, entry in paths.items():
        ips = args.images * len(entry["seconds"]) / sum(entry["seconds"])
        rate = ips * flop
        rows[name] = {
            "seconds_per_epoch": entry["seconds"],
            "median_seconds": statistics.median(entry["seconds"]),
            "images_per_second": ips,
            "train_flops": rate,
            "fraction_of_amx_peak": rate / hardware["amx_peak_flops"]
            if hardware["amx_peak_flops"]
            else None,
            "fraction_of_matmul_bf16": rate / hardware["matmul_bf16_flops"] if bf16 else None,
            "fraction_of_matmul_fp32": rate / hardware["matmul_fp32_flops"],
        }
    base = rows[BASELINE]["images_per_second"]
    base_bf16 = rows[BASELINE_BF16]["images_per_second"] if bf16 else None
    for row in rows.values():
        row["ratio_vs_baseline"] = row["images_per_second"] / base
        row["ratio_vs_baseline_bf16"] = row["images_per_second"] / base_bf16 if bf16 else None
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": default.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "width": args.width,
        "batch_size": args.batch_size,
        "images_per_epoch": args.images,
        "timed_epochs": args.rounds,
        "baseline_workers": args.workers,
        "bf16_paths": bf16 or f"left out: {NO_BF16 if args.bf16_paths == 'auto' else 'off'}",
        "train_flop_per_image": flop,
        "hardware": hardware,
        "paths": rows,
    }
    out = write_result(result, f"speed-w{args.width:g}", args.results_dir)
    _print_table(result)
    print(f"recorded in {out}")
    return result


def _print_table(result: dict) -> None:
    hw = result["hardware"]
    peak = hw["amx_peak_flops"]
    mm_bf16 = hw["matmul_bf16_flops"]
    print(
        f"\n{result['train_flop_per_image'] / 1e9:.2f} GFLOP per training image; "
        + (f"matmul bf16 {mm_bf16 / 1e12:.2f} TFLOP/s, " if mm_bf16 else "")
        + f"matmul fp32 {hw['matmul_fp32_flops'] / 1e12:.2f} TFLOP/s; "
        + (f"AMX peak {peak / 1e12:.2f} TFLOP/s" if peak else "no AMX on this CPU")
    )
    print(
        f"{'path':44} {'images/s':>9} {'vs fp32 base':>13} {'vs bf16 base':>13} "
        f"{'of AMX':>7} {'of bf16 mm':>10} {'of fp32 mm':>10}"
    )

    def cell(value: float | None, fmt: str, width: int) -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    def times(value: float | None) -> str:
        return f"{'-' if value is None else f'{value:.2f}x':>13}"

    for name, row in result["paths"].items():
        print(
            f"{name:44} {row['images_per_second']:9.1f} {times(row['ratio_vs_baseline'])} "
            f"{times(row['ratio_vs_baseline_bf16'])} "
            f"{cell(row['fraction_of_amx_peak'], '.1%', 7)} "
            f"{cell(row['fraction_of_matmul_bf16'], '.1%', 10)} "
            f"{row['fraction_of_matmul_fp32']:10.1%}"
        )
    if result["bf16_paths"] is not True:
        print(f"bf16 paths {result['bf16_paths']}; --bf16-paths on times them anyway")


if __name__ == "__main__":
    main()
