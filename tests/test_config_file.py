"""Settings in a file (config_file.py): TOML, YAML and JSON, --print-config, a run's config.json."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from cifar_resnet import TrainConfig, fit
from cifar_resnet.config import RECIPES, SPEC_EMA_DECAY
from cifar_resnet.config_file import format_config, read_config_file
from cifar_resnet.records.run_folder import RunFolder

QUICK = {"width": 0.25, "batch_size": 100, "epochs": 3, "peak_epoch": 1, "device": "cpu"}


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
