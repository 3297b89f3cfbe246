"""Data-parallel training: two Gloo processes on the CPU."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import TINY_RUN, make_synthetic, write_pickles

from cifar_resnet.config import TrainConfig
from cifar_resnet.data.load import Cifar10
from cifar_resnet.distributed import per_rank_batch, shard
from cifar_resnet.errors import ConfigError

# An explicit precision: "auto" may time its probe differently in each process.
CONFIG = TrainConfig(
    width=0.25, epochs=2, peak_epoch=1, batch_size=100, max_lr=2e-3, device="cpu", seed=3,
    precision="fp32",
)  # fmt: skip


@pytest.fixture(scope="module")
def small() -> Cifar10:
    """200 training images: two steps an epoch, so each test's processes train little."""
    return make_synthetic(200, 100)


def test_rank_shards_of_every_batch_are_disjoint_and_cover_the_data():
    order = torch.randperm(1003, generator=torch.Generator().manual_seed(0))
    seen = []
    for start in range(0, 1003, 100):
        batch = order[start : start + 100]
        parts = [shard(batch, r, 3) for r in range(3)]
        assert sum(len(p) for p in parts) == len(batch)
        seen += [i for p in parts for i in p.tolist()]
    assert sorted(seen) == list(range(1003))


def test_the_global_batch_must_split_evenly():
    assert per_rank_batch(512, 4) == 128
    with pytest.raises(ConfigError, match="multiple of 3"):
        per_rank_batch(512, 3)


def _as_rank(rank: int, world: int, port: int) -> None:
    """Set the environment torchrun would give this process, one CPU thread."""
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, data, out: str, ema_decay: float = 0.0) -> None:
    from cifar_resnet.training.fit import fit

    _as_rank(rank, world, port)
    sent = []  # the dtype and shape of every tensor broadcast
    broadcast = torch.distributed.broadcast
    torch.distributed.broadcast = lambda t, *a, **k: (
        sent.append((t.dtype, t.shape)) or broadcast(t, *a, **k)
    )
    history = fit(CONFIG.replace(ema_decay=ema_decay), data, progress=False)
    torch.save(
        {
            "model": history.model.state_dict(),
            "final": history.final,
            "epochs": history.epochs,
            "sent": sent,
        },
        f"{out}/rank{rank}.pt",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ema_decay", [0.0, 0.6])
def test_two_gloo_processes_train_identical_weights_and_report_the_true_accuracy(
    small, tmp_path, ema_decay
):
    """With --ema-decay the EMA is what is evaluated and saved: its BatchNorm statistics,
    averaged on each rank from its own, are rank 0's everywhere too."""
    from cifar_resnet.data.splits import prepare_splits
    from cifar_resnet.inference.evaluation import evaluate
    from cifar_resnet.runtime import resolve_runtime
    from cifar_resnet.training.setup import build_model

    args = (2, _free_port(), small, str(tmp_path), ema_decay)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for key in r0["model"]:  # weights, and BatchNorm statistics (rank 0's, broadcast)
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    assert r0["final"]["processes"] == 2
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(r0["epochs"]) == drop(r1["epochs"])  # metrics are reduced across ranks
    # Each epoch sends the BatchNorm buffers of the model, and of the EMA if there is one;
    # not the EMA's update count, which stays on the host (NCCL sends only CUDA tensors).
    buffers = [
        (t.dtype, t.shape) for k, t in r0["model"].items() if "running" in k or "batches" in k
    ]
    sent = [b for b in r0["sent"] if b[0] != torch.float64]  # rank 0's LRs and precision aside
    assert sent == buffers * CONFIG.epochs * (2 if ema_decay else 1)

    # The reported test accuracy is that of the final model, evaluated in one process.
    runtime = resolve_runtime("cpu", CONFIG.precision)
    _, test = prepare_splits(small, CONFIG, runtime)
    model = build_model(CONFIG)
    model.load_state_dict(r0["model"])
    single = evaluate(model, test, runtime, batch_size=CONFIG.eval_batch_size)
    assert r0["final"]["test_acc"] == single.acc
    assert r0["final"]["test_loss"] == pytest.approx(single.loss, rel=1e-6)


def test_torchrun_two_processes_write_one_run(small, tmp_path):
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    out = tmp_path / "run"
    pickle_dir = write_pickles(tmp_path / "data", small)
    proc = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "-m",
            "cifar_resnet",
            "train",
            "--data-dir",
            str(pickle_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            *TINY_RUN,
            "--max-lr",
            "2e-3",
            "--out",
            str(out),
            "--quiet",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
    final = json.loads((out / "final.json").read_text())
    assert final["processes"] == 2 and 0 <= final["test_acc"] <= 1


def _resume_worker(rank: int, world: int, port: int, data, out: str, mode: str) -> None:
    """``full``: two epochs, keeping the epoch-1 checkpoint; ``resume``: epoch 2 from it."""
    import shutil

    from cifar_resnet.records.checkpoint import load_checkpoint
    from cifar_resnet.records.run_folder import RunFolder
    from cifar_resnet.training.fit import fit

    _as_rank(rank, world, port)
    # Dropout draws from each rank's own global RNG; 600 images in batches of 140 leave a
    # partial batch of 40, which --drop-last skips on every rank.
    config = CONFIG.replace(dropout=0.2, batch_size=140, drop_last=True, crop_pad_mode="reflect")
    if mode == "full":
        save = RunFolder.save_checkpoint

        def keep_epoch_one(self, state, name="last.pt"):
            path = save(self, state, name)
            if state["epoch"] == 1:
                shutil.copy(path, f"{out}/epoch1.pt")
            return path

        RunFolder.save_checkpoint = keep_epoch_one
        run, resume = RunFolder(f"{out}/full") if rank == 0 else None, None
    else:
        run = RunFolder(f"{out}/resumed", resume=True) if rank == 0 else None
        resume = load_checkpoint(f"{out}/epoch1.pt")
    history = fit(config, data, run=run, progress=False, resume=resume)
    torch.save(
        {"model": history.model.state_dict(), "steps": len(history.step_lrs)},
        f"{out}/{mode}{rank}.pt",
    )


@pytest.mark.slow
def test_a_data_parallel_run_resumed_after_an_epoch_ends_as_an_unbroken_one(synthetic, tmp_path):
    for mode in ("full", "resume"):
        args = (2, _free_port(), synthetic, str(tmp_path), mode)
        mp.spawn(_resume_worker, args=args, nprocs=2, join=True)
    full = torch.load(tmp_path / "full0.pt")
    assert full["steps"] == 2 * 4  # two epochs of four full batches
    for rank in (0, 1):
        resumed = torch.load(tmp_path / f"resume{rank}.pt")
        assert resumed["steps"] == full["steps"]
        for key, value in full["model"].items():
            assert torch.equal(value, resumed["model"][key]), (rank, key)


def _precision_worker(rank: int, world: int, port: int, data, out: str) -> None:
    """Set up a run where AVX512-BF16 is all the CPU reports and the probe times bf16
    faster on rank 0 than on rank 1; record the precision each rank would train in."""
    from cifar_resnet import runtime
    from cifar_resnet.distributed import from_env
    from cifar_resnet.training.setup import setup_training

    _as_rank(rank, world, port)
    runtime.cpu_has_amx = lambda: False
    runtime.cpu_has_bf16 = lambda: True
    runtime.cpu_bf16_gain = lambda: 2.0 if rank == 0 else 0.5
    dist = from_env("cpu")
    try:
        auto = CONFIG.replace(precision="auto")  # what this test is about
        setup = setup_training(auto, data, progress=False, dist=dist)
        with open(f"{out}/rank{rank}.txt", "w") as f:
            f.write(setup.runtime.precision)
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_trains_in_the_precision_rank_0_chose(small, tmp_path):
    mp.spawn(_precision_worker, args=(2, _free_port(), small, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "bf16"
    assert (tmp_path / "rank1.txt").read_text() == "bf16"  # not its own probe's fp32
