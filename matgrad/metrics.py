"""Classification metrics: predictions, accuracy and the confusion matrix, computed batch by batch."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Set
from typing import Any, Callable

from matgrad._errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError
from matgrad.autograd import no_grad
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D

__all__ = ["accuracy", "confusion_matrix", "format_confusion_matrix", "predict"]


def predict(model: Callable[[Tensor2D], Tensor2D], x: Tensor2D, batch_size: int = 1000) -> list[int]:
    """``argmax`` of ``model``'s logits for each row of ``x``, in eval mode and without a graph."""
    if not callable(model):
        raise ArgumentTypeError(f"predict: model must be callable (a Module or a function), got {type(model).__name__}")
    if not isinstance(x, Tensor2D):
        raise ArgumentTypeError(f"predict: x must be a Tensor2D of inputs, one row each, got {type(x).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ArgumentTypeError(
            f"predict: batch_size must be an int, got {type(batch_size).__name__} {batch_size!r:.40}"
        )
    if batch_size < 1:
        raise ArgumentError(f"predict: batch_size must be at least 1, got {batch_size}")
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    preds: list[int] = []
    try:
        with no_grad():
            for lo in range(0, x.nrows, int(batch_size)):
                logits = model(x[lo : lo + batch_size])
                if not isinstance(logits, Tensor2D):
                    raise ArgumentTypeError(
                        f"predict: the model returned a {type(logits).__name__}, not a Tensor2D of logits"
                    )
                preds.extend(v for row in logits.argmax(axis=1).tolist() for v in row)
    finally:
        if was_training:
            model.train()
    return preds


def _labels(fn: str, what: str, y: Any) -> list[int]:
    """``y`` (a list of ints, a 1-D integer array, or an integer column / row Tensor2D) as a list of ints."""
    expected = "a list of ints or an int64 column Tensor2D"
    if isinstance(y, Tensor2D):
        if y.dtype in FLOAT_DTYPES:
            raise DTypeError(
                f"{fn}: {what} must be class indices ({expected}), got a {y.dtype} tensor; "
                "take logits.argmax(axis=1) for predictions"
            )
        if y.nrows != 1 and y.ncols != 1:
            raise ShapeError(f"{fn}: {what} must be one column (or one row) of class indices, got {y.nrows}x{y.ncols}")
        return [int(v) for row in y.tolist() for v in row]
    if hasattr(y, "ndim") and hasattr(y, "dtype") and hasattr(y, "tolist"):  # a NumPy array
        kind = getattr(y.dtype, "kind", None)
        if kind not in ("i", "u"):
            raise ArgumentTypeError(f"{fn}: {what} must be class indices, got an array of {y.dtype}")
        shape = tuple(y.shape)
        if len(shape) == 2 and 1 in shape:
            y = y.reshape(-1)
        elif len(shape) != 1:
            raise ShapeError(f"{fn}: {what} must be a 1-D array of class indices, got shape {shape}")
        return [int(v) for v in y.tolist()]
    if isinstance(y, (str, bytes, Mapping, Set)) or not hasattr(y, "__iter__"):
        raise ArgumentTypeError(f"{fn}: {what} must be {expected}, got {type(y).__name__} {y!r:.40}")
    out = list(y)
    if set(map(type, out)) <= {int}:  # the common case, at C speed
        return out
    for i, v in enumerate(out):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ArgumentTypeError(f"{fn}: {what}[{i}] is {type(v).__name__} {v!r:.40}; class indices must be ints")
    return [int(v) for v in out]


def accuracy(preds: Any, targets: Any) -> float:
    """The fraction of ``preds`` equal to ``targets`` (lists of ints or int64 column tensors)."""
    p, t = _labels("accuracy", "predictions", preds), _labels("accuracy", "targets", targets)
    if len(p) != len(t) or not t:
        raise ShapeError(f"accuracy: {len(p)} predictions for {len(t)} targets")
    return sum(a == b for a, b in zip(p, t)) / len(t)


def confusion_matrix(preds: Any, targets: Any, num_classes: int = 10) -> list[list[int]]:
    """``counts[true][predicted]``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ArgumentTypeError(
            f"confusion_matrix: num_classes must be an int, got {type(num_classes).__name__} {num_classes!r:.40}"
        )
    if num_classes < 1:
        raise ArgumentError(f"confusion_matrix: num_classes must be at least 1, got {num_classes}")
    n = int(num_classes)
    p = _labels("confusion_matrix", "predictions", preds)
    t = _labels("confusion_matrix", "targets", targets)
    if len(p) != len(t):
        raise ShapeError(f"confusion_matrix: {len(p)} predictions for {len(t)} targets")
    for what, labels in (("predictions", p), ("targets", t)):
        if not labels or (min(labels) >= 0 and max(labels) < n):
            continue
        for i, v in enumerate(labels):
            if not 0 <= v < n:
                raise ArgumentError(
                    f"confusion_matrix: {what}[{i}] is {v}, outside 0..{n - 1} for num_classes={n}; "
                    "pass the right num_classes"
                )
    counts = [[0] * n for _ in range(n)]
    for a, b in zip(p, t):
        counts[b][a] += 1
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
