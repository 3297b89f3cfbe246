import errno
import json

import pytest
import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.errors import CheckpointError
from cifar_resnet.records.records import RunSettings
from cifar_resnet.records.run_folder import RunFolder


def test_a_folder_holding_a_run_is_refused_unless_forced(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_json("config.json", {"a": 1})
    run.log_epoch({"epoch": 1})
    run.close()  # done writing: unlocked
    with pytest.raises(CheckpointError, match="--force"):
        RunFolder(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 1}
    RunFolder(tmp_path / "run", force=True)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    RunFolder(tmp_path / "other", resume=True)


def test_metrics_append_one_line_per_epoch_and_can_be_rewritten(tmp_path):
    run = RunFolder(tmp_path / "run")
    for e in (1, 2, 3):
        run.log_epoch({"epoch": e})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]
    run.rewrite_metrics([{"epoch": 1}])
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    run.save_checkpoint({"epoch": 1})
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        run.save_checkpoint({"epoch": 2})
    message = str(info.value)
    assert "No space left on device" in message and "previous version is kept" in message
    assert "\n" not in message
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.pt"]


def test_paths_that_cannot_be_written_are_one_line_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        RunFolder(blocker)
    with pytest.raises(CheckpointError, match="cannot write"):
        RunFolder(blocker / "run")


def test_an_unused_run_folder_is_removed_but_an_earlier_folder_is_kept(tmp_path):
    fresh = RunFolder(tmp_path / "new" / "run")
    fresh.abandon()
    assert not (tmp_path / "new").exists()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    RunFolder(tmp_path / "mine").abandon()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "mine" / "checkpoints").exists()

    used = RunFolder(tmp_path / "used")
    used.write_json("config.json", {})
    used.abandon()
    assert (tmp_path / "used" / "config.json").exists()


def test_run_settings_are_config_json_flat_and_read_back():
    config = TrainConfig(width=0.5).to_dict()
    settings = RunSettings(config, "found", False)
    assert list(settings.to_dict()) == [*config, "lr_source", "report"]
    assert RunSettings.from_dict(settings.to_dict()) == settings and not settings.reports
    unrecorded = RunSettings(config)  # a RunFolder given to fit by hand records no choice
    assert list(unrecorded.to_dict()) == [*config, "lr_source"] and unrecorded.reports
    assert RunSettings.written_by_a_run(settings.to_dict())
    assert not RunSettings.written_by_a_run({"width": 0.5, "report": True})
    assert RunSettings.from_dict({"width": 0.5, "report": True}).config == {"width": 0.5}
