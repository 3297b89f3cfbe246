"""Data analysis: class counts, per-channel statistics, sample and augmented-sample grids.

The numbers come from the uint8 tensors that training uses; the augmented view goes
through the very ops of training (``augment.augment`` on normalised images) and is
turned back into displayable pixels with the same mean and std.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from .. import files
from ..data.augment import augment, normalize
from ..data.load import Cifar10, channel_stats, load_cifar10
from ..errors import CifarResnetError


@dataclass(frozen=True)
class DataSummary:
    """Class counts of both splits and per-channel mean/std (in [0, 1] pixel units)."""

    classes: tuple[str, ...]
    train_counts: list[int]
    test_counts: list[int]
    mean: list[float]  # (3,) RGB, training split: what training normalises with
    std: list[float]
    test_mean: list[float]
    test_std: list[float]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {**asdict(self), "classes": list(self.classes)}


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Number of images of each class."""
    return torch.bincount(labels.long().cpu(), minlength=num_classes).tolist()


def summarize_data(data: Cifar10) -> DataSummary:
    """Class counts and channel statistics of both splits."""
    n = len(data.classes)
    mean, std = channel_stats(data.train_images)
    test_mean, test_std = channel_stats(data.test_images)
    return DataSummary(
        classes=tuple(data.classes),
        train_counts=class_counts(data.train_labels, n),
        test_counts=class_counts(data.test_labels, n),
        mean=mean.tolist(),
        std=std.tolist(),
        test_mean=test_mean.tolist(),
        test_std=test_std.tolist(),
        source=data.source,
    )


def sample_indices(
    labels: torch.Tensor, num_classes: int, per_class: int = 4, seed: int = 0
) -> torch.Tensor:
    """Up to ``per_class`` random indices of each class, in rows: one of each class per row."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.long().cpu()
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    rows = [p[r] for r in range(per_class) for p in picks if r < p.numel()]
    return torch.stack(rows) if rows else torch.zeros(0, dtype=torch.long)


def denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised float (N, 3, H, W) back to displayable uint8 pixels."""
    mean = mean.to(x.device).view(1, -1, 1, 1)
    std = std.to(x.device).view(1, -1, 1, 1)
    return (x * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)


def augmented_view(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    padding: int = 4,
    cutout: int = 8,
    flip_prob: float = 0.5,
    pad_mode: str = "zeros",
    seed: int = 0,
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) as training sees them after augmentation, as uint8 pixels."""
    g = torch.Generator(device=images.device).manual_seed(seed)
    x = normalize(images, mean.to(images.device), std.to(images.device))
    x = augment(
        x, padding=padding, cutout=cutout, flip_prob=flip_prob, pad_mode=pad_mode, generator=g
    )
    return denormalize(x, mean, std)


def data_figures(
    data: Cifar10,
    summary: DataSummary | None = None,
    *,
    per_class: int = 4,
    seed: int = 0,
    padding: int = 4,
    cutout: int = 8,
    flip_prob: float = 0.5,
    pad_mode: str = "zeros",
) -> dict[str, Figure]:
    """The data-analysis figures: ``class_distribution``, ``samples``, ``augmented``."""
    from ..plots import plot_class_distribution, plot_image_grid

    summary = summary or summarize_data(data)
    idx = sample_indices(data.train_labels, len(data.classes), per_class, seed)
    images = data.train_images[idx]
    titles = [data.classes[int(c)] for c in data.train_labels[idx]]
    mean = torch.tensor(summary.mean)
    std = torch.tensor(summary.std)
    augmented = augmented_view(
        images,
        mean,
        std,
        padding=padding,
        cutout=cutout,
        flip_prob=flip_prob,
        pad_mode=pad_mode,
        seed=seed,
    )
    ncols = min(len(data.classes), 10)
    return {
        "class_distribution": plot_class_distribution(
            summary.train_counts, summary.test_counts, summary.classes
        ),
        "samples": plot_image_grid(
            images, titles, ncols=ncols, title="training images (one per class in each row)"
        ),
        "augmented": plot_image_grid(
            augmented,
            titles,
            ncols=ncols,
            title=(
                f"the same images after training augmentation (crop after {pad_mode} "
                f"padding {padding}, "
                f"flip p={flip_prob:g}, CutOut {cutout}x{cutout})"
            ),
        ),
    }


def format_summary(summary: DataSummary) -> str:
    """The summary as a plain-text table: counts per class, then channel mean/std."""
    width = max(len("class"), *(len(c) for c in summary.classes))
    lines = [f"{'class':<{width}}  {'train':>7}  {'test':>7}"]
    for name, a, b in zip(summary.classes, summary.train_counts, summary.test_counts, strict=True):
        lines.append(f"{name:<{width}}  {a:>7,}  {b:>7,}")
    lines.append(
        f"{'total':<{width}}  {sum(summary.train_counts):>7,}  {sum(summary.test_counts):>7,}"
    )
    lines.append("")
    lines.append("channel  train mean  train std  test mean  test std   ([0, 1] pixel units)")
    for i, ch in enumerate(("red", "green", "blue")):
        lines.append(
            f"{ch:<7}  {summary.mean[i]:>10.4f}  {summary.std[i]:>9.4f}  "
            f"{summary.test_mean[i]:>9.4f}  {summary.test_std[i]:>8.4f}"
        )
    lines.append(f"data: {summary.source}")
    return "\n".join(lines)


def analyse_data(
    data_dir: str | Path | None,
    cache_dir: str | Path | None,
    out: str | Path,
    *,
    per_class: int = 4,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
):
    """Class counts, channel statistics and image grids of a data set, written to ``out``
    (data.json and one PNG per figure); the summary and the figures' names."""
    from ..plots import figure_png  # matplotlib's PNG writer: only when writing

    out = Path(out)
    if (out / "data.json").exists() and not force:
        raise CifarResnetError(
            f"--out {out} already holds a data analysis (data.json); "
            "choose a new folder or pass --force to overwrite it"
        )
    data = load_cifar10(data_dir, cache_dir, progress=progress)
    summary = summarize_data(data)
    figures = data_figures(data, summary, per_class=per_class, seed=seed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarResnetError(f"cannot create --out {out} ({e.strerror or e})") from None
    again = "run the same command again"
    blob = files.json_bytes(summary.to_dict())
    files.atomic_write(out / "data.json", lambda f: f.write(blob), then=again)
    for name, fig in figures.items():
        png = figure_png(fig)
        files.atomic_write(out / f"{name}.png", lambda f, png=png: f.write(png), then=again)
    return summary, list(figures)
