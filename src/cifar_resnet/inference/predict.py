"""Using a trained model: load it from a checkpoint, predict on images, evaluate (with TTA).

``load_model(checkpoint)`` returns a ``TrainedModel``: the network in eval mode plus everything
needed to feed it (class names, the training split's mean/std, the config, the runtime).
``predict(model, images)`` returns ``Predictions``: softmax probabilities (N, C) with the class
names, and ``top_k(k)`` for ranked (class, probability) pairs. ``images`` may be

- a uint8 tensor (N, 3, 32, 32) or (3, 32, 32), RGB, as ``load_cifar10`` returns them;
- PIL images or image file paths (anything Pillow reads, one or a sequence). Each is turned
  upright by its EXIF orientation, converted to RGB (``Image.convert``: alpha is dropped,
  palettes and greyscale are expanded), cut to its central square, and shrunk to 32x32 with
  Pillow's bicubic filter, which antialiases when downscaling. A 32x32 image is used as is.

Test-time augmentation (``tta=True``) averages the softmax of each image and of its mirror
image, flipped along the width axis (the last axis of NCHW), the same flip as the training
augmentation; CIFAR-10's classes look the same mirrored. A left-right symmetric image is its
own mirror image, so TTA leaves its prediction unchanged.

``evaluate_model`` runs the training loop's own un-augmented path (``train.predict_logits``)
with the checkpoint's saved mean/std (never recomputed) and eval batch size, so for a run
trained on the CPU its accuracy on the CPU is exactly the ``test_acc`` the run recorded. A
CUDA run is best evaluated on CUDA (same bf16 autocast); as cuDNN may pick other kernels from
one process to the next, a handful of near-tied images can still come out differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from ..config import TrainConfig
from ..data.load import Cifar10
from ..data.splits import limit_splits
from ..errors import DataError, oneline
from ..records.checkpoint import config_from_checkpoint, model_from_checkpoint, train_state
from ..records.records import TrainState
from ..records.run_folder import RunRecord
from ..runtime import Runtime, resolve_runtime, runnable_precision
from .evaluation import predict_logits, tta_log_probs
from .metrics import confusion_matrix

SIDE = 32  # CIFAR-10 images are SIDE x SIDE pixels
RESAMPLE = Image.Resampling.BICUBIC  # filter used to shrink larger images to SIDE x SIDE

ImageSource = str | Path | Image.Image
Images = torch.Tensor | ImageSource | Sequence[ImageSource]


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained network with what it needs at inference: classes, normalisation, config."""

    model: nn.Module  # eval mode, on runtime.device; returns logits
    classes: tuple[str, ...]
    mean: torch.Tensor  # (3,) float32 in [0, 1] units, the training split's, on the CPU
    std: torch.Tensor  # (3,)
    config: TrainConfig
    runtime: Runtime
    epoch: int = 0  # epochs trained when the checkpoint was written
    recorded_test_acc: float | None = None  # test accuracy training measured at that epoch
    path: Path | None = None  # the checkpoint file, when loaded from one


@dataclass(frozen=True, eq=False)
class Predictions:
    """Softmax probabilities of a batch of images, with the class names and their ranking."""

    probs: torch.Tensor  # (N, C) float32 on the CPU; rows sum to 1
    order: torch.Tensor  # (N, C) int64: class indices of each image, most probable first
    classes: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        """Index of the most probable class of each image, (N,) int64."""
        return self.order[:, 0]

    @property
    def names(self) -> list[str]:
        """Name of the most probable class of each image."""
        return [self.classes[i] for i in self.labels.tolist()]

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most probable (class name, probability) pairs of each image, best first."""
        k = max(1, min(k, len(self.classes)))
        indices = self.order[:, :k]
        values = self.probs.gather(1, indices)
        return [
            [(self.classes[i], p) for i, p in zip(idx, val, strict=True)]
            for idx, val in zip(indices.tolist(), values.tolist(), strict=True)
        ]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Loss, accuracy and confusion counts over a labelled split (optionally with flip TTA)."""

    classes: tuple[str, ...]
    loss: float  # mean cross-entropy in nats
    acc: float  # fraction in [0, 1]
    confusion: torch.Tensor  # (C, C) int64: row = true class, column = predicted class
    tta: Evaluation | None = None  # the same figures with flip TTA, when asked for

    @property
    def n(self) -> int:
        """Number of images evaluated."""
        return int(self.confusion.sum())

    @property
    def per_class_acc(self) -> list[float | None]:
        """Accuracy of each class (None for a class without images)."""
        totals = self.confusion.sum(1).tolist()
        hits = self.confusion.diagonal().tolist()
        return [h / t if t else None for h, t in zip(hits, totals, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: test_loss, test_acc, per_class_acc, confusion and the TTA figures."""
        out: dict[str, Any] = {
            "n": self.n,
            "test_loss": self.loss,
            "test_acc": self.acc,
            "per_class_acc": dict(zip(self.classes, self.per_class_acc, strict=True)),
            "confusion": self.confusion.tolist(),
        }
        if self.tta is not None:
            out["tta"] = {k: v for k, v in self.tta.to_dict().items() if k != "n"}
            out["tta_gain"] = self.tta.acc - self.acc
        return out


def load_model(
    checkpoint: str | Path | dict[str, Any] | TrainState, device: str = "cpu"
) -> TrainedModel:
    """The trained model of a checkpoint file, run folder, loaded checkpoint, or a folder
    written by ``export --format safetensors`` (see ``hub``)."""
    path: Path | None = None
    if isinstance(checkpoint, (str, Path)):
        from .hub import is_model_folder, load_folder

        if is_model_folder(checkpoint):
            return load_folder(checkpoint, device)
    if isinstance(checkpoint, (dict, TrainState)):
        state = train_state(checkpoint)
    else:
        record = RunRecord.open(checkpoint)
        state, path = record.state, record.checkpoint
    config = config_from_checkpoint(state)
    runtime = resolve_runtime(device, runnable_precision(config.precision, device))
    model = model_from_checkpoint(state).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recorded = None
    if state.metrics and state.metrics[-1].get("epoch") == state.epoch:
        recorded = state.metrics[-1].get("test_acc")
    return TrainedModel(
        model=model.eval(),
        classes=tuple(str(c) for c in state.classes),
        mean=torch.as_tensor(state.mean, dtype=torch.float32).cpu(),
        std=torch.as_tensor(state.std, dtype=torch.float32).cpu(),
        config=config,
        runtime=runtime,
        epoch=int(state.epoch),
        recorded_test_acc=recorded,
        path=path,
    )


def load_image(source: ImageSource) -> torch.Tensor:
    """One image file or PIL image as a uint8 (3, 32, 32) RGB tensor (see the module doc)."""
    if isinstance(source, Image.Image):
        return _to_tensor(source)
    path = Path(source)
    if not path.exists():
        raise DataError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file; pass image files")
    try:
        with Image.open(path) as im:
            return _to_tensor(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = "unknown format" if isinstance(e, UnidentifiedImageError) else oneline(e)
        raise DataError(
            f"not an image: {path} (Pillow cannot read it: {reason}); pass a PNG, JPEG or "
            "other image file"
        ) from None


def _to_tensor(im: Image.Image) -> torch.Tensor:
    im = ImageOps.exif_transpose(im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (SIDE, SIDE):
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.resize((SIDE, SIDE), RESAMPLE, box=(left, top, left + s, top + s))
    pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return pixels.view(SIDE, SIDE, 3).permute(2, 0, 1).contiguous()  # (3, H, W)


def to_batch(images: Images) -> torch.Tensor:
    """Images in any accepted form as one uint8 (N, 3, 32, 32) tensor on the CPU."""
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dtype != torch.uint8 or batch.dim() != 4 or tuple(batch.shape[1:]) != (3, 32, 32):
            raise ValueError(
                "image tensors must be uint8 (N, 3, 32, 32) or (3, 32, 32), got "
                f"{batch.dtype} {tuple(images.shape)}"
            )
        return batch.cpu()
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    tensors = [load_image(im) for im in images]
    if not tensors:
        return torch.empty(0, 3, SIDE, SIDE, dtype=torch.uint8)
    return torch.stack(tensors)


def predict(model: TrainedModel, images: Images, *, tta: bool = False) -> Predictions:
    """Class probabilities of images (tensors, PIL images or files; see the module doc)."""
    batch = to_batch(images)
    logits = _logits(model, batch)
    flipped = _logits(model, batch.flip(-1)) if tta else None
    probs, _, order = _rank(logits, flipped)
    return Predictions(probs, order, model.classes)


def evaluate_model(
    model: TrainedModel, images: torch.Tensor, labels: torch.Tensor, *, tta: bool = False
) -> Evaluation:
    """Loss, accuracy and confusion counts of uint8 images with labels; ``tta`` adds flip TTA."""
    batch = to_batch(images)
    if batch.shape[0] == 0:
        raise DataError("no images to evaluate; check the data folder and --limit-test")
    labels = labels.cpu()
    logits = _logits(model, batch)
    plain = _evaluation(*_rank(logits)[1:], labels, model.classes)
    if not tta:
        return plain
    flipped = _logits(model, batch.flip(-1))
    with_tta = _evaluation(*_rank(logits, flipped)[1:], labels, model.classes)
    return Evaluation(plain.classes, plain.loss, plain.acc, plain.confusion, tta=with_tta)


def select_test_split(
    model: TrainedModel, data: Cifar10, limit_test: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of ``data`` (its first ``limit_test`` images), checked against the model."""
    if tuple(data.classes) != model.classes:
        raise DataError(
            f"the data set's classes ({', '.join(data.classes)}) differ from the checkpoint's "
            f"({', '.join(model.classes)}); pass --data-dir with the data it was trained on"
        )
    limited = limit_splits(data, None, limit_test)
    return limited.test_images, limited.test_labels


def _rank(
    logits: torch.Tensor, flipped: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, log-probabilities and class ranking (N, C) each, from logits (N, C).

    With ``flipped`` (the logits of the mirror images), the probabilities are the mean of the
    two softmaxes. Classes are ranked by probability, ties (from rounding) by the logits, so
    the plain top-1 is exactly ``logits.argmax(1)`` as in training's evaluation, and a
    mirror-symmetric image (``flipped == logits``) keeps its plain ranking under TTA.
    """
    if flipped is None:
        order = logits.argsort(dim=1, descending=True, stable=True)
        return logits.softmax(1), logits.log_softmax(1), order
    probs = (logits.softmax(1) + flipped.softmax(1)) / 2
    log_probs = tta_log_probs(logits, flipped)  # log of probs, without underflow to -inf
    order = (logits + flipped).argsort(dim=1, descending=True, stable=True)
    by_prob = probs.gather(1, order).argsort(dim=1, descending=True, stable=True)
    return probs, log_probs, order.gather(1, by_prob)


def _logits(model: TrainedModel, images: torch.Tensor) -> torch.Tensor:
    if images.shape[0] == 0:
        return torch.empty(0, len(model.classes))
    return predict_logits(
        model.model,
        images,
        model.mean,
        model.std,
        model.runtime,
        batch_size=model.config.eval_batch_size,
    )


def _evaluation(
    log_probs: torch.Tensor, order: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]
) -> Evaluation:
    c = len(classes)
    predicted = order[:, 0]
    loss = F.nll_loss(log_probs, labels, reduction="none").double().mean().item()
    confusion = confusion_matrix(predicted, labels, c)
    acc = (predicted == labels).sum().item() / labels.shape[0]
    return Evaluation(tuple(classes), loss, acc, confusion)


# ---------------------------------------------------------------------------------------------
# Tables for the terminal


def evaluation_table(result: Evaluation) -> str:
    """Summary, per-class accuracy and confusion counts as aligned plain-text tables."""
    final = result.tta or result
    lines = [f"test images  {result.n:,}", _summary_line("plain", result)]
    if result.tta is not None:
        gain = result.tta.acc - result.acc
        lines.append(f"{_summary_line('flip TTA', result.tta)}  ({gain * 100:+.2f} points)")
    lines.append("")
    header = ["class", "images", "correct", "accuracy"]
    if result.tta is not None:
        header.append("with TTA")
    rows = []
    totals = result.confusion.sum(1).tolist()
    plain_acc = result.per_class_acc
    tta_acc = result.tta.per_class_acc if result.tta is not None else None
    for i, name in enumerate(result.classes):
        row = [name, f"{totals[i]:,}", f"{int(result.confusion[i, i]):,}", _pct(plain_acc[i])]
        if tta_acc is not None:
            row.append(_pct(tta_acc[i]))
        rows.append(row)
    lines += _align([header, *rows], right_from=1)
    lines.append("")
    title = "confusion counts (rows: true class, columns: predicted"
    title += ", with TTA)" if result.tta is not None else ")"
    lines.append(title)
    short = _short_names(result.classes)
    matrix = [["", *short]]
    for i, name in enumerate(result.classes):
        matrix.append([name, *(str(v) for v in final.confusion[i].tolist())])
    lines += _align(matrix, right_from=1)
    return "\n".join(lines)


def evaluation_record(
    model: TrainedModel, result: Evaluation, data: str, limit: int | None, source: str | Path
) -> dict[str, Any]:
    """``cifar-resnet evaluate --json``: the model, the data and every figure of ``result``."""
    return {
        "checkpoint": str(model.path or source),
        "epoch": model.epoch,
        "device": model.runtime.describe(),
        "data": data,
        "split": "test",
        "limit_test": limit,
        "recorded_test_acc": model.recorded_test_acc,
        "classes": list(model.classes),
        **result.to_dict(),
    }


def prediction_records(
    names: Sequence[str], predictions: Predictions, k: int = 3
) -> list[dict[str, Any]]:
    """``cifar-resnet predict --json``: each image's top k and every class's probability."""
    return [
        {
            "image": name,
            "top_k": [{"class": c, "prob": p} for c, p in top],
            "probs": dict(zip(predictions.classes, probs, strict=True)),
        }
        for name, top, probs in zip(
            names, predictions.top_k(k), predictions.probs.tolist(), strict=True
        )
    ]


def prediction_table(names: Sequence[str], predictions: Predictions, k: int = 3) -> str:
    """One row per image: its name, then the k most probable classes with probabilities."""
    ranked = predictions.top_k(k)
    k = len(ranked[0]) if ranked else k
    ordinal = ["1st", "2nd", "3rd"]
    header = ["image"]
    for j in range(k):
        header += [ordinal[j] if j < 3 else f"{j + 1}th", "prob"]
    rows = [header]
    for name, top in zip(names, ranked, strict=True):
        row = [str(name)]
        for cls, p in top:
            row += [cls, f"{p:.1%}"]
        rows.append(row)
    right = {2 * j + 2 for j in range(k)}
    return "\n".join(_align(rows, right_cols=right))


def _summary_line(label: str, result: Evaluation) -> str:
    return f"{label:<10}   accuracy {result.acc:.2%}  loss {result.loss:.4f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _short_names(classes: Sequence[str], width: int = 5) -> list[str]:
    """Column headers: names cut to ``width`` characters, or indices when that makes clashes."""
    short = [c[:width] for c in classes]
    if len(set(short)) < len(short):
        return [str(i) for i in range(len(classes))]
    return short


def _align(
    rows: list[list[str]], *, right_from: int | None = None, right_cols: set[int] | None = None
) -> list[str]:
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            right = (right_from is not None and j >= right_from) or (
                right_cols is not None and j in right_cols
            )
            cells.append(cell.rjust(widths[j]) if right else cell.ljust(widths[j]))
        out.append("  ".join(cells).rstrip())
    return out
