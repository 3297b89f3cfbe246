"""evaluate / predict / TTA on a checkpoint trained for one epoch on the synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_synthetic, run_cli, write_pickles
from PIL import Image
from torch import nn

from cifar_resnet.config import TrainConfig
from cifar_resnet.errors import DataError
from cifar_resnet.inference.evaluation import predict_logits
from cifar_resnet.inference.predict import (
    evaluate_model,
    load_image,
    load_model,
    predict,
    select_test_split,
    to_batch,
)
from cifar_resnet.inference.types import TrainedModel
from cifar_resnet.records.checkpoint import load_checkpoint
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.runtime import resolve_runtime
from cifar_resnet.training.fit import fit

LIMIT_TEST = 150  # the run evaluates on the first 150 of the 200 test images


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for one epoch of two steps (bf16 steps are slow on CPUs without
    bf16 units; what is checked here is inference); its config points at a pickles copy of
    the data."""
    root = tmp_path_factory.mktemp("inference")
    data = make_synthetic()
    pickles = write_pickles(root / "data", data)
    config = TrainConfig(
        data_dir=str(pickles),
        cache_dir=str(root / "cache"),
        limit_train=200,
        limit_test=LIMIT_TEST,
        width=0.25,
        epochs=1,
        peak_epoch=1,
        batch_size=100,
        max_lr=1e-2,
        device="cpu",
        precision="bf16",  # evaluate must reproduce a bf16 run exactly, in bf16
    )
    fit(config, data, run=RunFolder(root / "run"), progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def model(run: Path) -> TrainedModel:
    return load_model(run)


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cifar-resnet: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _save_png(image: torch.Tensor, path: Path) -> Path:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


class _HalvesModel(nn.Module):
    """Logits (N, 2): 10 x mean of the left half and of the right half of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * torch.stack([x[..., :16].mean((1, 2, 3)), x[..., 16:].mean((1, 2, 3))], 1)


def _halves_model() -> TrainedModel:
    return TrainedModel(
        model=_HalvesModel(),
        classes=("left", "right"),
        mean=torch.zeros(3),
        std=torch.ones(3),
        config=TrainConfig(device="cpu"),
        runtime=resolve_runtime("cpu"),
    )


# ---------------------------------------------------------------------------------------------
# load_model and evaluate


def test_load_model_carries_classes_normalisation_and_config(run, model):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert model.classes == tuple(state.classes) and len(model.classes) == 10
    assert torch.equal(model.mean, state.mean) and torch.equal(model.std, state.std)
    assert model.config.width == 0.25 and model.config.limit_test == LIMIT_TEST
    assert model.epoch == 1 and not model.model.training
    final = json.loads((run / "final.json").read_text())
    assert model.recorded_test_acc == final["test_acc"]
    assert final["precision"] == model.config.precision == model.runtime.precision == "bf16"


def test_evaluate_cli_reproduces_final_json_exactly(run, capsys):
    final = json.loads((run / "final.json").read_text())
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(run), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["n"] == LIMIT_TEST == final["test_images"]
    assert report["test_acc"] == final["test_acc"]  # exact, not approximate
    assert report["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    confusion = torch.tensor(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == LIMIT_TEST
    assert confusion.diagonal().sum() / LIMIT_TEST == final["test_acc"]
    per_class = report["per_class_acc"]
    assert list(per_class) == report["classes"]
    rows = confusion.sum(1)
    assert per_class["cat"] == confusion[3, 3].item() / rows[3].item()
    assert "tta" not in report


def test_evaluate_tta_and_table(run, capsys):
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(run), "--tta"], capsys)
    assert code == 0
    assert "flip TTA" in out and "points)" in out
    assert "automobile" in out and "with TTA" in out and "%" in out
    header = next(line for line in out.splitlines() if line.startswith("class"))
    assert header.split() == ["class", "images", "correct", "accuracy", "with", "TTA"]
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(run), "--tta", "--json"], capsys)
    report = json.loads(out)
    assert report["tta_gain"] == pytest.approx(report["tta"]["test_acc"] - report["test_acc"])
    assert sum(map(sum, report["tta"]["confusion"])) == LIMIT_TEST


def test_evaluate_overrides_limit_and_data_dir(run, tmp_path, capsys):
    data = make_synthetic()
    other = write_pickles(tmp_path / "copy", data)
    argv = ["evaluate", "--checkpoint", str(run), "--data-dir", str(other), "--json"]
    code, out, _ = run_cli(
        [*argv, "--cache-dir", str(tmp_path / "cache"), "--limit-test", "all"], capsys
    )
    assert code == 0 and json.loads(out)["n"] == 200
    code, out, _ = run_cli([*argv, "--limit-test", "20", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["n"] == 20


def test_evaluate_model_matches_training_logits(model):
    data = make_synthetic()
    images, labels = select_test_split(model, data, LIMIT_TEST)
    logits = predict_logits(model.model, images, model.mean, model.std, model.runtime)
    result = evaluate_model(model, images, labels)
    assert result.acc == (logits.argmax(1) == labels).sum().item() / LIMIT_TEST
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    assert result.tta is None


def test_select_test_split_refuses_other_classes(model):
    data = make_synthetic()
    renamed = type(data)(
        data.train_images,
        data.train_labels,
        data.test_images,
        data.test_labels,
        tuple(f"c{i}" for i in range(10)),
        "renamed",
    )
    with pytest.raises(DataError, match="differ from the checkpoint"):
        select_test_split(model, renamed)


# ---------------------------------------------------------------------------------------------
# TTA


def test_tta_is_applied_on_the_width_axis():
    model = _halves_model()
    left_bright = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    left_bright[..., :16] = 255
    plain = predict(model, left_bright).probs
    assert plain[0, 0] > 0.99  # the left half is bright
    # Mirroring left-right makes the two halves swap; the average is then exactly even.
    assert torch.allclose(predict(model, left_bright, tta=True).probs, torch.full((1, 2), 0.5))
    # An image that is only top/bottom asymmetric is its own mirror image: TTA changes nothing.
    # (Flipping the height axis instead would fail both checks.)
    top_bright = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    top_bright[..., :16, :] = 255
    top_bright[..., :16, :8] = 0
    top_bright[..., :16, 24:] = 0
    assert torch.equal(predict(model, top_bright, tta=True).probs, predict(model, top_bright).probs)
    result = evaluate_model(model, left_bright, torch.tensor([0]), tta=True)
    assert result.acc == 1.0 and result.tta.loss == pytest.approx(-torch.log(torch.tensor(0.5)))


def test_tta_is_the_mean_of_the_two_softmaxes(model):
    images = make_synthetic().test_images[:16]
    expected = (
        predict_logits(model.model, images, model.mean, model.std, model.runtime).softmax(1)
        + predict_logits(
            model.model, images.flip(-1), model.mean, model.std, model.runtime
        ).softmax(1)
    ) / 2
    assert torch.allclose(predict(model, images, tta=True).probs, expected, atol=1e-6)


def test_tta_never_changes_the_prediction_of_a_symmetric_image(model):
    images = make_synthetic().test_images[:64]
    symmetric = torch.cat([images[..., :16], images[..., :16].flip(-1)], -1)  # (N, 3, 32, 32)
    assert torch.equal(symmetric, symmetric.flip(-1))
    plain, tta = predict(model, symmetric), predict(model, symmetric, tta=True)
    assert torch.equal(tta.labels, plain.labels)
    assert torch.equal(tta.order, plain.order)
    assert torch.allclose(tta.probs, plain.probs, atol=1e-7)
    labels = torch.arange(64) % 10
    result = evaluate_model(model, symmetric, labels, tta=True)
    assert result.tta.acc == result.acc
    assert torch.equal(result.tta.confusion, result.confusion)


# ---------------------------------------------------------------------------------------------
# predict


def test_predict_on_png_files_agrees_with_evaluate(model, tmp_path, capsys):
    images = make_synthetic().test_images[:12]
    paths = [_save_png(im, tmp_path / f"test_{i}.png") for i, im in enumerate(images)]
    from_files = predict(model, paths)
    logits = predict_logits(model.model, images, model.mean, model.std, model.runtime)
    assert torch.equal(from_files.labels, logits.argmax(1))  # evaluate's top-1
    # evaluate scores every image right when given predict's top-1 as the labels
    assert evaluate_model(model, images, from_files.labels).acc == 1.0
    assert torch.allclose(from_files.probs.sum(1), torch.ones(12))

    code, out, _ = run_cli(
        ["predict", "--checkpoint", str(model.path), "--json", "--top-k", "2", *map(str, paths)],
        capsys,
    )
    assert code == 0
    rows = json.loads(out)["predictions"]
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    assert [r["top_k"][0]["class"] for r in rows] == from_files.names
    assert all(len(r["top_k"]) == 2 and len(r["probs"]) == 10 for r in rows)
    assert rows[0]["top_k"][0]["prob"] >= rows[0]["top_k"][1]["prob"]


def test_predict_table(model, tmp_path, capsys):
    path = _save_png(make_synthetic().test_images[0], tmp_path / "a.png")
    code, out, _ = run_cli(["predict", "--checkpoint", str(model.path), str(path)], capsys)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["image", "1st", "prob", "2nd", "prob", "3rd", "prob"]
    assert row.startswith(str(path)) and row.count("%") == 3
    assert row.split()[1] in model.classes


def test_predict_accepts_tensors_pil_images_and_paths(model, tmp_path):
    images = make_synthetic().test_images[:3]
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    paths = [_save_png(im, tmp_path / f"{i}.png") for i, im in enumerate(images)]
    expected = predict(model, images).probs
    assert torch.equal(predict(model, pil).probs, expected)
    assert torch.equal(predict(model, paths).probs, expected)
    assert torch.allclose(predict(model, images[0]).probs, expected[:1], atol=1e-6)
    assert predict(model, str(paths[1])).names == [model.classes[expected[1].argmax()]]
    top = predict(model, images).top_k(20)  # more than there are classes: all, best first
    probs = [p for _, p in top[0]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True)


def test_load_image_converts_any_size_and_mode():
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    wide = torch.zeros(3, 32, 96, dtype=torch.uint8)
    wide[..., 32:64] = x  # the central square of a 96x32 image
    assert torch.equal(load_image(Image.fromarray(wide.permute(1, 2, 0).numpy())), x)
    for im in (
        Image.new("RGBA", (640, 480), (200, 10, 10, 128)),
        Image.new("L", (20, 50), 77),
        Image.new("P", (33, 33)),
        Image.new("I;16", (64, 64)),
    ):
        t = load_image(im)
        assert t.shape == (3, 32, 32) and t.dtype == torch.uint8
    assert load_image(Image.new("L", (20, 50), 77)).unique().tolist() == [77]
    with pytest.raises(ValueError, match="uint8"):
        to_batch(torch.zeros(2, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2


def test_predict_bad_images_are_one_line_errors(model, tmp_path, capsys):
    good = _save_png(make_synthetic().test_images[0], tmp_path / "good.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    ckpt = str(model.path)
    code, out, err = run_cli(["predict", "--checkpoint", ckpt, str(good), str(text)], capsys)
    _assert_one_line_error(code, err, "not an image", str(text))
    assert out == ""  # nothing printed for the good image before the failure
    code, _, err = run_cli(["predict", "--checkpoint", ckpt, str(tmp_path / "gone.jpg")], capsys)
    _assert_one_line_error(code, err, "does not exist", "gone.jpg")
    code, _, err = run_cli(["predict", "--checkpoint", ckpt, str(tmp_path)], capsys)
    _assert_one_line_error(code, err, "is a folder")
    code, _, err = run_cli(["predict", "--checkpoint", ckpt, "--top-k", "0", str(good)], capsys)
    _assert_one_line_error(code, err, "--top-k")


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_bad_checkpoints_are_one_line_errors(command, model, tmp_path, capsys):
    image = _save_png(make_synthetic().test_images[0], tmp_path / "x.png")
    extra = {
        "evaluate": [],
        "predict": [str(image)],
        "export": ["--out", str(tmp_path / "m.onnx")],
    }[command]
    other = tmp_path / "other.pt"
    torch.save({"format": "someone-else/3", "model": {}}, other)
    weights_only = tmp_path / "weights.pt"
    torch.save(model.model.state_dict(), weights_only)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    cases = [
        (tmp_path / "missing.pt", "does not exist"),
        (tmp_path, "no checkpoint in"),
        (other, "not a cifar-resnet checkpoint"),
        (weights_only, "not a cifar-resnet checkpoint"),
        (text, "not a readable checkpoint"),
    ]
    for path, needle in cases:
        code, _, err = run_cli([command, "--checkpoint", str(path), *extra], capsys)
        _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "m.onnx").exists()


def test_evaluate_bad_data_and_device_are_one_line_errors(run, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(run)]
    code, _, err = run_cli([*argv, "--data-dir", str(tmp_path / "nowhere")], capsys)
    _assert_one_line_error(code, err, "nowhere")
    code, _, err = run_cli([*argv, "--device", "gpu"], capsys)
    _assert_one_line_error(code, err, "--device")
    code, _, err = run_cli([*argv, "--limit-test", "-3"], capsys)
    _assert_one_line_error(code, err, "--limit-test")
    if not torch.cuda.is_available():
        code, _, err = run_cli([*argv, "--device", "cuda"], capsys)
        _assert_one_line_error(code, err, "CUDA is not available")
