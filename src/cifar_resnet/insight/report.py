"""One self-contained HTML page about a training run: what the model learned and where it fails.

``load_run`` reads a run folder (config.json, final.json, metrics.jsonl,
lr_finder.json, checkpoints/last.pt) and re-runs the checkpoint's model on the
test split (eval mode, normalised with the checkpoint's mean/std, never augmented;
``RunResults.flipped_logits`` runs it on the mirror images, for flip TTA);
``build_report`` builds the page from that and returns it as one string. Every
figure is a PNG embedded as a data URI and the styling is inline, so the page needs
no network and no JavaScript. Nothing but ``write_report`` writes files: it writes
the page to the run folder's report.html.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from .. import files
from ..config import TrainConfig
from ..data.augment import normalize
from ..data.load import Cifar10, check_same_classes, load_cifar10
from ..data.splits import limit_splits
from ..errors import PROG, CheckpointError, ConfigError
from ..inference.calibration import N_BINS, Calibration, calibration
from ..inference.evaluation import predict_logits
from ..inference.metrics import (
    Misclassified,
    confusion_matrix,
    per_class_accuracy,
    select_misclassified,
)
from ..inference.predict import load_model
from ..model.summary import model_summary
from ..plots import (
    figure_png,
    plot_confusion_matrix,
    plot_gradcam,
    plot_lr_finder,
    plot_lr_schedule,
    plot_misclassified,
    plot_per_class_accuracy,
    plot_reliability,
    plot_training_curves,
)
from ..records.folder_lock import FolderLock
from ..records.layout import FINAL, LR_FINDER_JSON, REPORT
from ..records.machine import describe
from ..records.records import LRFinderResult, RunSettings
from ..records.run_folder import RunRecord
from ..runtime import Runtime
from .analysis import DataSummary, data_figures, summarize_data
from .gradcam import DEFAULT_LAYER, grad_cam

SECTIONS = (
    ("overview", "Overview"),
    ("curves", "Training curves"),
    ("schedule", "Learning rate"),
    ("errors", "Confusion matrix and per-class accuracy"),
    ("calibration", "Calibration"),
    ("gallery", "Misclassified test images"),
    ("gradcam", "Grad-CAM"),
    ("data", "Data"),
    ("epochs", "Per-epoch log"),
    ("model", "Model summary"),
    ("config", "Resolved config"),
)


@dataclass
class RunResults:
    """A run folder's records together with its model's predictions on the test split."""

    path: Path
    config: TrainConfig  # the run's resolved training config (its checkpoint's)
    settings: RunSettings  # config.json: that config as saved, with lr_source
    final: dict[str, Any]  # final.json; empty when the run did not finish
    metrics: list[dict[str, Any]]  # one dict per epoch
    step_lrs: list[float]  # the LR of every optimizer step
    steps_per_epoch: int | None  # as the checkpoint records it (None: saved before it did)
    lr_finder: LRFinderResult | None
    classes: tuple[str, ...]
    mean: torch.Tensor  # (3,) the checkpoint's normalisation
    std: torch.Tensor
    model: nn.Module  # eval mode
    summary: str  # the model summary table
    data: Cifar10  # the splits the run used (limits applied)
    logits: torch.Tensor  # (N_test, C) float32 on the CPU
    runtime: Runtime  # where and in which precision the model runs

    def flipped_logits(self) -> torch.Tensor:
        """Logits (N_test, C) of the test images flipped along the width (the last axis of
        NCHW), for flip TTA: float32 on the CPU."""
        return predict_logits(
            self.model, self.data.test_images.flip(-1), self.mean, self.std, self.runtime,
            batch_size=self.config.eval_batch_size,
        )  # fmt: skip


def load_run(
    path: str | Path,
    *,
    data: Cifar10 | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
) -> RunResults:
    """Read a run folder and predict the test split with its checkpoint's model.

    The data come from ``data``, else ``data_dir``, else the run's own ``data_dir``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; pass a run folder written by train --out")
    record = RunRecord.open(path)
    config, classes = record.config, tuple(record.state.classes)
    finder_json = record.lr_finder_json()
    try:
        finder = None if finder_json is None else LRFinderResult.from_dict(finder_json)
    except (TypeError, ConfigError):
        raise CheckpointError(f"{path / LR_FINDER_JSON} has unexpected fields") from None
    if data is None:
        source = data_dir if data_dir is not None else config.data_dir
        cache = cache_dir if cache_dir is not None else config.cache_dir
        data = load_cifar10(source, cache, progress=progress)
    check_same_classes(data.classes, classes, "the run's")
    data = limit_splits(data, config.limit_train, config.limit_test)
    trained = load_model(record.state, device=device)
    summary = str(model_summary(trained.model))
    logits = predict_logits(
        trained.model, data.test_images, trained.mean, trained.std, trained.runtime,
        batch_size=config.eval_batch_size,
    )  # fmt: skip
    return RunResults(
        path=path,
        config=config,
        settings=record.settings(),
        final=record.final(),
        metrics=record.metrics(),
        step_lrs=[float(v) for v in record.state.step_lrs],
        steps_per_epoch=record.state.steps_per_epoch,
        lr_finder=finder,
        classes=classes,
        mean=trained.mean,
        std=trained.std,
        model=trained.model,
        summary=summary,
        data=data,
        logits=logits,
        runtime=trained.runtime,
    )


def figure_data_uri(fig: Figure, dpi: int = 100) -> str:
    """A figure as a base64 PNG data URI, for an ``<img src=...>``."""
    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi)).decode("ascii")


@dataclass(frozen=True)
class _Page:
    """What every section of the report draws on."""

    r: RunResults
    predicted: torch.Tensor  # (N,) the model's class of each test image
    accuracy: float
    mistakes: Misclassified  # most confident first
    gallery_size: int
    gradcam_count: int
    gradcam_layer: str
    dpi: int

    def img(self, fig: Figure, alt: str) -> str:
        return f'<img src="{figure_data_uri(fig, self.dpi)}" alt="{_e(alt)}">'


def build_report(
    results: RunResults,
    *,
    gallery_size: int = 25,
    gradcam_count: int = 10,
    gradcam_layer: str = DEFAULT_LAYER,
    dpi: int = 100,
    progress: bool = False,
) -> str:
    """The report as one HTML document; every image is embedded, no scripts, no network.

    ``progress`` shows a bar over the sections (the Grad-CAM and data figures take seconds).
    """
    r = results
    labels = r.data.test_labels
    predicted = r.logits.argmax(1) if r.logits.numel() else torch.zeros(0, dtype=torch.long)
    accuracy = float((predicted == labels).float().mean()) if labels.numel() else float("nan")
    page = _Page(
        r, predicted, accuracy, select_misclassified(r.logits, labels),
        gallery_size, gradcam_count, gradcam_layer, dpi,
    )  # fmt: skip
    sections = {
        "overview": lambda p: _overview(p.r, p.accuracy, len(p.mistakes)),
        "curves": _curves_section,
        "schedule": _schedule_section,
        "errors": _errors_section,
        "calibration": _calibration_section,
        "gallery": _gallery_section,
        "gradcam": _gradcam_section,
        "data": _data_section,
        "epochs": lambda p: _epoch_table(p.r.metrics),
        "model": lambda p: f"<pre>{_e(p.r.summary)}</pre>",
        "config": lambda p: _kv_table(p.r.settings.to_dict()),
    }
    parts = [_head(r), _nav()]
    for key, build in tqdm(sections.items(), desc="report", unit="section", disable=not progress):
        parts.append(_section(key, build(page)))
    parts.append("</main></div></body></html>\n")
    return "".join(parts)


def _curves_section(p: _Page) -> str:
    if not p.r.metrics:
        return "<p>No epoch finished: no metrics.</p>"
    return p.img(plot_training_curves(p.r.metrics), "loss and accuracy per epoch, train and test")


def _schedule_section(p: _Page) -> str:
    step_lrs, steps_per_epoch = p.r.step_lrs, p.r.steps_per_epoch
    if steps_per_epoch is None and step_lrs:  # saved before checkpoints recorded it
        epochs = len(p.r.metrics) or 1
        steps_per_epoch = len(step_lrs) // epochs if len(step_lrs) % epochs == 0 else None
    html_parts = [
        '<div class="pair">',
        p.img(plot_lr_schedule(step_lrs, steps_per_epoch), "learning rate of every optimizer step"),
    ]
    if p.r.lr_finder is not None:
        html_parts.append(
            p.img(plot_lr_finder(p.r.lr_finder), "LR range test with LRMAX and LRMIN")
        )
    else:
        html_parts.append("<p>The LRs were given, so no LR range test ran for this run.</p>")
    return "".join([*html_parts, "</div>"])


def _errors_section(p: _Page) -> str:
    classes = p.r.classes
    matrix = confusion_matrix(p.predicted, p.r.data.test_labels, len(classes))
    per_class = per_class_accuracy(matrix)
    return (
        '<div class="pair">'
        + p.img(plot_confusion_matrix(matrix, classes), "confusion matrix")
        + p.img(plot_per_class_accuracy(per_class, classes, p.accuracy), "per-class accuracy")
        + "</div>"
    )


def _calibration_section(p: _Page) -> str:
    r, labels = p.r, p.r.data.test_labels
    if not labels.numel():
        return "<p>No test image: no calibration to measure.</p>"
    plain = calibration(r.logits, labels)
    tta = calibration(r.logits, labels, r.flipped_logits())
    return (
        f"<p>How far the model's confidence, the softmax probability of the class it "
        f"predicts, can be trusted on the {plain.n:,} test images. ECE: the confidences "
        f"sorted into {N_BINS} equal-width bins, the gap between accuracy and mean "
        "confidence in each bin, weighted by its share of the images. NLL: the mean "
        "cross-entropy of the true class in nats. Brier: the squared error of the "
        "probabilities against the one-hot label, summed over the classes (0 to 2). Mean "
        "confidence above accuracy is over-confidence, below it under-confidence. Flip "
        "TTA predicts the mean of the softmaxes of each image and its mirror image.</p>"
        + _calibration_table(plain, tta)
        + '<div class="pair">'
        + p.img(plot_reliability(plain, "plain"), "reliability diagram, plain")
        + p.img(plot_reliability(tta, "flip TTA"), "reliability diagram, flip TTA")
        + "</div>"
    )


def _calibration_table(plain: Calibration, tta: Calibration) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("", "accuracy", "mean confidence", "ECE", "NLL", "Brier")
    )
    rows = "".join(
        f"<tr><th>{name}</th><td class='n'>{c.acc:.2%}</td><td class='n'>{c.confidence:.2%}"
        f"</td><td class='n'>{c.ece:.2%}</td><td class='n'>{c.nll:.4f}</td>"
        f"<td class='n'>{c.brier:.4f}</td></tr>"
        for name, c in (("plain", plain), ("flip TTA", tta))
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _gallery_section(p: _Page) -> str:
    shown = p.mistakes.head(p.gallery_size)
    if not len(shown):
        return "<p>No test image is misclassified.</p>"
    r = p.r
    gallery = p.img(
        plot_misclassified(r.data.test_images[shown.indices], shown, r.classes),
        "misclassified test images with predicted and actual class",
    )
    return (
        f"<p>{len(p.mistakes):,} of {r.data.test_labels.numel():,} test images are "
        f"misclassified; the {len(shown)} with the most confident wrong prediction are shown. "
        "Confidence is the softmax probability of the predicted class.</p>" + gallery
    )


def _data_section(p: _Page) -> str:
    r = p.r
    summary = summarize_data(r.data)
    figs = data_figures(
        r.data,
        summary,
        padding=r.config.crop_padding,
        cutout=r.config.cutout_size,
        flip_prob=r.config.flip_prob,
        pad_mode=r.config.crop_pad_mode,
    )
    return (
        _data_table(summary)
        + p.img(figs["class_distribution"], "class distribution of train and test")
        + '<div class="grids">'
        + p.img(figs["samples"], "sample training images with labels")
        + p.img(figs["augmented"], "the same images after training augmentation")
        + "</div>"
    )


def _gradcam_section(p: _Page) -> str:
    r, chosen, layer, img = p.r, p.mistakes.head(p.gradcam_count), p.gradcam_layer, p.img
    if not len(chosen):
        return "<p>No misclassified image to explain.</p>"
    images = r.data.test_images[chosen.indices]
    device = next(r.model.parameters()).device
    x = normalize(images.to(device), r.mean.to(device), r.std.to(device))
    cam_pred = grad_cam(r.model, x, chosen.predicted, layer=layer)
    cam_true = grad_cam(r.model, x, chosen.actual, layer=layer)
    fig = plot_gradcam(images, cam_pred, cam_true, chosen, r.classes, layer=layer)
    return (
        f"<p>The {len(chosen)} most confident mistakes. Warm colours mark the regions whose "
        f"features raised the score of the class named above the map (output of "
        f"<code>{_e(layer)}</code>, upsampled to 32x32 and scaled to [0, 1] per map): "
        "left for the predicted class, right for the actual class.</p>"
        + img(fig, "Grad-CAM maps for the predicted and the actual class")
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body.cr-report{margin:0}
.cr-report{background:#f6f7f9;color:#1d1f23;font:15px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
.cr-report main{max-width:1120px;margin:0 auto;padding:16px 24px 48px}
.cr-report h1{font-size:1.6em;margin:.4em 0 .1em}
.cr-report h2{font-size:1.25em;margin:0 0 .5em;padding-bottom:.2em;border-bottom:1px solid #dde1e6}
.cr-report section{background:#fff;border:1px solid #e2e5e9;border-radius:8px;
padding:14px 18px;margin:14px 0}
.cr-report img{display:block;max-width:100%;height:auto;margin:8px auto}
.cr-report .pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));
gap:12px;align-items:start}
.cr-report nav{font-size:.9em;margin:.4em 0 0}
.cr-report nav a{margin-right:.9em;color:#2458a6;text-decoration:none;white-space:nowrap}
.cr-report table{border-collapse:collapse;font-size:.88em;margin:6px 0}
.cr-report th,.cr-report td{border:1px solid #e2e5e9;padding:3px 8px;text-align:left;
vertical-align:top}
.cr-report td.n{text-align:right;font-variant-numeric:tabular-nums}
.cr-report th{background:#f0f2f5}
.cr-report pre{font-size:12px;line-height:1.3;overflow-x:auto;background:#f6f7f9;
padding:10px;border-radius:6px}
.cr-report .kpi{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.cr-report .kpi div{background:#f0f4fa;border-radius:6px;padding:6px 12px}
.cr-report .kpi b{display:block;font-size:1.3em}
.cr-report .muted{color:#5b6270;font-size:.9em}
"""


def _head(r: RunResults) -> str:
    title = f"cifar-resnet report: {r.path.name}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f'<body class="cr-report"><div class="cr-report"><main><h1>{_e(title)}</h1>'
    )


def _nav() -> str:
    links = " ".join(f'<a href="#{key}">{_e(name)}</a>' for key, name in SECTIONS)
    return f"<nav>{links}</nav>"


def _section(key: str, body: str) -> str:
    name = dict(SECTIONS)[key]
    return f'<section id="{key}"><h2>{_e(name)}</h2>{body}</section>'


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "none" if value is None else str(value)


def _kv_table(values: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in values.items())
    return f"<table>{rows}</table>"


def _overview(r: RunResults, accuracy: float, n_wrong: int) -> str:
    f = r.final
    keys = ("device", "machine", "precision", "torch", "params", "train_seconds", "total_seconds",
            "images_per_second", "max_lr", "min_lr", "lr_source", "batch_size", "width", "norm",
            "seed", "train_images", "test_images", "data")  # fmt: skip
    shown = {k: describe(f[k]) if k == "machine" else f[k] for k in keys if k in f}
    extra = {k: v for k, v in f.items() if k not in shown and k not in ("classes", "mean", "std")}
    note = (
        ""
        if f
        else f"<p><b>{FINAL} is missing: the run did not finish; this is its last checkpoint."
        "</b></p>"
    )
    return (
        note
        + f"<div class='kpi'>{_kpi_boxes(r, accuracy, n_wrong)}</div>"
        + "<h3>Timings and device</h3>"
        + (_kv_table(shown) if shown else f"<p>Not recorded: {FINAL} is missing.</p>")
        + (
            f"<details><summary>everything else in {FINAL}</summary>"
            + _kv_table(extra)
            + "</details>"
            if extra
            else ""
        )
        + f"<p class='muted'>Run folder: {_e(r.path.resolve())}. Accuracy is measured on the "
        "test split only, with the checkpoint's model in eval mode and no augmentation.</p>"
    )


def _kpi_boxes(r: RunResults, accuracy: float, n_wrong: int) -> str:
    """The overview's boxes: test accuracy (recomputed and recorded), mistakes, epochs, time."""
    f = r.final
    n_test = int(r.data.test_labels.numel())
    kpis = [
        ("test accuracy (recomputed)", f"{accuracy:.2%}", f"{n_test:,} test images"),
        (
            f"test accuracy ({FINAL})",
            f"{f['test_acc']:.2%}" if "test_acc" in f else "n/a",
            f"test loss {f['test_loss']:.4f}" if "test_loss" in f else "",
        ),
        ("misclassified", f"{n_wrong:,}", f"of {n_test:,}"),
        ("epochs", str(len(r.metrics)), f"of {r.config.epochs} planned"),
    ]
    if "train_seconds" in f:
        kpis.append(
            (
                "training time",
                f"{f['train_seconds']:.1f} s",
                f"{f.get('images_per_second', 0):,.0f} images/s",
            )
        )
    return "".join(
        f"<div><span class='muted'>{_e(a)}</span><b>{_e(b)}</b>"
        f"<span class='muted'>{_e(c)}</span></div>"
        for a, b, c in kpis
    )


def _data_table(s: DataSummary) -> str:
    rows = "".join(
        f"<tr><th>{_e(c)}</th><td class='n'>{a:,}</td><td class='n'>{b:,}</td></tr>"
        for c, a, b in zip(s.classes, s.train_counts, s.test_counts, strict=True)
    )
    counts = (
        "<table><tr><th>class</th><th>train</th><th>test</th></tr>"
        f"{rows}<tr><th>total</th><td class='n'>{sum(s.train_counts):,}</td>"
        f"<td class='n'>{sum(s.test_counts):,}</td></tr></table>"
    )
    stats = "<table><tr><th>channel</th><th>train mean</th><th>train std</th>"
    stats += "<th>test mean</th><th>test std</th></tr>"
    for i, ch in enumerate(("red", "green", "blue")):
        stats += (
            f"<tr><th>{ch}</th><td class='n'>{s.mean[i]:.4f}</td><td class='n'>{s.std[i]:.4f}</td>"
            f"<td class='n'>{s.test_mean[i]:.4f}</td><td class='n'>{s.test_std[i]:.4f}</td></tr>"
        )
    stats += "</table>"
    return (
        f"<p class='muted'>{_e(s.source)}. Pixel statistics in [0, 1] units; training and test "
        "images are normalised with the training split's mean and std.</p>"
        f"<div class='pair'>{counts}{stats}</div>"
    )


def _epoch_table(metrics: Sequence[Mapping[str, Any]]) -> str:
    if not metrics:
        return "<p>No epoch finished.</p>"
    head = (
        "<tr><th>epoch</th><th>LR (last step)</th><th>train loss</th><th>train acc</th>"
        "<th>test loss</th><th>test acc</th><th>seconds</th></tr>"
    )
    rows = "".join(
        f"<tr><td class='n'>{m['epoch']}</td><td class='n'>{m['lr']:.3e}</td>"
        f"<td class='n'>{m['train_loss']:.4f}</td><td class='n'>{m['train_acc']:.2%}</td>"
        f"<td class='n'>{m['test_loss']:.4f}</td><td class='n'>{m['test_acc']:.2%}</td>"
        f"<td class='n'>{m.get('seconds', float('nan')):.1f}</td></tr>"
        for m in metrics
    )
    return f"<table>{head}{rows}</table>"


def write_report(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    layer: str | None = None,
    *,
    progress: bool = False,
    lock: bool = True,
) -> Path:
    """Build report.html for a run folder and write it there; its path.

    ``lock``: hold the folder's lock while writing (a training process holds it already).
    """
    run_dir = Path(run_dir)
    path = run_dir / REPORT
    held = FolderLock(run_dir) if lock and run_dir.is_dir() else None
    try:
        results = load_run(
            run_dir, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress
        )
        page = build_report(results, gradcam_layer=layer or DEFAULT_LAYER, progress=progress)
        rebuild = f"build it with: {PROG} report {run_dir}"
        files.atomic_write(path, lambda f: f.write(page.encode()), then=rebuild if lock else "")
    finally:
        if held is not None:
            held.release()
    return path
