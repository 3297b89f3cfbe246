"""Plain helpers the tests import: synthetic data, its pickles, the CLI called in-process."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cifar_resnet.data.load import CLASSES, Cifar10

# Flags of a one-epoch CPU run of the narrow net, for command-line tests.
TINY_RUN = [
    "--width",
    "0.25",
    "--epochs",
    "1",
    "--peak-epoch",
    "1",
    "--batch-size",
    "100",
    "--device",
    "cpu",
]


def make_synthetic(n_train: int = 600, n_test: int = 200, seed: int = 0) -> Cifar10:
    """Images whose class sets a colour cast and a stripe direction, under uniform noise."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.rand(n, 3, 32, 32, generator=g) * 0.5
        colour = torch.stack([(labels % 3) / 2, (labels // 3 % 3) / 2, (labels >= 5).float()], 1)
        stripes = torch.zeros(n, 1, 32, 32)
        rows = torch.arange(32)
        horiz = (rows % 4 < 2).float()
        stripes[labels % 2 == 0] += horiz.view(1, 32, 1)
        stripes[labels % 2 == 1] += horiz.view(1, 1, 32)
        x = 0.5 * noise + 0.35 * colour.view(n, 3, 1, 1) + 0.15 * stripes
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return Cifar10(train_x, train_y, test_x, test_y, CLASSES, "synthetic")


def write_pickles(folder: Path, data: Cifar10) -> Path:
    """Write ``data`` as a cifar-10-batches-py folder (train split over five batches)."""
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(data.train_labels)), 5)
    for i, idx in enumerate(chunks, start=1):
        batch = {
            "data": data.train_images[idx].reshape(len(idx), -1).numpy(),
            "labels": data.train_labels[idx].tolist(),
        }
        (out / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {
        "data": data.test_images.reshape(len(data.test_labels), -1).numpy(),
        "labels": data.test_labels.tolist(),
    }
    (out / "test_batch").write_bytes(pickle.dumps(test))
    (out / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.classes)}))
    return out


@dataclass
class Served:
    """A folder served over HTTP (the ``http_root`` fixture) and the paths requested of it."""

    root: Path
    base_url: str
    requests: list[str]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call the CLI in-process; returns (exit code, stdout, stderr)."""
    from cifar_resnet import cli

    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# A process to be signalled or killed starts from a fork server that has imported, once, what a
# run imports (the CLI imports lazily: torch, the training loop, the report; torch._dynamo,
# which torch's Adam imports on its first construction, costs about 4 s alone), so a child costs
# a fork rather than a fresh interpreter importing all of it again. The server runs no torch op,
# so torch has no thread pool to fork (numpy's OpenBLAS, started on import, handles a fork
# itself). A child's environment is the server's, taken when the first child started: an
# environment variable set later by a test does not reach it.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(
    ["cifar_resnet.cli", "cifar_resnet.runs", "cifar_resnet.insight.report", "torch._dynamo"]
)


def _cli_in_child(
    argv: list[str], log: str, threads: int, prepare: Callable[[], None] | None
) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if prepare is not None:
        prepare()
    from cifar_resnet import cli

    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's own streams
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    code = cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class CliChild:
    """``cifar-resnet ARGV`` in a forked process on ``threads`` threads, with the few methods of
    Popen the tests use; ``prepare`` (picklable: a module-level function or a partial of one)
    runs in the child first, e.g. to patch where it sends itself a signal. A child the test
    left running (a failed assertion, a stopped process) is killed and its log removed by
    ``kill_all``, which conftest calls after every test."""

    _alive: ClassVar[list[CliChild]] = []

    def __init__(
        self, argv: list[str], threads: int, prepare: Callable[[], None] | None = None
    ) -> None:
        name = f"cifar-resnet-child-{os.getpid()}-{time.monotonic_ns()}"
        self.log = Path(tempfile.gettempdir()) / name
        self.proc = _FORKS.Process(
            target=_cli_in_child, args=(argv, str(self.log), threads, prepare)
        )
        self.proc.start()
        self.pid = self.proc.pid
        CliChild._alive.append(self)

    @classmethod
    def kill_all(cls) -> None:
        while cls._alive:
            child = cls._alive.pop()
            if child.proc.exitcode is None:
                child.kill()  # SIGKILL ends a stopped process too
            child.proc.join()
            child.log.unlink(missing_ok=True)

    def poll(self) -> int | None:
        return self.proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end; ("", everything the child printed). A child still running after
        ``timeout`` seconds is killed and TimeoutExpired raised, with its output so far."""
        self.proc.join(timeout)
        timed_out = self.proc.exitcode is None
        if timed_out:
            self.kill()
            self.proc.join()
        err = self.log.read_text() if self.log.exists() else ""
        self.log.unlink(missing_ok=True)
        if timed_out:
            raise subprocess.TimeoutExpired(f"cifar-resnet {self.proc.name}", timeout, err)
        return "", err

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode
