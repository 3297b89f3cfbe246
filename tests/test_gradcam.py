import pytest
import torch
import torch.nn.functional as F

from cifar_resnet.errors import ConfigError
from cifar_resnet.insight.gradcam import DEFAULT_LAYER, GRADCAM_LAYERS, grad_cam
from cifar_resnet.model.custom_resnet import CustomResNet


@pytest.fixture(scope="module")
def model() -> CustomResNet:
    torch.manual_seed(0)
    m = CustomResNet(width=0.25)
    # Non-trivial BatchNorm statistics, so eval and train mode give different maps.
    with torch.no_grad():
        m.train()
        m(torch.randn(64, 3, 32, 32) * 2 + 0.5)
    return m


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _hook_counts(model: torch.nn.Module) -> list[int]:
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    ]


def _reference(model, inputs, targets, layer):
    """Grad-CAM by hand: ReLU(sum_k mean(dy/dA_k) A_k), bilinear to 32x32, min-max per map."""
    saved = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: saved.update(a=o))
    try:
        model.eval()
        logits = model(inputs)
        score = logits.gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, saved["a"])
    finally:
        handle.remove()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values.view(-1, 1, 1)
    high = cam.flatten(1).max(1).values.view(-1, 1, 1)
    span = high - low
    return torch.where(span > 0, (cam - low) / span, torch.zeros_like(cam)).detach()


@pytest.mark.parametrize("layer", GRADCAM_LAYERS)
def test_maps_are_32x32_in_unit_range_and_match_a_hand_computed_grad_cam(model, inputs, layer):
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    maps = grad_cam(model, inputs, targets, layer=layer)
    assert maps.shape == (6, 32, 32)
    assert maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    # Each map spans [0, 1], unless no position raises the class score (all zeros after ReLU).
    peaks = maps.flatten(1).max(1).values
    assert all(p == pytest.approx(1.0) or p == 0 for p in peaks.tolist())
    assert peaks.sum() >= 3
    assert torch.allclose(maps, _reference(model, inputs, targets, layer), atol=1e-4)


def test_model_flags_hooks_and_gradients_are_left_as_found(model, inputs):
    model.train()
    model.layer2[1].eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    handle = model.layer1.register_forward_hook(lambda m, i, o: None)  # the user's own hook
    hooks = _hook_counts(model)
    try:
        grad_cam(model, inputs, [1] * 6, layer="layer2", batch_size=4)
        assert [m.training for m in model.modules()] == flags
        assert _hook_counts(model) == hooks
        assert all(p.grad is None for p in model.parameters())
    finally:
        handle.remove()
        model.eval()


def test_runs_in_eval_mode(model, inputs):
    model.train()
    maps = grad_cam(model, inputs, [2] * 6)
    assert model.training
    model.eval()
    assert torch.allclose(maps, grad_cam(model, inputs, [2] * 6))
    reference = _reference(model, inputs, torch.full((6,), 2), DEFAULT_LAYER)
    assert torch.allclose(maps, reference, atol=1e-4)


def test_maps_depend_on_the_target_class(model, inputs):
    a = grad_cam(model, inputs, [0] * 6)
    b = grad_cam(model, inputs, [7] * 6)
    assert (a - b).abs().max() > 0.1


def test_works_inside_inference_mode(model, inputs):
    with torch.inference_mode():
        maps = grad_cam(model, inputs, [3] * 6)
    assert maps.shape == (6, 32, 32)


def test_default_layer_is_finer_than_layer3():
    assert DEFAULT_LAYER in ("layer1", "layer2")


def test_unknown_layer_and_bad_targets_are_errors(model, inputs):
    with pytest.raises(ConfigError, match="layer1, layer2, layer3"):
        grad_cam(model, inputs, [0] * 6, layer="head")
    with pytest.raises(ValueError, match="one target each"):
        grad_cam(model, inputs, [0] * 5)


def test_constant_and_empty_inputs(model, inputs):
    maps = grad_cam(model, torch.zeros(2, 3, 32, 32), [0, 1])
    assert maps.min() >= 0 and maps.max() <= 1 and not maps.isnan().any()
    assert grad_cam(model, inputs[:0], []).shape == (0, 32, 32)
