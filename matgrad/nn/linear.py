"""``Linear`` and ``Identity``."""

from __future__ import annotations

import math
from typing import Any

from matgrad import backends as _backends
from matgrad import functional as F
from matgrad._errors import DTypeError
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.nn import init
from matgrad.nn.module import Module, Parameter, _positive_int
from matgrad.tensor import Tensor2D, check_size, dtype_name

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
        check_size("Linear", self.out_features, self.in_features)
        dt = _float_dtype("Linear", dtype)
        be = _backends.get(backend)
        self.weight = Parameter(Tensor2D.from_native(be.full(self.out_features, self.in_features, 0.0, dt), be))
        if bias:
            self.bias = Parameter(Tensor2D.from_native(be.full(1, self.out_features, 0.0, dt), be))
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
        params = self._parameters  # not self.weight: Module.__getattr__ costs ~1 us per lookup
        return F.linear(input, params["weight"], params["bias"])  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _float_dtype(owner: str, dtype: Any) -> str:
    """``dtype`` as a floating dtype name, or a DTypeError naming ``owner``: parameters are trained."""
    dt = dtype_name(dtype)
    if dt not in FLOAT_DTYPES:
        raise DTypeError(f"{owner}: parameters must be floating (float32 or float64), not {dt}; pass dtype='float32'")
    return dt


class Identity(Module):
    """``y = x``: a placeholder layer (any constructor arguments are ignored, as in PyTorch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Tensor2D) -> Tensor2D:
        return input
