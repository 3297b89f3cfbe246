import dataclasses

import pytest
import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.errors import CheckpointError
from cifar_resnet.inference.predict import model_from_checkpoint
from cifar_resnet.records.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from cifar_resnet.records.run_folder import RunFolder
from cifar_resnet.training.fit import fit


@pytest.fixture(scope="module")
def run(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    config = TrainConfig(  # the raw weights are the model: no EMA to tell apart from them
        width=0.25,
        epochs=1,
        peak_epoch=1,
        batch_size=100,
        max_lr=2e-3,
        ema_decay=0.0,
        device="cpu",
    )
    fit(config, synthetic, run=RunFolder(out), progress=False)
    return out


def _one_line(info):
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_run_folder_or_its_file_loads_into_the_same_model(run, synthetic):
    state = load_checkpoint(run)
    assert state.to_dict()["format"] == CHECKPOINT_FORMAT
    assert load_checkpoint(run / "checkpoints" / "last.pt").epoch == state.epoch == 1
    model = model_from_checkpoint(state)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state.model[k])


def test_byte_corruption_and_truncation_are_one_line_errors(run, tmp_path):
    raw = (run / "checkpoints" / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(truncated)
    assert "truncated.pt" in _one_line(info)
    flipped = bytearray(raw)
    for i in range(0, len(flipped), 997):  # corrupt bytes all through the file
        flipped[i] ^= 0xFF
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(corrupt)
    assert "corrupt.pt" in _one_line(info)


def test_other_formats_missing_files_and_empty_runs_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a cifar-resnet checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_weights_of_another_width_or_norm_are_refused(run):
    state = load_checkpoint(run)
    for change in ({"width": 0.5}, {"norm": "group"}):
        wrong = dataclasses.replace(state, config={**state.config, **change})
        with pytest.raises(CheckpointError) as info:
            model_from_checkpoint(wrong)
        assert "do not fit" in _one_line(info)


def test_the_run_records_its_resolved_precision_and_older_configs_load_as_fp32(run):
    from cifar_resnet.records.checkpoint import config_from_checkpoint

    state = load_checkpoint(run)
    assert state.config["precision"] in ("fp32", "bf16")  # what "auto" chose, not "auto"
    older = dataclasses.replace(
        state, config={k: v for k, v in state.config.items() if k != "precision"}
    )
    assert config_from_checkpoint(older).precision == "fp32"  # they all trained in fp32


def test_page_configs_saved_before_the_pipeline_options_load_as_what_they_ran(run):
    from cifar_resnet.records.checkpoint import config_from_checkpoint

    state = load_checkpoint(run)
    new = ("crop_pad_mode", "drop_last")
    saved = {k: v for k, v in state.config.items() if k not in new}
    older = dataclasses.replace(state, config={**saved, "recipe": "page"})
    page_now = TrainConfig.from_dict(older.config)
    assert (page_now.crop_pad_mode, page_now.drop_last) == ("reflect", True)  # a new page run
    loaded = config_from_checkpoint(older)
    assert (loaded.crop_pad_mode, loaded.drop_last) == ("zeros", False)  # what the old one ran


def test_time_to_accuracy_is_the_training_time_when_each_target_was_first_reached():
    from cifar_resnet.records.records import EpochMetrics, time_to_accuracy

    def epoch(n, seconds, acc, tta):
        return EpochMetrics(n, 0.1, 1.0, 0.5, 1.0, acc, seconds, 1.0, tta)

    epochs = [epoch(1, 10.0, 0.80, 0.86), epoch(2, 12.5, 0.905, 0.91), epoch(3, 11.0, 0.89, 0.93)]
    assert time_to_accuracy(epochs) == {"0.85": 22.5, "0.9": 22.5, "0.91": None, "0.92": None}
    assert time_to_accuracy(epochs, tta=True) == {
        "0.85": 10.0, "0.9": 22.5, "0.91": 22.5, "0.92": 33.5,
    }  # fmt: skip
    assert time_to_accuracy([]) == dict.fromkeys(("0.85", "0.9", "0.91", "0.92"))
