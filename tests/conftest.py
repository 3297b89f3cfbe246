"""Shared fixtures: a small synthetic CIFAR-like data set that a tiny net can learn."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from helpers import TINY_RUN, CliChild, Served, make_synthetic, write_pickles

from cifar_resnet.data.load import Cifar10


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """What caches into the default folder (no --cache-dir) caches into one of the test
    session's, not the user's ~/.cache/cifar_resnet (and so do subprocesses given the
    environment as it is during the tests; an environment copied at import time is not)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_RESNET_CACHE", str(tmp_path_factory.mktemp("default-cache")))
        yield


@pytest.fixture(autouse=True)
def _no_child_left():
    """A forked CLI process a test left running (it failed before the end) is killed."""
    yield
    CliChild.kill_all()


@pytest.fixture(scope="session")
def synthetic() -> Cifar10:
    return make_synthetic()


@pytest.fixture()
def pickle_dir(tmp_path: Path, synthetic: Cifar10) -> Path:
    """A cifar-10-batches-py folder of the synthetic data."""
    return write_pickles(tmp_path / "data", synthetic)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic: Cifar10) -> Path:
    """One run folder of ``TINY_RUN`` (the LR given, the first 150 test images), trained
    through the command line with its report, for the tests that only read a run; a test
    that changes a run changes its own copy (``shutil.copytree``)."""
    from cifar_resnet import cli

    root = tmp_path_factory.mktemp("tiny-run")
    data_dir = write_pickles(root / "data", synthetic)
    argv = ["train", "--data-dir", str(data_dir), "--cache-dir", str(root / "cache"),
            "--out", str(root / "run"), *TINY_RUN, "--max-lr", "2e-3", "--limit-test", "150",
            "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    return root / "run"


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early are not test failures


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder served over HTTP on 127.0.0.1, recording the paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    host, port = server.server_address[:2]
    yield Served(root=root, base_url=f"http://{host}:{port}", requests=requests)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
