"""Numerical gradient checks, for matgrad's own tests and for its users' tests.

``gradcheck`` compares the analytical gradient (backward) with central differences
``(f(x + eps) - f(x - eps)) / 2 eps`` over every element of every input that requires grad, in
float64 whatever the inputs' dtype. The function checked is ``f = sum_k <U_k, fn(x)_k>`` for a
random upstream gradient ``U`` (never all-ones: ones hide a backward that broadcasts or sums
along the wrong axis).

When the check fails, it finds the op to blame: ``fn`` is run once more and every op of its
graph (built-in or a user's ``Function``) is checked alone, its own ``backward`` against central
differences of its own ``forward`` at the inputs it saw, with its own random upstream gradient.
The report names each op that disagrees, with where its rule is defined.
"""

from __future__ import annotations

import inspect
import math
import numbers
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from matgrad._errors import ArgumentError, ArgumentTypeError, GradcheckError
from matgrad.autograd.engine import _topological_order
from matgrad.autograd.engine import grad as _grad
from matgrad.autograd.function import FunctionCtx, FunctionOp, _Output
from matgrad.autograd.grad_mode import no_grad
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D, _wrap

if TYPE_CHECKING:
    from matgrad.autograd.graph import Op

__all__ = ["OpMismatch", "gradcheck", "gradgradcheck"]

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
    if not raise_exception:
        return False
    culprits = blame(fn, xs, eps=eps, atol=atol, rtol=rtol, seed=seed)
    error = GradcheckError(message + _describe_culprits(culprits))
    error.culprits = culprits  # type: ignore[attr-defined]
    raise error


@dataclass(frozen=True)
class OpMismatch:
    """An op whose own backward disagrees with a numerical derivative of that op alone."""

    op: str  # how the op is shown, e.g. "matmul" or a Function's class name
    defined_at: str  # file:line of its backward rule
    is_function: bool  # a user's Function (else a built-in op)
    input: int
    shape: tuple[int, int]
    row: int
    col: int
    analytical: float
    numerical: float

    def __str__(self) -> str:
        kind = "Function" if self.is_function else "op"
        return (
            f"{kind} {self.op} (backward defined at {self.defined_at}): input #{self.input} "
            f"({self.shape[0]}x{self.shape[1]}) at (row {self.row}, col {self.col}): analytical "
            f"{self.analytical!r} vs numerical {self.numerical!r}"
        )


def _describe_culprits(culprits: list[OpMismatch]) -> str:
    if not culprits:
        return (
            "\nevery op's backward agrees with a numerical derivative of that op alone, so the fault is "
            "between ops: a path cut from the graph (detach(), .item(), a NumPy round trip), a "
            "non-differentiable point (a kink or a tie) near the inputs, or a function that is not "
            "deterministic (random numbers drawn inside fn)"
        )
    lines = "".join(f"\n  {c}" for c in culprits[:5])
    more = f"\n  ... and {len(culprits) - 5} more" if len(culprits) > 5 else ""
    return f"\nthe op(s) whose own backward disagrees with a numerical derivative of that op alone:{lines}{more}"


def _defined_at(op: Op) -> str:
    if isinstance(op, FunctionOp):
        return op.definition_site()
    fn = getattr(type(op), "backward", None)
    code = getattr(fn, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    try:
        return f"{inspect.getsourcefile(type(op))}:{inspect.getsourcelines(type(op))[1]}"
    except (OSError, TypeError):
        return "?"


def _floats(t: Tensor2D) -> list[list[float]]:
    return t.to("float64").tolist() if t.dtype != "float64" else t.tolist()


def _as_float64(t: Tensor2D, rows: list[list[float]]) -> Tensor2D:
    return Tensor2D(rows, dtype="float64", backend=t._backend)


def _op_outputs(op: Op, data_inputs: list[Tensor2D]) -> list[Tensor2D]:
    """The op alone, applied to ``data_inputs`` (detached float64), with recording off."""
    if isinstance(op, FunctionOp):
        args = list(op.args)
        k = 0
        for j, arg in enumerate(args):
            if isinstance(arg, Tensor2D):
                args[j] = data_inputs[k]
                k += 1
        with no_grad():
            out = op.fn.forward(FunctionCtx(), *args, **op.kwargs)
        return [out] if isinstance(out, Tensor2D) else list(out)
    replay = _copy_op(op)
    be = data_inputs[0]._backend
    with no_grad():
        return [_wrap(replay.forward(be, *[t._data for t in data_inputs]), replay.result_backend(be))]


def _copy_op(op: Op) -> Op:
    """A fresh instance with ``op``'s parameters (its slots below ``Op``), so replays leave ``op`` alone."""
    from matgrad.autograd.graph import Op as _Op

    new = object.__new__(type(op))
    for klass in type(op).__mro__:
        if klass is _Op:
            break
        for slot in klass.__dict__.get("__slots__", ()):
            if hasattr(op, slot):
                setattr(new, slot, getattr(op, slot))
    return new


def _check_op(op: Op, outputs: list[Tensor2D], eps: float, atol: float, rtol: float, seed: int) -> OpMismatch | None:
    """Check one op's backward against central differences of its forward alone; the worst mismatch."""
    inputs = list(op.inputs)
    ups = _upstream(outputs, seed)
    with no_grad():
        if isinstance(op, FunctionOp) and op.n_outputs > 1:
            op.grads = list(ups)
            dummy = _wrap(inputs[0]._backend.full(1, 1, 0.0, "float64"), inputs[0]._backend)
            grads = op.backward(dummy, *inputs)
        else:
            grads = op.backward(ups[0], *inputs)
    worst: tuple[float, OpMismatch] | None = None
    base = [_as_float64(t, _floats(t)) for t in inputs]
    for i, (t, need, g) in enumerate(zip(inputs, op.needs_input_grad, grads)):
        if not need or t.dtype not in FLOAT_DTYPES:
            continue
        if g is None:
            analytical = [[0.0] * t.ncols for _ in range(t.nrows)]
        else:
            if g.shape != t.shape:  # a broadcast input: sum the gradient back, as the engine does
                axis = None if t.shape == (1, 1) else 0 if t.nrows == 1 else 1
                g = g.sum(axis=axis)
            analytical = _floats(g)
        rows = _floats(t)
        for r in range(t.nrows):
            for c in range(t.ncols):
                values = []
                for step in (eps, -eps):
                    bumped = [row[:] for row in rows]
                    bumped[r][c] += step
                    trial = list(base)
                    trial[i] = _as_float64(t, bumped)
                    values.append(_objective(_op_outputs(op, trial), ups))
                n = (values[0] - values[1]) / (2 * eps)
                a = analytical[r][c]
                excess = abs(a - n) - (atol + rtol * abs(n))
                if not excess <= 0 and (worst is None or not excess <= worst[0]):
                    found = OpMismatch(
                        op.describe(), _defined_at(op), isinstance(op, FunctionOp), i, t.shape, r, c, a, n
                    )
                    worst = (excess, found)
    return None if worst is None else worst[1]


def blame(
    fn: Fn, inputs: Sequence[Any], *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0
) -> list[OpMismatch]:
    """Every op in ``fn``'s graph whose own backward disagrees with a numerical derivative of it alone.

    ``fn`` is run once (in float64, recording the graph); each op is checked at the inputs it saw,
    in the order the ops ran. A user's ``Function`` with several outputs is checked as one op.
    """
    xs = _float64_inputs(_as_tuple(inputs))
    try:
        outputs = [o for o in _outputs(fn, xs) if o.requires_grad]
    except Exception:  # fn itself fails: gradcheck already said what it could
        return []
    if not outputs:
        return []
    found: list[OpMismatch] = []
    by_op: dict[int, list[Tensor2D]] = {}
    order = _topological_order(outputs)
    for node in order:
        op = node._op
        if op is None:
            continue
        if isinstance(op, _Output):  # one check for the whole Function, with all its outputs
            by_op.setdefault(id(op.owner), []).append(node)
            continue
        by_op.setdefault(id(op), []).append(node)
    seen: set[int] = set()
    for node in order:
        op = node._op
        if op is None:
            continue
        owner: Op = op.owner if isinstance(op, _Output) else op
        if id(owner) in seen:
            continue
        seen.add(id(owner))
        outs = by_op[id(owner)]
        if isinstance(owner, FunctionOp) and owner.n_outputs > 1:
            refs = [ref() for ref in owner.output_refs]
            if any(t is None for t in refs):
                continue
            outs = [t for t in refs if t is not None]
        try:
            mismatch = _check_op(owner, outs, eps, atol, rtol, seed + len(seen))
        except Exception:  # an op that cannot be replayed alone is not blamed
            continue
        if mismatch is not None:
            found.append(mismatch)
    return found


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
