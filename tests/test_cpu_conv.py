"""The matrix-product 3x3 convolution equals the convolution, and is used only where meant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar_resnet import cpu_conv
from cifar_resnet.cpu_conv import Conv3x3, columns, columns_adjoint, gemm_convolutions


def _inputs(n: int, c: int, o: int, hw: int, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    conv = Conv3x3(c, o).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5))
    grad = torch.randn(n, o, hw, hw, generator=g)
    return x, conv, grad


def test_columns_are_the_zero_padded_neighbourhoods():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).view(2, 3, 4, 5) + 1
    cols = columns(x).view(2, 4, 5, 3, 3, 3)  # (N, H, W, kh, kw, C)
    padded = F.pad(x, (1, 1, 1, 1))
    for n, h, w, i, j in [(0, 0, 0, 0, 0), (1, 3, 4, 2, 2), (1, 2, 1, 1, 0), (0, 0, 4, 0, 2)]:
        assert torch.equal(cols[n, h, w, i, j], padded[n, :, h + i, w + j])


def test_columns_adjoint_is_the_adjoint():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    c = torch.randn(2 * 4 * 4, 9 * 5, generator=g, dtype=torch.float64)
    lhs = (columns(x) * c).sum()  # <A x, c>
    rhs = (x * columns_adjoint(c, tuple(x.shape))).sum()  # <x, A^T c>
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


@pytest.mark.parametrize(
    ("hw", "function"),
    [(4, cpu_conv._GemmConv), (2, cpu_conv._GemmConv), (8, cpu_conv._WeightGemmConv)],
)
def test_bf16_training_convolution_matches_fp32_within_rounding(hw, function):
    """Same bf16 inputs: forward, input and weight gradient equal the fp32 convolution of
    those inputs to bf16 rounding, and no worse than oneDNN's own bf16 convolution does."""
    x, conv, grad = _inputs(8, 32, 48, hw)
    xb = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_conv._gemm_path(conv, xb) is function
        out = conv(xb)
    out.backward(grad.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (8, 48, hw, hw)
    assert out.grad_fn.name().startswith(function.__name__)

    wb = conv.weight.detach().to(torch.bfloat16)
    x32, w32 = xb.detach().float().requires_grad_(), wb.float().requires_grad_()
    ref = F.conv2d(x32, w32, padding=1)
    ref.backward(grad.to(torch.bfloat16).float())
    xo, wo = xb.detach().clone().requires_grad_(), wb.clone().requires_grad_()
    onednn = F.conv2d(xo, wo, padding=1)
    onednn.backward(grad.to(torch.bfloat16))

    def err(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    for ours, theirs, exact in [
        (out, onednn, ref),
        (xb.grad, xo.grad, x32.grad),
        (conv.weight.grad, wo.grad, w32.grad),
    ]:
        assert err(ours, exact) < 4e-3  # bf16 keeps 8 bits: half an ulp is 2e-3
        assert err(ours, exact) <= 1.5 * err(theirs, exact) + 1e-4


def test_plain_convolution_everywhere_else():
    """fp32, no gradients, larger maps, or the switch off: exactly F.conv2d."""
    x, conv, _ = _inputs(4, 16, 16, 4)
    exact = F.conv2d(x, conv.weight, padding=1)
    assert torch.equal(conv(x), exact)  # fp32
    xb = x.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            assert cpu_conv._gemm_path(conv, xb) is None
            assert torch.equal(conv(xb), F.conv2d(xb, conv.weight.to(torch.bfloat16), padding=1))
        with gemm_convolutions(False):
            assert cpu_conv._gemm_path(conv, xb) is None
        assert cpu_conv._gemm_path(conv, xb) is cpu_conv._GemmConv
        big = torch.zeros(1, 16, 16, 16, dtype=torch.bfloat16)
        assert cpu_conv._gemm_path(conv, big) is None
    biased = Conv3x3(16, 16, bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_conv._gemm_path(biased, xb) is None


def test_it_is_an_nn_conv2d_with_the_same_state_dict():
    conv = Conv3x3(3, 8)
    plain = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 6)
    scripted = torch.jit.script(conv)
    assert torch.equal(scripted(x), plain(x))
