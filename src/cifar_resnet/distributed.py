"""Data-parallel training with torch.distributed (DDP): NCCL on GPUs, Gloo on CPUs.

Started by ``torchrun --nproc-per-node N -m cifar_resnet train ...``, which sets
RANK, WORLD_SIZE and LOCAL_RANK. The global batch stays ``batch_size`` (512 by
default) so results compare with one process: each optimizer step takes the
next ``batch_size`` indices of one shared permutation, and rank r trains on
every N-th of them (``global_batch[r::N]``), so the ranks' shards are disjoint
and together cover the data. Gradients are averaged by DDP; losses, accuracies
and evaluation counts are summed across ranks. BatchNorm statistics are per rank
by default (each rank normalises its own batch of ``batch_size / N`` images, as
DDP does); ``--sync-bn`` converts BatchNorm to SyncBatchNorm for batch-wide
statistics at the cost of one all-reduce per BatchNorm layer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError
from .runtime import device_type


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all ranks (returns it unchanged in one process)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), so all hold one model."""
        if self.enabled:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    def gather_objects(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order (a collective: all ranks must call it)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_floats(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's values on every rank."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return t.tolist()


SINGLE_PROCESS = Dist()


def from_env(device: str) -> Dist:
    """Join the process group that torchrun describes in the environment, if any.

    ``device`` is the ``--device`` value: each process trains on the GPU of its
    LOCAL_RANK, so one named GPU (``cuda:0``) for several processes is refused, as is MPS,
    which no process-group backend serves.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    kind = device_type(device)
    if kind == "cuda" and device not in ("auto", "cuda"):
        raise ConfigError(
            f"--device {device} would put all {world} torchrun processes on one GPU; give "
            "--device cuda: each process takes the GPU of its LOCAL_RANK"
        )
    if kind not in ("cuda", "cpu"):
        raise ConfigError(
            f"data-parallel training runs on cuda or cpu, not {kind}; give --device cuda or cpu"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":  # object collectives run on the current device
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Dist]:
    """This process's ``Dist`` for the run (``from_env``); a process group it joined is left
    again on exit, one that was joined before is left as it was."""
    joined = dist.is_available() and dist.is_initialized()
    place = from_env(device)
    try:
        yield place
    finally:
        if place.enabled and not joined:
            dist.destroy_process_group()


def shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of a global batch of indices: every ``world``-th, from ``rank``."""
    return indices[rank::world]


def per_rank_batch(batch_size: int, world: int) -> int:
    """Images per rank per step; the global batch must split evenly."""
    if batch_size % world:
        raise ConfigError(
            f"--batch-size {batch_size} does not split evenly over {world} processes; "
            f"use a multiple of {world}"
        )
    return batch_size // world
