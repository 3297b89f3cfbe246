"""The PSNR between two copies of CIFAR-10, image by image: the distance between JPEG generations.

    python benchmarks/psnr_between.py --data-dir A --reference B

``jpeg_round_trip.py`` records how far its copy is from the copy it was made from. A
chain of copies (the data as shipped, then one and two generations more) also asks how
far the last is from the first, and whether the losses add up: if each generation's
error were independent of the ones before, the mean squared errors would add. This
script loads both copies with the package's loader, checks that they hold the same
images in the same order (same labels; the copies ``jpeg_round_trip.py`` writes keep
the loader's order), and prints and records
(``results/<date>-cpu-psnr-between.json``) each split's PSNR and MSE (on 0..255 values).
Two copies whose splits or labels differ are refused in one line.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from results_file import RESULTS, fail, write_result

from cifar_resnet.data.load import load_cifar10
from cifar_resnet.errors import DataError


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two uint8 image tensors, in float64 (0..255 values)."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean())


def psnr_from_mse(value: float) -> float:
    """PSNR in dB for a mean squared error on 0..255 values."""
    return math.inf if value == 0 else 10 * math.log10(255.0**2 / value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="one copy of CIFAR-10")
    parser.add_argument("--reference", required=True, help="the copy it is measured against")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    try:
        data = load_cifar10(args.data_dir, progress=False)
        reference = load_cifar10(args.reference, progress=False)
    except DataError as error:
        fail("psnr_between", str(error))
    if data.classes != reference.classes:
        fail("psnr_between", "the two copies name different classes: give two copies of one set")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "data": data.source,
        "reference": reference.source,
        "psnr_db": {},
        "mse": {},
    }
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        ref_images = getattr(reference, f"{split}_images")
        ref_labels = getattr(reference, f"{split}_labels")
        if images.shape != ref_images.shape or not torch.equal(labels, ref_labels):
            fail(
                "psnr_between",
                f"the {split} splits differ in size or label order: "
                "give two copies of the same images (one made from the other)",
            )
        value = mse(images, ref_images)
        result["mse"][split] = round(value, 3)
        result["psnr_db"][split] = round(psnr_from_mse(value), 3)
    print(
        f"PSNR against the reference: train {result['psnr_db']['train']:.2f} dB, "
        f"test {result['psnr_db']['test']:.2f} dB "
        f"(MSE {result['mse']['train']:.2f} / {result['mse']['test']:.2f})"
    )
    path = write_result(result, "psnr-between", args.results_dir)
    print(f"recorded {path}")
    return result


if __name__ == "__main__":
    main()
