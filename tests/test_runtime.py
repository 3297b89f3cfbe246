import subprocess
import sys
import textwrap

import pytest
import torch

from cifar_resnet.errors import ConfigError
from cifar_resnet.runtime import resolve_runtime

# Allocate and free a 96 MiB buffer (over glibc's 32 MiB mmap ceiling) twelve times and
# count the page faults taken on the last nine.
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from cifar_resnet.runtime import keep_freed_memory
    applied = keep_freed_memory(sys.argv[1] == "keep")
    for _ in range(3):
        torch.ones(24 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(9):
        torch.ones(24 << 20)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 9 * 20000  # each fresh 96 MiB mapping faults its pages in again
    assert kept < default / 50


def test_cpu_trains_in_fp32_and_channels_last():
    runtime = resolve_runtime("cpu")
    assert runtime.autocast_dtype is None and runtime.channels_last
    x = runtime.layout(torch.zeros(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_asking_for_an_absent_gpu_says_what_to_do():
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_runtime("cuda")
