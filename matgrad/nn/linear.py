"""``Linear`` and ``Identity``."""

from __future__ import annotations

import math
from typing import Any

from matgrad import backends as _backends
from matgrad import functional as F
from matgrad.nn import init
from matgrad.nn.module import Module, Parameter, _positive_int
from matgrad.tensor import Tensor2D, _wrap, dtype_name

__all__ = ["Identity", "Linear"]


class Linear(Module):
    """``y = x @ W.T + b`` with ``W`` (out_features, in_features) and ``b`` (1, out_features).

    Initialised as PyTorch's: ``W, b ~ U(-1/sqrt(in_features), 1/sqrt(in_features))``.
    """

    in_features: int
    out_features: int
    weight: Parameter
    bias: Parameter | None

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, dtype: Any = None, backend: Any = None
    ) -> None:
        super().__init__()
        self.in_features = _positive_int("Linear", "in_features", in_features)
        self.out_features = _positive_int("Linear", "out_features", out_features)
        dt = dtype_name(dtype)
        be = _backends.get(backend)
        self.weight = Parameter(_wrap(be.full(self.out_features, self.in_features, 0.0, dt), be))
        if bias:
            self.bias = Parameter(_wrap(be.full(1, self.out_features, 0.0, dt), be))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: ``W, b ~ U(-1/sqrt(in), 1/sqrt(in))`` (``kaiming_uniform_(W, a=sqrt(5))``)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor2D) -> Tensor2D:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """``y = x``: a placeholder layer (any constructor arguments are ignored, as in PyTorch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Tensor2D) -> Tensor2D:
        return input
