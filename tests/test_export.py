"""ONNX and TorchScript export: same logits as PyTorch, dynamic batch, metadata, safe writes."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from helpers import make_synthetic, run_cli

from cifar_resnet.config import TrainConfig
from cifar_resnet.errors import CifarResnetError
from cifar_resnet.inference.evaluation import predict_logits
from cifar_resnet.inference.export import NormalizedClassifier, export_model, read_metadata
from cifar_resnet.inference.predict import load_model
from cifar_resnet.inference.types import TrainedModel
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.runtime import resolve_runtime
from cifar_resnet.training.fit import fit

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A checkpoint trained for one epoch on the synthetic data, loaded back."""
    root = tmp_path_factory.mktemp("export")
    config = TrainConfig(
        width=0.25, epochs=1, peak_epoch=1, batch_size=100, max_lr=1e-2, device="cpu"
    )
    fit(config, make_synthetic(), run=RunFolder(root / "run"), progress=False)
    return load_model(root / "run")


def _batch_of_7(model: TrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """7 test images as float [0, 1] input, and PyTorch's fp32 logits for them (uint8 path).

    Exported files compute in fp32, whatever precision the run trained in.
    """
    images = make_synthetic().test_images[:7]
    fp32 = resolve_runtime("cpu", "fp32")
    expected = predict_logits(model.model, images, model.mean, model.std, fp32)
    return images.float() / 255, expected


def _check_metadata(meta: dict[str, str], model: TrainedModel) -> None:
    assert json.loads(meta["classes"]) == list(model.classes)
    assert json.loads(meta["mean"]) == pytest.approx(model.mean.tolist(), abs=1e-7)
    assert json.loads(meta["std"]) == pytest.approx(model.std.tolist(), abs=1e-7)
    assert "[0, 1]" in meta["input"] and "normalisation" not in meta["input"]
    assert "(images - mean) / std" in meta["normalization"]
    assert meta["epoch"] == "1"
    assert json.loads(meta["config"])["width"] == 0.25


def test_onnx_runs_in_onnxruntime_like_pytorch(model, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(model.path), "--format", "onnx", "--out", str(out)]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and out.is_file()
    assert "wrote" in stdout and "max |logit| difference" in stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp], [outp] = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("images", "logits")
    assert inp.type == "tensor(float)" and inp.shape[1:] == [3, 32, 32]
    assert isinstance(inp.shape[0], str)  # the batch axis is symbolic
    x, expected = _batch_of_7(model)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == (7, 10)
    assert (got - expected).abs().max().item() < 1e-4
    one = session.run(None, {"images": x[:1].numpy()})[0]
    assert torch.allclose(torch.from_numpy(one), expected[:1], atol=1e-4)
    _check_metadata(session.get_modelmeta().custom_metadata_map, model)
    _check_metadata(read_metadata(out), model)
    onnx.checker.check_model(onnx.load(str(out)))


def test_torchscript_runs_like_pytorch(model, tmp_path, capsys):
    out = tmp_path / "model.pt"
    argv = ["export", "--checkpoint", str(model.path), "--format", "torchscript", "--out", str(out)]
    code, _, _ = run_cli(argv, capsys)
    assert code == 0
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        loaded = torch.jit.load(str(out), map_location="cpu", _extra_files=extra)
    assert list(loaded.classes) == list(model.classes) and not loaded.training
    x, expected = _batch_of_7(model)
    with torch.inference_mode():
        got = loaded(x)
        assert loaded(x[:3]).shape == (3, 10)
    assert (got - expected).abs().max().item() < 1e-4
    _check_metadata(json.loads(extra["metadata.json"]), model)
    assert read_metadata(out) == json.loads(extra["metadata.json"])


def test_normalisation_is_the_first_step(model):
    wrapper = NormalizedClassifier(model.model, model.mean, model.std, list(model.classes))
    x, expected = _batch_of_7(model)
    with torch.inference_mode():
        assert torch.allclose(wrapper(x), expected, atol=1e-5)


def test_existing_out_is_refused_unless_forced(model, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    argv = ["export", "--checkpoint", str(model.path), "--format", "torchscript", "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("cifar-resnet: error: ") and "--force" in err
    assert out.read_bytes() == b"keep me"
    code, _, _ = run_cli([*argv, "--force"], capsys)
    assert code == 0 and out.read_bytes() != b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
    code, _, err = run_cli([*argv[:-1], str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err


def test_missing_onnx_packages_are_a_one_line_error(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import now raises ImportError
    with pytest.raises(CifarResnetError, match=r"needs onnxscript.*pip install"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_on_a_torch_without_its_exporter_is_a_one_line_error(model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(
        CifarResnetError, match=r"torch >= 2\.6 \(this is 2\.5\.1\+cpu\).*torchscript"
    ):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_read_metadata_refuses_other_files(model, tmp_path):
    checkpoint_zip = tmp_path / "state.pt"
    torch.save(model.model.state_dict(), checkpoint_zip)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    for path in (checkpoint_zip, text):
        with pytest.raises(CifarResnetError, match="not"):
            read_metadata(path)
    with pytest.raises(CifarResnetError, match="does not exist"):
        read_metadata(tmp_path / "gone.onnx")
    with pytest.raises(CifarResnetError, match="--format"):
        export_model(model, tmp_path / "m.tflite", "tflite")


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_page_fast_networks_export_as_plain_layers(tmp_path, format):
    """Whitening, CELU, frozen scales and ghost BatchNorm (a plain BatchNorm in evaluation)
    export and run like PyTorch."""
    from cifar_resnet.training.setup import build_model

    config = TrainConfig(recipe="page-fast", width=0.125)
    torch.manual_seed(0)
    net = build_model(config)
    net.fit_whitening(torch.randn(50, 3, 32, 32))
    net.train()(torch.randn(64, 3, 32, 32))  # running statistics from ghost batches
    trained = TrainedModel(net.eval(), tuple("abcdefghij"), torch.full((3,), 0.5),
                           torch.full((3,), 0.25), config, resolve_runtime("cpu", "fp32"),
                           epoch=1)  # fmt: skip
    result = export_model(trained, tmp_path / f"model.{format}", format)
    assert result.max_abs_diff < 1e-4
