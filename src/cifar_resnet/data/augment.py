"""Normalisation and training augmentation as batched tensor ops on the training device.

Per image, independently: RandomCrop 32x32 after padding 4 on each side
(offsets uniform over 0..8 in both axes) -> horizontal flip with probability 0.5
-> CutOut: one square hole of ``cutout`` pixels, placed uniformly so that it lies
wholly inside the image (top-left corner uniform over 0..32-cutout), as in David
Page's implementation, so every image loses exactly cutout**2 pixels. The hole is
zeros of the *normalised* image, i.e. the data set's mean colour; so is the padding
with ``pad_mode="zeros"`` (torchvision's ``RandomCrop(padding=4)``, the spec's),
while ``pad_mode="reflect"`` mirrors the edge pixels (``padding_mode="reflect"``,
as Page's own pipeline pads).

The random draws (``sample_augment``) are separate from their application
(``apply_augment``), so tests can check the laws of the draws and compare the
batched ops with a per-image reference on the same draws. Evaluation data is only
normalised, never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PAD_MODES


@dataclass(frozen=True)
class AugmentParams:
    """Random draws for one batch: each tensor has shape (N,)."""

    crop_y: torch.Tensor  # top row of the crop in the padded image, 0..2*padding
    crop_x: torch.Tensor  # left column of the crop, 0..2*padding
    flip: torch.Tensor  # bool: mirror left-right
    cut_y: torch.Tensor  # top row of the CutOut hole, 0..H-cutout
    cut_x: torch.Tensor  # left column of the hole, 0..W-cutout


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 with per-channel mean/std (in [0, 1] units) removed."""
    x = images.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def sample_augment(
    n: int,
    *,
    size: int = 32,
    padding: int = 4,
    cutout: int = 8,
    flip_prob: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AugmentParams:
    """Draw crop offsets, flips and hole positions for ``n`` images independently."""

    def randint(high: int) -> torch.Tensor:  # uniform over 0..high inclusive
        return torch.randint(0, high + 1, (n,), generator=generator, device=device)

    flip = torch.rand(n, generator=generator, device=device) < flip_prob
    return AugmentParams(
        crop_y=randint(2 * padding),
        crop_x=randint(2 * padding),
        flip=flip,
        cut_y=randint(size - cutout),
        cut_x=randint(size - cutout),
    )


def apply_augment(
    x: torch.Tensor,
    params: AugmentParams,
    *,
    padding: int = 4,
    cutout: int = 8,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Crop, flip and cut a normalised batch (N, C, H, W) as ``params`` say.

    ``pad_mode`` fills the crop's padding with zeros or with the mirrored edge
    (``"reflect"``, which needs ``padding`` < H and < W).
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        mode = "constant" if pad_mode == "zeros" else "reflect"
        padded = F.pad(x, (padding,) * 4, mode=mode)  # (N, C, H+2p, W+2p)
        rows = params.crop_y[:, None] + torch.arange(h, device=dev)  # (N, H)
        cols = params.crop_x[:, None] + torch.arange(w, device=dev)  # (N, W)
        x = padded[
            torch.arange(n, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]  # (N, C, H, W)
    # Width is the last axis of NCHW: flip(-1) mirrors left-right.
    x = torch.where(params.flip[:, None, None, None], x.flip(-1), x)
    if cutout > 0:
        ys = torch.arange(h, device=dev)[None, :]  # (1, H)
        xs = torch.arange(w, device=dev)[None, :]  # (1, W)
        in_y = (ys >= params.cut_y[:, None]) & (ys < params.cut_y[:, None] + cutout)  # (N, H)
        in_x = (xs >= params.cut_x[:, None]) & (xs < params.cut_x[:, None] + cutout)  # (N, W)
        hole = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
        x = x.masked_fill(hole[:, None], 0.0)
    return x


def augment(
    x: torch.Tensor,
    *,
    padding: int = 4,
    cutout: int = 8,
    flip_prob: float = 0.5,
    pad_mode: str = "zeros",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment a normalised batch (N, C, H, W) with fresh random draws."""
    params = sample_augment(
        x.shape[0],
        size=x.shape[-1],
        padding=padding,
        cutout=cutout,
        flip_prob=flip_prob,
        generator=generator,
        device=x.device,
    )
    return apply_augment(x, params, padding=padding, cutout=cutout, pad_mode=pad_mode)
