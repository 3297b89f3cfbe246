import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_resnet.model.layers import GhostBatchNorm, PatchWhitening, ghost_splits, patch_moments


@pytest.mark.parametrize(
    ("n", "ghost", "splits"),
    [(512, 32, 16), (256, 32, 8), (336, 32, 8), (337, 32, 1), (16, 32, 1), (64, 0, 1), (96, 40, 2)],
)
def test_ghost_splits_are_the_most_equal_groups_of_at_least_the_ghost_batch(n, ghost, splits):
    assert ghost_splits(n, ghost) == splits
    assert n % splits == 0
    assert splits == 1 or n // splits >= ghost


def _per_group_batchnorm(x, splits, weight, bias, eps=1e-5):
    """Each contiguous group of images normalised on its own by torch's batch_norm."""
    parts = [
        F.batch_norm(part, None, None, weight, bias, training=True, eps=eps)
        for part in x.chunk(splits)
    ]
    return torch.cat(parts)


@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_batchnorm_normalises_each_group_as_batchnorm_does(channels_last):
    torch.manual_seed(0)
    gbn = GhostBatchNorm(6, ghost_batch=8).train()
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 2.0)
        gbn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(32, 6, 5, 5) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = gbn(x)
    expected = _per_group_batchnorm(x.contiguous(), 4, gbn.weight, gbn.bias)
    # fp32 means and variances over 200 values: rounding of order 1e-6 relative
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the groups differ from one whole-batch BatchNorm
    whole = F.batch_norm(x, None, None, gbn.weight, gbn.bias, training=True)
    assert (out - whole).abs().max() > 1e-2


def test_ghost_batchnorm_running_stats_are_the_average_of_per_group_batchnorms():
    torch.manual_seed(1)
    gbn = GhostBatchNorm(4, ghost_batch=4).train()
    groups = [nn.BatchNorm2d(4).train() for _ in range(3)]
    for _ in range(3):
        x = torch.randn(12, 4, 3, 3) * 2 + 0.5
        gbn(x)
        for bn, part in zip(groups, x.chunk(3), strict=True):
            bn(part)
    mean = torch.stack([bn.running_mean for bn in groups]).mean(0)
    var = torch.stack([bn.running_var for bn in groups]).mean(0)
    torch.testing.assert_close(gbn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gbn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(gbn.num_batches_tracked) == 3


def test_ghost_batchnorm_is_plain_batchnorm_in_eval_and_for_small_batches():
    torch.manual_seed(2)
    gbn = GhostBatchNorm(5, ghost_batch=16)
    with torch.no_grad():
        gbn.running_mean.uniform_(-1, 1)
        gbn.running_var.uniform_(0.5, 2)
    plain = nn.BatchNorm2d(5)
    plain.load_state_dict(gbn.state_dict())  # the same state_dict keys and shapes
    x = torch.randn(40, 5, 4, 4)
    torch.testing.assert_close(gbn.eval()(x), plain.eval()(x), rtol=0, atol=0)
    small = torch.randn(20, 5, 4, 4)  # fewer than two ghost batches: the whole batch
    torch.testing.assert_close(gbn.train()(small), plain.train()(small), rtol=0, atol=0)


def test_ghost_batchnorm_keeps_a_bf16_input_in_bf16_and_trains_weight_and_bias():
    gbn = GhostBatchNorm(3, ghost_batch=2).train()
    x = torch.randn(8, 3, 2, 2, dtype=torch.bfloat16, requires_grad=True)
    out = gbn(x)
    assert out.dtype == torch.bfloat16
    (out.float() * torch.arange(3.0)[:, None, None]).sum().backward()
    assert gbn.weight.grad is not None and gbn.bias.grad is not None
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_whitening_starts_as_the_identity_on_patches():
    x = torch.randn(2, 3, 6, 6)
    out = PatchWhitening(3)(x)  # (2, 27, 6, 6), zero padding keeps the size
    cols = F.unfold(x, 3, padding=1).reshape(2, 27, 6, 6)
    torch.testing.assert_close(out, cols, rtol=0, atol=0)


def test_fitted_whitening_decorrelates_the_patches_it_was_fitted_on():
    torch.manual_seed(3)
    # correlated images: smooth noise plus a per-image brightness
    base = F.avg_pool2d(torch.randn(64, 3, 12, 12), 3, stride=1, padding=1)
    images = base + torch.randn(64, 1, 1, 1)
    layer = PatchWhitening(3, eps=1e-2)
    layer.fit(images)
    moments = patch_moments(images, 3)
    eigenvalues = torch.linalg.eigvalsh(moments).flip(0)  # largest first
    w = layer.weight.reshape(27, 27).double()
    # W M W^T = diag(lambda / (lambda + eps)) in exact arithmetic; the filters are fp32,
    # so each product carries a relative rounding of about 27 * 2**-24. The diagonal is in
    # the eigenvalues' descending order: the filters come largest component first.
    torch.testing.assert_close(
        w @ moments @ w.T, torch.diag(eigenvalues / (eigenvalues + 1e-2)), rtol=0, atol=1e-5
    )


def test_patch_moments_are_the_second_moments_of_every_patch():
    torch.manual_seed(4)
    images = torch.randn(7, 3, 5, 5)
    cols = F.unfold(images, 3).transpose(1, 2).reshape(-1, 27).double()
    expected = cols.T @ cols / (cols.shape[0] - 1)
    torch.testing.assert_close(patch_moments(images, 3, chunk=3), expected)


def test_a_fitted_whitening_is_saved_and_restored_with_the_state_dict():
    layer = PatchWhitening(3)
    layer.fit(torch.randn(4, 3, 8, 8))
    other = PatchWhitening(3)
    other.load_state_dict(copy.deepcopy(layer.state_dict()))
    assert torch.equal(other.weight, layer.weight)
    assert not any(p.requires_grad for p in other.parameters())  # nothing trained
