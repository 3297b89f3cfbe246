"""The safetensors export in the Hugging Face layout (inference/hub.py) and loading it back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_cli


@pytest.fixture
def trained(tiny_run, tmp_path) -> Path:
    """A copy of the shared one-epoch run (``TINY_RUN``, trained through the command line)."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_safetensors_export_reloads_without_pickle_with_the_same_logits(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    from cifar_resnet import load_model
    from cifar_resnet.model.custom_resnet import CustomResNet

    folder = tmp_path / "hub"
    code, out, err = run_cli(
        ["export", "--checkpoint", str(trained), "--format", "safetensors", "--out", str(folder),
         "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "app.py",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    net = CustomResNet(config["num_classes"], **config["model_options"]).eval()
    net.load_state_dict(load_file(str(folder / "model.safetensors")))  # no pickle involved
    original = load_model(trained).model.float().eval()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        assert (
            net(x) - original(x.contiguous(memory_format=torch.channels_last))
        ).abs().max() <= 1e-6
    final = json.loads((trained / "final.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"**{final['test_acc']:.2%}**" in card  # measured at export, equal to training's
    assert config["test_acc"] == final["test_acc"]
    assert config["classes"] == final["classes"] and config["mean"] == pytest.approx(final["mean"])
    assert "data_dir" not in config["training_config"]  # no local paths in a shared folder
    for name in final["classes"]:
        assert f"| {name} |" in card
    assert "Intended use and limits" in card


def test_load_model_predict_and_evaluate_accept_the_folder(trained, pickle_dir, tmp_path, capsys):
    from cifar_resnet import load_model

    folder = tmp_path / "hub"
    assert run_cli(["export", "--checkpoint", str(trained), "--format", "safetensors",
                    "--out", str(folder), "--quiet"], capsys)[0] == 0  # fmt: skip
    model = load_model(folder)
    assert model.classes == load_model(trained).classes
    code, out, err = run_cli(["evaluate", "--checkpoint", str(folder), "--data-dir",
                              str(pickle_dir), "--json", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    final = json.loads((trained / "final.json").read_text())
    assert json.loads(out)["test_acc"] == final["test_acc"]
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    code, out, err = run_cli(["predict", "--checkpoint", str(folder), str(image), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)


def test_safetensors_export_never_replaces_a_run_or_an_export_unasked(trained, tmp_path, capsys):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and p.name != ".lock"}
    code, _, err = run_cli(["export", "--checkpoint", str(trained), "--format", "safetensors",
                            "--out", str(trained), "--force", "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "holds something else" in err
    assert {p: p.read_bytes() for p in before} == before
    folder = tmp_path / "hub"
    argv = ["export", "--checkpoint", str(trained), "--format", "safetensors", "--out",
            str(folder), "--quiet"]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hub")) == []


def test_the_folders_app_py_builds_the_demo_page_of_its_model(trained, tmp_path, capsys):
    import runpy

    pytest.importorskip("gradio", reason="the demo extra is not installed")
    from cifar_resnet import load_model, predict

    folder = tmp_path / "hub"
    assert run_cli(["export", "--checkpoint", str(trained), "--format", "safetensors",
                    "--out", str(folder), "--quiet"], capsys)[0] == 0  # fmt: skip
    assert "python app.py" in (folder / "README.md").read_text()
    app = runpy.run_path(str(folder / "app.py"), run_name="app")  # not __main__: not served
    page = app["demo"]
    kinds = {type(block).__name__ for block in page.blocks.values()}
    assert {"File", "Image", "Label"} <= kinds and "Gallery" not in kinds  # no data: no strip
    # the page's classify runs the folder's model: same top class as predict on the folder
    fn = next(fn for fn in page.fns.values() if fn.api_name == "classify").fn
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (48, 32), (30, 160, 40)).save(image)
    _, view, cam, top, verdict = fn(str(image), False, "layer2")
    assert next(iter(top)) == predict(load_model(folder), [image]).names[0]
    assert view.shape == cam.shape == (256, 256, 3)
