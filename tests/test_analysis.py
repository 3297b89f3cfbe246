import json

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cifar_resnet import cli
from cifar_resnet.data.load import channel_stats
from cifar_resnet.insight.analysis import (
    augmented_view,
    class_counts,
    data_figures,
    format_summary,
    sample_indices,
    summarize_data,
)


def test_summary_counts_classes_and_channel_stats(synthetic):
    s = summarize_data(synthetic)
    assert s.train_counts == [60] * 10 and s.test_counts == [20] * 10
    mean, std = channel_stats(synthetic.train_images)
    assert s.mean == pytest.approx(mean.tolist()) and s.std == pytest.approx(std.tolist())
    assert s.classes == synthetic.classes
    assert json.loads(json.dumps(s.to_dict()))["classes"][0] == "airplane"
    text = format_summary(s)
    assert "airplane" in text and "total" in text and f"{s.mean[0]:.4f}" in text


def test_class_counts_include_empty_classes():
    assert class_counts(torch.tensor([0, 2, 2]), 4) == [1, 0, 2, 0]


def test_sample_indices_one_of_each_class_per_row(synthetic):
    idx = sample_indices(synthetic.train_labels, 10, per_class=3, seed=1)
    labels = synthetic.train_labels[idx].view(3, 10)
    assert (labels == torch.arange(10)).all()
    assert idx.unique().numel() == 30
    assert torch.equal(idx, sample_indices(synthetic.train_labels, 10, per_class=3, seed=1))


def test_augmented_view_without_augmentation_round_trips(synthetic):
    images = synthetic.train_images[:8]
    mean, std = channel_stats(synthetic.train_images)
    same = augmented_view(images, mean, std, padding=0, cutout=0, flip_prob=0.0)
    assert same.dtype == torch.uint8 and torch.equal(same, images)


def test_augmented_view_applies_training_augmentation(synthetic):
    images = synthetic.train_images[:16]
    mean, std = channel_stats(synthetic.train_images)
    out = augmented_view(images, mean, std, padding=0, cutout=8, flip_prob=0.0, seed=3)
    # CutOut: an 8x8 hole of the mean colour in every image, the rest untouched.
    hole_colour = (mean * 255).round().to(torch.uint8).view(3, 1, 1)
    changed = (out != images).any(1)  # (N, H, W)
    for i in range(16):
        assert 0 < changed[i].sum() <= 64
        ys, xs = torch.nonzero(changed[i], as_tuple=True)
        assert ys.max() - ys.min() < 8 and xs.max() - xs.min() < 8
        assert (out[i][:, ys, xs] == hole_colour.view(3, 1)).all()


def test_data_figures(synthetic):
    figs = data_figures(synthetic, per_class=2)
    assert set(figs) == {"class_distribution", "samples", "augmented"}
    assert all(isinstance(f, Figure) for f in figs.values())
    titles = [text.get_text() for text in figs["samples"].axes[0].texts]
    assert titles == list(synthetic.classes) * 2
    assert [text.get_text() for text in figs["augmented"].axes[0].texts] == titles


def test_cli_data_writes_stats_and_figures(pickle_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["data", "--data-dir", str(pickle_dir), "--cache-dir", str(tmp_path / "cache")]
    code = cli.main([*argv, "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    stats = json.loads((out / "data.json").read_text())
    assert stats["train_counts"] == [60] * 10 and len(stats["mean"]) == 3
    for name in ("class_distribution", "samples", "augmented"):
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert "airplane" in printed and "data.json" in printed
    # A second analysis into the same folder needs --force.
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(out), "--quiet", "--force"]) == 0


def test_cli_data_missing_folder_is_one_line(tmp_path, capsys):
    code = cli.main(["data", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err
    assert not (tmp_path / "o").exists()
