"""A copy of CIFAR-10 with every image put through one more JPEG encoding, to price JPEG loss.

    python benchmarks/jpeg_round_trip.py --data-dir D --out /tmp/cifar10-q75x2
    python benchmarks/train_bench.py --data-dir /tmp/cifar10-q75x2 --name ... [flags]

The data these machines hold is a JPEG rendition (quality 75, 4:2:0 chroma) of the
original files, which cannot be had here, so what that compression costs in accuracy
cannot be measured directly. What can be measured is the cost of one *more* such
compression: train the same recipe on this copy and on the data as it is, and compare.
Re-encoding a decoded JPEG on the same 8x8 grid at the same quality changes little (the
coefficients are already on the quantiser's lattice), so each image is shifted on the
block grid first: padded by reflection with ``--offset`` pixels at the top and left (an
odd offset also moves the 2x2 chroma grid), encoded with Pillow at ``--quality`` and
4:2:0, decoded, and cropped back to 32x32. The result is stored losslessly (PNG) in the
image-folder layout the package reads (``train/<class>/NNNNN.png``).

Prints and records (``results/<date>-cpu-jpeg-round-trip-q<Q>.json``) the PSNR of the
copy against its source, over each split, so the size of the added loss is on record
beside the accuracy runs trained on it; and, for the test split, the PSNR of the same
encoding on the unmoved grid, which shows why the grid is moved.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import RESULTS, fail, write_result
from tqdm import tqdm

from cifar_resnet.data.load import load_cifar10


def round_trip(image: np.ndarray, *, quality: int, offset: int) -> np.ndarray:
    """One JPEG encode/decode of an (H, W, 3) uint8 image, its block grid moved by ``offset``."""
    h, w, _ = image.shape
    # Pad to the next multiple of 16 (the 4:2:0 macroblock) with offset pixels before.
    after_y, after_x = (-(h + offset)) % 16, (-(w + offset)) % 16
    padded = np.pad(image, ((offset, after_y), (offset, after_x), (0, 0)), mode="reflect")
    buf = io.BytesIO()
    Image.fromarray(padded).save(buf, "JPEG", quality=quality, subsampling=2)  # 2: 4:2:0
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return decoded[offset : offset + h, offset : offset + w]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def write_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    folder: Path,
    *,
    quality: int,
    offset: int,
    desc: str,
) -> float:
    """Write one split's round-tripped images as PNG; return its PSNR against the source."""
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    source = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    out = np.empty_like(source)
    for i in tqdm(range(len(source)), desc=desc, unit="img"):
        out[i] = round_trip(source[i], quality=quality, offset=offset)
        Image.fromarray(out[i]).save(folder / classes[int(labels[i])] / f"{i:05d}.png")
    return psnr(source, out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the CIFAR-10 to copy")
    parser.add_argument("--out", required=True, help="a new folder for the copy")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality (1-95)")
    parser.add_argument(
        "--offset", type=int, default=5, help="pixels the block grid moves (0-15; odd moves chroma)"
    )
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        fail(
            "jpeg_round_trip",
            f"{out} exists: give a folder that does not exist yet (nothing was written)",
        )
    if not 1 <= args.quality <= 95:
        fail("jpeg_round_trip", f"--quality must be in 1..95, got {args.quality}")
    if not 0 <= args.offset <= 15:
        fail("jpeg_round_trip", f"--offset must be in 0..15, got {args.offset}")
    data = load_cifar10(args.data_dir, progress=True)
    t0 = time.perf_counter()
    kw = {"quality": args.quality, "offset": args.offset}
    train_psnr = write_split(
        data.train_images, data.train_labels, data.classes, out / "train", desc="train", **kw
    )
    test_psnr = write_split(
        data.test_images, data.test_labels, data.classes, out / "test", desc="test", **kw
    )
    test_source = data.test_images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    same_grid = np.stack([round_trip(im, quality=args.quality, offset=0) for im in test_source])
    same_grid_psnr = psnr(test_source, same_grid)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "source": data.source,
        "quality": args.quality,
        "subsampling": "4:2:0",
        "offset": args.offset,
        "psnr_db": {"train": round(train_psnr, 3), "test": round(test_psnr, 3)},
        "psnr_db_same_grid": {"test": round(same_grid_psnr, 3)},
        "seconds": round(time.perf_counter() - t0, 1),
        "out": str(out),
    }
    print(
        f"PSNR against the source: train {train_psnr:.2f} dB, test {test_psnr:.2f} dB "
        f"(test, the grid unmoved: {same_grid_psnr:.2f} dB)"
    )
    path = write_result(result, f"jpeg-round-trip-q{args.quality}", args.results_dir)
    print(f"recorded {path}")
    return result


if __name__ == "__main__":
    main()
