"""The matrix-product 3x3 convolution equals the convolution, and is used only where meant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar_resnet.model import cpu_conv
from cifar_resnet.model.cpu_conv import Conv3x3, columns, columns_adjoint, gemm_convolutions


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


BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: rounding errs by at most this
FP32_UNIT_ROUNDOFF = 2.0**-24


def _rounding_bound(
    reduction: int, abs_product: torch.Tensor, exact: torch.Tensor, *, partial_sums: bool
) -> float:
    """Largest relative (Frobenius) error of a product of bf16 inputs accumulated in fp32
    and rounded to bf16, against the fp32 product of the same inputs.

    Products of two bf16 numbers are exact in fp32; a sum of ``reduction`` of them in fp32,
    in any order, errs by at most gamma * sum|a*b| (gamma = k u / (1 - k u), Higham's
    bound), in ours and in the reference alike; the final rounding to bf16 adds at most
    u_bf16 of each value. ``partial_sums``: partial sums were rounded to bf16 on the way
    (the input gradient of ``_GemmConv`` rounds each of the nine shifted products before
    adding them), which adds at most u_bf16 * sum|a*b|. ``abs_product`` is the same
    product of the inputs' absolute values, which gives sum|a*b| for every output.
    """
    k_u = reduction * FP32_UNIT_ROUNDOFF
    gamma = k_u / (1 - k_u)
    ratio = (abs_product.norm() / exact.norm()).item()
    partial = BF16_UNIT_ROUNDOFF * ratio if partial_sums else 0.0
    return BF16_UNIT_ROUNDOFF + partial + (2 + BF16_UNIT_ROUNDOFF) * gamma * ratio


@pytest.mark.parametrize(
    ("hw", "function"),
    [(4, cpu_conv._GemmConv), (2, cpu_conv._GemmConv), (8, cpu_conv._WeightGemmConv)],
)
def test_bf16_training_convolution_matches_fp32_within_rounding(hw, function):
    """Same bf16 inputs: what the matrix-product path computes itself equals the fp32
    convolution of those inputs within bf16 rounding (a bound from the arithmetic, so on
    every CPU), and what it leaves to torch (``_WeightGemmConv``'s forward and input
    gradient) is torch's own bf16 convolution, bit for bit."""
    n, c, o = 8, 32, 48
    x, conv, grad = _inputs(n, c, o, hw)
    xb = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_conv._gemm_path(conv, xb) is function
        out = conv(xb)
    out.backward(grad.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (n, o, hw, hw)
    assert out.grad_fn.name().startswith(function.__name__)

    wb = conv.weight.detach().to(torch.bfloat16)
    gb = grad.to(torch.bfloat16).float()
    x32, w32 = xb.detach().float().requires_grad_(), wb.float().requires_grad_()
    ref = F.conv2d(x32, w32, padding=1)
    ref.backward(gb)
    xo, wo = xb.detach().clone().requires_grad_(), wb.clone().requires_grad_()
    torchs = F.conv2d(xo, wo, padding=1)
    torchs.backward(grad.to(torch.bfloat16))
    # The same three products on absolute values, for the accumulation terms of the bound.
    xa, wa = x32.detach().abs().requires_grad_(), w32.detach().abs().requires_grad_()
    F.conv2d(xa, wa, padding=1).backward(gb.abs())
    abs_out = F.conv2d(xa.detach(), wa.detach(), padding=1)

    def err(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    own_input_grad = function is cpu_conv._GemmConv
    for ours, theirs, exact, absolute, reduction, own, partial in [
        (out, torchs, ref, abs_out, 9 * c, own_input_grad, False),
        (xb.grad, xo.grad, x32.grad, xa.grad, 9 * o, own_input_grad, True),
        (conv.weight.grad, wo.grad, w32.grad, wa.grad, n * hw * hw, True, False),
    ]:
        if not own:  # torch's convolution, called as is
            assert torch.equal(ours, theirs)
            continue
        assert err(ours, exact) <= _rounding_bound(reduction, absolute, exact, partial_sums=partial)
        # Statistically, independent roundings add in quadrature: two roundings err about
        # sqrt(2) times one, and torch's bf16 convolution rounds at least once.
        roundings = 2 if partial else 1
        assert err(ours, exact) <= 1.1 * roundings**0.5 * err(theirs, exact) + 1e-4


@pytest.mark.parametrize("function", [cpu_conv._GemmConv, cpu_conv._WeightGemmConv])
def test_the_matrix_product_path_is_the_convolution_in_float64(function):
    """The path's algebra on every CPU: in float64 (no bf16 rounding) its output and both
    gradients equal the convolution's to float64 rounding."""
    x, conv, grad = _inputs(4, 8, 12, 4, seed=1)
    x64 = x.double().requires_grad_()
    w64 = conv.weight.detach().double().requires_grad_()
    out = function.apply(x64, w64)
    out.backward(grad.double())
    xr, wr = x64.detach().clone().requires_grad_(), w64.detach().clone().requires_grad_()
    ref = F.conv2d(xr, wr, padding=1)
    ref.backward(grad.double())
    for ours, exact in [(out, ref), (x64.grad, xr.grad), (w64.grad, wr.grad)]:
        assert torch.allclose(ours, exact, rtol=1e-12, atol=1e-12)


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


# TorchScript is an export format here; torch marks it deprecated.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_it_is_an_nn_conv2d_with_the_same_state_dict():
    conv = Conv3x3(3, 8)
    plain = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 6)
    scripted = torch.jit.script(conv)
    assert torch.equal(scripted(x), plain(x))
