"""Weight initialisation, in place, with the formulas and names of ``torch.nn.init``.

For a weight of shape (out, in): ``fan_in = in`` (columns) and ``fan_out = out`` (rows). Every
function fills the tensor in place under ``no_grad`` from matgrad's generators (seeded by
``matgrad.manual_seed``) and returns it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from matgrad import autograd as _autograd
from matgrad._errors import ArgumentError, DTypeError, at_user_site
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D, _wrap

__all__ = [
    "calculate_gain",
    "constant_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "normal_",
    "ones_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

_LINEAR = ("linear", "identity", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activations' variance steady through ``nonlinearity``.

    linear/identity/sigmoid: 1;  tanh: 5/3;  relu: sqrt(2);  leaky_relu(slope): sqrt(2 / (1 + slope^2));
    selu: 3/4.
    """
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, numbers.Real):
            raise ArgumentError(at_user_site(f"calculate_gain: negative_slope {param!r} is not a number"))
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ArgumentError(
        at_user_site(
            f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; use one of "
            "'linear', 'identity', 'sigmoid', 'tanh', 'relu', 'leaky_relu', 'selu'"
        )
    )


def _target(name: str, tensor: Any) -> Tensor2D:
    if not isinstance(tensor, Tensor2D):
        raise TypeError(at_user_site(f"{name}: expected a Tensor2D, got {type(tensor).__name__}"))
    return tensor


def _fill_random(name: str, tensor: Any, kind: str, a: float, b: float) -> Tensor2D:
    """Overwrite ``tensor`` with U(a, b) (``kind="uniform"``) or N(a, b^2) samples, in place."""
    t = _target(name, tensor)
    if t.dtype not in FLOAT_DTYPES:
        raise DTypeError(at_user_site(f"{name}: random values need a floating tensor, got {t.dtype}"))
    be = t._backend
    m, n = t.shape
    sample = be.uniform(m, n, a, b, t.dtype) if kind == "uniform" else be.normal(m, n, a, b, t.dtype)
    with _autograd.no_grad():
        t.copy_(_wrap(sample, be))
    return t


def uniform_(tensor: Tensor2D, a: float = 0.0, b: float = 1.0) -> Tensor2D:
    """Fill with samples of U(a, b)."""
    if not a <= b:
        raise ArgumentError(at_user_site(f"uniform_: needs a <= b, got a={a}, b={b}"))
    return _fill_random("uniform_", tensor, "uniform", float(a), float(b))


def normal_(tensor: Tensor2D, mean: float = 0.0, std: float = 1.0) -> Tensor2D:
    """Fill with samples of N(mean, std^2)."""
    if not std >= 0:
        raise ArgumentError(at_user_site(f"normal_: std must be >= 0, got {std}"))
    return _fill_random("normal_", tensor, "normal", float(mean), float(std))


def constant_(tensor: Tensor2D, val: float) -> Tensor2D:
    """Fill with ``val``."""
    t = _target("constant_", tensor)
    with _autograd.no_grad():
        t.copy_(val)
    return t


def zeros_(tensor: Tensor2D) -> Tensor2D:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor2D) -> Tensor2D:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def _fans(tensor: Tensor2D) -> tuple[int, int]:
    """``(fan_in, fan_out) = (ncols, nrows)`` for an (out, in) weight."""
    return tensor.ncols, tensor.nrows


def _fan(name: str, tensor: Tensor2D, mode: str) -> int:
    fan_in, fan_out = _fans(tensor)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ArgumentError(at_user_site(f"{name}: mode {mode!r} not supported; use 'fan_in' or 'fan_out'"))


def kaiming_uniform_(
    tensor: Tensor2D, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor2D:
    """He uniform: U(-bound, bound) with ``bound = gain * sqrt(3 / fan)``, ``gain = calculate_gain(nonlinearity, a)``.

    With ``a = sqrt(5)`` (what ``Linear`` uses) the bound is ``1 / sqrt(fan_in)``.
    """
    t = _target("kaiming_uniform_", tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan("kaiming_uniform_", t, mode))
    bound = math.sqrt(3.0) * std
    return _fill_random("kaiming_uniform_", t, "uniform", -bound, bound)


def kaiming_normal_(
    tensor: Tensor2D, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor2D:
    """He normal: N(0, std^2) with ``std = gain / sqrt(fan)``."""
    t = _target("kaiming_normal_", tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan("kaiming_normal_", t, mode))
    return _fill_random("kaiming_normal_", t, "normal", 0.0, std)


def xavier_uniform_(tensor: Tensor2D, gain: float = 1.0) -> Tensor2D:
    """Glorot uniform: U(-a, a) with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    t = _target("xavier_uniform_", tensor)
    fan_in, fan_out = _fans(t)
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill_random("xavier_uniform_", t, "uniform", -bound, bound)


def xavier_normal_(tensor: Tensor2D, gain: float = 1.0) -> Tensor2D:
    """Glorot normal: N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    t = _target("xavier_normal_", tensor)
    fan_in, fan_out = _fans(t)
    return _fill_random("xavier_normal_", t, "normal", 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
