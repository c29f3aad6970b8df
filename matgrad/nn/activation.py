"""Activation layers and ``Dropout``: thin modules over ``matgrad.functional``."""

from __future__ import annotations

import numbers
from typing import Any

from matgrad import functional as F
from matgrad._errors import ArgumentError, ArgumentTypeError
from matgrad.nn.module import Module
from matgrad.tensor import Tensor2D

__all__ = ["Dropout", "LeakyReLU", "LogSoftmax", "ReLU", "Sigmoid", "Softmax", "Tanh"]


class ReLU(Module):
    """``max(x, 0)``."""

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.relu(input)


class LeakyReLU(Module):
    """``x`` where ``x >= 0``, else ``negative_slope * x``."""

    negative_slope: float

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise ArgumentTypeError(f"LeakyReLU: negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = negative_slope

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.leaky_relu(input, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``."""

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.sigmoid(input)


class Tanh(Module):
    """``tanh(x)``."""

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.tanh(input)


def _axis(owner: str, axis: Any, dim: Any) -> int:
    if dim is not None:
        axis = dim
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
        raise ArgumentTypeError(
            f"{owner}: axis must be an int, 0 or 1 (or -1, -2), got {type(axis).__name__} {axis!r:.40}"
        )
    if axis not in (0, 1, -1, -2):
        raise ArgumentError(f"{owner}: axis must be 0 or 1 (or -1, -2), got {axis!r}")
    return int(axis)


class Softmax(Module):
    """``exp(x) / sum(exp(x))`` along ``axis`` (1: each row sums to 1). ``dim=`` is accepted too."""

    axis: int

    def __init__(self, axis: int = 1, *, dim: int | None = None) -> None:
        super().__init__()
        self.axis = _axis("Softmax", axis, dim)

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.softmax(input, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class LogSoftmax(Module):
    """``x - logsumexp(x)`` along ``axis``. ``dim=`` is accepted too."""

    axis: int

    def __init__(self, axis: int = 1, *, dim: int | None = None) -> None:
        super().__init__()
        self.axis = _axis("LogSoftmax", axis, dim)

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.log_softmax(input, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by ``1/(1-p)``;
    in eval mode, the identity."""

    p: float

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise ArgumentTypeError(
                f"Dropout: p must be a probability in [0, 1] (a number), got {type(p).__name__} {p!r:.40}"
            )
        if not 0.0 <= p <= 1.0:
            raise ArgumentError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = p

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.dropout(input, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
