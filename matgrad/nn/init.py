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
from matgrad._errors import ArgumentError, ArgumentTypeError, DTypeError
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D

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
    return _gain("calculate_gain", nonlinearity, param)


def _gain(name: str, nonlinearity: Any, param: Any) -> float:
    """``calculate_gain``, with errors naming ``name`` (the init function the user called)."""
    if not isinstance(nonlinearity, str):
        raise ArgumentTypeError(
            f"{name}: nonlinearity must be a name such as 'relu', got {type(nonlinearity).__name__}"
        )
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else _finite(name, "negative_slope", param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ArgumentError(
        f"{name}: unsupported nonlinearity {nonlinearity!r}; use one of "
        "'linear', 'identity', 'sigmoid', 'tanh', 'relu', 'leaky_relu', 'selu'"
    )


def _number(name: str, arg: str, value: Any) -> float:
    """``value`` as a float, or a TypeError naming the init function and the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}: {arg} must be a number, got {type(value).__name__} {value!r:.40}")
    return float(value)


def _finite(name: str, arg: str, value: Any) -> float:
    """``value`` as a finite float (NaN and Inf refused with an ArgumentError)."""
    v = _number(name, arg, value)
    if not math.isfinite(v):
        raise ArgumentError(f"{name}: {arg} must be finite, got {v}")
    return v


def _target(name: str, tensor: Any) -> Tensor2D:
    if not isinstance(tensor, Tensor2D):
        raise ArgumentTypeError(f"{name}: expected a Tensor2D, got {type(tensor).__name__}")
    return tensor


def _fill_random(name: str, tensor: Any, kind: str, a: float, b: float) -> Tensor2D:
    """Overwrite ``tensor`` with U(a, b) (``kind="uniform"``) or N(a, b^2) samples, in place."""
    t = _target(name, tensor)
    if t.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: random values need a floating tensor, got {t.dtype}")
    be = t.kernels
    m, n = t.shape
    sample = be.uniform(m, n, a, b, t.dtype) if kind == "uniform" else be.normal(m, n, a, b, t.dtype)
    with _autograd.no_grad():
        t.copy_(Tensor2D.from_native(sample, be))
    return t


def uniform_(tensor: Tensor2D, a: float = 0.0, b: float = 1.0) -> Tensor2D:
    """Fill with samples of U(a, b)."""
    lo, hi = _finite("uniform_", "a", a), _finite("uniform_", "b", b)
    if not lo <= hi:
        raise ArgumentError(f"uniform_: needs a <= b, got a={a}, b={b}")
    return _fill_random("uniform_", tensor, "uniform", lo, hi)


def normal_(tensor: Tensor2D, mean: float = 0.0, std: float = 1.0) -> Tensor2D:
    """Fill with samples of N(mean, std^2)."""
    mu, sigma = _finite("normal_", "mean", mean), _finite("normal_", "std", std)
    if not sigma >= 0:
        raise ArgumentError(f"normal_: std must be >= 0, got {std}")
    return _fill_random("normal_", tensor, "normal", mu, sigma)


def constant_(tensor: Tensor2D, val: float) -> Tensor2D:
    """Fill with ``val``."""
    t = _target("constant_", tensor)
    _number("constant_", "val", val)
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


def _fan(name: str, tensor: Tensor2D, mode: Any) -> int:
    fan_in, fan_out = _fans(tensor)
    if not isinstance(mode, str):
        raise ArgumentTypeError(f"{name}: mode must be 'fan_in' or 'fan_out', got {type(mode).__name__}")
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ArgumentError(f"{name}: mode {mode!r} not supported; use 'fan_in' or 'fan_out'")


def _kaiming_std(name: str, tensor: Tensor2D, a: Any, mode: Any, nonlinearity: Any) -> float:
    """``gain / sqrt(fan)``, every argument checked before anything is drawn."""
    gain = _gain(name, nonlinearity, _finite(name, "a", a))
    return gain / math.sqrt(_fan(name, tensor, mode))


def _xavier_std(name: str, tensor: Tensor2D, gain: Any) -> float:
    """``gain * sqrt(2 / (fan_in + fan_out))``, with ``gain`` a finite number >= 0."""
    g = _finite(name, "gain", gain)
    if g < 0:
        raise ArgumentError(f"{name}: gain must be >= 0, got {gain}")
    fan_in, fan_out = _fans(tensor)
    return g * math.sqrt(2.0 / (fan_in + fan_out))


def kaiming_uniform_(
    tensor: Tensor2D, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor2D:
    """He uniform: U(-bound, bound) with ``bound = gain * sqrt(3 / fan)``, ``gain = calculate_gain(nonlinearity, a)``.

    With ``a = sqrt(5)`` (what ``Linear`` uses) the bound is ``1 / sqrt(fan_in)``.
    """
    t = _target("kaiming_uniform_", tensor)
    std = _kaiming_std("kaiming_uniform_", t, a, mode, nonlinearity)
    bound = math.sqrt(3.0) * std
    return _fill_random("kaiming_uniform_", t, "uniform", -bound, bound)


def kaiming_normal_(
    tensor: Tensor2D, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor2D:
    """He normal: N(0, std^2) with ``std = gain / sqrt(fan)``."""
    t = _target("kaiming_normal_", tensor)
    std = _kaiming_std("kaiming_normal_", t, a, mode, nonlinearity)
    return _fill_random("kaiming_normal_", t, "normal", 0.0, std)


def xavier_uniform_(tensor: Tensor2D, gain: float = 1.0) -> Tensor2D:
    """Glorot uniform: U(-a, a) with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    t = _target("xavier_uniform_", tensor)
    bound = math.sqrt(3.0) * _xavier_std("xavier_uniform_", t, gain)
    return _fill_random("xavier_uniform_", t, "uniform", -bound, bound)


def xavier_normal_(tensor: Tensor2D, gain: float = 1.0) -> Tensor2D:
    """Glorot normal: N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    t = _target("xavier_normal_", tensor)
    return _fill_random("xavier_normal_", t, "normal", 0.0, _xavier_std("xavier_normal_", t, gain))
