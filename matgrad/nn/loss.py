"""Losses as modules: ``CrossEntropyLoss``, ``MSELoss``, ``BCEWithLogitsLoss``."""

from __future__ import annotations

from typing import Any

from matgrad import functional as F
from matgrad._errors import ArgumentError
from matgrad.nn.module import Module
from matgrad.tensor import Tensor2D

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ArgumentError(f"{type(self).__name__}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction


class CrossEntropyLoss(_Loss):
    """``mean_i (logsumexp(x_i) - x_i[t_i])`` from logits (n, c) and class indices or probabilities."""

    def forward(self, input: Tensor2D, target: Any) -> Tensor2D:
        return F.cross_entropy(input, target, self.reduction)


class MSELoss(_Loss):
    """``mean((x - y)^2)``."""

    def forward(self, input: Tensor2D, target: Tensor2D) -> Tensor2D:
        return F.mse_loss(input, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """``mean(max(x, 0) - x y + log(1 + exp(-|x|)))``: binary cross-entropy from logits."""

    def forward(self, input: Tensor2D, target: Tensor2D) -> Tensor2D:
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)
