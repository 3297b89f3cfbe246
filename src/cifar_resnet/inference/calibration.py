"""How far a model's confidence can be trusted: ECE, NLL, Brier score and the reliability bins.

Accuracy says how often the model is right; these say whether the probability it gives its
class matches that rate. All come from a split's logits (N, C) and labels (N,):

- confidence: the softmax probability of the predicted class (the arg-max of the logits,
  as ``evaluation.evaluate`` scores it);
- ECE, the expected calibration error of Guo et al. (2017): the confidences are sorted into
  15 equal-width bins over [0, 1], each closed on the right, ``(k/15, (k+1)/15]`` (the first
  also holds 0), and ECE = sum over bins of (share of the images in the bin) * |accuracy in
  the bin - mean confidence in the bin|, a fraction in [0, 1];
- NLL: the mean cross-entropy of the true class in nats (the evaluation's loss);
- Brier score: the mean over images of the sum over the C classes of (p_c - y_c)^2, with y
  the one-hot label, in [0, 2]; the form of Brier (1950), not divided by C and not scoring
  the top class alone, as some libraries do.

With flip TTA the prediction is the one ``evaluation.tta_log_probs`` defines, the mean of
the softmaxes of each image and its mirror image, its arg-max the class: the figures describe
the probabilities ``evaluate --tta`` scores.

torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")`` computes the same ECE (the
tests check it), but it returns the sum alone, not the per-bin table the reliability diagram
draws, and its bins are closed on the left, so a confidence of exactly 1 gets a sixteenth bin
of its own; a package dependency for a dozen tensor operations is not worth that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .evaluation import tta_log_probs

N_BINS = 15  # equal-width confidence bins of ECE and the reliability diagram


@dataclass(frozen=True, eq=False)
class Calibration:
    """Calibration figures of one prediction over a split, with its reliability bins."""

    n: int  # images
    acc: float  # fraction predicted right, in [0, 1]
    confidence: float  # mean confidence; above acc: over-confident, below: under-confident
    ece: float  # expected calibration error, a fraction in [0, 1]
    nll: float  # mean cross-entropy in nats
    brier: float  # mean over images of the summed squared error over classes, in [0, 2]
    edges: torch.Tensor  # (B + 1,) float64, 0 to 1: bin k is (edges[k], edges[k + 1]]
    counts: torch.Tensor  # (B,) int64: images whose confidence falls in each bin
    bin_confidence: torch.Tensor  # (B,) float64 mean confidence per bin, NaN where empty
    bin_acc: torch.Tensor  # (B,) float64 fraction right per bin, NaN where empty

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (empty bins' means are null): the figures and one entry per bin."""
        bins = [
            {
                "lower": lo,
                "upper": hi,
                "count": count,
                "confidence": None if count == 0 else conf,
                "acc": None if count == 0 else acc,
            }
            for lo, hi, count, conf, acc in zip(
                self.edges[:-1].tolist(),
                self.edges[1:].tolist(),
                self.counts.tolist(),
                self.bin_confidence.tolist(),
                self.bin_acc.tolist(),
                strict=True,
            )
        ]
        figures = ("n", "acc", "confidence", "ece", "nll", "brier")
        return {**{k: getattr(self, k) for k in figures}, "n_bins": len(bins), "bins": bins}


def calibration(
    logits: torch.Tensor,
    labels: torch.Tensor,
    flipped: torch.Tensor | None = None,
    *,
    n_bins: int = N_BINS,
) -> Calibration:
    """The calibration of logits (N, C) against labels (N,); with ``flipped`` (the logits of
    the mirror images), of the flip-TTA prediction. Logits may be any log-probabilities."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(
            f"logits must be (N, C) with N = len(labels) > 0, got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    logits, labels = logits.detach().cpu(), labels.detach().long().cpu()
    if flipped is None:
        log_probs = logits.double().log_softmax(1)  # (N, C)
        predicted = logits.argmax(1)  # the class evaluate scores, ties to the lower index
    else:
        log_probs = tta_log_probs(logits, flipped.detach().cpu()).double()
        predicted = log_probs.argmax(1)
    probs = log_probs.exp()  # (N, C)
    confidence = probs.gather(1, predicted[:, None]).squeeze(1)  # (N,)
    right = (predicted == labels).double()  # (N,)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize's default (right=False) gives bin k for edges[k] < c <= edges[k + 1].
    index = torch.bucketize(confidence, edges[1:-1])  # (N,) in [0, n_bins)
    counts = torch.bincount(index, minlength=n_bins)
    bin_confidence = torch.bincount(index, confidence, minlength=n_bins) / counts
    bin_acc = torch.bincount(index, right, minlength=n_bins) / counts  # NaN where empty
    share = counts.double() / len(labels)
    ece = (share * (bin_acc - bin_confidence).abs()).nan_to_num().sum()
    onehot = nn.functional.one_hot(labels, probs.shape[1]).double()
    return Calibration(
        n=len(labels),
        acc=right.mean().item(),
        confidence=confidence.mean().item(),
        ece=ece.item(),
        nll=nn.functional.nll_loss(log_probs, labels).item(),
        brier=(probs - onehot).pow(2).sum(1).mean().item(),
        edges=edges,
        counts=counts,
        bin_confidence=bin_confidence,
        bin_acc=bin_acc,
    )


def calibration_table(result: Calibration, tta: Calibration | None = None) -> str:
    """The figures as aligned plain text: one row for the plain prediction, one with TTA."""
    rows = [("", "accuracy", "confidence", "ECE", "NLL", "Brier")]
    for label, c in (("plain", result), ("flip TTA", tta)):
        if c is not None:
            figures = (f"{c.acc:.2%}", f"{c.confidence:.2%}", f"{c.ece:.2%}", f"{c.nll:.4f}")
            rows.append((label, *figures, f"{c.brier:.4f}"))
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = [
        f"calibration ({len(result.counts)} equal-width confidence bins; confidence: mean "
        "probability of the predicted class)"
    ]
    for label, *figures in rows:
        cells = [label.ljust(widths[0])]
        cells += [f.rjust(w) for f, w in zip(figures, widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
