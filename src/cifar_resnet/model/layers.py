"""Two layers of Page's 10-epoch network that torch does not have: ghost batch norm and a
fixed patch-whitening convolution.

``GhostBatchNorm`` is ``nn.BatchNorm2d`` (same parameters, buffers and state_dict) whose
training-mode statistics are taken over groups of about ``ghost_batch`` images instead of
the whole batch; evaluation is plain BatchNorm with the running statistics. Each group
(consecutive images of the shuffled batch) runs through torch's BatchNorm kernel on its
own. On a 2-core EPYC (fp32, channels_last, batch 512 in groups of 32, the layer shapes
of width 0.25) a layer's forward and backward took 1.0-3.4x one whole-batch BatchNorm's
time this way, and 4.6-8.7x written as tensor operations.
Each group's mean and variance normalise that group; the running statistics move, with BatchNorm's
momentum, towards the groups' average. Averaging the groups' statistics first and then
taking one moving average is the same as keeping a moving average per group and averaging
them at evaluation (both are linear), so one set of buffers of the usual size suffices and
an exported model is a plain BatchNorm.

``PatchWhitening`` is a fixed 3x3 convolution from 3 to 27 channels whose filters are the
principal components of the training images' 3x3 patches, each scaled by one over the
square root of its variance (plus ``eps``): PCA whitening of every pixel's neighbourhood.
It holds its filters as a buffer (saved, not trained). Until ``fit`` sets them they are
the identity on patches: output channel k is pixel k of the 27 in the neighbourhood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The images and the eps the whitening is fitted with (Page's: the first 10,000 training
# images, eps 1e-2 in normalised units).
WHITENING_IMAGES = 10_000
WHITENING_EPS = 1e-2


def ghost_splits(n: int, ghost_batch: int) -> int:
    """Into how many equal groups a batch of ``n`` splits: the most that divide it evenly
    with at least ``ghost_batch`` images each (1: the whole batch)."""
    splits = n // ghost_batch if ghost_batch > 0 else 1
    while splits > 1 and n % splits:
        splits -= 1
    return max(splits, 1)


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per group of about ``ghost_batch`` images."""

    def __init__(self, num_features: int, ghost_batch: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = ghost_splits(x.shape[0], self.ghost_batch)
        if not self.training or splits == 1:
            return super().forward(x)
        # torch's own kernel on each group (a slice of the batch, in any memory format),
        # which also returns the group's mean and 1 / sqrt(var + eps)
        outs, means, invstds = zip(*(
            torch.native_batch_norm(part, self.weight, self.bias, None, None, True, 0.0, self.eps)
            for part in x.chunk(splits)
        ), strict=True)  # fmt: skip
        if self.track_running_stats:
            self._track(torch.stack(means), torch.stack(invstds), x[0, 0].numel() * len(outs[0]))
        return torch.cat(outs)

    @torch.no_grad()
    def _track(self, means: torch.Tensor, invstds: torch.Tensor, count: int) -> None:
        """Move the running statistics towards the groups' average (the groups' means, and
        their variances made unbiased over ``count`` values each, as BatchNorm's)."""
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:  # a cumulative average, as BatchNorm's momentum=None
            momentum = 1.0 / float(self.num_batches_tracked)
        variances = (invstds.double().pow(-2) - self.eps) * (count / max(count - 1, 1))
        self.running_mean.lerp_(means.mean(0).to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(variances.mean(0).to(self.running_var.dtype), momentum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch={self.ghost_batch}"


def plain_batchnorms(model: nn.Module) -> nn.Module:
    """``model`` with every ``GhostBatchNorm`` replaced, in place, by the ``nn.BatchNorm2d``
    holding its state: the same network in evaluation, in a form TorchScript and ONNX take."""
    for name, child in model.named_children():
        if isinstance(child, GhostBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum).to(
                device=child.running_mean.device
            )
            plain.load_state_dict(child.state_dict())
            plain.weight.requires_grad_(child.weight.requires_grad)
            setattr(model, name, plain.train(child.training))
        else:
            plain_batchnorms(child)
    return model


class PatchWhitening(nn.Module):
    """A fixed ``size`` x ``size`` convolution (padding keeps the map's size, no bias) that
    whitens each pixel's neighbourhood; ``fit`` computes its filters from images."""

    def __init__(self, in_channels: int = 3, size: int = 3, eps: float = WHITENING_EPS) -> None:
        super().__init__()
        self.size, self.eps = size, eps
        self.out_channels = in_channels * size * size
        identity = torch.eye(self.out_channels).reshape(-1, in_channels, size, size)
        self.register_buffer("weight", identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=self.size // 2)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Filters from ``images`` (N, C, H, W), normalised as the network sees them: the
        eigenvectors of the patches' second-moment matrix, largest variance first, each
        divided by the square root of its eigenvalue plus ``eps``."""
        eigenvalues, eigenvectors = torch.linalg.eigh(patch_moments(images, self.size))
        order = eigenvalues.argsort(descending=True)
        scale = (eigenvalues[order] + self.eps).rsqrt()
        filters = eigenvectors[:, order].T * scale[:, None]  # (27, 27): one filter per row
        self.weight.copy_(filters.reshape(self.weight.shape).to(self.weight))

    def extra_repr(self) -> str:
        return f"{self.out_channels // self.size**2}, {self.out_channels}, size={self.size}"


def patch_moments(images: torch.Tensor, size: int, chunk: int = 500) -> torch.Tensor:
    """The second-moment matrix X^T X / (n - 1) of every ``size`` x ``size`` patch X (no
    padding) of ``images``, in float64 (C*size^2 square), accumulated ``chunk`` images at a
    time. The patches are not centred: the normalised images have about zero mean."""
    dim = images.shape[1] * size * size
    total = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    rows = 0
    for part in images.split(chunk):
        cols = F.unfold(part.float(), size).transpose(1, 2).reshape(-1, dim).double()
        total += cols.T @ cols
        rows += cols.shape[0]
    return total / max(rows - 1, 1)
