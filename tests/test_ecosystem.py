"""TensorBoard event files, config files, and the safetensors export in the Hugging Face layout."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, run_cli

from cifar_resnet import TrainConfig, fit
from cifar_resnet.config import RECIPES, SPEC_EMA_DECAY
from cifar_resnet.config_file import format_config, read_config_file
from cifar_resnet.records.checkpoint import load_checkpoint
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.training.epoch import Callbacks


@pytest.fixture
def event_accumulator():
    """tensorboard's own event reader; only the TensorBoard tests skip without the extra."""
    return pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard extra is not installed",
    )


# 600 training images in batches of 100: 6 steps an epoch.
QUICK = {"width": 0.25, "batch_size": 100, "epochs": 3, "peak_epoch": 1, "device": "cpu"}
SPE = 6


def _events(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def _steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


class _Crash(Exception):
    pass


def test_event_files_hold_steps_epochs_range_test_figures_and_hparams(
    synthetic, tmp_path, event_accumulator
):
    run = tmp_path / "run"
    config = TrainConfig(tensorboard=True, finder_num_iter=12, **QUICK)
    history = fit(config, synthetic, run=RunFolder(run), progress=False)
    acc = _events(run / "tb")
    total = 3 * SPE
    assert _steps(acc, "train/loss") == list(range(1, total + 1))
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(history.step_lrs)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert _steps(acc, f"epoch/{key}") == [SPE, 2 * SPE, 3 * SPE]
        assert [e.value for e in acc.Scalars(f"epoch/{key}")] == pytest.approx(
            [m[key] for m in history.epochs]
        )
    images = set(acc.Tags()["images"])
    assert "final/confusion_matrix" in images
    assert ("final/misclassified" in images) == (history.final["test_acc"] < 1)
    finder = _events(run / "tb" / "lr_find")
    assert [e.value for e in finder.Scalars("lr_find/loss")] == pytest.approx(
        history.lr_finder.losses
    )
    hparams = _events(run / "tb" / "hparams")
    assert hparams.Scalars("hparam/test_acc")[0].value == pytest.approx(history.final["test_acc"])


def test_a_resumed_run_continues_the_curves_without_duplicate_steps(
    synthetic, tmp_path, event_accumulator
):
    run = tmp_path / "run"
    # Batches of 140 with the partial one (40 of the 600 images) skipped: 4 steps an epoch.
    quick = {**QUICK, "batch_size": 140}
    config = TrainConfig(tensorboard=True, max_lr=2e-3, drop_last=True, **quick)
    spe = 4

    def crash_after_logging(metrics, epochs) -> None:
        if metrics.epoch == 2:  # epoch 2 is logged and flushed, its checkpoint never written
            raise _Crash

    with pytest.raises(_Crash):
        fit(
            config, synthetic, run=RunFolder(run), callbacks=Callbacks(on_epoch=crash_after_logging)
        )
    assert max(_steps(_events(run / "tb"), "train/loss")) == 2 * spe
    state = load_checkpoint(run)
    assert state.epoch == 1
    history = fit(config, synthetic, run=RunFolder(run, resume=True), resume=state, progress=False)
    acc = _events(run / "tb")
    assert _steps(acc, "train/loss") == list(range(1, 3 * spe + 1))  # each step once
    assert _steps(acc, "epoch/test_acc") == [spe, 2 * spe, 3 * spe]
    assert [e.value for e in acc.Scalars("epoch/test_acc")] == pytest.approx(
        [m["test_acc"] for m in history.epochs]
    )


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(
    pickle_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(pickle_dir), "--out", str(out), "--tensorboard", *TINY_RUN,
         "--max-lr", "1e-3", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        "cifar-resnet: error: --tensorboard needs the tensorboard package; install it with: "
        "pip install 'cifar-resnet[tensorboard]'"
    ]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Config files


@pytest.mark.parametrize("kind", ["toml", "yaml", "json"])
def test_print_config_fed_back_as_config_resolves_to_the_same_config(kind, tmp_path, capsys):
    flags = ["--width", "0.5", "--max-lr", "3e-3", "--recipe", "page", "--seed", "7",
             "--data-dir", str(tmp_path / "data"), "--no-tta"]  # fmt: skip
    code, printed, _ = run_cli(["train", *flags, "--print-config", kind], capsys)
    assert code == 0
    path = tmp_path / f"settings.{kind}"
    path.write_text(printed)
    code, again, _ = run_cli(["train", "--config", str(path), "--print-config"], capsys)
    assert code == 0 and again == printed
    config = TrainConfig(**read_config_file(path))
    assert (config.width, config.max_lr, config.recipe, config.seed, config.tta) == (
        0.5, 3e-3, "page", 7, False,
    )  # fmt: skip
    assert format_config(config, kind) == printed


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('width = 0.5\nepochs = 10\ndata_dir = "data"\n')
    code, printed, _ = run_cli(
        ["train", "--config", str(path), "--epochs", "12", "--print-config", "json"], capsys
    )
    assert code == 0
    settings = json.loads(printed)
    assert settings["width"] == 0.5 and settings["epochs"] == 12 and settings["batch_size"] == 512
    assert settings["data_dir"] == str(tmp_path / "data")  # relative to the file's folder


def test_another_recipe_with_a_saved_config_fills_in_its_own_values(tmp_path, capsys):
    """A saved config pins every resolved value; with --recipe page the ones the spec
    recipe filled in give way to Page's, while a setting of the file's own stays."""
    code, printed, _ = run_cli(["train", "--width", "0.5", "--print-config", "json"], capsys)
    assert code == 0
    path = tmp_path / "config.json"
    path.write_text(printed)
    argv = ["train", "--config", str(path), "--recipe", "page", "--print-config", "json"]
    code, printed, _ = run_cli(argv, capsys)
    assert code == 0
    page, expected = json.loads(printed), TrainConfig(recipe="page", width=0.5)
    assert {k: page[k] for k in RECIPES["page"]} == {
        k: getattr(expected, k) for k in RECIPES["page"]
    }
    assert page["width"] == 0.5 and page["recipe"] == "page"


def test_a_run_folders_config_json_repeats_the_run(synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    fit(TrainConfig(max_lr=2e-3, **QUICK), synthetic, run=RunFolder(run), progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert "lr_source" in saved
    config = TrainConfig(**read_config_file(run / "config.json"))
    assert config.to_dict() == {k: v for k, v in saved.items() if k in config.to_dict()}


def test_a_run_folder_saved_before_the_pipeline_options_repeats_what_it_trained(tmp_path):
    path = tmp_path / "config.json"
    older = {**TrainConfig(recipe="page").to_dict(), "lr_source": "given"}
    del older["crop_pad_mode"], older["drop_last"]
    path.write_text(json.dumps(older))
    config = TrainConfig(**read_config_file(path))
    assert (config.crop_pad_mode, config.drop_last) == ("zeros", False)
    path.write_text(json.dumps({"recipe": "page"}))  # a settings file of one's own: Page's
    config = TrainConfig(**read_config_file(path))
    assert (config.crop_pad_mode, config.drop_last) == ("reflect", True)


def test_a_spec_run_saved_before_the_ema_default_repeats_what_it_trained(tmp_path):
    path = tmp_path / "config.json"
    older = {**TrainConfig().to_dict(), "lr_source": "found"}
    del older["ema_decay"]  # spec runs then evaluated the raw weights
    path.write_text(json.dumps(older))
    assert TrainConfig(**read_config_file(path)).ema_decay == 0.0
    path.write_text(json.dumps({"recipe": "spec", "width": 0.5}))  # one's own file: today's spec
    assert TrainConfig(**read_config_file(path)).ema_decay == SPEC_EMA_DECAY


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("unknown.toml", "widht = 0.5\n", "unknown key 'widht'"),
        ("type.toml", 'epochs = "many"\n', "epochs"),
        ("type.yaml", "tta: maybe\n", "tta"),
        ("fraction.toml", "epochs = 24.0\n", "--epochs must be a whole number"),
        ("huge.json", '{"seed": 1' + "0" * 400 + "}", "--seed must be in"),
        ("range.json", '{"max_lr": 1e9}', "max_lr"),
        ("broken.json", "{", "not valid JSON"),
        ("list.yaml", "- 1\n", "expected a table"),
        ("settings.ini", "width = 1\n", "unknown config file type"),
        ("missing.toml", None, "cannot read config file"),
    ],
)
def test_each_bad_config_file_is_one_line_naming_the_file(name, text, needle, tmp_path, capsys):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    code, out, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-resnet: error: ")
    assert name in lines[0] and needle in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_config_with_resume_is_refused(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("width = 0.5\n")
    code, _, err = run_cli(["train", "--resume", str(tmp_path), "--config", str(path)], capsys)
    assert code == 2 and "--config starts a new run" in err


def test_yaml_reads_exponent_numbers_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_lr: 1e-3\nweight_decay: 5e-4\n")
    assert read_config_file(path) == {"max_lr": 1e-3, "weight_decay": 5e-4}


# ---------------------------------------------------------------------------------------------
# safetensors folder in the Hugging Face layout


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
