"""3x3 convolutions on small feature maps as matrix products, for bf16 training on the CPU.

Why not just ``F.conv2d``: on a Xeon with AMX-BF16, oneDNN's kernels ran this network's
convolutions well where the maps are large and badly where they are small; written as one
matrix product over the 3x3 neighbourhoods ("im2col"), the weight gradients of the small
maps took a fraction of the time and a width-1.0 training step sped up by about a third.
On a CPU with AVX512-BF16 and no AMX the path is neutral. The measurements are in the
docs/results.md (the speed tables); ``benchmarks/speed.py``
keeps comparing both paths.

The rule, by the size of the map (from the same measurements): H*W <= 16, all three
products (forward, input gradient, weight gradient) as matrix products; H*W <= 64, the
weight gradient only (forward and input gradient stay oneDNN's); larger maps, oneDNN
throughout (at 16x16 its kernels were faster than the matrix products).

It applies only where it was measured to help and is exact in the same sense as oneDNN
(bf16 products accumulated in fp32): on the CPU, in bf16 (autocast or bf16 tensors), with
gradients enabled, for a bias-free 3x3 convolution of stride 1 and padding 1, outside
``torch.compile`` and TorchScript. Everywhere else (evaluation, inference, fp32, CUDA,
export) ``Conv3x3`` is exactly ``nn.Conv2d``, with the same parameters and state_dict.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

FULL_GEMM_MAX_PIXELS = 16  # H*W up to which forward and both gradients are matrix products
WEIGHT_GEMM_MAX_PIXELS = 64  # H*W up to which the weight gradient is one

_enabled = True


@contextmanager
def gemm_convolutions(enabled: bool) -> Iterator[None]:
    """Turn the matrix-product path on or off inside the block (benchmarks compare both)."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def columns(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, 9*C): each pixel's zero-padded 3x3 neighbourhood, [kh, kw, c]."""
    n, c, h, w = x.shape
    padded = x.new_zeros(n, h + 2, w + 2, c)  # NHWC
    padded[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    s = padded.stride()
    windows = padded.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return windows.reshape(n * h * w, 9 * c)


def columns_adjoint(cols: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The adjoint of ``columns`` ("col2im"): (N*H*W, 9*C) -> (N, C, H, W), channels_last.

    The nine overlapping windows are summed in fp32 (rounded once, at the end), as a
    convolution's own accumulation would be: summed in bf16 they lost twice the precision.
    """
    n, c, h, w = shape
    windows = cols.view(n, h, w, 3, 3, c)
    acc = torch.promote_types(cols.dtype, torch.float32)
    padded = cols.new_zeros(n, h + 2, w + 2, c, dtype=acc)
    for i in range(3):
        for j in range(3):
            padded[:, i : i + h, j : j + w] += windows[:, :, :, i, j]
    return padded[:, 1:-1, 1:-1].permute(0, 3, 1, 2).to(cols.dtype)


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (O, 9*C), ordered [kh, kw, c] like ``columns``."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _weight_from_matrix(wm: torch.Tensor, c: int) -> torch.Tensor:
    """(O, 9*C) -> (O, C, 3, 3) (channels_last strides, as the model's weights)."""
    return wm.view(wm.shape[0], 3, 3, c).permute(0, 3, 1, 2)


def _output_rows(grad: torch.Tensor) -> torch.Tensor:
    """(N, O, H, W) -> (N*H*W, O)."""
    return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])


class _WeightGemmConv(torch.autograd.Function):
    """oneDNN forward and input gradient; the weight gradient as one matrix product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            rows_t = grad.permute(1, 0, 2, 3).reshape(grad.shape[1], -1)  # (O, N*H*W)
            grad_w = _weight_from_matrix(rows_t @ columns(x), x.shape[1])
        return grad_x, grad_w


class _GemmConv(torch.autograd.Function):
    """Forward, input gradient and weight gradient as matrix products over ``columns``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        cols, wm = columns(x), _weight_matrix(weight)  # (N*H*W, 9C), (O, 9C)
        ctx.save_for_backward(cols, wm)
        ctx.shape = (n, c, h, w)
        out = cols @ wm.t()  # (N*H*W, O)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)  # (N, O, H, W), channels_last

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cols, wm = ctx.saved_tensors
        rows = _output_rows(grad)  # (N*H*W, O)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = columns_adjoint(rows @ wm, ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_from_matrix(rows.t().contiguous() @ cols, ctx.shape[1])
        return grad_x, grad_w


def _gemm_path(conv: nn.Conv2d, x: torch.Tensor) -> type[torch.autograd.Function] | None:
    """The matrix-product Function for this call, or None for plain ``F.conv2d``."""
    if not (_enabled and x.device.type == "cpu" and torch.is_grad_enabled()):
        return None
    if conv.bias is not None or x.dim() != 4 or conv.padding_mode != "zeros":
        return None
    if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != (
        (3, 3), (1, 1), (1, 1), (1, 1), 1,
    ):  # fmt: skip
        return None
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if dtype != torch.bfloat16 or (not autocast and conv.weight.dtype != torch.bfloat16):
        return None
    pixels = x.shape[-1] * x.shape[-2]
    if pixels <= FULL_GEMM_MAX_PIXELS:
        return _GemmConv
    if pixels <= WEIGHT_GEMM_MAX_PIXELS:
        return _WeightGemmConv
    return None


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(in, out, 3, padding=1)`` that trains faster in bf16 on the CPU (module doc)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            function = _gemm_path(self, x)
            if function is not None:
                with torch.autocast("cpu", enabled=False):
                    bf16 = torch.bfloat16
                    return function.apply(x.to(bf16), self.weight.to(bf16))
        return self._conv_forward(x, self.weight, self.bias)
