"""David Page's ResNet-9 ("custom ResNet") for 32x32 images, as in SPEC section 1.

Block outputs at width 1.0, for a (N, 3, 32, 32) input:

    prep_layer  Conv 3->64, norm, ReLU                              (N, 64, 32, 32)
    layer1      Conv 64->128, MaxPool 2, norm, ReLU  + residual     (N, 128, 16, 16)
    layer2      Conv 128->256, MaxPool 2, norm, ReLU                (N, 256, 8, 8)
    layer3      Conv 256->512, MaxPool 2, norm, ReLU + residual     (N, 512, 4, 4)
    head        MaxPool 4, flatten, Linear 512->10                  (N, 10)

The forward pass returns logits: ``CrossEntropyLoss`` applies log-softmax itself,
so a softmax inside the model would be applied twice. Callers that show
probabilities apply ``softmax`` themselves.

How it differs from David Page's network (``davidcpage/cifar10-fast``, the
DAWNBench ResNet-9), and which options close the gap:

- Head: Page's Linear has no bias and its logits are multiplied by 0.125;
  ``head_bias=False, logit_scale=0.125`` reproduce it (``--recipe page`` sets
  both). The default keeps the spec's plain ``Linear(512, 10)``.
- Pooling: the spec puts MaxPool between the conv and BatchNorm (conv, pool, BN,
  ReLU); Page's blocks pool last (conv, BN, ReLU, pool). Max-pooling commutes with
  the ReLU and with any increasing per-channel map, which BatchNorm is while its
  scale is positive, so the two differ in the BatchNorm statistics (taken over 4x
  fewer, pooled activations here) and in any channel whose scale turns negative;
  the spec's order runs BN and ReLU on a quarter of the pixels.
  ``pool_after_relu=True`` gives Page's order (the default is the spec's); both orders
  have the same parameters under the same state_dict keys.
- Everything else (channels, residual layout, 3x3 convolutions without bias,
  the final MaxPool of 4) is the same network.

The options of Page's later, 10-epoch training ("bag of tricks", ``--recipe page-fast``),
each off by default: ``activation="celu"`` (CELU with ``celu_alpha`` in place of every
ReLU), ``ghost_batch`` (BatchNorm statistics over groups of that many images while
training), ``freeze_bn_scale`` (the norm layers' scales fixed at 1, their biases still
trained) and ``whiten`` (the first layer becomes a fixed 3x3 patch-whitening convolution,
3 -> 27 channels, followed by a trained 1x1 convolution; ``fit_whitening`` sets it from
training images). What each costs and gives is in docs/results.md.

The convolutions are ``cpu_conv.Conv3x3``: an ``nn.Conv2d`` (same parameters and
state_dict) whose bf16 training on the CPU runs small maps as matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..config import (
    ACTIVATIONS,
    CELU_ALPHA_BOUNDS,
    DROPOUT_BOUNDS,
    GHOST_BATCH_BOUNDS,
    LOGIT_SCALE_BOUNDS,
    NORMS,
    WIDTH_BOUNDS,
    check_ghost_batch,
)
from ..errors import CheckpointError, ConfigError, check_range, oneline
from .cpu_conv import Conv3x3
from .layers import GhostBatchNorm, PatchWhitening


def check_options(
    *, width: float, norm: str, dropout: float, logit_scale: float, activation: str = "relu",
    celu_alpha: float = 0.3, ghost_batch: int = 0,
) -> None:  # fmt: skip
    """ConfigError naming the flag if an architecture option is out of range."""
    if norm not in NORMS:
        raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"--activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    check_range("--width", width, WIDTH_BOUNDS)
    check_range("--dropout", dropout, DROPOUT_BOUNDS)
    check_range("--logit-scale", logit_scale, LOGIT_SCALE_BOUNDS)
    check_range("--celu-alpha", celu_alpha, CELU_ALPHA_BOUNDS)
    check_range("--ghost-batch", ghost_batch, GHOST_BATCH_BOUNDS)
    check_ghost_batch(ghost_batch, norm)


def _activation(kind: str, celu_alpha: float) -> nn.Module:
    """ReLU, or CELU with ``celu_alpha`` (a ReLU smoothed over about alpha around 0)."""
    return nn.CELU(celu_alpha) if kind == "celu" else nn.ReLU(inplace=True)


def _norm(kind: str, channels: int, ghost_batch: int = 0, frozen_scale: bool = False) -> nn.Module:
    """Normalisation layer over ``channels`` feature maps; with ``frozen_scale`` its scale
    stays 1 (not trained; its bias still is)."""
    layer = _norm_layer(kind, channels, ghost_batch)
    if frozen_scale:
        layer.weight.requires_grad_(False)
    return layer


def _norm_layer(kind: str, channels: int, ghost_batch: int) -> nn.Module:
    if kind == "batch":
        return GhostBatchNorm(channels, ghost_batch) if ghost_batch else nn.BatchNorm2d(channels)
    if kind == "group":
        # Up to 32 groups, always dividing the channel count (width multipliers
        # give channel counts such as 16 or 48).
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "layer":
        # LayerNorm over (C, H, W) of each image: GroupNorm with one group.
        return nn.GroupNorm(1, channels)
    raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """Conv 3x3 (stride 1, padding 1) -> [MaxPool 2] -> norm -> ReLU -> [Dropout].

    ``block`` options beyond the pooling: ``activation``/``celu_alpha`` replace the ReLU,
    ``ghost_batch``/``freeze_bn_scale`` shape the norm, and ``kernel_size=1`` makes the
    convolution 1x1 (the layer after the whitening).

    With ``pool_after_relu`` the pooling runs after the ReLU instead (Page's order), and
    an ``Identity`` holds its place, so the norm stays at index 2 and both orders have the
    same state_dict. A plain Sequential either way, so TorchScript and ONNX see no
    custom forward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pool: bool,
        norm: str,
        dropout: float,
        conv_bias: bool,
        pool_after_relu: bool = False,
        activation: str = "relu",
        celu_alpha: float = 0.3,
        ghost_batch: int = 0,
        freeze_bn_scale: bool = False,
        kernel_size: int = 3,
    ) -> None:
        late = pool and pool_after_relu
        conv = (
            Conv3x3(in_channels, out_channels, bias=conv_bias)
            if kernel_size == 3
            else nn.Conv2d(in_channels, out_channels, kernel_size, bias=conv_bias)
        )
        layers: list[nn.Module] = [conv]
        if pool:
            layers.append(nn.Identity() if late else nn.MaxPool2d(2))
        layers += [
            _norm(norm, out_channels, ghost_batch, freeze_bn_scale),
            _activation(activation, celu_alpha),
        ]
        if late:
            layers.append(nn.MaxPool2d(2))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.pool_after_relu = late


class ResidualLayer(nn.Module):
    """X = ConvBlock with pooling; out = X + (ConvBlock -> ConvBlock)(X)."""

    def __init__(self, in_channels: int, out_channels: int, **block: object) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels, pool=True, **block)
        self.res = nn.Sequential(
            ConvBlock(out_channels, out_channels, pool=False, **block),
            ConvBlock(out_channels, out_channels, pool=False, **block),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x)


class Scale(nn.Module):
    """Multiplies its input by a fixed factor (Page's logit scale of 0.125); no parameters."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class WhitenedPrep(nn.Sequential):
    """The first layer with ``whiten``: the fixed patch whitening (3 -> 27 channels), then a
    trained 1x1 convolution block to the first layer's channels."""

    def __init__(self, out_channels: int, **block: object) -> None:
        whitening = PatchWhitening(3)
        super().__init__(
            whitening,
            ConvBlock(whitening.out_channels, out_channels, pool=False, kernel_size=1, **block),
        )


class CustomResNet(nn.Module):
    """ResNet-9 with a choice of normalisation, dropout and width; returns logits."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        norm: str = "batch",
        dropout: float = 0.0,
        conv_bias: bool = False,
        head_bias: bool = True,
        logit_scale: float = 1.0,
        pool_after_relu: bool = False,
        activation: str = "relu",
        celu_alpha: float = 0.3,
        ghost_batch: int = 0,
        freeze_bn_scale: bool = False,
        whiten: bool = False,
    ) -> None:
        super().__init__()
        check_options(
            width=width, norm=norm, dropout=dropout, logit_scale=logit_scale,
            activation=activation, celu_alpha=celu_alpha, ghost_batch=ghost_batch,
        )  # fmt: skip
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        block = {
            "norm": norm,
            "dropout": dropout,
            "conv_bias": conv_bias,
            "pool_after_relu": pool_after_relu,
            "activation": activation,
            "celu_alpha": celu_alpha,
            "ghost_batch": ghost_batch,
            "freeze_bn_scale": freeze_bn_scale,
        }
        self.prep_layer = (
            WhitenedPrep(c1, **block) if whiten else ConvBlock(3, c1, pool=False, **block)
        )
        self.layer1 = ResidualLayer(c1, c2, **block)
        self.layer2 = ConvBlock(c2, c3, pool=True, **block)
        self.layer3 = ResidualLayer(c3, c4, **block)
        head: list[nn.Module] = [
            nn.MaxPool2d(4),
            nn.Flatten(),
            nn.Linear(c4, num_classes, bias=head_bias),
        ]
        if logit_scale != 1.0:
            head.append(Scale(logit_scale))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prep_layer(x)  # (N, 64w, 32, 32)
        x = self.layer1(x)  # (N, 128w, 16, 16)
        x = self.layer2(x)  # (N, 256w, 8, 8)
        x = self.layer3(x)  # (N, 512w, 4, 4)
        return self.head(x)  # (N, num_classes) logits

    def fit_whitening(self, images: torch.Tensor) -> None:
        """Set the whitening layer (``whiten``) from normalised training images (N, 3, H, W)."""
        if not isinstance(self.prep_layer, WhitenedPrep):
            raise ConfigError("fit_whitening needs a network built with whiten=True")
        self.prep_layer[0].fit(images)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_weights(
    model: nn.Module, weights: Mapping[str, torch.Tensor], problem: str, then: str = ""
) -> nn.Module:
    """``model`` holding ``weights``, in eval mode. Weights that do not fit are a one-line
    CheckpointError: ``problem``, torch's first reason (and first size mismatch), ``then``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        text = str(e).strip()
        first = oneline(text.splitlines()[0] if text else "state dict mismatch")
        shapes = [line.strip() for line in text.splitlines() if "size mismatch" in line][:1]
        detail = f"{first} {oneline(shapes[0], 160)}" if shapes else first
        raise CheckpointError(f"{problem} ({detail})" + (f"; {then}" if then else "")) from None
    return model.eval()
