"""Numerical gradient checks, for matgrad's own tests and for its users' tests.

``gradcheck`` compares the analytical gradient (backward) with central differences
``(f(x + eps) - f(x - eps)) / 2 eps`` over every element of every input that requires grad, in
float64 whatever the inputs' dtype. The function checked is ``f = sum_k <U_k, fn(x)_k>`` for a
random upstream gradient ``U`` (never all-ones: ones hide a backward that broadcasts or sums
along the wrong axis).
"""

from __future__ import annotations

import math
import numbers
import random
from typing import Any, Callable, Sequence

from matgrad._errors import ArgumentError, ArgumentTypeError, GradcheckError
from matgrad.autograd import grad as _grad
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D

__all__ = ["gradcheck", "gradgradcheck"]

Fn = Callable[..., Any]


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _outputs(fn: Fn, inputs: Sequence[Tensor2D]) -> tuple[Tensor2D, ...]:
    out = _as_tuple(fn(*inputs))
    for o in out:
        if not isinstance(o, Tensor2D):
            raise ArgumentTypeError(f"gradcheck: fn must return a Tensor2D or a tuple of them, got {type(o).__name__}")
    return out


def _upstream(outputs: Sequence[Tensor2D], seed: int) -> list[Tensor2D]:
    """A random upstream gradient per output, from its own generator (the global one is untouched)."""
    rng = random.Random(seed)
    return [
        Tensor2D(
            [[rng.uniform(0.5, 1.5) * rng.choice((-1.0, 1.0)) for _ in range(o.ncols)] for _ in range(o.nrows)],
            dtype="float64",
            backend=o._backend,
        )
        for o in outputs
    ]


def _objective(outputs: Sequence[Tensor2D], ups: Sequence[Tensor2D]) -> float:
    """``sum_k <U_k, out_k>`` in Python floats."""
    total = 0.0
    for o, u in zip(outputs, ups):
        for ro, ru in zip(o.tolist(), u.tolist()):
            total += sum(a * b for a, b in zip(ro, ru))
    return total


def _check_options(name: str, fn: Any, eps: Any, atol: Any, rtol: Any, seed: Any) -> None:
    """Refuse a non-callable ``fn`` and tolerances that are not finite numbers (``eps`` > 0, the rest >= 0)."""
    if not callable(fn):
        raise ArgumentTypeError(
            f"{name}: fn must be a function of the input tensors, got {type(fn).__name__} {fn!r:.40}"
        )
    for option, value, positive in (("eps", eps, True), ("atol", atol, False), ("rtol", rtol, False)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ArgumentTypeError(f"{name}: {option} must be a number, got {type(value).__name__} {value!r:.40}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ArgumentError(f"{name}: {option} must be a finite number {bound}, got {value}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ArgumentTypeError(f"{name}: seed must be an int, got {type(seed).__name__} {seed!r:.40}")


def _float64_inputs(inputs: Sequence[Any]) -> list[Any]:
    out = []
    for x in inputs:
        if isinstance(x, Tensor2D) and x.dtype in FLOAT_DTYPES:
            out.append(Tensor2D(x, dtype="float64", backend=x._backend, requires_grad=x.requires_grad))
        else:
            out.append(x)
    return out


def _analytical(fn: Fn, xs: Sequence[Any], wrt: Sequence[int], seed: int) -> list[list[list[float]]]:
    outputs = _outputs(fn, xs)
    ups = _upstream(outputs, seed)
    live = [(o, u) for o, u in zip(outputs, ups) if o.requires_grad]
    zeros = [[[0.0] * xs[i].ncols for _ in range(xs[i].nrows)] for i in wrt]
    if not live:  # fn does not depend on any input: every gradient is zero
        return zeros
    grads = _grad([o for o, _ in live], [xs[i] for i in wrt], [u for _, u in live], allow_unused=True)
    return [z if g is None else g.to("float64").tolist() for g, z in zip(grads, zeros)]


def _numerical(fn: Fn, xs: list[Any], wrt: Sequence[int], eps: float, seed: int) -> list[list[list[float]]]:
    result = []
    for i in wrt:
        x = xs[i]
        rows = x.tolist()
        grad_rows = []
        for r in range(x.nrows):
            grad_row = []
            for c in range(x.ncols):
                values = []
                for step in (eps, -eps):
                    bumped = [row[:] for row in rows]
                    bumped[r][c] += step
                    trial = list(xs)
                    trial[i] = Tensor2D(bumped, dtype="float64", backend=x._backend, requires_grad=True)
                    outputs = _outputs(fn, trial)
                    values.append(_objective(outputs, _upstream(outputs, seed)))
                grad_row.append((values[0] - values[1]) / (2 * eps))
            grad_rows.append(grad_row)
        result.append(grad_rows)
    return result


def gradcheck(
    fn: Fn,
    inputs: Tensor2D | Sequence[Any],
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    seed: int = 0,
) -> bool:
    """Check ``fn``'s analytical gradients against central differences, element by element.

    ``fn`` takes the tensors in ``inputs`` and returns a Tensor2D (or a tuple of them); every
    input that requires grad is checked. An element passes when
    ``|analytical - numerical| <= atol + rtol * |numerical|``. On failure a ``GradcheckError``
    names the input, the worst ``(row, col)``, both values and the absolute and relative error;
    with ``raise_exception=False`` the result is ``False`` instead.
    """
    _check_options("gradcheck", fn, eps, atol, rtol, seed)
    xs = _float64_inputs(_as_tuple(inputs))
    wrt = [i for i, x in enumerate(xs) if isinstance(x, Tensor2D) and x.requires_grad]
    if not wrt:
        raise GradcheckError("gradcheck: no input requires grad; create the inputs with requires_grad=True")
    analytical = _analytical(fn, xs, wrt, seed)
    numerical = _numerical(fn, xs, wrt, eps, seed)
    worst: tuple[float, int, int, int, float, float] | None = None
    for k, (ga, gn) in enumerate(zip(analytical, numerical)):
        for r, (ra, rn) in enumerate(zip(ga, gn)):
            for c, (a, n) in enumerate(zip(ra, rn)):
                excess = abs(a - n) - (atol + rtol * abs(n))
                if not excess <= 0 and (worst is None or not excess <= worst[0]):
                    worst = (excess, wrt[k], r, c, a, n)
    if worst is None:
        return True
    _, i, r, c, a, n = worst
    abs_err = abs(a - n)
    rel_err = abs_err / abs(n) if n else float("inf")
    x = xs[i]
    message = (
        f"gradcheck failed for input #{i} ({x.nrows}x{x.ncols}) at (row {r}, col {c}): "
        f"analytical {a!r} vs numerical {n!r}; absolute error {abs_err:.3g}, relative error "
        f"{rel_err:.3g} (allowed: atol {atol:g} + rtol {rtol:g} * |numerical|)"
    )
    if raise_exception:
        raise GradcheckError(message)
    return False


def gradgradcheck(
    fn: Fn,
    inputs: Tensor2D | Sequence[Any],
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    seed: int = 0,
) -> bool:
    """Check second derivatives: ``gradcheck`` of ``x -> grad(<U, fn(x)>, x, create_graph=True)``."""
    _check_options("gradgradcheck", fn, eps, atol, rtol, seed)
    xs = _float64_inputs(_as_tuple(inputs))
    wrt = [i for i, x in enumerate(xs) if isinstance(x, Tensor2D) and x.requires_grad]
    if not wrt:
        raise GradcheckError("gradgradcheck: no input requires grad; create the inputs with requires_grad=True")

    def first_derivative(*args: Any) -> tuple[Tensor2D, ...]:
        outputs = _outputs(fn, args)
        ups = _upstream(outputs, seed + 1)
        live = [(o, u) for o, u in zip(outputs, ups) if o.requires_grad]
        targets = [args[i] for i in wrt]
        if not live:
            return tuple(Tensor2D([[0.0] * t.ncols] * t.nrows, dtype="float64", backend=t._backend) for t in targets)
        grads = _grad([o for o, _ in live], targets, [u for _, u in live], create_graph=True, allow_unused=True)
        return tuple(
            g if g is not None else Tensor2D([[0.0] * t.ncols] * t.nrows, dtype="float64", backend=t._backend)
            for g, t in zip(grads, targets)
        )

    return gradcheck(first_derivative, xs, eps=eps, atol=atol, rtol=rtol, raise_exception=raise_exception, seed=seed)
