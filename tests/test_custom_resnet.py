import pytest
import torch
from torch import nn

from cifar_resnet.errors import ConfigError
from cifar_resnet.model.custom_resnet import CustomResNet, count_parameters


def test_default_has_the_reference_parameter_count():
    assert count_parameters(CustomResNet()) == 6_573_130


def test_conv_biases_add_exactly_their_parameters():
    assert count_parameters(CustomResNet(conv_bias=True)) == 6_575_370


def test_block_output_shapes_follow_the_spec_table():
    model = CustomResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = {
        "prep_layer": (2, 64, 32, 32),
        "layer1": (2, 128, 16, 16),
        "layer2": (2, 256, 8, 8),
        "layer3": (2, 512, 4, 4),
        "head": (2, 10),
    }
    with torch.no_grad():
        for name, shape in expected.items():
            x = getattr(model, name)(x)
            assert tuple(x.shape) == shape, name


def test_forward_returns_logits_not_probabilities():
    torch.manual_seed(0)
    out = CustomResNet(width=0.25).eval()(torch.randn(4, 3, 32, 32))
    # softmax output would sum to 1 with entries in [0, 1]; logits do not
    assert not torch.allclose(out.sum(1), torch.ones(4))
    assert (out < 0).any()


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_every_variant_runs_forward_and_backward(norm, width):
    model = CustomResNet(width=width, norm=norm, dropout=0.1)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_width_scales_channels():
    model = CustomResNet(width=0.25)
    x = model.layer3(model.layer2(model.layer1(model.prep_layer(torch.randn(1, 3, 32, 32)))))
    assert x.shape == (1, 128, 4, 4)


def test_dropout_zero_adds_no_layers_and_positive_dropout_is_active_in_training():
    assert not any(isinstance(m, torch.nn.Dropout) for m in CustomResNet(width=0.25).modules())
    model = CustomResNet(width=0.25, dropout=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "kwargs", [{"norm": "instance"}, {"width": 0}, {"dropout": 1.0}, {"dropout": -0.1}]
)
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        CustomResNet(**kwargs)


def test_pages_head_has_no_bias_and_scales_the_logits_by_an_eighth():
    torch.manual_seed(0)
    spec = CustomResNet(width=0.25).eval()
    page = CustomResNet(width=0.25, head_bias=False, logit_scale=0.125).eval()
    assert count_parameters(CustomResNet(head_bias=False)) == 6_573_130 - 10
    assert page.head[2].bias is None
    state = {k: v for k, v in spec.state_dict().items() if k != "head.2.bias"}
    page.load_state_dict(state)  # the same weight names: only the bias is absent
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (spec(x) - spec.head[2].bias) * 0.125  # a direct computation
        torch.testing.assert_close(page(x), expected)
    with pytest.raises(ConfigError, match="--logit-scale"):
        CustomResNet(logit_scale=0.0)


# TorchScript is an export format here; torch marks it deprecated.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_pages_pooling_order_pools_after_batchnorm_and_relu():
    torch.manual_seed(0)
    spec = CustomResNet(width=0.25)
    page = CustomResNet(width=0.25, pool_after_relu=True)
    page.load_state_dict(spec.state_dict())  # the same layers under the same names
    assert count_parameters(CustomResNet(pool_after_relu=True)) == 6_573_130
    with torch.no_grad():  # give one BatchNorm a negative scale: there the orders differ
        for m in (spec, page):
            m.layer1.conv[2].weight[0] = -1.0
    spec.eval(), page.eval()
    x = torch.randn(2, 16, 32, 32)
    conv, pool, bn, relu = spec.layer1.conv
    with torch.no_grad():
        expected = nn.functional.max_pool2d(nn.functional.relu(bn(conv(x))), 2)  # Page's
        torch.testing.assert_close(page.layer1.conv(x), expected)
        torch.testing.assert_close(spec.layer1.conv(x), relu(bn(pool(conv(x)))))  # the spec's
        assert not torch.allclose(page.layer1.conv(x), spec.layer1.conv(x))
        # blocks without pooling are the same in both; so are the output shapes
        torch.testing.assert_close(page.prep_layer(x[:, :3]), spec.prep_layer(x[:, :3]))
        assert page(x[:, :3]).shape == (2, 10)
        # a plain Sequential in both orders: TorchScript compiles it as it is
        torch.testing.assert_close(torch.jit.script(page)(x[:, :3]), page(x[:, :3]))


def _spec_state_keys() -> set[str]:
    return set(CustomResNet(width=0.25).state_dict())


def test_celu_replaces_every_relu_and_keeps_the_weights():
    celu = CustomResNet(width=0.25, activation="celu", celu_alpha=0.3)
    assert not any(isinstance(m, nn.ReLU) for m in celu.modules())
    activations = [m for m in celu.modules() if isinstance(m, nn.CELU)]
    assert len(activations) == 8  # one per conv block: prep, 3 + 1 + 3 in the layers
    assert {m.alpha for m in activations} == {0.3}
    assert set(celu.state_dict()) == _spec_state_keys()
    x = torch.randn(2, 3, 32, 32)
    relu = CustomResNet(width=0.25)
    relu.load_state_dict(celu.state_dict())
    assert not torch.allclose(celu.eval()(x), relu.eval()(x))


def test_frozen_norm_scales_are_ones_and_not_trained():
    model = CustomResNet(width=0.25, freeze_bn_scale=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 8
    assert all(not m.weight.requires_grad and bool((m.weight == 1).all()) for m in norms)
    assert all(m.bias.requires_grad for m in norms)
    frozen = sum(m.weight.numel() for m in norms)
    assert count_parameters(model) == count_parameters(CustomResNet(width=0.25)) - frozen
    assert set(model.state_dict()) == _spec_state_keys()  # still saved


def test_ghost_batchnorm_is_the_norm_of_every_block_and_checks_its_options():
    from cifar_resnet.model.layers import GhostBatchNorm

    model = CustomResNet(width=0.25, ghost_batch=32)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 8 and all(isinstance(m, GhostBatchNorm) for m in norms)
    assert {m.ghost_batch for m in norms} == {32}
    assert set(model.state_dict()) == _spec_state_keys()
    with pytest.raises(ConfigError, match="--ghost-batch"):
        CustomResNet(norm="group", ghost_batch=32)
    with pytest.raises(ConfigError, match="--activation"):
        CustomResNet(activation="gelu")


def test_whitened_first_layer_is_a_fixed_patch_whitening_then_a_1x1_conv():
    torch.manual_seed(0)
    model = CustomResNet(width=0.25, whiten=True)
    whitening, block = model.prep_layer
    assert block[0].kernel_size == (1, 1) and block[0].in_channels == 27
    assert not any(p.requires_grad for p in whitening.parameters())
    # 27 x 16 weights of the 1x1 conv, as many as the 3x3 conv's 3 x 9 x 16 they replace
    assert count_parameters(model) == count_parameters(CustomResNet(width=0.25))
    images = torch.randn(20, 3, 32, 32)
    before = whitening.weight.clone()
    model.fit_whitening(images)
    assert not torch.equal(whitening.weight, before)
    assert "prep_layer.0.weight" in model.state_dict()  # the fitted filters are saved
    assert model.eval()(images[:2]).shape == (2, 10)
    with pytest.raises(ConfigError, match="whiten"):
        CustomResNet(width=0.25).fit_whitening(images)
