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

``evaluate_model`` runs the training loop's own un-augmented path (``evaluation.predict_logits``)
with the checkpoint's saved mean/std (never recomputed) and eval batch size, so for a run
trained on the CPU its accuracy on the CPU is exactly the ``test_acc`` the run recorded. A
CUDA run is best evaluated on CUDA (same bf16 autocast); as cuDNN may pick other kernels from
one process to the next, a handful of near-tied images can still come out differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.load import Cifar10, check_same_classes
from ..data.splits import limit_splits
from ..errors import DataError, oneline
from ..model.custom_resnet import CustomResNet, load_weights
from ..records.checkpoint import config_from_checkpoint
from ..records.records import TrainState
from ..records.run_folder import RunRecord
from ..runtime import resolve_runtime, runnable_precision
from .calibration import calibration
from .evaluation import predict_logits, scores, tta_log_probs
from .metrics import confusion_matrix
from .types import SIDE, Evaluation, Predictions, TrainedModel

RESAMPLE = Image.Resampling.BICUBIC  # filter used to shrink larger images to SIDE x SIDE

ImageSource = str | Path | Image.Image
Images = torch.Tensor | ImageSource | Sequence[ImageSource]


def load_model(checkpoint: str | Path | TrainState, device: str = "cpu") -> TrainedModel:
    """The trained model of a checkpoint file, run folder, loaded checkpoint, or a folder
    written by ``export --format safetensors`` (see ``hub``)."""
    path: Path | None = None
    if isinstance(checkpoint, (str, Path)):
        from .hub import is_model_folder, load_folder

        if is_model_folder(checkpoint):
            return load_folder(checkpoint, device)
    if isinstance(checkpoint, TrainState):
        state = checkpoint
    else:
        record = RunRecord.open(checkpoint)
        state, path = record.state, record.checkpoint
    config = config_from_checkpoint(state)
    runtime = resolve_runtime(device, runnable_precision(config.precision, device))
    model = runtime.place(model_from_checkpoint(state))
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


def model_from_checkpoint(state: TrainState) -> CustomResNet:
    """The trained network of a checkpoint, in eval mode on the CPU.

    For a run with an EMA of the weights, the averaged weights: the model it evaluated.
    """
    config = config_from_checkpoint(state)
    model = CustomResNet(len(state.classes), **config.model_options())
    weights = state.model
    if state.ema is not None:  # AveragedModel's state: "module.<name>" and n_averaged
        prefix = "module."
        weights = {k[len(prefix) :]: v for k, v in state.ema.items() if k.startswith(prefix)}
    return load_weights(
        model, weights, "checkpoint weights do not fit the network its config describes",
        then="the file may have been edited or mixed up with another run's",
    )  # fmt: skip


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
    """Loss, accuracy, confusion counts and calibration of uint8 images with labels; ``tta``
    adds the same with flip TTA."""
    batch = to_batch(images)
    if batch.shape[0] == 0:
        raise DataError("no images to evaluate; check the data folder and --limit-test")
    labels = labels.cpu()
    logits = _logits(model, batch)
    plain = _evaluation(*_rank(logits)[1:], labels, model.classes)
    plain = dataclasses.replace(plain, calibration=calibration(logits, labels))
    if not tta:
        return plain
    flipped = _logits(model, batch.flip(-1))
    with_tta = _evaluation(*_rank(logits, flipped)[1:], labels, model.classes)
    with_tta = dataclasses.replace(with_tta, calibration=calibration(logits, labels, flipped))
    return dataclasses.replace(plain, tta=with_tta)


def select_test_split(
    model: TrainedModel, data: Cifar10, limit_test: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of ``data`` (its first ``limit_test`` images), checked against the model."""
    check_same_classes(data.classes, model.classes)
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
    predicted = order[:, 0]
    loss, hits = scores(log_probs, predicted, labels, torch.float64).tolist()
    n = labels.shape[0]
    return Evaluation(
        tuple(classes), loss / n, hits / n, confusion_matrix(predicted, labels, len(classes))
    )
