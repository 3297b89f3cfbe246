import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cifar_resnet.data.load import CLASSES
from cifar_resnet.inference.metrics import select_misclassified
from cifar_resnet.plots import (
    figure_png,
    plot_class_distribution,
    plot_confusion_matrix,
    plot_gradcam,
    plot_image_grid,
    plot_lr_finder,
    plot_lr_schedule,
    plot_misclassified,
    plot_per_class_accuracy,
    plot_training_curves,
)
from cifar_resnet.records.records import LRFinderResult

METRICS = [
    {
        "epoch": e,
        "lr": 1e-3,
        "train_loss": 2.0 / e,
        "train_acc": 0.3 * e,
        "test_loss": 2.2 / e,
        "test_acc": 0.25 * e,
        "seconds": 1.0,
    }
    for e in (1, 2, 3)
]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _titled_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


def test_figure_png_renders_without_pyplot():
    fig = plot_lr_schedule([1e-4, 1e-3, 1e-4])
    png = figure_png(fig, dpi=50)
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (350, 170)  # 7 x 3.4 inches at 50 dpi
    assert fig.canvas.manager is None  # not registered with pyplot: no global state, no GUI


def test_class_distribution_bars_per_class_and_split():
    train, test = [60 + i for i in range(10)], [20] * 10
    fig = plot_class_distribution(train, test, CLASSES)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "images"
    heights = [p.get_height() for p in ax.patches]
    assert heights == train + test
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train (645)", "test (200)"]


def _grid_titles(fig: Figure) -> list[str]:
    (ax,) = fig.axes
    return [t.get_text() for t in ax.texts]


def test_image_grid_tiles_the_images_in_order_each_under_its_title():
    images = _images(7)
    titles = [f"img {i}\nline 2" for i in range(7)]
    fig = plot_image_grid(images, titles, ncols=4, title="grid", title_colors=["red"] * 7)
    (ax,) = fig.axes  # one picture, not an Axes per image
    (shown,) = ax.get_images()
    canvas = np.asarray(shown.get_array())
    assert _grid_titles(fig) == titles and fig.get_suptitle() == "grid"
    assert all(t.get_color() == "red" for t in ax.texts)
    tiles = []
    for i, text in enumerate(ax.texts):
        x, y = text.get_position()  # centred over its tile, just above it
        top, left = round(y + 1.5), round(x + 0.5 - 16)
        tile = canvas[top : top + 32, left : left + 32]
        assert tile.tolist() == images[i].permute(1, 2, 0).tolist()
        tiles.append((top, left))
    assert len({top for top, _ in tiles}) == 2 and len({left for _, left in tiles}) == 4  # 2 x 4
    top, left = tiles[4][0], tiles[3][1]  # the eighth cell: empty, white
    assert (canvas[top : top + 32, left : left + 32] == 255).all()
    # the figure's aspect is the picture's, so the tiles stay square
    width, height = fig.get_size_inches()
    box = ax.get_position()
    assert width * box.width / (height * box.height) == pytest.approx(
        canvas.shape[1] / canvas.shape[0], rel=1e-6
    )


def test_training_curves_two_axes_train_and_test():
    fig = plot_training_curves(METRICS)
    loss, acc = fig.axes
    assert loss.get_title() == "loss" and acc.get_title() == "accuracy"
    assert loss.get_xlabel() == acc.get_xlabel() == "epoch"
    assert acc.get_ylabel() == "accuracy (%)"
    for ax in (loss, acc):
        assert [line.get_label() for line in ax.get_lines()[:2]] == ["train", "test"]
    assert list(acc.get_lines()[1].get_ydata()) == pytest.approx([25, 50, 75])
    assert list(loss.get_lines()[0].get_xdata()) == [1, 2, 3]


def test_lr_schedule_plots_every_step_against_epochs():
    lrs = [1e-4 + i * 1e-4 for i in range(10)] + [1e-3 - i * 1e-4 for i in range(10)]
    fig = plot_lr_schedule(lrs, steps_per_epoch=5)
    (ax,) = fig.axes
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == lrs
    assert line.get_xdata()[-1] == pytest.approx(4.0)  # 20 steps = 4 epochs
    assert ax.get_ylabel() == "learning rate"
    assert ax.get_xlabel().startswith("epoch")
    assert "20 steps" in ax.get_title()
    assert plot_lr_schedule(lrs).axes[0].get_xlabel() == "optimizer step"


def test_confusion_matrix_shows_counts_with_class_ticks():
    m = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 4]])
    fig = plot_confusion_matrix(m, ["a", "b", "c"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "actual class"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "0", "2", "3", "0", "0", "0", "4"]
    frac = ax.get_images()[0].get_array()
    assert frac[1, 0] == pytest.approx(0.4)  # 2 of the 5 actual "b" predicted "a"
    assert "15 test images" in ax.get_title()


def test_per_class_accuracy_bars_in_percent():
    fig = plot_per_class_accuracy(torch.tensor([0.5, 1.0, 0.25]), ["a", "b", "c"], overall=0.6)
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == pytest.approx([50, 100, 25])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_xlabel() == "test accuracy (%)"
    assert ax.get_legend().get_texts()[0].get_text() == "overall 60.00%"


def test_misclassified_gallery_titles_name_predicted_actual_and_confidence():
    logits = torch.tensor([[0.0, 3.0], [3.0, 0.0], [0.0, 1.0]])
    mistakes = select_misclassified(logits, torch.tensor([0, 0, 0]))
    fig = plot_misclassified(_images(2), mistakes, ["cat", "dog"])
    assert _grid_titles(fig) == ["pred dog 95%\nactual cat", "pred dog 73%\nactual cat"]


def test_gradcam_figure_image_and_two_maps_per_mistake():
    logits = torch.tensor([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0]])
    mistakes = select_misclassified(logits, torch.tensor([0, 0, 0]))
    cams = torch.zeros(3, 32, 32)
    cams[:, :, 16:] = 1.0  # cold on the left half, hot on the right
    images = _images(3)
    fig = plot_gradcam(images, cams, cams, mistakes, ["cat", "dog"], layer="layer2")
    titles = _grid_titles(fig)
    assert len(titles) == 9  # image, CAM of the predicted class, CAM of the actual one
    assert titles[1:3] == ["CAM dog\n(predicted)", "CAM cat\n(actual)"]
    assert "layer2" in fig.get_suptitle()
    (ax,) = fig.axes
    canvas = np.asarray(ax.get_images()[0].get_array()).astype(float)
    x, y = ax.texts[0].get_position()
    top, left = round(y + 1.5), round(x + 0.5 - 64)  # tiles are 4x the image: 128 pixels
    image = images[0].permute(1, 2, 0).float().numpy()
    assert (canvas[top : top + 128 : 4, left : left + 128 : 4] == image).all()
    x, y = ax.texts[1].get_position()
    top, left = round(y + 1.5), round(x + 0.5 - 64)
    # half the image, half jet's blue (0, 0, 0.5) at 0 and its dark red (0.5, 0, 0) at 1
    cold, hot = canvas[top + 40, left + 20], canvas[top + 40, left + 108]
    assert cold == pytest.approx(0.5 * image[10, 5] + [0, 0, 0.5 * 127.5], abs=1)
    assert hot == pytest.approx(0.5 * image[10, 27] + [0.5 * 127.5, 0, 0], abs=1)


def test_gradcam_figure_of_no_mistake_is_an_empty_titled_grid():
    none = select_misclassified(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    empty = torch.zeros(0, 3, 32, 32)
    fig = plot_gradcam(_images(0), empty, empty, none, ["cat", "dog"], layer="layer2")
    assert _grid_titles(fig) == [] and "layer2" in fig.get_suptitle()
    assert figure_png(fig, dpi=20).startswith(b"\x89PNG")


def test_lr_finder_figure_rebuilds_from_json_dict():
    result = LRFinderResult(
        lrs=[1e-5, 1e-4, 1e-3],
        losses=[2.3, 2.0, 2.5],
        smoothed=[2.3, 2.1, 2.2],
        max_lr=1e-5,
        min_lr=1e-6,
        rule="valley",
        min_lr_divisor=10.0,
        diverged=False,
    )
    fig = plot_lr_finder(LRFinderResult(**result.to_dict()))
    assert fig.axes[0].get_xlabel() == "learning rate"
