"""Classification metrics: predictions, accuracy and the confusion matrix, computed batch by batch."""

from __future__ import annotations

from typing import Any, Callable

from matgrad._errors import ShapeError
from matgrad.autograd import no_grad
from matgrad.tensor import Tensor2D

__all__ = ["accuracy", "confusion_matrix", "format_confusion_matrix", "predict"]


def predict(model: Callable[[Tensor2D], Tensor2D], x: Tensor2D, batch_size: int = 1000) -> list[int]:
    """``argmax`` of ``model``'s logits for each row of ``x``, in eval mode and without a graph."""
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()  # type: ignore[attr-defined]
    preds: list[int] = []
    try:
        with no_grad():
            for lo in range(0, x.nrows, batch_size):
                logits = model(x[lo : lo + batch_size])
                preds.extend(v for row in logits.argmax(axis=1).tolist() for v in row)
    finally:
        if was_training:
            model.train()  # type: ignore[attr-defined]
    return preds


def _labels(y: Any) -> list[int]:
    if isinstance(y, Tensor2D):
        return [int(v) for row in y.tolist() for v in row]
    return [int(v) for v in y]


def accuracy(preds: Any, targets: Any) -> float:
    """The fraction of ``preds`` equal to ``targets`` (lists of ints or int64 column tensors)."""
    p, t = _labels(preds), _labels(targets)
    if len(p) != len(t) or not t:
        raise ShapeError(f"accuracy: {len(p)} predictions for {len(t)} targets")
    return sum(a == b for a, b in zip(p, t)) / len(t)


def confusion_matrix(preds: Any, targets: Any, num_classes: int = 10) -> list[list[int]]:
    """``counts[true][predicted]``."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(_labels(preds), _labels(targets)):
        counts[t][p] += 1
    return counts


def format_confusion_matrix(counts: list[list[int]]) -> str:
    """A plain-text table: rows are true classes, columns predictions, plus per-class accuracy."""
    n = len(counts)
    width = max(4, *(len(str(v)) for row in counts for v in row))
    head = "true\\pred " + " ".join(f"{j:>{width}}" for j in range(n)) + "   acc"
    lines = [head, "-" * len(head)]
    for i, row in enumerate(counts):
        total = sum(row)
        acc = f"{row[i] / total:6.1%}" if total else "     -"
        lines.append(f"{i:>9} " + " ".join(f"{v:>{width}}" for v in row) + f" {acc}")
    return "\n".join(lines)
