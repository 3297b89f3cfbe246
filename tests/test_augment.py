import pytest
import torch

from cifar_resnet.data.augment import apply_augment, augment, normalize, sample_augment

N = 36_000


@pytest.fixture(scope="module")
def params():
    return sample_augment(N, generator=torch.Generator().manual_seed(0))


def _assert_uniform(values, low, high):
    counts = torch.bincount(values, minlength=high + 1).double()
    assert counts[:low].sum() == 0 and len(counts) == high + 1
    freq = counts[low:] / len(values)
    # binomial std of a frequency near 1/9 with N=36k is ~0.0017; allow 5 sigma
    assert torch.allclose(freq, torch.full_like(freq, 1 / (high - low + 1)), atol=0.009)


def test_crop_offsets_are_uniform_over_0_to_8_and_independent(params):
    _assert_uniform(params.crop_y, 0, 8)
    _assert_uniform(params.crop_x, 0, 8)
    joint = torch.bincount(params.crop_y * 9 + params.crop_x, minlength=81).double() / N
    assert torch.allclose(joint, torch.full_like(joint, 1 / 81), atol=0.004)


def test_flip_rate_is_one_half(params):
    assert params.flip.dtype == torch.bool
    assert abs(params.flip.double().mean().item() - 0.5) < 0.01


def test_hole_corner_is_uniform_so_the_hole_lies_inside(params):
    _assert_uniform(params.cut_y, 0, 24)
    _assert_uniform(params.cut_x, 0, 24)


def test_every_image_gets_exactly_one_8x8_hole_where_drawn():
    x = torch.ones(500, 3, 32, 32)
    p = sample_augment(500, generator=torch.Generator().manual_seed(1))
    out = apply_augment(x, p, padding=0)
    zeros = out == 0
    assert torch.equal(zeros.sum((1, 2, 3)), torch.full((500,), 3 * 64))
    for i in range(0, 500, 50):
        y, x0 = p.cut_y[i].item(), p.cut_x[i].item()
        assert zeros[i, :, y : y + 8, x0 : x0 + 8].all()


def _reference(img, p, i, padding=4, cutout=8):
    """Per-image augmentation, written the plain way, on the same draws."""
    padded = torch.nn.functional.pad(img, (padding,) * 4)
    y, x = p.crop_y[i].item(), p.crop_x[i].item()
    out = padded[:, y : y + 32, x : x + 32].clone()
    if p.flip[i]:
        out = torch.flip(out, dims=[2])  # width axis of (C, H, W)
    cy, cx = p.cut_y[i].item(), p.cut_x[i].item()
    out[:, cy : cy + cutout, cx : cx + cutout] = 0
    return out


def test_batched_ops_equal_the_per_image_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, 32, 32, generator=g)
    p = sample_augment(64, generator=g)
    out = apply_augment(x, p)
    for i in range(64):
        assert torch.equal(out[i], _reference(x[i], p, i)), i


def test_reflection_padding_equals_torchvisions_on_the_same_offsets():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 3, 32, 32, generator=g)
    p = sample_augment(48, generator=g)
    out = apply_augment(x, p, cutout=0, pad_mode="reflect")
    for i in range(48):
        padded = TF.pad(x[i], [4], padding_mode="reflect")  # RandomCrop's own padding
        y, x0 = p.crop_y[i].item(), p.crop_x[i].item()
        ref = TF.crop(padded, y, x0, 32, 32)
        ref = TF.horizontal_flip(ref) if p.flip[i] else ref
        assert torch.equal(out[i], ref), i


def test_reflection_fills_no_pixel_with_the_mean_colour():
    x = torch.ones(200, 3, 32, 32)  # no pixel is 0 (the mean colour) before padding
    p = sample_augment(200, generator=torch.Generator().manual_seed(4))
    assert (apply_augment(x, p, cutout=0, pad_mode="reflect") == 1).all()
    shifted = (p.crop_y != 4) | (p.crop_x != 4)  # these crops take in some padding
    zeros = (apply_augment(x, p, cutout=0) == 0).flatten(1).any(1)
    assert torch.equal(zeros, shifted)
    with pytest.raises(ValueError, match="pad_mode must be one of zeros, reflect"):
        apply_augment(x, p, pad_mode="edge")


def test_flip_mirrors_the_width_axis():
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(2, 3, 32, 32)
    p = sample_augment(2, generator=torch.Generator().manual_seed(0))
    p = type(p)(
        crop_y=torch.tensor([4, 4]),
        crop_x=torch.tensor([4, 4]),
        flip=torch.tensor([False, True]),
        cut_y=torch.zeros(2, dtype=torch.long),
        cut_x=torch.zeros(2, dtype=torch.long),
    )
    out = apply_augment(x, p, cutout=0)
    assert torch.equal(out[0, 0, 5], torch.arange(32.0))
    assert torch.equal(out[1, 0, 5], torch.arange(31.0, -1, -1))


def test_augment_is_reproducible_with_a_seeded_generator():
    x = torch.randn(16, 3, 32, 32)
    a = augment(x, generator=torch.Generator().manual_seed(5))
    b = augment(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_normalize_removes_the_given_mean_and_std():
    imgs = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    mean = imgs.double().div(255).mean((0, 2, 3)).float()
    std = imgs.double().div(255).std((0, 2, 3)).float()
    x = normalize(imgs, mean, std)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
