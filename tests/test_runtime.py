import math
import subprocess
import sys
import textwrap

import pytest
import torch

from cifar_resnet import runtime as runtime_module
from cifar_resnet.errors import ConfigError
from cifar_resnet.runtime import cpu_has_bf16, resolve_precision, resolve_runtime

# Allocate and free a 96 MiB buffer (over glibc's 32 MiB mmap ceiling) nineteen times and
# count the page faults taken on the last nine. Kept, the heap grows a few times before a
# freed buffer fits the next request with its alignment slack (how many depends on what the
# process allocated before); ten rounds reach that steady state, which training reaches in
# its first steps.
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from cifar_resnet.runtime import keep_freed_memory
    applied = keep_freed_memory(sys.argv[1] == "keep")
    for _ in range(10):
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


def test_cpu_trains_channels_last_in_the_precision_asked_for():
    fp32, bf16 = resolve_runtime("cpu", "fp32"), resolve_runtime("cpu", "bf16")
    assert fp32.autocast_dtype is None and fp32.precision == "fp32"
    assert bf16.autocast_dtype is torch.bfloat16 and bf16.precision == "bf16"
    assert fp32.channels_last and bf16.channels_last
    x = fp32.layout(torch.zeros(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with bf16.autocast():  # the one context CPU and CUDA share
        out = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert out.dtype == torch.bfloat16


def _capabilities(monkeypatch, *, onednn: bool, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    ("onednn", "amx", "avx512_bf16", "gain", "expected"),
    [
        (True, True, True, 0.5, "bf16"),  # AMX: bf16 without timing anything
        (False, True, False, 0.5, "bf16"),  # AMX alone
        (False, False, True, 2.2, "bf16"),  # AVX512-BF16 that times faster (an AMD EPYC)
        (True, False, True, 0.58, "fp32"),  # AVX512-BF16 that times slower (AMX hidden)
        (False, False, True, 1.1, "fp32"),  # not faster enough to give up fp32
        (False, False, False, 3.0, "fp32"),  # no bf16 kernels: the probe is not asked
    ],
)
def test_auto_precision_follows_torchs_capability_queries_and_the_probe(
    monkeypatch, onednn, amx, avx512_bf16, gain, expected
):
    _capabilities(monkeypatch, onednn=onednn, amx=amx, avx512_bf16=avx512_bf16)
    probed = []
    monkeypatch.setattr(runtime_module, "cpu_bf16_gain", lambda: probed.append(1) or gain)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_runtime("cpu").precision == expected
    assert probed == ([] if amx or not (onednn or avx512_bf16) else [1, 1])
    before = len(probed)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("auto", "cuda") == "bf16"  # an A100: no CPU probe
    assert resolve_precision("auto", "mps") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"  # explicit choices are kept
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_runtime("cpu", "fp32").precision == "fp32"
    assert len(probed) == before  # nor are they timed


def test_the_bf16_probe_times_both_precisions_once_per_process(monkeypatch):
    runtime_module.cpu_bf16_gain.cache_clear()
    passes = []
    real = runtime_module._probe_pass

    def counted(conv, x, dtype):
        passes.append(dtype)
        return real(conv, x, dtype)

    monkeypatch.setattr(runtime_module, "_probe_pass", counted)
    gain = runtime_module.cpu_bf16_gain()
    # A ratio of two measured times, not a flag; how large depends on the CPU (bf16 kernels
    # without bf16 instructions can be many times slower than fp32).
    assert math.isfinite(gain) and gain > 0
    assert passes == [None, torch.bfloat16] * 6  # one untimed and five timed passes each
    assert runtime_module.cpu_bf16_gain() == gain and len(passes) == 12  # cached


def test_the_probe_compares_the_times_it_measures(monkeypatch):
    runtime_module.cpu_bf16_gain.cache_clear()
    times = {None: 0.3, torch.bfloat16: 0.1}
    monkeypatch.setattr(runtime_module, "_probe_pass", lambda conv, x, dtype: times[dtype])
    try:
        assert runtime_module.cpu_bf16_gain() == pytest.approx(3.0)
    finally:
        runtime_module.cpu_bf16_gain.cache_clear()


def test_a_capability_query_that_fails_counts_as_no(monkeypatch):
    def broken() -> bool:
        raise RuntimeError("no such query in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", broken)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_has_bf16() is True


def test_an_unknown_precision_names_the_flag():
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")
    assert runtime_module.PRECISIONS == ("auto", "fp32", "bf16", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_asking_for_an_absent_gpu_says_what_to_do():
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_runtime("cuda")
