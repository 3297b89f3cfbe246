"""The benchmark scripts run end to end on a small synthetic data set and record what they print."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, make_synthetic, write_pickles
from PIL import Image

from cifar_resnet.runtime import resolve_runtime

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: its folder is on the path


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an imported module is (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_pickles(tmp_path_factory.mktemp("bench-data"), make_synthetic(400, 200))


def _only_file(folder: Path) -> dict:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def _speed(data_dir: Path, tmp_path: Path, *extra: str) -> dict:
    result = _script("speed").main(
        ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--width", "0.25",
         "--rounds", "1", "--workers", "0", "--device", "cpu", "--matmul-size", "256",
         "--results-dir", str(tmp_path / "results"), *extra]
    )  # fmt: skip
    assert _only_file(tmp_path / "results") == result
    flop = result["train_flop_per_image"]
    assert flop == pytest.approx(3 * 2 * 379.6e6 / 16, rel=0.02)  # width 0.25: 1/16 the MACs
    hw, paths = result["hardware"], result["paths"]
    base = paths["baseline (DataLoader, per-image transforms, fp32)"]["images_per_second"]
    for row in paths.values():
        (seconds,) = row["seconds_per_epoch"]
        assert row["images_per_second"] == pytest.approx(result["images_per_epoch"] / seconds)
        assert row["ratio_vs_baseline"] == pytest.approx(row["images_per_second"] / base)
        assert row["train_flops"] == pytest.approx(row["images_per_second"] * flop)
        assert row["fraction_of_matmul_fp32"] == pytest.approx(
            row["train_flops"] / hw["matmul_fp32_flops"]
        )
        assert (row["fraction_of_amx_peak"] is None) == (hw["amx_peak_flops"] is None)
    return result


@pytest.mark.slow
def test_speed_times_every_path_and_records_the_ratios(data_dir, tmp_path):
    # the bf16 paths left out by hand (auto leaves them out where bf16 is emulated, and slow)
    result = _speed(data_dir, tmp_path, "--images", "200", "--batch-size", "100", "--extras",
                    "--bf16-paths", "off")  # fmt: skip
    precision = resolve_runtime("cpu").precision
    expected = {
        f"cifar-resnet (default: {precision})",
        f"cifar-resnet ({precision}, NCHW)",
        f"cifar-resnet ({precision}, default malloc)",
        f"cifar-resnet ({precision}, fused Adam)",
        f"cifar-resnet ({precision}, torch.compile)",
        "baseline (DataLoader, per-image transforms, fp32)",
    }
    if precision == "bf16":  # auto chose bf16: the fp32 path is the one it did not choose
        expected |= {"cifar-resnet (fp32)", "cifar-resnet (bf16, oneDNN convolutions)"}
    assert set(result["paths"]) == expected
    assert result["bf16_paths"] == "left out: off"
    assert result["hardware"]["matmul_bf16_flops"] is None
    for row in result["paths"].values():
        assert row["ratio_vs_baseline_bf16"] is None and row["fraction_of_matmul_bf16"] is None


@pytest.mark.slow
def test_speed_times_the_bf16_paths_when_asked(data_dir, tmp_path):
    result = _speed(data_dir, tmp_path, "--images", "200", "--batch-size", "100",
                    "--bf16-paths", "on")  # fmt: skip
    paths, hw = result["paths"], result["hardware"]
    assert result["bf16_paths"] is True
    precision = resolve_runtime("cpu").precision
    other = "fp32" if precision == "bf16" else "bf16"
    expected = {
        f"cifar-resnet (default: {precision})", f"cifar-resnet ({other})",
        "baseline (DataLoader, per-image transforms, fp32)", "baseline + bf16 autocast",
    }  # fmt: skip
    if precision == "bf16":
        expected.add("cifar-resnet (bf16, oneDNN convolutions)")
    assert set(paths) == expected
    base_bf16 = paths["baseline + bf16 autocast"]["images_per_second"]
    for row in paths.values():
        assert row["ratio_vs_baseline_bf16"] == pytest.approx(row["images_per_second"] / base_bf16)
        assert row["fraction_of_matmul_bf16"] == pytest.approx(
            row["train_flops"] / hw["matmul_bf16_flops"]
        )


def test_bf16_paths_are_timed_where_the_device_has_bf16_units(monkeypatch):
    speed = _script("speed")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for has in (True, False):
        monkeypatch.setattr(speed, "cpu_has_bf16", lambda has=has: has)
        assert speed.bf16_paths("auto", cpu) is has
        assert speed.bf16_paths("auto", gpu) is True
        assert speed.bf16_paths("on", cpu) is True and speed.bf16_paths("off", gpu) is False


def test_profile_splits_an_epoch_into_phases_and_lists_operators(data_dir, tmp_path):
    result = _script("profile_epoch").main(
        ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--width", "0.25",
         "--images", "300", "--batch-size", "100", "--device", "cpu",
         "--results-dir", str(tmp_path / "results")]
    )  # fmt: skip
    assert _only_file(tmp_path / "results") == result
    phases = result["phases"]
    assert list(phases) == [
        "augmentation",
        "forward",
        "backward",
        "optimizer",
        "bookkeeping",
        "eval",
    ]
    assert all(phases[p]["count"] == 3 for p in list(phases)[:5]) and phases["eval"]["count"] == 1
    shares = [row["share_of_step"] for row in phases.values() if row["share_of_step"] is not None]
    assert sum(shares) == pytest.approx(1.0)
    assert result["augmentation_share_of_step"] == phases["augmentation"]["share_of_step"]
    assert result["test_images"] == 200 and result["steps"] == 3
    ops = result["top_operators"]
    assert ops and [r["self_ms"] for r in ops] == sorted((r["self_ms"] for r in ops), reverse=True)
    assert any("convolution" in r["op"] for r in ops)


def test_train_bench_records_each_seed_and_their_spread(data_dir, tmp_path):
    from cifar_resnet.records.machine import machine

    result = _script("train_bench").main(
        ["--name", "tiny", "--seeds", "0", "1", "--data-dir", str(data_dir),
         "--cache-dir", str(tmp_path / "cache"), "--max-lr", "2e-3", *TINY_RUN,
         "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results")]
    )  # fmt: skip
    assert _only_file(tmp_path / "results") == result
    assert result["seeds"] == [0, 1]
    accs = [r["test_acc"] for r in result["runs"]]
    assert result["test_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert result["test_acc"]["std"] == pytest.approx(statistics.stdev(accs))
    for seed, run in zip([0, 1], result["runs"], strict=True):
        final = json.loads((tmp_path / f"run-seed{seed}" / "final.json").read_text())
        assert run["final"] == final and final["seed"] == seed and final["test_images"] == 200
        # every epoch names what trained it; one machine throughout is the run's machine
        assert final["machine"] == run["machine"] == machine() and "machines" not in run
        assert all(e["machine"] == {**machine(), "device": "cpu"} for e in run["epochs"])
    # the same two folders, recorded afterwards as finished runs, give the same figures
    again = _script("train_bench").main(
        ["--name", "tiny-again", "--from-run", str(tmp_path / "run-seed0"),
         str(tmp_path / "run-seed1"), "--results-dir", str(tmp_path / "again")]
    )  # fmt: skip
    assert again["seeds"] == [0, 1] and again["test_acc"] == result["test_acc"]
    assert [r["final"] for r in again["runs"]] == [r["final"] for r in result["runs"]]
    # a seed recorded later joins an earlier file, named as it is in the results folder
    bench, alone = _script("train_bench"), tmp_path / "alone"
    bench.main(["--name", "tiny", "--from-run", str(tmp_path / "run-seed0"),
                "--results-dir", str(alone)])  # fmt: skip
    (earlier,) = alone.glob("*.json")
    joined = bench.main(
        ["--name", "tiny", "--from-run", str(tmp_path / "run-seed1"),
         "--with-results", earlier.name, "--results-dir", str(alone)]
    )  # fmt: skip
    assert joined["seeds"] == [1, 0] and joined["runs"][1]["recorded_in"] == earlier.name
    assert joined["test_acc"]["mean"] == pytest.approx(result["test_acc"]["mean"])


def test_a_run_resumed_on_another_machine_is_recorded_with_each_machines_epochs(tmp_path):
    bench = _script("train_bench")
    xeon, epyc = {"cpu": "Intel Xeon", "amx_bf16": True}, {"cpu": "AMD EPYC", "amx_bf16": False}
    on = lambda m: None if m is None else {**m, "device": "cpu"}  # noqa: E731
    epochs = [{"epoch": n, "machine": on(m)} for n, m in enumerate([None, xeon, epyc, epyc], 1)]
    assert bench._machines(epochs) == {
        "machine": epyc,  # the one that trained the most epochs
        "machines": [
            {"machine": None, "epochs": [1]},  # written before epochs named their machine
            {"machine": xeon, "epochs": [2]},
            {"machine": epyc, "epochs": [3, 4]},
        ],
    }
    assert bench._machines(epochs[2:]) == {"machine": epyc}
    assert bench._machines([{"epoch": 1}, {"epoch": 2}]) == {}  # the file's machine stands
    # a results file holding runs of two machines keeps each run's own when read back
    runs = [{"test_acc": 0.9, "machine": xeon}, {"test_acc": 0.8, "conditions": "alone"}]
    path = tmp_path / "both.json"
    path.write_text(json.dumps({"machine": epyc, "conditions": "file", "runs": runs}))
    back = bench._recorded_runs(path)
    assert [(r["machine"], r["conditions"]) for r in back] == [(xeon, "file"), (epyc, "alone")]


def test_the_machine_is_read_from_cpuinfo(tmp_path):
    from cifar_resnet.records.machine import describe, machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: amx_bf16\n"
    )
    seen = machine(str(cpuinfo))
    assert (seen["cpu"], seen["amx_bf16"], seen["avx512_bf16"]) == ("AMD EPYC 7B13", False, True)
    assert machine(str(tmp_path / "absent"))["amx_bf16"] is False
    assert describe(seen) == f"AMD EPYC 7B13, {seen['logical_cores']} logical cores, AVX512-BF16"
    both = {"cpu": "Xeon", "logical_cores": 2, "amx_bf16": True, "avx512_bf16": True}
    assert describe(both) == "Xeon, 2 logical cores, AMX-BF16 and AVX512-BF16"
    assert describe({"cpu": "AMD EPYC"}) == "AMD EPYC, no bf16 units"


@pytest.mark.parametrize("mistake", ["unfinished run", "missing results file"])
def test_train_bench_refuses_what_it_cannot_record_in_one_line(tmp_path, capsys, mistake):
    run, results = tmp_path / "run", tmp_path / "results"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # started, not finished: no final.json
    if mistake == "missing results file":
        (run / "final.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        _script("train_bench").main(
            ["--name", "x", "--from-run", str(run), "--with-results", "2026-01-01-cpu-x.json",
             "--results-dir", str(results)]
        )  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("--resume" in err) if mistake == "unfinished run" else ("2026-01-01-cpu-x.json" in err)
    assert not results.exists()


def test_every_result_names_the_machine_it_was_measured_on(tmp_path):
    from results_file import machine, write_result

    result = {"name": "x", "date": "2026-01-01", "device": "cpu", "value": 1.0}
    path = write_result(result, "x", tmp_path)
    saved = json.loads(path.read_text())
    assert saved == result and list(saved)[:4] == ["name", "date", "device", "machine"]
    assert saved["machine"] == machine() and saved["machine"]["logical_cores"] >= 1
    assert isinstance(saved["machine"]["amx_bf16"], bool) and saved["machine"]["cpu"]
    named = {"date": "2026-01-01", "device": "cpu", "machine": {"cpu": "given"}}
    assert json.loads(write_result(named, "y", tmp_path).read_text())["machine"] == {"cpu": "given"}


def test_a_result_never_overwrites_one_already_recorded(tmp_path):
    from results_file import write_result

    first = write_result({"date": "2026-01-01", "device": "cpu", "v": 1}, "x", tmp_path)
    second = write_result({"date": "2026-01-01", "device": "cpu", "v": 2}, "x", tmp_path)
    third = write_result({"date": "2026-01-01", "device": "cpu", "v": 3}, "x", tmp_path)
    assert [p.name for p in (first, second, third)] == [
        "2026-01-01-cpu-x.json", "2026-01-01-cpu-x-2.json", "2026-01-01-cpu-x-3.json"
    ]  # fmt: skip
    assert [json.loads(p.read_text())["v"] for p in (first, second, third)] == [1, 2, 3]


def test_a_recorded_runs_command_is_one_the_cli_accepts():
    from cifar_resnet.cli import build_parser

    equivalent = _script("train_bench")._equivalent_command
    page = {"recipe": "page", "optimizer": "sgd", "head_bias": False, "logit_scale": 0.125,
            "tta": False, "max_lr": 0.4, "width": 0.5, "lr_source": "given",
            "crop_pad_mode": "reflect", "drop_last": True}  # fmt: skip
    command = equivalent(page)
    # the recipe's own values are left to the recipe; a switched-off switch is --no-...
    assert command == ["cifar-resnet", "train", "--recipe", "page", "--width", "0.5", "--no-tta"]
    args = build_parser().parse_args(command[1:])
    assert args.recipe == "page" and args.width == 0.5 and args.tta is False
    # a page run recorded before the pipeline options padded with zeros and kept every batch
    older = {k: v for k, v in page.items() if k not in ("crop_pad_mode", "drop_last")}
    assert equivalent(older) == [
        "cifar-resnet", "train", "--recipe", "page", "--crop-pad-mode", "zeros", "--width", "0.5",
        "--no-drop-last", "--no-tta",
    ]  # fmt: skip
    found = {"max_lr": 1.9e-3, "min_lr": 1.9e-4, "lr_source": "found", "head_bias": True}
    # a spec run from before the EMA option evaluated its raw weights; today's spec is bare
    assert equivalent(found) == ["cifar-resnet", "train", "--ema-decay", "0.0"]
    today = {**found, "ema_decay": 0.99, "label_smoothing": 0.2}
    assert equivalent(today) == ["cifar-resnet", "train"]


def test_a_jpeg_round_trip_on_a_moved_grid_loses_what_one_on_the_same_grid_keeps():
    import io

    import numpy as np
    from PIL import Image

    trip = _script("jpeg_round_trip")
    rng = np.random.default_rng(0)
    # A smooth image with some texture, then one JPEG generation: the data as shipped.
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([yy * 6, xx * 6, (yy + xx) * 3], axis=-1) + rng.integers(0, 60, (32, 32, 3))
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=75, subsampling=2)
    shipped = np.asarray(Image.open(buf).convert("RGB"))
    same_grid = trip.round_trip(shipped, quality=75, offset=0)
    moved = trip.round_trip(shipped, quality=75, offset=5)
    assert same_grid.shape == moved.shape == (32, 32, 3) and moved.dtype == np.uint8
    # on its own grid the encoding is nearly idempotent; a moved grid is a fresh generation,
    # cropped back where the image was (a crop off by the offset would lose far more)
    assert trip.psnr(shipped, same_grid) > trip.psnr(shipped, moved) + 5
    assert trip.psnr(shipped, moved) > 25
    coarse = trip.round_trip(shipped, quality=30, offset=5)
    fine = trip.round_trip(shipped, quality=90, offset=5)
    assert trip.psnr(shipped, coarse) < trip.psnr(shipped, moved) < trip.psnr(shipped, fine)
    assert trip.psnr(shipped, shipped) == float("inf")
    assert trip.psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == 0.0


def test_jpeg_round_trip_writes_a_tree_the_package_reads_and_records_its_psnr(data_dir, tmp_path):
    import numpy as np

    from cifar_resnet.data.load import load_cifar10

    trip = _script("jpeg_round_trip")
    out = tmp_path / "copy"
    result = trip.main(
        ["--data-dir", str(data_dir), "--out", str(out), "--results-dir", str(tmp_path / "res")]
    )
    assert _only_file(tmp_path / "res") == result
    source = load_cifar10(str(data_dir), str(tmp_path / "cache-a"), progress=False)
    copy = load_cifar10(str(out), str(tmp_path / "cache-b"), progress=False)
    assert copy.classes == source.classes
    assert copy.train_images.shape == source.train_images.shape
    assert copy.test_images.shape == source.test_images.shape
    # the same images in each class (in the loader's order), each put through one encoding
    for split in ("train", "test"):
        expected = [
            trip.round_trip(img.permute(1, 2, 0).numpy(), quality=75, offset=5)
            for img in getattr(source, f"{split}_images")
        ]
        src_labels = getattr(source, f"{split}_labels").tolist()
        want = sorted(zip(src_labels, map(bytes, expected), strict=True))
        images, labels = getattr(copy, f"{split}_images"), getattr(copy, f"{split}_labels")
        copied = [bytes(i.permute(1, 2, 0).numpy()) for i in images]
        got = sorted(zip(labels.tolist(), copied, strict=True))
        assert got == want
        whole = np.stack(expected)
        src = getattr(source, f"{split}_images").permute(0, 2, 3, 1).numpy()
        assert result["psnr_db"][split] == pytest.approx(trip.psnr(src, whole), abs=1e-3)
    # the reference: the same encoding of the test split on the unmoved grid
    src = source.test_images.permute(0, 2, 3, 1).numpy()
    unmoved = np.stack([trip.round_trip(img, quality=75, offset=0) for img in src])
    assert result["psnr_db_same_grid"]["test"] == pytest.approx(trip.psnr(src, unmoved), abs=1e-3)


def test_jpeg_round_trip_refuses_a_folder_that_exists(data_dir, tmp_path, capsys):
    trip = _script("jpeg_round_trip")
    out = tmp_path / "copy"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(SystemExit) as stop:
        trip.main(
            ["--data-dir", str(data_dir), "--out", str(out), "--results-dir", str(tmp_path / "r")]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier work"
    assert not (tmp_path / "r").exists()


def test_psnr_between_measures_a_later_generation_against_an_earlier_one(data_dir, tmp_path):
    trip, between = _script("jpeg_round_trip"), _script("psnr_between")
    first, second = tmp_path / "first", tmp_path / "second"
    trip.main(["--data-dir", str(data_dir), "--out", str(first), "--results-dir", str(tmp_path)])
    made = trip.main(
        ["--data-dir", str(first), "--out", str(second), "--offset", "3"]
        + ["--results-dir", str(tmp_path / "trip")]
    )
    result = between.main(
        ["--data-dir", str(second), "--reference", str(first)]
        + ["--results-dir", str(tmp_path / "between")]
    )
    assert _only_file(tmp_path / "between") == result
    # the same images in the same order: the figure is the one the copy recorded when written
    for split in ("train", "test"):
        assert result["psnr_db"][split] == pytest.approx(made["psnr_db"][split], abs=1e-3)
        assert result["psnr_db"][split] == pytest.approx(
            between.psnr_from_mse(result["mse"][split]), abs=1e-3
        )
    assert between.psnr_from_mse(0.0) == float("inf")
    assert between.psnr_from_mse(255.0**2) == 0.0


def test_psnr_between_refuses_copies_whose_images_are_not_in_one_order(data_dir, tmp_path, capsys):
    trip, between = _script("jpeg_round_trip"), _script("psnr_between")
    copy = tmp_path / "copy"
    trip.main(["--data-dir", str(data_dir), "--out", str(copy), "--results-dir", str(tmp_path)])
    capsys.readouterr()  # the copy's progress bars
    # the pickles hold the images shuffled; the copy's folders are read class by class
    with pytest.raises(SystemExit) as stop:
        between.main(
            ["--data-dir", str(copy), "--reference", str(data_dir)]
            + ["--results-dir", str(tmp_path / "between")]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "label order" in err
    assert not (tmp_path / "between").exists()


def _results(name: str, machine: dict, accs_and_seconds: list[list[tuple[float, float]]]) -> dict:
    """A results file as train_bench writes it: one run per list of (test_acc, seconds)."""
    runs = [
        {"final": {"precision": "bf16"},
         "epochs": [{"epoch": i + 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                     "test_loss": 1.0, "test_acc": a, "seconds": s}
                    for i, (a, s) in enumerate(epochs)]}
        for epochs in accs_and_seconds
    ]  # fmt: skip
    return {"name": name, "machine": machine, "runs": runs}


def test_accuracy_against_time_draws_a_line_per_recipe_and_machine_kind(tmp_path, capsys):
    amx = {"cpu": "Intel(R) Xeon(R)", "amx_bf16": True, "avx512_bf16": True}
    epyc = {"cpu": "AMD EPYC", "amx_bf16": False, "avx512_bf16": False}
    spec_runs = [[(0.86, 10.0), (0.905, 10.0)], [(0.80, 12.0), (0.91, 12.0)]]
    (tmp_path / "a.json").write_text(json.dumps(_results("spec-w1", amx, spec_runs)))
    seeds = _results("page-w1", amx, [[(0.7, 30.0), (0.92, 30.0)]])
    seeds["runs"].append({**seeds["runs"][0], "machine": epyc})  # a seed run on another CPU
    (tmp_path / "b.json").write_text(json.dumps(seeds))  # fmt: skip
    out = tmp_path / "figure.png"
    summary = _script("accuracy_vs_time").main(
        ["--files", "a.json", "b.json", "--results-dir", str(tmp_path), "--out", str(out)]
    )
    assert sorted(summary) == ["page-w1: EPYC, AVX2 only, bf16", "page-w1: Xeon with AMX, bf16",
                               "spec-w1: Xeon with AMX, bf16"]  # fmt: skip
    spec = summary["spec-w1: Xeon with AMX, bf16"]
    assert spec["runs"] == 2 and spec["final_test_acc"] == pytest.approx(0.9075)
    assert spec["train_seconds"] == pytest.approx(22.0)
    # 85%: 10 s and 24 s (mean 17); 90%: 20 and 24 (22); 91%: only one seed reached it
    assert spec["time_to_accuracy"] == {"0.85": 17.0, "0.9": 22.0, "0.91": None, "0.92": None}
    assert out.read_bytes()[:4] == b"\x89PNG"
    # the figure names the files it was drawn from and their digest, so a test can tell
    # whether a committed figure is current without drawing it again
    digest = _script("results_table").digest([tmp_path / "a.json", tmp_path / "b.json"])
    assert Image.open(out).text["Source"] == f"a.json, b.json; sha256 {digest}"
    with pytest.raises(SystemExit) as stop:
        _script("accuracy_vs_time").main(["--files", "missing.json", "--out", str(out)])
    assert stop.value.code == 2 and "missing.json" in capsys.readouterr().err


def test_trick_cost_times_each_trick_against_page_and_records_it(tmp_path, capsys):
    data_dir = write_pickles(tmp_path / "data", make_synthetic(600, 20))  # a batch of 512
    result = _script("trick_cost").main(
        ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
         "--width", "0.0625", "--images", "600", "--rounds", "1", "--device", "cpu",
         "--results-dir", str(tmp_path / "results")]
    )  # fmt: skip
    assert _only_file(tmp_path / "results") == result
    rows = result["variants"]
    assert list(rows) == ["spec", "page", "page + CELU", "page + ghost BatchNorm",
                          "page + frozen scales", "page + whitening", "page-fast"]  # fmt: skip
    page = rows["page"]["images_per_second"]
    for name, row in rows.items():
        (seconds,) = row["seconds_per_epoch"]
        used = 600 if name == "spec" else 512  # Page's recipes drop the partial batch
        assert row["images_per_second"] == pytest.approx(used / seconds)
        assert row["cost_vs_page"] == pytest.approx(page / row["images_per_second"])
    assert rows["page + whitening"]["settings"] == {"recipe": "page", "whiten": True}
    assert "cost vs page" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        _script("trick_cost").main(["--data-dir", str(data_dir), "--images", "100"])
    assert stop.value.code == 2


def test_calibration_bench_records_what_evaluate_measures(tiny_run, tmp_path, capsys):
    from cifar_resnet.data.load import load_cifar10
    from cifar_resnet.inference.predict import evaluate_model, load_model, select_test_split

    result = _script("calibration_bench").main(
        [str(tiny_run), "--name", "tiny", "--results-dir", str(tmp_path / "results")]
    )
    assert _only_file(tmp_path / "results") == result
    (run,) = result["runs"]
    model = load_model(tiny_run)
    data = load_cifar10(model.config.data_dir, model.config.cache_dir)
    evaluation = evaluate_model(model, *select_test_split(model, data, model.config.limit_test),
                                tta=True)  # fmt: skip
    assert run["plain"]["acc"] == evaluation.acc and run["tta"]["acc"] == evaluation.tta.acc
    assert run["plain"]["ece"] == pytest.approx(evaluation.calibration.ece)
    assert run["tta"]["brier"] == pytest.approx(evaluation.tta.calibration.brier)
    assert run["settings"]["label_smoothing"] == model.config.label_smoothing
    assert sum(b["count"] for b in run["bins"]) == run["plain"]["n"]
    assert "recorded in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        _script("calibration_bench").main([str(tmp_path / "nowhere"), "--name", "x"])
    assert stop.value.code == 2
