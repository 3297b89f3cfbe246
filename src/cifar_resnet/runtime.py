"""Device, precision and memory layout, decided in one place (``resolve_runtime``).

Precision: ``bf16`` and ``fp16`` are autocast, the same context on CUDA and on the CPU,
so the CPU tests run the code a GPU user runs; BatchNorm, the softmax and the loss stay
in fp32, as do the weights and the optimizer state; fp16 adds loss scaling (its 5-bit
exponent flushes small gradients to zero; bf16 has fp32's range and needs none).
``auto`` takes what the hardware does fast: on CUDA by compute capability
(``cuda_precision``), on the CPU bf16 with AMX, and with AVX512-BF16 alone only where a
probe convolution times at least ``BF16_MIN_GAIN`` times faster in bf16, because that
instruction set is no promise of speed (on a Xeon whose AMX the hypervisor hides, bf16
trained slower than fp32; docs/results.md gives the figures). What ``auto`` chose
is what the run records.

Layout: channels_last on CUDA and the CPU, where NHWC kernels are the fast ones (cuDNN's
tensor-core kernels; oneDNN's, which trained this network 1.2-1.5x faster than NCHW).
CPU training keeps freed memory for reuse (``keep_freed_memory``): glibc would hand every
block over 32 MiB back to the kernel and fault it in again at the next step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .config import PRECISIONS
from .errors import ConfigError

BF16_MIN_GAIN = 1.2  # how much faster bf16 must time than fp32 for "auto" to take it
# CUDA compute capabilities: bf16 tensor cores from Ampere (8.0: A100, RTX 30xx, L4),
# fp16 tensor cores from Volta (7.0: V100; 7.5: T4, RTX 20xx).
BF16_MIN_CAPABILITY = (8, 0)
FP16_MIN_CAPABILITY = (7, 0)
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    sum_dtype: torch.dtype = torch.float64  # running sums of losses and counts (MPS: float32)

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the name of the autocast dtype, as configs record it."""
        return _NAMES[self.autocast_dtype]

    def in_precision(self, precision: str) -> Runtime:
        """This runtime in another precision (``fp32``, ``bf16`` or ``fp16``)."""
        return dataclasses.replace(self, autocast_dtype=_DTYPES[precision])

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on this device, in the memory format the runtime computes in."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16, whose 5-bit exponent flushes small gradients to zero;
        a pass-through (``enabled=False``: the plain backward and step) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def autocast(self) -> AbstractContextManager:
        """Mixed-precision context for forward pass and loss; a no-op in fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Put an image batch (N, C, H, W) into the memory format the model runs in."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> str:
        """Human-readable device name, e.g. 'cuda (NVIDIA H100 80GB HBM3)'."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return self.device.type


def cpu_has_amx() -> bool:
    """Whether torch reports AMX tiles on this CPU (AMX-BF16's matrix units); failure is no."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (AMX-BF16 or AVX512-BF16).

    Asks torch's own capability queries (private, so each is guarded): oneDNN's bf16
    check, then the instruction-set flags. Any failure to ask counts as no.
    """
    checks = (
        lambda: (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ),
        cpu_has_amx,
        lambda: torch.cpu._is_avx512_bf16_supported(),
    )
    for check in checks:
        try:
            if bool(check()):
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def _probe_pass(conv: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Seconds of one forward and backward pass of ``conv`` on ``x``, autocast to ``dtype``."""
    start = time.perf_counter()
    with nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype):
        y = conv(x)
    y.float().sum().backward()
    return time.perf_counter() - start


@functools.cache
def cpu_bf16_gain(repeats: int = 5) -> float:
    """How many times faster this CPU runs a residual-block convolution of the network
    (128 -> 128 channels, 3x3, 16x16, batch 32, channels_last, forward and backward) in
    bf16 than in fp32: the best of ``repeats`` interleaved passes each, after one untimed
    pass of each (which creates oneDNN's kernels). Timed once per process."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(32, 128, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    dtypes = (None, torch.bfloat16)
    best = {dtype: float("inf") for dtype in dtypes}
    for i in range(repeats + 1):
        for dtype in dtypes:
            seconds = _probe_pass(conv, x, dtype)
            if i:
                best[dtype] = min(best[dtype], seconds)
    return best[None] / best[torch.bfloat16]


def cuda_precision(index: int | None = None) -> str:
    """What ``auto`` trains in on a CUDA GPU, by its compute capability.

    bf16 only where tensor cores do it (8.0 and later): ``torch.cuda.is_bf16_supported()``
    also says yes on older GPUs, where bf16 is emulated and slower than fp32. fp16 with
    loss scaling on 7.x (a T4's tensor cores do fp16 only), torch's documented mixed
    precision recipe (autocast and ``GradScaler``); fp32 before that.
    """
    capability = tuple(torch.cuda.get_device_capability(index))
    if capability >= BF16_MIN_CAPABILITY:
        return "bf16"
    if capability >= FP16_MIN_CAPABILITY:
        return "fp16"
    return "fp32"


def resolve_precision(precision: str, device_type: str, index: int | None = None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a ``--precision`` value on a device type (``cpu``,
    ``cuda``, ``mps``) and, for CUDA, the GPU's index."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError(
            f"--precision fp16 is for CUDA GPUs (fp16 kernels elsewhere are slow); on "
            f"{device_type} give bf16, fp32 or auto"
        )
    if device_type == "mps" and precision not in ("auto", "fp32"):
        raise ConfigError(
            f"--precision {precision} on mps: MPS trains in fp32 here (autocast on MPS is "
            "untested); give --precision fp32, or train on cpu or cuda"
        )
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return cuda_precision(index)
    if device_type == "cpu" and cpu_has_amx():
        return "bf16"
    if device_type == "cpu" and cpu_has_bf16() and cpu_bf16_gain() >= BF16_MIN_GAIN:
        return "bf16"
    return "fp32"


def runnable_precision(precision: str, device: str) -> str:
    """A trained model's precision where it can run on ``device``, else fp32: a T4's fp16
    model evaluated on a CPU, or a bf16 one on MPS, runs in fp32 there."""
    kind = device_type(device)
    if (precision == "fp16" and kind != "cuda") or (kind == "mps" and precision != "fp32"):
        return "fp32"
    return precision


def resolve_runtime(
    device: str = "auto", precision: str = "auto", local_rank: int | None = None
) -> Runtime:
    """Runtime for ``--device`` and ``--precision`` values; ConfigError if the device is absent.

    ``local_rank`` (data-parallel runs) picks that process's GPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available here; use --device cpu")
    dev = torch.device(device)
    dtype = _DTYPES[resolve_precision(precision, dev.type, dev.index)]
    mps = dev.type == "mps"  # no float64 there, and its NHWC kernels were never measured
    return Runtime(
        dev, dtype, channels_last=not mps, sum_dtype=torch.float32 if mps else torch.float64
    )


def device_type(device: str) -> str:
    """The device type (``cpu``, ``cuda``, ``mps``) a ``--device`` value trains on."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def keep_freed_memory(keep: bool = True) -> bool:
    """Have glibc's malloc keep freed memory for reuse (``keep``), or act as by default.

    ``keep``: no block is served by a fresh mapping and the heap is never trimmed,
    so freed activation buffers are reused without page faults. ``keep=False``:
    glibc's settings as they stand once its dynamic mmap threshold has grown to its
    maximum (32 MiB), i.e. a default process after its first steps. Process-wide;
    returns False, changing nothing, where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if keep:
        settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)]
    else:
        settings = [
            (_M_MMAP_MAX, 65536),
            (_M_MMAP_THRESHOLD, 32 << 20),
            (_M_TRIM_THRESHOLD, 64 << 20),
        ]
    return all(mallopt(param, value) == 1 for param, value in settings)
