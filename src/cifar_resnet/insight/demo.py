"""What the demo page shows of one image: the 32x32 view the network sees, its top-5 classes
and the Grad-CAM map of the top class; and the strip of test images to click on.

An uploaded file is read as ``cifar-resnet predict`` reads one (``inference.predict``'s
``load_image``: EXIF orientation, RGB, central square, bicubic to 32x32), so the page and
the command agree exactly. Before that, a file is refused with a message saying why when
it is empty, not an image Pillow reads, or over ``MAX_PIXELS``. The probabilities are
``predict``'s: with ``tta``, the mean of the softmaxes of the image and of its mirror image.
The map is ``grad_cam`` of the top class over the image as shown (not its mirror image), at
the block chosen, the report's (``layer2``) by default.

Nothing here imports Gradio: the page itself is ``demo_app``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.augment import normalize
from ..errors import DataError, oneline
from ..inference.predict import load_image, predict
from ..inference.types import TrainedModel
from ..plots import enlarge
from .gradcam import DEFAULT_LAYER, grad_cam

TOP_K = 5  # classes shown
MAX_PIXELS = 50_000_000  # larger uploads are refused: one takes 150 MB and more to decode
PER_CLASS = 3  # test images of each class in the strip
_WRONG = (214, 39, 40)  # frame of a misclassified test image in the strip (RGB)
_ASK = "drop a PNG, JPEG or other image file"


@dataclass(frozen=True, eq=False)
class Explanation:
    """What the page shows of one image."""

    view: torch.Tensor  # (3, 32, 32) uint8 RGB: the image as the network sees it
    top: list[tuple[str, float]]  # the TOP_K most probable (class, probability), best first
    cam: torch.Tensor  # (32, 32) float32 in [0, 1]: Grad-CAM of the top class
    layer: str  # the block Grad-CAM explains
    tta: bool  # probabilities averaged with the mirror image's


@dataclass(frozen=True, eq=False)
class Strip:
    """Test images to click on, a few of each class, with their true and predicted classes."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64: the true classes
    predicted: torch.Tensor  # (N,) int64: the model's top class, without TTA
    indices: torch.Tensor  # (N,) int64: each image's position in the test split
    classes: tuple[str, ...]

    def wrong(self, i: int) -> bool:
        """Whether the model takes image ``i`` for another class than its own."""
        return int(self.labels[i]) != int(self.predicted[i])

    def label(self, i: int) -> str:
        """The true class of image ``i``, marked with a cross when the model gets it wrong."""
        name = self.classes[int(self.labels[i])]
        return f"✗ {name}" if self.wrong(i) else name

    def caption(self, i: int) -> str:
        """The true class of image ``i``, and the predicted one when they differ."""
        true, predicted = int(self.labels[i]), int(self.predicted[i])
        if not self.wrong(i):
            return f"true class {self.classes[true]}"
        return f"true class {self.classes[true]}, taken for {self.classes[predicted]}"


def read_upload(path: str | Path) -> torch.Tensor:
    """An uploaded file as the uint8 (3, 32, 32) image ``predict`` would make of it; a
    ``DataError`` saying what is wrong when it cannot be used."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read the upload {name}: {oneline(e)}") from None
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes); {_ASK}")
    try:
        with Image.open(path) as im:  # reads the header only; pixels are decoded below
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                    f"the demo takes images up to {MAX_PIXELS / 1e6:.0f} megapixels"
                )
            return load_image(im)
    except Image.DecompressionBombError as e:
        raise DataError(f"{name} is too large to decode ({oneline(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "unknown format" if isinstance(e, UnidentifiedImageError) else oneline(e)
        raise DataError(f"{name} is not an image Pillow can read ({reason}); {_ASK}") from None


def explain(
    model: TrainedModel, image: torch.Tensor, *, tta: bool = False, layer: str = DEFAULT_LAYER
) -> Explanation:
    """Top classes and the Grad-CAM map of the top class of one uint8 (3, 32, 32) image."""
    predictions = predict(model, image, tta=tta)
    top = predictions.top_k(TOP_K)[0]
    device = model.runtime.device
    x = normalize(image.unsqueeze(0).to(device), model.mean.to(device), model.std.to(device))
    cam = grad_cam(model.model, x, predictions.labels, layer=layer)[0]  # (32, 32)
    return Explanation(view=image, top=top, cam=cam, layer=layer, tta=tta)


def make_strip(
    model: TrainedModel, images: torch.Tensor, labels: torch.Tensor, per_class: int = PER_CLASS
) -> Strip:
    """The first ``per_class`` test images of each class, ordered so that each run of
    ``len(classes)`` images holds one of every class, with the model's plain predictions."""
    n_classes = len(model.classes)
    firsts = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(n_classes)]
    order = [int(f[r]) for r in range(per_class) for f in firsts if r < len(f)]
    indices = torch.tensor(order, dtype=torch.long)
    chosen = images[indices]
    predicted = predict(model, chosen).labels if len(order) else indices
    return Strip(chosen, labels[indices].long(), predicted, indices, model.classes)


def thumbnail(strip: Strip, i: int, scale: int) -> np.ndarray:
    """Image ``i`` of the strip enlarged, in a red frame when the model got it wrong."""
    picture = enlarge(strip.images[i], scale).copy()
    if strip.wrong(i):
        edge = max(1, scale)
        for side in (np.s_[:edge], np.s_[-edge:]):
            picture[side, :] = _WRONG
            picture[:, side] = _WRONG
    return picture


def describe(result: Explanation) -> str:
    """One line of Markdown: the top class, its probability and how it was computed."""
    name, probability = result.top[0]
    how = "with flip TTA" if result.tta else "without TTA"
    return f"**{name}** {probability:.1%} ({how}; Grad-CAM of {name} at `{result.layer}`)"
