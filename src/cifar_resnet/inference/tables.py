"""What ``cifar-resnet evaluate`` and ``predict`` print: aligned tables, and the records
their ``--json`` output holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .types import Evaluation, Predictions, TrainedModel


def evaluation_table(result: Evaluation) -> str:
    """Summary, per-class accuracy and confusion counts as aligned plain-text tables."""
    final = result.tta or result
    lines = [f"test images  {result.n:,}", _summary_line("plain", result)]
    if result.tta is not None:
        gain = result.tta.acc - result.acc
        lines.append(f"{_summary_line('flip TTA', result.tta)}  ({gain * 100:+.2f} points)")
    lines.append("")
    header = ["class", "images", "correct", "accuracy"]
    if result.tta is not None:
        header.append("with TTA")
    rows = []
    totals = result.confusion.sum(1).tolist()
    plain_acc = result.per_class_acc
    tta_acc = result.tta.per_class_acc if result.tta is not None else None
    for i, name in enumerate(result.classes):
        row = [name, f"{totals[i]:,}", f"{int(result.confusion[i, i]):,}", _pct(plain_acc[i])]
        if tta_acc is not None:
            row.append(_pct(tta_acc[i]))
        rows.append(row)
    lines += _align([header, *rows], right_from=1)
    lines.append("")
    title = "confusion counts (rows: true class, columns: predicted"
    title += ", with TTA)" if result.tta is not None else ")"
    lines.append(title)
    short = _short_names(result.classes)
    matrix = [["", *short]]
    for i, name in enumerate(result.classes):
        matrix.append([name, *(str(v) for v in final.confusion[i].tolist())])
    lines += _align(matrix, right_from=1)
    return "\n".join(lines)


def evaluation_record(
    model: TrainedModel, result: Evaluation, data: str, limit: int | None, source: str | Path
) -> dict[str, Any]:
    """``cifar-resnet evaluate --json``: the model, the data and every figure of ``result``."""
    return {
        "checkpoint": str(model.path or source),
        "epoch": model.epoch,
        "device": model.runtime.describe(),
        "data": data,
        "split": "test",
        "limit_test": limit,
        "recorded_test_acc": model.recorded_test_acc,
        "classes": list(model.classes),
        **result.to_dict(),
    }


def prediction_records(
    names: Sequence[str], predictions: Predictions, k: int = 3
) -> list[dict[str, Any]]:
    """``cifar-resnet predict --json``: each image's top k and every class's probability."""
    return [
        {
            "image": name,
            "top_k": [{"class": c, "prob": p} for c, p in top],
            "probs": dict(zip(predictions.classes, probs, strict=True)),
        }
        for name, top, probs in zip(
            names, predictions.top_k(k), predictions.probs.tolist(), strict=True
        )
    ]


def prediction_table(names: Sequence[str], predictions: Predictions, k: int = 3) -> str:
    """One row per image: its name, then the k most probable classes with probabilities."""
    ranked = predictions.top_k(k)
    k = len(ranked[0]) if ranked else k
    ordinal = ["1st", "2nd", "3rd"]
    header = ["image"]
    for j in range(k):
        header += [ordinal[j] if j < 3 else f"{j + 1}th", "prob"]
    rows = [header]
    for name, top in zip(names, ranked, strict=True):
        row = [str(name)]
        for cls, p in top:
            row += [cls, f"{p:.1%}"]
        rows.append(row)
    right = {2 * j + 2 for j in range(k)}
    return "\n".join(_align(rows, right_cols=right))


def _summary_line(label: str, result: Evaluation) -> str:
    return f"{label:<10}   accuracy {result.acc:.2%}  loss {result.loss:.4f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _short_names(classes: Sequence[str], width: int = 5) -> list[str]:
    """Column headers: names cut to ``width`` characters, or indices when that makes clashes."""
    short = [c[:width] for c in classes]
    if len(set(short)) < len(short):
        return [str(i) for i in range(len(classes))]
    return short


def _align(
    rows: list[list[str]], *, right_from: int | None = None, right_cols: set[int] | None = None
) -> list[str]:
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            right = (right_from is not None and j >= right_from) or (
                right_cols is not None and j in right_cols
            )
            cells.append(cell.rjust(widths[j]) if right else cell.ljust(widths[j]))
        out.append("  ".join(cells).rstrip())
    return out
