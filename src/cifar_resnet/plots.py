"""Figures of a data set and a run: each function returns a ``matplotlib.figure.Figure``.

Figures are built with ``Figure`` directly, never through pyplot, so no global
state or interactive backend is involved: ``fig.savefig`` renders with Agg.
Images are uint8 tensors (N, 3, H, W) as the data module returns them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from .inference.calibration import Calibration
from .inference.metrics import Misclassified
from .records.records import LRFinderResult

_WRONG = "#b2182b"
_RIGHT = "#1a7837"
CAM_ALPHA = 0.5  # weight of a Grad-CAM map over its image (the report's figure, the demo)
_CAM_SCALE = 4  # the report's Grad-CAM tiles are 4x the image's side, for smooth maps


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) tensor -> (H, W, 3) array for imshow."""
    return image.detach().cpu().permute(1, 2, 0).numpy()


def enlarge(image: torch.Tensor, scale: int) -> np.ndarray:
    """A uint8 (3, H, W) image as (H * scale, W * scale, 3) uint8, each pixel a square."""
    return _hwc(image.repeat_interleave(scale, 1).repeat_interleave(scale, 2))


def overlay(image: torch.Tensor, cam: torch.Tensor, scale: int) -> np.ndarray:
    """A map (H, W) in [0, 1], coloured (jet) and blended over the image (3, H, W) uint8,
    as (H * scale, W * scale, 3) uint8; the map is upsampled smoothly (bilinear)."""
    size = (image.shape[1] * scale, image.shape[2] * scale)
    cam = cam.detach().cpu().float()
    smooth = torch.nn.functional.interpolate(cam[None, None], size=size, mode="bilinear")[0, 0]
    heat = colormaps["jet"](smooth.clamp(0, 1).numpy())[..., :3]  # (H', W', 3) in [0, 1]
    picture = enlarge(image, scale).astype(np.float32) / 255.0
    blended = (1 - CAM_ALPHA) * picture + CAM_ALPHA * heat
    return (blended * 255.0).round().astype(np.uint8)


def plot_class_distribution(
    train_counts: Sequence[int], test_counts: Sequence[int], classes: Sequence[str]
) -> Figure:
    """Grouped bars: number of images per class in the train and the test split."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    w = 0.4
    bars_train = ax.bar(x - w / 2, train_counts, w, label=f"train ({sum(train_counts):,})")
    bars_test = ax.bar(x + w / 2, test_counts, w, label=f"test ({sum(test_counts):,})")
    ax.bar_label(bars_train, fontsize=7, padding=1)
    ax.bar_label(bars_test, fontsize=7, padding=1)
    ax.set_xticks(x, list(classes), rotation=30, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("class distribution")
    ax.margins(y=0.3)  # room above the bars for the legend
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    return fig


def plot_image_grid(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    title: str | None = None,
    title_colors: Sequence[str] | None = None,
    cell_inches: float = 1.15,
) -> Figure:
    """A grid of uint8 images (N, 3, H, W), each with an optional title above it.

    The images are tiled into one picture on white, in one Axes, with each title a text over
    its tile: an Axes per image made the report's grids most of its rendering time
    (matplotlib lays out and draws every Axes apart), for the same page.
    """
    n = int(images.shape[0])
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    side_h, side_w = (int(images.shape[2]), int(images.shape[3])) if n else (32, 32)
    lines = max((t.count("\n") + 1 for t in titles), default=0) if titles else 0
    gap = 2 * max(1, round(0.06 * side_w))  # white between tiles, in image pixels
    inch = cell_inches / (side_w + gap)  # inches per image pixel
    band = math.ceil(0.16 * lines / inch) if lines else 0  # room for the titles, in pixels
    pitch_w, pitch_h = side_w + gap, side_h + gap + band
    canvas = np.full((nrows * pitch_h, ncols * pitch_w, 3), 255, dtype=np.uint8)
    head = 0.3 if title else 0.0
    width, height = canvas.shape[1] * inch, canvas.shape[0] * inch
    fig = Figure(figsize=(width, height + head))
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + head)))
    ax.set_axis_off()
    for i in range(n):
        row, col = divmod(i, ncols)
        y, x = row * pitch_h + band + gap // 2, col * pitch_w + gap // 2
        canvas[y : y + side_h, x : x + side_w] = _hwc(images[i])
        if titles and i < len(titles):  # centred just above its tile (pixel centres at .0)
            color = title_colors[i] if title_colors else "black"
            ax.text(x + side_w / 2 - 0.5, y - 1.5, titles[i], ha="center", va="bottom",
                    fontsize=7.5, color=color, linespacing=1.1)  # fmt: skip
    ax.imshow(canvas, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / (height + head), va="top")
    return fig


def plot_training_curves(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and test, side by side."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    style = {"marker": "o", "markersize": 3}
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], label="train", **style)
    ax_loss.plot(epochs, [m["test_loss"] for m in metrics], label="test", **style)
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.plot(epochs, [100 * m["train_acc"] for m in metrics], label="train", **style)
    ax_acc.plot(epochs, [100 * m["test_acc"] for m in metrics], label="test", **style)
    ax_acc.set_title("accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    if metrics:
        best = max(metrics, key=lambda m: m["test_acc"])
        ax_acc.annotate(
            f"test {100 * metrics[-1]['test_acc']:.2f}%",
            (metrics[-1]["epoch"], 100 * metrics[-1]["test_acc"]),
            textcoords="offset points",
            xytext=(-6, 6),
            ha="right",
            va="bottom",
            fontsize=8,
        )
        ax_acc.axhline(100 * best["test_acc"], color="0.6", lw=0.8, ls=":")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if epochs:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_lr_schedule(step_lrs: Sequence[float], steps_per_epoch: int | None = None) -> Figure:
    """The LR of every optimizer step, against the epoch (or the step without steps_per_epoch)."""
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(1, len(step_lrs) + 1)
    if steps_per_epoch:
        ax.plot(steps / steps_per_epoch, step_lrs, lw=1.5)
        ax.set_xlabel(f"epoch ({steps_per_epoch} steps each)")
    else:
        ax.plot(steps, step_lrs, lw=1.5)
        ax.set_xlabel("optimizer step")
    if len(step_lrs):
        peak = int(np.argmax(step_lrs))
        x_peak = (peak + 1) / steps_per_epoch if steps_per_epoch else peak + 1
        ax.plot([x_peak], [step_lrs[peak]], "o", color="C3", ms=4)
        ax.annotate(
            f"peak {step_lrs[peak]:.2e}",
            (x_peak, step_lrs[peak]),
            textcoords="offset points",
            xytext=(6, -2),
            fontsize=8,
        )
    ax.set_ylabel("learning rate")
    ax.set_title(f"LR schedule as used ({len(step_lrs)} steps)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    return fig


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Counts of actual (rows) against predicted (columns), coloured by the row fraction."""
    counts = matrix.detach().cpu().numpy()
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(classes)
    side = max(5.0, 0.55 * n + 2)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the actual class")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if frac[i, j] > 0.55 else "black",
            )
    ax.set_xticks(range(n), list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class")
    ax.set_title(f"confusion matrix ({int(counts.sum()):,} test images)")
    return fig


def plot_per_class_accuracy(
    accuracy: Sequence[float] | torch.Tensor, classes: Sequence[str], overall: float | None = None
) -> Figure:
    """Horizontal bars: test accuracy of each class (fractions in [0, 1], shown in %)."""
    acc = np.nan_to_num(np.asarray(accuracy, dtype=float) * 100)
    fig = Figure(figsize=(6.5, max(3.0, 0.32 * len(classes) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    bars = ax.barh(y, acc, color="C0")
    ax.bar_label(bars, labels=[f"{a:.1f}%" for a in acc], fontsize=7, padding=2)
    if overall is not None:
        ax.axvline(100 * overall, color="C3", ls="--", lw=1, label=f"overall {100 * overall:.2f}%")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, list(classes))
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_reliability(result: Calibration, title: str = "reliability diagram") -> Figure:
    """Accuracy per confidence bin (bars) with its mean confidence (ticks) against the
    diagonal, over the number of images in each bin (log scale)."""
    edges = 100 * result.edges.numpy()  # in %, as the accuracies
    lower, width = edges[:-1], np.diff(edges)
    counts = result.counts.numpy()
    filled = counts > 0
    fig = Figure(figsize=(5.6, 5.6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 100], [0, 100], color="0.3", ls="--", lw=1, label="calibrated", zorder=3)
    acc = 100 * result.bin_acc.numpy()[filled]
    conf = 100 * result.bin_confidence.numpy()[filled]
    x, w = lower[filled], width[filled]
    ax.bar(x, acc, w, align="edge", color="C0", edgecolor="white", label="accuracy in the bin")
    ax.hlines(conf, x, x + w, color=_WRONG, lw=2, label="mean confidence in the bin", zorder=4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}: ECE {result.ece:.2%}, {result.n:,} images", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    bars = ax_n.bar(x, counts[filled], w, align="edge", color="0.55", edgecolor="white")
    ax_n.bar_label(bars, fontsize=6.5, padding=1)
    ax_n.set_yscale("log")
    ax_n.set_ylim(0.7, max(2.0, counts.max() * 8.0))  # room above the tallest bar's label
    ax_n.set_ylabel("images")
    ax_n.set_xlim(0, 100)
    ax_n.set_xlabel("confidence: probability of the predicted class (%)")
    return fig


def plot_misclassified(
    images: torch.Tensor, mistakes: Misclassified, classes: Sequence[str], *, ncols: int = 5
) -> Figure:
    """Gallery of misclassified images (N, 3, H, W): predicted, actual and confidence over each."""
    titles = [
        f"pred {classes[int(p)]} {100 * float(c):.0f}%\nactual {classes[int(a)]}"
        for p, a, c in zip(mistakes.predicted, mistakes.actual, mistakes.confidence, strict=True)
    ]
    return plot_image_grid(
        images,
        titles,
        ncols=ncols,
        title_colors=[_WRONG] * len(titles),
        cell_inches=1.55,
        title=f"{len(titles)} misclassified test images, most confident first",
    )


def plot_gradcam(
    images: torch.Tensor,
    cam_predicted: torch.Tensor,
    cam_actual: torch.Tensor,
    mistakes: Misclassified,
    classes: Sequence[str],
    *,
    layer: str = "",
    per_row: int = 2,
) -> Figure:
    """Per image: the image, Grad-CAM for the predicted class, Grad-CAM for the actual class.

    Each map is drawn over its image by ``overlay`` at 4x the image's side, the image beside
    them by ``enlarge``; the tiles are laid out by ``plot_image_grid``.
    """
    n = int(images.shape[0])
    per_row = max(1, min(per_row, n))
    tiles, titles, colors = [], [], []
    for i in range(n):
        image = images[i].detach().cpu()
        pred, actual = int(mistakes.predicted[i]), int(mistakes.actual[i])
        tiles.append(enlarge(image, _CAM_SCALE))
        titles.append(
            f"pred {classes[pred]} {100 * float(mistakes.confidence[i]):.0f}%\n"
            f"actual {classes[actual]}"
        )
        colors.append(_WRONG)
        for cam, name, color in (
            (cam_predicted[i], f"CAM {classes[pred]}\n(predicted)", _WRONG),
            (cam_actual[i], f"CAM {classes[actual]}\n(actual)", _RIGHT),
        ):
            tiles.append(overlay(image, cam, _CAM_SCALE))
            titles.append(name)
            colors.append(color)
    where = f" at {layer}" if layer else ""
    side = (_CAM_SCALE * images.shape[2], _CAM_SCALE * images.shape[3])
    grid = (torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2) if tiles
            else images.new_zeros((0, 3, *side)))  # fmt: skip
    return plot_image_grid(
        grid, titles, ncols=3 * per_row, title_colors=colors, cell_inches=1.45,
        title=f"Grad-CAM{where} over misclassified test images",
    )  # fmt: skip


def plot_lr_finder(result: LRFinderResult) -> Figure:
    """Figure: raw and smoothed loss against LR (log x), LRMAX and LRMIN marked.

    With a spread (several seeds), the other seeds' smoothed curves are drawn thin and
    their LRMAX choices as short ticks on the top edge.
    """
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    if result.spread is not None:
        for i, curve in enumerate(result.spread["curves"]):
            label = "other seeds (smoothed)" if i == 0 else None
            ax.plot(curve["lrs"], curve["smoothed"], color="C0", lw=1, alpha=0.35, label=label)
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    if result.floor is not None:
        ax.axvspan(*result.floor, color="C1", alpha=0.12, label="valley floor")
    ax.axvline(result.max_lr, color="C3", ls="--", label=f"LRMAX {result.max_lr:.2e}")
    ax.axvline(result.min_lr, color="C2", ls=":", label=f"LRMIN {result.min_lr:.2e}")
    if result.spread is not None:
        for lr in result.spread["max_lrs"]:
            ax.axvline(lr, ymin=0.94, ymax=1.0, color="C3", lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = min(max(result.smoothed), 2.5 * min(result.smoothed)) if result.smoothed else 1.0
    if math.isfinite(top) and top > 0:
        ax.set_ylim(top=top * 1.05)
    title = f"LR range test ({result.rule} rule)"
    if result.spread is not None:
        seeds = result.spread["seeds"]
        title += f"; LRMAX over seeds {seeds[0]}-{seeds[-1]}: spread {result.spread['ratio']:.2f}x"
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig
