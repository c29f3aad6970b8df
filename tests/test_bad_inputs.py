"""Bad input, tried systematically (issue 6): every case must end in a clear, well-typed error.

Each case calls the public API with one bad input and checks, on both backends:

- the exception is of the expected kind: a matgrad error, or ``ValueError`` / ``TypeError`` where
  Python's convention says so (a value of the wrong *type*, such as a string where a number
  belongs, is a ``TypeError``; a value of the right type outside the accepted range is a
  ``ValueError``). ``IndexError`` is accepted only for tensor indexing ``x[...]`` with an index
  out of range (issue 2), and ``OSError`` only where a file named by the user does not exist;
- it is never ``AssertionError``, ``KeyError`` (except PyTorch's ``KeyError`` for an empty or
  dotted name given to ``register_parameter`` / ``add_module``), ``AttributeError``,
  ``ZeroDivisionError``, ``OverflowError``, ``RecursionError`` or an ``IndexError`` from
  elsewhere, and it is not raised inside NumPy (the traceback's last frame, and any chained
  exception's, lies outside NumPy);
- the message names the op, class or function (a per-case substring), names both shapes for a
  shape error, and is not a raw NumPy / CPython message;
- no NumPy ``RuntimeWarning`` leaks out of the failed call;
- nothing changed: every tensor, module, optimiser and file the call touched is bit-identical
  afterwards (values, ``.grad``, graph links, optimiser state), and so is matgrad's global state.

Sizes past any address space run in a child process with a capped address space, so a factory
that tries to allocate them fails there instead of exhausting this machine's memory. The command
line is driven in-process through ``matgrad.cli.main`` (and three cases through ``python -m``):
one line on stderr, a non-zero status, no traceback.

Cases are hand-picked (the tables below) or drawn by hypothesis. ``test_zz_report_case_count``,
last in the module, prints how many were tried; set ``MATGRAD_BAD_INPUTS_SUMMARY=path.json`` to
also write the counts to a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import operator
import os
import re
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import matgrad as mg
import matgrad.functional as F
from matgrad import autograd, nn, optim
from matgrad._errors import CheckpointError, DataError, MatgradError
from matgrad.autograd import grad_mode as grad_mode_module
from matgrad.cli import main as cli_main
from matgrad.data import DataLoader, load_mnist
from matgrad.metrics import accuracy, confusion_matrix, predict
from matgrad.nn import init
from matgrad.optim.lr_scheduler import CosineAnnealingLR, StepLR
from matgrad.viz.scope import current_scope

ShapeError, ArgumentError, DTypeError = mg.ShapeError, mg.ArgumentError, mg.DTypeError
BackendError, GraphError, GradcheckError = mg.BackendError, mg.GraphError, mg.GradcheckError

COUNTS: Counter[str] = Counter()
"""Cases tried in this run: ``hand-picked`` (one per case and backend), ``hypothesis`` examples."""

HERE = os.path.abspath(__file__)
NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep
OTHER = {"numpy": "python", "python": "numpy"}
SAMPLE_LABELS = Path(mg.data.mnist.SAMPLE_DIR)
NAN, INF = math.nan, math.inf

# Never a user error, whatever the message says.
FORBIDDEN = (
    AssertionError,
    KeyError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    RecursionError,
    MemoryError,
    NameError,
    NotImplementedError,
)
# Messages of NumPy or CPython internals: seeing one means the input was never checked.
RAW_MESSAGES = [
    r"operands could not be broadcast",
    r"could not broadcast",
    r"setting an array element with a sequence",
    r"could not convert string to float",
    r"invalid literal for int\(\)",
    r"inhomogeneous",
    r"mismatch in its core dimension",
    r"Input operand \d",
    r"only integers, slices",
    r"out of bounds for axis",
    r"cannot reshape array",
    r"too large to convert",
    r"int too large",
    r"object of type '\w+' has no len",
    r"unhashable type",
    r"not supported between instances of",
    r"unsupported operand type",
    r"object is not iterable",
    r"object is not callable",
    r"object is not subscriptable",
    r"expected str, bytes or os\.PathLike object",
    r"list index out of range",
    r"division by zero",
    r"has no attribute",
    r"expected non-negative integer",
    r"range\(\) arg 3 must not be zero",
    r"all the input array dimensions",
    r"zero-size array",
    r"array is too big",
    r"cannot fit 'int' into an index-sized integer",
    r"^\W*'?\w+'?\W*$",  # a bare key or value as the whole message: KeyError('params')
]


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------


class Ctx(NamedTuple):
    """What a case's builder may use: a fresh temporary directory."""

    tmp: Path


Build = Callable[[Ctx], tuple[Callable[[], Any], tuple[Any, ...]]]


class Case(NamedTuple):
    id: str
    expect: Any  # an exception type or a tuple of them
    name: str  # the op / class / function the message must name
    build: Build  # returns (the call, the objects it must leave untouched)
    shapes: tuple[tuple[int, int], ...] = ()  # shapes the message must show
    index: bool = False  # tensor indexing out of range: IndexError accepted
    extra: tuple[str, ...] = ()  # further substrings the message must contain


def _watchable(x: Any) -> bool:
    return isinstance(x, (mg.Tensor2D, nn.Module, optim.Optimizer, Path))


def call(fn: Callable[..., Any], *args: Any, watch: tuple[Any, ...] = (), **kwargs: Any) -> Any:
    """A builder result: ``fn(*args, **kwargs)`` watching every tensor, module and optimiser passed."""
    flat: list[Any] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            flat.extend(a)
        elif isinstance(a, dict):
            flat.extend(a.values())
        else:
            flat.append(a)
    watched = tuple(a for a in flat if _watchable(a)) + tuple(watch)
    return (lambda: fn(*args, **kwargs)), watched


def _values(t: mg.Tensor2D) -> str:
    return repr(t.tolist())  # repr of floats round-trips: equal strings mean equal bits (NaN too)


def snapshot(obj: Any) -> Any:
    """Everything a failed call must leave as it was, as plain comparable data."""
    if isinstance(obj, Path):
        folder = obj if obj.is_dir() else obj.parent
        listing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
        content = obj.read_bytes() if obj.is_file() else None
        return {"listing": listing, "bytes": content}
    if isinstance(obj, mg.Tensor2D):
        op = obj._op
        return {
            "shape": obj.shape,
            "dtype": obj.dtype,
            "backend": obj.backend,
            "values": _values(obj),
            "requires_grad": obj.requires_grad,
            "op": id(op),
            "released": getattr(op, "released", None),
            "grad": None if obj.grad is None else (id(obj.grad), _values(obj.grad), obj.grad.dtype),
        }
    if isinstance(obj, nn.Module):
        return {
            "modules": [(name, m.training, type(m).__name__) for name, m in obj.named_modules()],
            "parameters": [(name, id(p), snapshot(p)) for name, p in obj.named_parameters()],
        }
    if isinstance(obj, optim.Optimizer):
        groups = [
            ({k: repr(v) for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
            for g in obj.param_groups
        ]
        state = {
            id(p): {k: snapshot(v) if isinstance(v, mg.Tensor2D) else repr(v) for k, v in s.items()}
            for p, s in obj.state.items()
        }
        params = [snapshot(p) for g in obj.param_groups for p in g["params"]]
        return {"groups": groups, "state": state, "params": params}
    raise TypeError(f"cannot snapshot {type(obj).__name__}")


def global_state() -> tuple[Any, ...]:
    return (
        mg.get_backend(),
        mg.get_default_dtype(),
        mg.is_grad_enabled(),
        mg.is_anomaly_enabled(),
        autograd.is_debug_enabled(),
        current_scope(),
    )


def restore_global_state(saved: tuple[Any, ...]) -> None:
    backend, dtype, grad_mode, anomaly, debug, _scope = saved
    mg.set_backend(backend)
    mg.set_default_dtype(dtype)
    grad_mode_module.state.grad_enabled = grad_mode
    grad_mode_module.state.anomaly = anomaly
    autograd.set_debug(debug)


def _last_frame(tb: Any) -> traceback.FrameSummary | None:
    frames = traceback.extract_tb(tb)
    return frames[-1] if frames else None


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    frame = _last_frame(exc.__traceback__)
    where = f"{os.path.relpath(frame.filename)}:{frame.lineno} in {frame.name}" if frame else "?"
    return f"{type(exc).__name__}: {str(exc)[:400]!r}  [last frame {where}]"


def _shape_in(shape: tuple[int, int], text: str) -> bool:
    m, n = shape
    patterns = [rf"(?<![\d.]){m}\s*x\s*{n}(?![\d.])", rf"\(\s*{m}\s*,\s*{n}\s*\)"]
    if m == 1:  # a (1, n) row may be shown as its length, e.g. a 1-D checkpoint entry
        patterns.append(rf"\[\s*{n}\s*\]")
    return any(re.search(p, text) for p in patterns)


def problems_with(exc: BaseException | None, case: Case) -> list[str]:
    """Every way ``exc`` falls short of a clear, well-typed user error for ``case``."""
    if exc is None:
        return ["no exception was raised"]
    out: list[str] = []
    expect = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    # a forbidden type only where a case names it: KeyError for register_parameter / add_module
    if isinstance(exc, FORBIDDEN) and not isinstance(exc, tuple(e for e in expect if issubclass(e, FORBIDDEN))):
        out.append(f"{type(exc).__name__} is never a user error")
    if isinstance(exc, IndexError) and not case.index:
        out.append("IndexError outside tensor indexing (expected a matgrad error / ValueError / TypeError)")
    if case.index:
        expect = (*expect, IndexError)
    if not isinstance(exc, expect):
        wanted = " or ".join(e.__name__ for e in expect)
        out.append(f"expected {wanted}, got {type(exc).__name__}")
    chain: list[BaseException] = [exc]
    while True:
        nxt = chain[-1].__cause__ or (None if chain[-1].__suppress_context__ else chain[-1].__context__)
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    for i, e in enumerate(chain):
        frame = _last_frame(e.__traceback__)
        if frame is not None and os.path.abspath(frame.filename).startswith(NUMPY_DIR):
            what = "raised" if i == 0 else "chained to an exception raised"
            out.append(f"{what} inside NumPy ({os.path.basename(frame.filename)}:{frame.lineno})")
    message = str(exc).replace(HERE, "<test>").replace(os.path.basename(HERE), "<test>")
    if case.name not in message:
        out.append(f"message does not name {case.name!r}")
    for s in case.extra:
        if s not in message:
            out.append(f"message does not mention {s!r}")
    for shape in case.shapes:
        if not _shape_in(shape, message):
            out.append(f"message does not show the shape {shape[0]}x{shape[1]}")
    for pattern in RAW_MESSAGES:
        if re.search(pattern, message):
            out.append(f"raw NumPy/CPython message (matches {pattern!r})")
            break
    return out


def _diff(before: Any, after: Any, path: str = "") -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        for k in before:
            if before[k] != after.get(k):
                return _diff(before[k], after.get(k), f"{path}.{k}")
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            if b != a:
                return _diff(b, a, f"{path}[{i}]")
    return f"{path}: {str(before)[:120]} -> {str(after)[:120]}"


def run_case(case: Case, ctx: Ctx) -> list[str]:
    """Run one case; the list of problems (empty when the error was right)."""
    saved = global_state()
    thunk, watched = case.build(ctx)
    before = [snapshot(w) for w in watched]
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            thunk()
        except Exception as exc:
            error = exc
        finally:
            changed_globals = global_state() != saved
            restore_global_state(saved)
    problems = problems_with(error, case)
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            where = f"{os.path.basename(w.filename)}:{w.lineno}"
            problems.append(f"a {w.category.__name__} leaked to the user: {str(w.message)[:100]!r} ({where})")
    if changed_globals:
        problems.append("side effect: matgrad's global state (backend, dtype, grad/anomaly/debug mode) changed")
    for i, (w, b) in enumerate(zip(watched, before)):
        a = snapshot(w)
        if a != b:
            problems.append(f"side effect: watched #{i} ({type(w).__name__}) changed at {_diff(b, a)}")
    if problems:
        problems.append(describe(error))
    return problems


def check(case: Case, ctx: Ctx, kind: str = "hand-picked") -> None:
    COUNTS[kind] += 1
    problems = run_case(case, ctx)
    if problems:
        pytest.fail(f"[{case.id}]\n  - " + "\n  - ".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------
# tensors used by the cases (deterministic values; made lazily, on the backend under test)
# ---------------------------------------------------------------------------------------------


def T(m: int, n: int, *, grad: bool = True, dtype: Any = None, backend: Any = None, start: float = 1) -> mg.Tensor2D:
    rows = [[(start + i * n + j) / 8.0 for j in range(n)] for i in range(m)]
    return mg.Tensor2D(rows, requires_grad=grad, dtype=dtype, backend=backend)


def I(rows: list[list[int]], backend: Any = None) -> mg.Tensor2D:  # noqa: E743
    return mg.Tensor2D(rows, dtype="int64", backend=backend)


def other() -> str:
    return OTHER[mg.get_backend()]


def nonleaf() -> mg.Tensor2D:
    return T(2, 3) * 2.0


def used_twice() -> tuple[mg.Tensor2D, mg.Tensor2D]:
    x = T(2, 2)
    y = (x * x).sum()
    y.backward()
    return x, y


def mlp() -> nn.MLP:
    mg.manual_seed(1)
    return nn.MLP([3, 4, 2])


def mlp_with_grads() -> nn.MLP:
    model = mlp()
    F.cross_entropy(model(T(2, 3, grad=False)), [0, 1]).backward()
    return model


def mlp_state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {k: v.numpy().copy() for k, v in mlp().state_dict().items()}
    for k, v in changes.items():
        key = k.replace("_", ".")
        if v is None:
            state.pop(key)
        else:
            state[key] = v
    return state


def sgd(*params: mg.Tensor2D, **kwargs: Any) -> optim.SGD:
    return optim.SGD(list(params) or [nn.Parameter(T(2, 2, grad=False))], lr=0.1, **kwargs)


def trained_sgd(momentum: float = 0.9) -> tuple[optim.SGD, nn.Parameter]:
    p = nn.Parameter(T(2, 2, grad=False))
    opt = optim.SGD([p], lr=0.1, momentum=momentum)
    p.grad = T(2, 2, grad=False)
    opt.step()
    p.grad = T(2, 2, grad=False, start=3)
    return opt, p


def good_sgd_groups(opt: optim.Optimizer) -> list[dict[str, Any]]:
    return opt.state_dict()["param_groups"]


def file_with(ctx: Ctx, name: str, content: bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(content)
    return path


def subdir(ctx: Ctx, name: str) -> Path:
    path = ctx.tmp / name
    path.mkdir()
    return path


def saved_mlp(ctx: Ctx, sizes: list[int], metadata: dict[str, str] | None = None, name: str = "m.safetensors") -> Path:
    mg.manual_seed(0)
    path = ctx.tmp / name
    mg.save(nn.MLP(sizes), path, metadata=metadata)
    return path


def nograd(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with mg.no_grad():
            return fn()

    return run


# ---------------------------------------------------------------------------------------------
# hand-picked cases
# ---------------------------------------------------------------------------------------------

CASES: list[Case] = []


def C(
    id: str,
    expect: Any,
    name: str,
    build: Build,
    shapes: tuple[tuple[int, int], ...] = (),
    index: bool = False,
    extra: tuple[str, ...] = (),
) -> None:
    CASES.append(Case(id, expect, name, build, shapes, index, extra))


def tensor_case(id: str, expect: Any, name: str, data: Callable[[], Any], **kwargs: Any) -> None:
    shapes = kwargs.pop("shapes", ())
    C(f"Tensor2D/{id}", expect, name, lambda c: call(mg.Tensor2D, data(), **kwargs), shapes=shapes)


# -- Tensor2D construction ---------------------------------------------------------------------
tensor_case("empty-list", ShapeError, "Tensor2D", lambda: [])
tensor_case("empty-row", ShapeError, "Tensor2D", lambda: [[]])
tensor_case("two-empty-rows", ShapeError, "Tensor2D", lambda: [[], []])
tensor_case("ragged", ShapeError, "Tensor2D", lambda: [[1.0, 2.0], [3.0]])
tensor_case("ragged-late", ShapeError, "Tensor2D", lambda: [[1.0], [2.0], [3.0, 4.0]])
tensor_case("flat-list", ShapeError, "Tensor2D", lambda: [1.0, 2.0, 3.0])
tensor_case("flat-tuple", ShapeError, "Tensor2D", lambda: (1.0, 2.0))
tensor_case("string", TypeError, "Tensor2D", lambda: "abc")
tensor_case("bytes", TypeError, "Tensor2D", lambda: b"ab")
tensor_case("string-elements", TypeError, "Tensor2D", lambda: [["1", "2"]])
tensor_case("string-rows", (TypeError, ValueError), "Tensor2D", lambda: ["ab", "cd"])
tensor_case("none", TypeError, "Tensor2D", lambda: None)
tensor_case("none-element", TypeError, "Tensor2D", lambda: [[1.0, None]])
tensor_case("none-row", (TypeError, ValueError), "Tensor2D", lambda: [[1.0], None])
tensor_case("bool", TypeError, "Tensor2D", lambda: True)
tensor_case("bool-elements", TypeError, "Tensor2D", lambda: [[True, False]])
tensor_case("numpy-bool-element", TypeError, "Tensor2D", lambda: [[np.bool_(True)]])
tensor_case("complex", TypeError, "Tensor2D", lambda: 1 + 2j)
tensor_case("complex-element", TypeError, "Tensor2D", lambda: [[1.0, 1 + 2j]])
tensor_case("numpy-complex-element", TypeError, "Tensor2D", lambda: [[np.complex128(1j)]])
tensor_case("nested-too-deep", ShapeError, "Tensor2D", lambda: [[[1.0, 2.0]]])
tensor_case("mixed-depth", ShapeError, "Tensor2D", lambda: [[1.0, [2.0]]])
tensor_case("dict", TypeError, "Tensor2D", lambda: {"a": 1.0})
tensor_case("set", TypeError, "Tensor2D", lambda: {1.0})
tensor_case("generator", TypeError, "Tensor2D", lambda: ([1.0] for _ in range(2)))
tensor_case("dict-element", TypeError, "Tensor2D", lambda: [[{}]])
tensor_case("array-0-rows", ShapeError, "Tensor2D", lambda: np.zeros((0, 3)), shapes=((0, 3),))
tensor_case("array-0-cols", ShapeError, "Tensor2D", lambda: np.zeros((3, 0)), shapes=((3, 0),))
tensor_case("array-0x0", ShapeError, "Tensor2D", lambda: np.zeros((0, 0)))
tensor_case("array-1d", ShapeError, "Tensor2D", lambda: np.zeros(3))
tensor_case("array-3d", ShapeError, "Tensor2D", lambda: np.zeros((2, 2, 2)))
tensor_case("array-0d", ShapeError, "Tensor2D", lambda: np.array(1.0))
tensor_case("array-object", TypeError, "Tensor2D", lambda: np.array([[1, "a"]], dtype=object))
tensor_case("array-object-numbers", TypeError, "Tensor2D", lambda: np.array([[1.0, 2.0]], dtype=object))
tensor_case("array-str", TypeError, "Tensor2D", lambda: np.array([["a", "b"]]))
tensor_case("array-bool", TypeError, "Tensor2D", lambda: np.array([[True, False]]))
tensor_case("array-complex", TypeError, "Tensor2D", lambda: np.array([[1j]]))
tensor_case("array-datetime", TypeError, "Tensor2D", lambda: np.array([["2020-01-01"]], dtype="datetime64[D]"))
tensor_case("nan-as-int64", DTypeError, "int64", lambda: [[1.0, NAN]], dtype="int64")
tensor_case("inf-as-int64", DTypeError, "int64", lambda: [[INF]], dtype="int64")
tensor_case("nan-scalar-as-int64", DTypeError, "int64", lambda: NAN, dtype="int64")
tensor_case("nan-array-as-int64", DTypeError, "int64", lambda: np.array([[NAN, 1.0]]), dtype="int64")
tensor_case("int-too-big-for-float", ValueError, "Tensor2D", lambda: [[10**400]])
tensor_case("int-too-big-scalar", ValueError, "Tensor2D", lambda: 10**400)
tensor_case("int-too-big-for-int64", ValueError, "Tensor2D", lambda: [[2**63]], dtype="int64")
tensor_case("dtype-float16", DTypeError, "float16", lambda: [[1.0]], dtype="float16")
tensor_case("dtype-number", DTypeError, "dtype", lambda: [[1.0]], dtype=5)
tensor_case("dtype-numpy-int32", DTypeError, "int32", lambda: [[1.0]], dtype=np.int32)
tensor_case("backend-unknown", BackendError, "gpu", lambda: [[1.0]], backend="gpu")
tensor_case("backend-number", (BackendError, TypeError), "backend", lambda: [[1.0]], backend=5)
tensor_case("backend-list", (BackendError, TypeError), "backend", lambda: [[1.0]], backend=["numpy"])
tensor_case("int64-requires-grad", DTypeError, "grad", lambda: [[1, 2]], dtype="int64", requires_grad=True)
C("Parameter/string", TypeError, "Tensor2D", lambda c: call(nn.Parameter, "abc"))
C("Parameter/int64", DTypeError, "grad", lambda c: call(nn.Parameter, I([[1]])))

# -- factories -----------------------------------------------------------------------------------
for fname in ("zeros", "ones", "rand", "randn", "eye"):
    fn = getattr(mg, fname)
    square = fname == "eye"
    C(f"{fname}/negative", ValueError, fname, lambda c, fn=fn: call(fn, -1, 2))
    C(f"{fname}/zero", ValueError, fname, lambda c, fn=fn: call(fn, 0, 3))
    C(f"{fname}/zero-cols", ValueError, fname, lambda c, fn=fn: call(fn, 2, 0))
    C(f"{fname}/float", TypeError, fname, lambda c, fn=fn: call(fn, 2.0, 3))
    C(f"{fname}/float-integral-numpy", TypeError, fname, lambda c, fn=fn: call(fn, np.float64(2.0), 3))
    C(f"{fname}/string", TypeError, fname, lambda c, fn=fn: call(fn, "2", 3))
    C(f"{fname}/bool", TypeError, fname, lambda c, fn=fn: call(fn, True, 3))
    C(f"{fname}/none", TypeError, fname, lambda c, fn=fn: call(fn, None, 3))
    C(f"{fname}/tuple-of-3", TypeError, fname, lambda c, fn=fn: call(fn, (2, 3, 4)))
    C(f"{fname}/dtype", DTypeError, "int8", lambda c, fn=fn: call(fn, 2, 2, dtype="int8"))
    C(f"{fname}/backend", BackendError, "cuda", lambda c, fn=fn: call(fn, 2, 2, backend="cuda"))
    if not square:
        C(f"{fname}/one-size", TypeError, fname, lambda c, fn=fn: call(fn, 2))
        C(f"{fname}/tuple-of-1", TypeError, fname, lambda c, fn=fn: call(fn, (2,)))
C("full/fill-string", TypeError, "full", lambda c: call(mg.full, 2, 2, "a"))
C("full/fill-none", TypeError, "full", lambda c: call(mg.full, 2, 2, None))
C("full/fill-bool", TypeError, "full", lambda c: call(mg.full, 2, 2, True))
C("full/fill-nan-int64", ValueError, "full", lambda c: call(mg.full, 2, 2, NAN, dtype="int64"))
C("full/fill-too-big-int64", ValueError, "full", lambda c: call(mg.full, 2, 2, 2**70, dtype="int64"))
C("full/negative", ValueError, "full", lambda c: call(mg.full, -2, 2, 1.0))
C("rand/int64", (ValueError, TypeError), "rand", lambda c: call(mg.rand, 2, 2, dtype="int64"))
C("randn/int64", (ValueError, TypeError), "randn", lambda c: call(mg.randn, 2, 2, dtype="int64"))
C("uniform/low-above-high", ValueError, "uniform", lambda c: call(mg.uniform, 2, 2, 1.0, 0.0))
C("uniform/low-string", TypeError, "uniform", lambda c: call(mg.uniform, 2, 2, "a", 1.0))
C("uniform/high-none", TypeError, "uniform", lambda c: call(mg.uniform, 2, 2, 0.0, None))
C("uniform/high-inf", ValueError, "uniform", lambda c: call(mg.uniform, 2, 2, 0.0, INF))
C("uniform/low-nan", ValueError, "uniform", lambda c: call(mg.uniform, 2, 2, NAN, 1.0))
C("uniform/int64", (ValueError, TypeError), "uniform", lambda c: call(mg.uniform, 2, 2, dtype="int64"))
C("zeros_like/array", TypeError, "zeros_like", lambda c: call(mg.zeros_like, np.zeros((2, 2))))
C("ones_like/list", TypeError, "ones_like", lambda c: call(mg.ones_like, [[1.0]]))
C("full_like/array", TypeError, "full_like", lambda c: call(mg.full_like, np.zeros((2, 2)), 1.0))
C("full_like/fill-string", TypeError, "full_like", lambda c: call(mg.full_like, T(2, 2), "x"))
C("full_like/nan-int64", ValueError, "full_like", lambda c: call(mg.full_like, I([[1]]), NAN))
C("zeros_like/dtype", DTypeError, "float16", lambda c: call(mg.zeros_like, T(2, 2), dtype="float16"))
C("manual_seed/negative", ValueError, "manual_seed", lambda c: call(mg.manual_seed, -1))
C("manual_seed/float", TypeError, "manual_seed", lambda c: call(mg.manual_seed, 1.5))
C("manual_seed/string", TypeError, "manual_seed", lambda c: call(mg.manual_seed, "1"))
C("set_backend/unknown", BackendError, "gpu", lambda c: call(mg.set_backend, "gpu"))
C("set_backend/number", (BackendError, TypeError), "backend", lambda c: call(mg.set_backend, 5))
C("set_backend/list", (BackendError, TypeError), "backend", lambda c: call(mg.set_backend, ["numpy"]))
C("set_default_dtype/int64", DTypeError, "set_default_dtype", lambda c: call(mg.set_default_dtype, "int64"))
C("set_default_dtype/float16", DTypeError, "float16", lambda c: call(mg.set_default_dtype, "float16"))

# -- element-wise binary ops: wrong shapes -----------------------------------------------------
BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "compare": operator.lt,
    "where": lambda a, b: mg.where(mg.ones(a.nrows, a.ncols), a, b),
    "mse_loss": F.mse_loss,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}
BAD_PAIRS = [((2, 3), (3, 2)), ((2, 3), (4, 3)), ((2, 3), (2, 4)), ((1, 3), (2, 1)), ((2, 3), (1, 4)), ((4, 1), (3, 1))]
for opname, fn in BINARY.items():
    for sa, sb in BAD_PAIRS:
        C(
            f"{opname}/shapes-{sa[0]}x{sa[1]}-{sb[0]}x{sb[1]}",
            ShapeError,
            opname,
            lambda c, fn=fn, sa=sa, sb=sb: call(fn, T(*sa), T(*sb)),
            shapes=(sa, sb),
        )
for opname, fn, sb in [
    ("add", operator.add, (3, 2)),
    ("mul", operator.mul, (3, 2)),
    ("matmul", operator.matmul, (2, 3)),
]:
    # operands that are graph nodes, not leaves: a failed op must not touch their graph either
    C(
        f"{opname}/non-leaf-operands",
        ShapeError,
        opname,
        lambda c, fn=fn, sb=sb: call(fn, T(2, 3) * 2.0, T(*sb).exp()),
        shapes=((2, 3), sb),
    )
for opname in ("mse_loss", "binary_cross_entropy_with_logits"):
    fn = BINARY[opname]
    for sa, sb in [((4, 3), (4, 1)), ((4, 3), (1, 3)), ((4, 3), (1, 1)), ((1, 3), (4, 3))]:
        C(
            f"{opname}/broadcastable-{sa[0]}x{sa[1]}-{sb[0]}x{sb[1]}",
            ShapeError,
            opname,
            lambda c, fn=fn, sa=sa, sb=sb: call(fn, T(*sa), T(*sb)),
            shapes=(sa, sb),
        )
C("where/cond-shape", ShapeError, "where", lambda c: call(mg.where, mg.ones(3, 2), T(2, 3), T(2, 3)), ((3, 2), (2, 3)))
C("where/cond-list", TypeError, "where", lambda c: call(mg.where, [[1.0]], T(1, 1), T(1, 1)))
C("where/cond-array", TypeError, "where", lambda c: call(mg.where, np.ones((2, 3)), T(2, 3), T(2, 3)))
C(
    "where/cond-backend",
    BackendError,
    "where",
    lambda c: call(mg.where, mg.ones(2, 3, backend=other()), T(2, 3), T(2, 3)),
)

# -- matmul, linear, cat: wrong shapes ------------------------------------------------------------
for sa, sb in [((2, 3), (2, 3)), ((2, 3), (4, 2)), ((1, 5), (1, 5)), ((3, 1), (3, 1)), ((4, 3), (2, 4))]:
    C(
        f"matmul/shapes-{sa[0]}x{sa[1]}-{sb[0]}x{sb[1]}",
        ShapeError,
        "matmul",
        lambda c, sa=sa, sb=sb: call(operator.matmul, T(*sa), T(*sb)),
        shapes=(sa, sb),
    )
    C(
        f"matmul-fn/shapes-{sa[0]}x{sa[1]}-{sb[0]}x{sb[1]}",
        ShapeError,
        "matmul",
        lambda c, sa=sa, sb=sb: call(mg.matmul, T(*sa), T(*sb)),
        shapes=(sa, sb),
    )
C("linear/x-vs-weight", ShapeError, "linear", lambda c: call(F.linear, T(4, 3), T(2, 5)), ((4, 3), (2, 5)))
C("linear/x-transposed", ShapeError, "linear", lambda c: call(F.linear, T(3, 4), T(2, 3)), ((3, 4), (2, 3)))
C("linear/bias-length", ShapeError, "linear", lambda c: call(F.linear, T(4, 3), T(2, 3), T(1, 3)), ((1, 3), (1, 2)))
C("linear/bias-column", ShapeError, "linear", lambda c: call(F.linear, T(4, 3), T(2, 3), T(2, 1)), ((2, 1), (1, 2)))
C("linear/bias-full", ShapeError, "linear", lambda c: call(F.linear, T(4, 3), T(2, 3), T(4, 2)), ((4, 2), (1, 2)))
C("linear/x-array", TypeError, "linear", lambda c: call(F.linear, np.zeros((4, 3)), T(2, 3)))
C("linear/weight-list", TypeError, "linear", lambda c: call(F.linear, T(4, 3), [[1.0, 2.0, 3.0]]))
C("linear/bias-number", TypeError, "linear", lambda c: call(F.linear, T(4, 3), T(2, 3), 1.0))
C("cat/axis0-ncols", ShapeError, "cat", lambda c: call(mg.cat, [T(2, 3), T(2, 4)]), ((2, 3), (2, 4)))
C("cat/axis1-nrows", ShapeError, "cat", lambda c: call(mg.cat, [T(2, 3), T(3, 3)], axis=1), ((2, 3), (3, 3)))
C("cat/third-bad", ShapeError, "cat", lambda c: call(mg.cat, [T(1, 2), T(1, 2), T(1, 3)]), ((1, 2), (1, 3)))
C("cat/empty", (TypeError, ValueError), "cat", lambda c: call(mg.cat, []))
C("cat/tensor-not-list", TypeError, "cat", lambda c: call(mg.cat, T(2, 2)))
C("cat/array-in-list", TypeError, "cat", lambda c: call(mg.cat, [T(2, 2), np.zeros((2, 2))]))
C("cat/generator", TypeError, "cat", lambda c: call(mg.cat, (t for t in [T(1, 2), T(1, 2)])))
C("cat/axis-2", ValueError, "cat", lambda c: call(mg.cat, [T(2, 2), T(2, 2)], axis=2))
C("cat/axis-none", ValueError, "cat", lambda c: call(mg.cat, [T(2, 2), T(2, 2)], axis=None))
C("cat/axis-string", TypeError, "cat", lambda c: call(mg.cat, [T(2, 2), T(2, 2)], axis="0"))

# -- dtypes and backends mixed -------------------------------------------------------------------
MIXABLE: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "matmul": lambda a, b: a @ b.T,
    "cat": lambda a, b: mg.cat([a, b]),
    "where": lambda a, b: mg.where(mg.ones(2, 3), a, b),
    "mse_loss": F.mse_loss,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
    "linear": lambda a, b: F.linear(a, b),
}
for opname, fn in MIXABLE.items():
    C(
        f"{opname}/float32-float64",
        DTypeError,
        opname,
        lambda c, fn=fn: call(fn, T(2, 3), T(2, 3, dtype="float64")),
        extra=("float32", "float64"),
    )
    C(
        f"{opname}/other-backend",
        BackendError,
        opname,
        lambda c, fn=fn: call(fn, T(2, 3), T(2, 3, backend=other())),
        extra=("numpy", "python"),
    )
    C(f"{opname}/float-int64", DTypeError, opname, lambda c, fn=fn: call(fn, T(2, 3), I([[1, 2, 3], [4, 5, 6]])))
C("matmul/int64-int64", DTypeError, "matmul", lambda c: call(operator.matmul, I([[1, 2]]), I([[1], [2]])))
C("div/int64-int64", DTypeError, "div", lambda c: call(operator.truediv, I([[1, 2]]), I([[1, 2]])))
C("add/int64-plus-fraction", DTypeError, "add", lambda c: call(operator.add, I([[1, 2]]), 1.5))
C("mean/int64", DTypeError, "mean", lambda c: call(mg.ops.mean, I([[1, 2]])))
for uname in ("exp", "log", "sqrt", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "logsumexp"):
    C(f"{uname}/int64", DTypeError, uname, lambda c, u=uname: call(getattr(mg, u), I([[1, 2]])))
    C(f"{uname}/array", TypeError, uname, lambda c, u=uname: call(getattr(mg, u), np.ones((2, 2))))
    C(f"{uname}/list", TypeError, uname, lambda c, u=uname: call(getattr(mg, u), [[1.0]]))
    C(f"{uname}/number", TypeError, uname, lambda c, u=uname: call(getattr(mg, u), 1.0))
C("cross_entropy/int64-logits", DTypeError, "cross_entropy", lambda c: call(F.cross_entropy, I([[1, 2]]), [0]))

# -- operands of the wrong type ------------------------------------------------------------------
for opname, fn in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("div", operator.truediv)]:
    for label, value in [
        ("string", "a"),
        ("none", None),
        ("list", [[1.0, 2.0, 3.0]]),
        ("bool", True),
        ("complex", 1j),
        ("dict", {}),
    ]:
        C(f"{opname}/operand-{label}", TypeError, opname, lambda c, fn=fn, v=value: call(fn, T(2, 3), v))
        C(f"{opname}/reflected-{label}", TypeError, opname, lambda c, fn=fn, v=value: call(fn, v, T(2, 3)))
    C(f"{opname}/array-1d", ShapeError, opname, lambda c, fn=fn: call(fn, T(2, 3), np.ones(3)))
    C(f"{opname}/array-3d", ShapeError, opname, lambda c, fn=fn: call(fn, T(2, 3), np.ones((1, 2, 3))))
    C(f"{opname}/array-str", TypeError, opname, lambda c, fn=fn: call(fn, T(2, 3), np.array([["a", "b", "c"]])))
    C(
        f"{opname}/array-shape",
        ShapeError,
        opname,
        lambda c, fn=fn: call(fn, T(2, 3), np.ones((3, 2))),
        ((2, 3), (3, 2)),
    )
C("matmul/number", TypeError, "matmul", lambda c: call(operator.matmul, T(2, 2), 2.0))
C("matmul/reflected-number", TypeError, "matmul", lambda c: call(operator.matmul, 2, T(2, 2)))
C("matmul/list", TypeError, "matmul", lambda c: call(operator.matmul, T(2, 2), [[1.0], [2.0]]))
C("matmul/array-1d", ShapeError, "matmul", lambda c: call(operator.matmul, T(2, 3), np.ones(3)))
C("matmul/none", TypeError, "matmul", lambda c: call(mg.matmul, T(2, 2), None))
C("pow/string-exponent", TypeError, "pow", lambda c: call(operator.pow, T(2, 2), "2"))
C("pow/tensor-exponent", TypeError, "pow", lambda c: call(operator.pow, T(2, 2), T(2, 2)))
C("pow/bool-exponent", TypeError, "pow", lambda c: call(operator.pow, T(2, 2), True))
C("pow/none-exponent", TypeError, "pow", lambda c: call(operator.pow, T(2, 2), None))
C("pow/complex-exponent", TypeError, "pow", lambda c: call(operator.pow, T(2, 2), 2j))
C("pow/string-base", TypeError, "pow", lambda c: call(operator.pow, "a", T(2, 2)))
C("pow/none-base", TypeError, "pow", lambda c: call(operator.pow, None, T(2, 2)))
C("pow/negative-base", ValueError, "pow", lambda c: call(operator.pow, -2.0, T(2, 2)))
C("pow/int64", DTypeError, "pow", lambda c: call(operator.pow, I([[1, 2]]), 2))
C("leaky_relu/slope-string", TypeError, "leaky_relu", lambda c: call(mg.ops.leaky_relu, T(2, 2), "0.1"))
C("leaky_relu/slope-none", TypeError, "leaky_relu", lambda c: call(F.leaky_relu, T(2, 2), None))
C("leaky_relu/slope-list", TypeError, "leaky_relu", lambda c: call(F.leaky_relu, T(2, 2), [0.1]))
C("leaky_relu/slope-bool", TypeError, "leaky_relu", lambda c: call(F.leaky_relu, T(2, 2), True))
C("leaky_relu/slope-tensor", TypeError, "leaky_relu", lambda c: call(F.leaky_relu, T(2, 2), T(1, 1)))
C("compare/string", TypeError, "compare", lambda c: call(operator.eq, T(2, 2), "a"))
C("compare/other-backend", BackendError, "compare", lambda c: call(operator.gt, T(2, 2), T(2, 2, backend=other())))

# -- reductions and axis arguments ---------------------------------------------------------------
REDUCTIONS = ("sum", "mean", "max", "min", "argmax", "argmin")
for rname in REDUCTIONS:
    rfn = getattr(mg.ops, rname)
    for label, axis, expect in [
        ("2", 2, ValueError),
        ("minus-3", -3, ValueError),
        ("100", 100, ValueError),
        ("string", "0", TypeError),
        ("float", 1.0, TypeError),
        ("bool", True, TypeError),
        ("tuple", (0, 1), TypeError),
    ]:
        C(f"{rname}/axis-{label}", expect, rname, lambda c, f=rfn, a=axis: call(f, T(2, 3), axis=a))
    C(f"{rname}/array", TypeError, rname, lambda c, f=rfn: call(f, np.ones((2, 2))))
for sname in ("softmax", "log_softmax", "logsumexp"):
    sfn = getattr(mg, sname)
    for label, axis, expect in [("2", 2, ValueError), ("none", None, ValueError), ("string", "1", TypeError)]:
        C(f"{sname}/axis-{label}", expect, sname, lambda c, f=sfn, a=axis: call(f, T(2, 3), a))
for mname in ("Softmax", "LogSoftmax"):
    mcls = getattr(nn, mname)
    C(f"{mname}/axis-2", ValueError, mname, lambda c, m=mcls: call(m, 2))
    C(f"{mname}/dim-5", ValueError, mname, lambda c, m=mcls: call(m, dim=5))
    C(f"{mname}/axis-string", TypeError, mname, lambda c, m=mcls: call(m, "1"))

# -- reshape, index, item ------------------------------------------------------------------------
C("reshape/too-many", ShapeError, "reshape", lambda c: call(T(2, 3).reshape, 4, 4), ((2, 3), (4, 4)))
C("reshape/too-few", ShapeError, "reshape", lambda c: call(T(2, 3).reshape, 1, 5), ((2, 3), (1, 5)))
C("reshape/minus-one-indivisible", ShapeError, "reshape", lambda c: call(T(2, 3).reshape, -1, 4), ((2, 3),))
C("reshape/both-minus-one", ValueError, "reshape", lambda c: call(T(2, 3).reshape, -1, -1))
C("reshape/zero", ValueError, "reshape", lambda c: call(T(2, 3).reshape, 0, 6))
C("reshape/minus-two", ValueError, "reshape", lambda c: call(T(2, 3).reshape, -2, 3))
C("reshape/float", TypeError, "reshape", lambda c: call(T(2, 3).reshape, 2.0, 3))
C("reshape/string", TypeError, "reshape", lambda c: call(T(2, 3).reshape, "2", 3))
C("reshape/none", TypeError, "reshape", lambda c: call(T(2, 3).reshape, None, 6))
C("reshape/bool", TypeError, "reshape", lambda c: call(T(2, 3).reshape, True, 6))
C("reshape/tuple", TypeError, "reshape", lambda c: call(T(2, 3).reshape, (3, 2)))
C("reshape/fn-array", TypeError, "reshape", lambda c: call(mg.ops.reshape, np.ones((2, 3)), 3, 2))
C("expand/shrink", ShapeError, "expand", lambda c: call(mg.ops.expand, T(2, 3), 1, 3), ((2, 3), (1, 3)))
C("expand/not-broadcast", ShapeError, "expand", lambda c: call(mg.ops.expand, T(2, 3), 4, 6), ((2, 3), (4, 6)))
for label, key in [
    ("row", 5),
    ("row-negative", -3),
    ("column", (slice(None), 3)),
    ("column-negative", (0, -4)),
    ("row-list", [0, 5]),
    ("paired-lists", ([0], [7])),
    ("int64-tensor", "tensor:5"),
    ("numpy-int", "np:5"),
]:

    def build_index(c: Ctx, key: Any = key) -> Any:
        if key == "tensor:5":
            key = I([[5]])
        elif key == "np:5":
            key = np.int64(5)
        return call(operator.getitem, T(2, 3), key)

    C(f"index/out-of-range-{label}", IndexError, "2x3", build_index, index=True)
# As NumPy: too many indices, and paired index lists of different lengths, are IndexErrors.
C("index/too-many-indices", IndexError, "index", lambda c: call(operator.getitem, T(2, 3), (0, 0, 0)), index=True)
C("index/paired-lengths", IndexError, "index", lambda c: call(operator.getitem, T(2, 3), ([0, 1], [0])), index=True)
C("index/empty-list", ValueError, "index", lambda c: call(operator.getitem, T(2, 3), []))
C("index/empty-slice", ValueError, "index", lambda c: call(operator.getitem, T(2, 3), slice(1, 1)))
C("index/slice-past-end", ValueError, "index", lambda c: call(operator.getitem, T(2, 3), slice(5, None)))
C("index/empty-column-slice", ValueError, "index", lambda c: call(operator.getitem, T(2, 3), (0, slice(3, 3))))
for label, key in [
    ("string", "a"),
    ("float", 1.5),
    ("none", None),
    ("bool", True),
    ("float-list", [0.5]),
    ("string-list", ["a"]),
    ("set", {0}),
    ("ellipsis", (Ellipsis, 0)),
    ("float-array", np.array([0.5])),
    ("array-2d", np.array([[0]])),
    ("bool-array", np.array([True, False])),
]:
    C(f"index/type-{label}", TypeError, "index", lambda c, k=key: call(operator.getitem, T(2, 3), k))
C("index/float-tensor", TypeError, "index", lambda c: call(operator.getitem, T(2, 3), mg.Tensor2D([[0.0]])))
C("index/matrix-tensor", ShapeError, "index", lambda c: call(operator.getitem, T(2, 3), I([[0, 1], [1, 0]])))
C("index/fn-array", TypeError, "index", lambda c: call(mg.ops.index, np.ones((2, 3)), 0))
C("item/not-1x1", ShapeError, "item", lambda c: call(T(2, 3).item), ((2, 3),))
C("float/not-1x1", ShapeError, "item", lambda c: call(float, T(2, 3)), ((2, 3),))
C("int/not-1x1", ShapeError, "item", lambda c: call(int, T(1, 2)), ((1, 2),))
C("bool/not-1x1", ShapeError, "truth value", lambda c: call(bool, T(2, 3)), ((2, 3),))
C("to/dtype-int32", DTypeError, "int32", lambda c: call(T(2, 2).to, "int32"))
C("to/backend-unknown", BackendError, "gpu", lambda c: call(T(2, 2).to, backend="gpu"))
C("long/nan", DTypeError, "int64", lambda c: call(mg.Tensor2D([[NAN]]).long))
C("long/inf", DTypeError, "int64", lambda c: call(mg.Tensor2D([[INF]]).long))

# -- in-place updates ------------------------------------------------------------------------------
C("add_/requires-grad", GraphError, "add_", lambda c: call(T(2, 2).add_, 1.0))
C("mul_/requires-grad", GraphError, "mul_", lambda c: call(T(2, 2).mul_, 2.0))
C("zero_/requires-grad", GraphError, "zero_", lambda c: call(T(2, 2).zero_))
C("copy_/requires-grad", GraphError, "copy_", lambda c: call(T(2, 2).copy_, T(2, 2, grad=False)))
C("add_/shape", ShapeError, "add_", lambda c: call(T(2, 3, grad=False).add_, T(3, 2, grad=False)), ((2, 3), (3, 2)))
C("add_/grow", ShapeError, "add_", lambda c: call(T(1, 3, grad=False).add_, T(2, 3, grad=False)), ((1, 3), (2, 3)))
C("copy_/shape", ShapeError, "copy_", lambda c: call(T(2, 3, grad=False).copy_, T(3, 3, grad=False)), ((2, 3), (3, 3)))
C("mul_/shape", ShapeError, "mul_", lambda c: call(T(2, 3, grad=False).mul_, T(2, 2, grad=False)), ((2, 3), (2, 2)))
C("add_/string", TypeError, "add_", lambda c: call(T(2, 2, grad=False).add_, "x"))
C("add_/alpha-string", TypeError, "add_", lambda c: call(T(2, 2, grad=False).add_, T(2, 2, grad=False), alpha="x"))
C("add_/alpha-none", TypeError, "add_", lambda c: call(T(2, 2, grad=False).add_, 1.0, alpha=None))
C("mul_/none", TypeError, "mul_", lambda c: call(T(2, 2, grad=False).mul_, None))
C("copy_/list", TypeError, "copy_", lambda c: call(T(2, 2, grad=False).copy_, [[1.0, 2.0], [3.0, 4.0]]))
C("copy_/bool", TypeError, "copy_", lambda c: call(T(2, 2, grad=False).copy_, True))
C("add_/backend", BackendError, "add_", lambda c: call(T(2, 2, grad=False).add_, T(2, 2, grad=False, backend=other())))
C("add_/dtype", DTypeError, "add_", lambda c: call(T(2, 2, grad=False).add_, T(2, 2, grad=False, dtype="float64")))
C("add_/int64-fraction", DTypeError, "add_", lambda c: call(I([[1, 2]]).add_, 1.5))
C("mul_/int64-fraction", DTypeError, "mul_", lambda c: call(I([[1, 2]]).mul_, 0.5))
C("copy_/int64-fraction", DTypeError, "copy_", lambda c: call(I([[1, 2]]).copy_, 0.5))

# -- autograd misuse ---------------------------------------------------------------------------------


def _twice(c: Ctx) -> Any:
    x, y = used_twice()
    return call(y.backward, watch=(x,))


def _released_branch(c: Ctx) -> Any:
    # w's branch is new, a's op was released by an earlier backward: the failure comes after w's
    # gradient was computed, and must not leave it in w.grad.
    x, w = T(2, 2), T(2, 2, start=5)
    a = x * 2.0
    a.sum().backward()
    out = (a * 3.0 + w * 5.0).sum()
    return call(out.backward, watch=(x, w))


def _released_branch_retained(c: Ctx) -> Any:
    # as above, with a retained intermediate on the new branch: its .grad must not change either
    x, w = T(2, 2), T(2, 2, start=5)
    a = x * 2.0
    a.sum().backward()
    h = w * 5.0
    h.retain_grad()
    out = (a * 3.0 + h).sum()
    return call(out.backward, watch=(x, w, h))


def _after_partial_grad(c: Ctx) -> Any:
    x, w = T(2, 2), T(2, 2, start=5)
    (w * 2.0).sum().backward()  # w.grad now holds 2s
    a = x * 2.0
    a.sum().backward()
    out = (w * 5.0 + a * 3.0).sum()
    return call(out.backward, watch=(x, w))


C("backward/non-scalar", GraphError, "backward", lambda c: call((T(2, 3) * 2.0).backward), ((2, 3),))
C("backward/twice", GraphError, "backward", _twice, extra=("retain_graph",))
C("backward/released-branch", GraphError, "backward", _released_branch)
C("backward/released-branch-accumulating", GraphError, "backward", _after_partial_grad)
C("backward/released-branch-retained", GraphError, "backward", _released_branch_retained)
C("backward/constant", GraphError, "backward", lambda c: call(T(1, 1, grad=False).backward))
C("backward/under-no-grad", GraphError, "backward", lambda c: call(nograd(lambda: T(2, 2) * 2.0)().sum().backward))
C(
    "backward/grad-shape",
    (GraphError, ShapeError),
    "backward",
    lambda c: call((T(2, 3) * 2.0).backward, T(3, 2)),
    ((3, 2), (2, 3)),
)
C(
    "backward/grad-list-shape",
    (GraphError, ShapeError),
    "backward",
    lambda c: call((T(2, 3) * 2.0).backward, [[1.0, 2.0]]),
    ((1, 2), (2, 3)),
)
C("backward/grad-string", TypeError, "backward", lambda c: call((T(2, 3) * 2.0).backward, "abc"))
C("backward/grad-array-1d", (GraphError, ShapeError), "backward", lambda c: call((T(2, 3) * 2.0).backward, np.ones(3)))
C(
    "backward/grad-dtype",
    (GraphError, DTypeError),
    "backward",
    lambda c: call((T(2, 3) * 2.0).backward, T(2, 3, dtype="float64")),
)
C(
    "backward/grad-backend",
    (GraphError, BackendError),
    "backward",
    lambda c: call((T(2, 3) * 2.0).backward, T(2, 3, backend=other())),
)
C("backward/grad-int64", (GraphError, DTypeError), "backward", lambda c: call((T(1, 2) * 2.0).backward, I([[1, 1]])))
C("grad/no-outputs", GraphError, "grad", lambda c: call(mg.grad, [], T(2, 2)))
C("grad/no-inputs", GraphError, "grad", lambda c: call(mg.grad, T(2, 2).sum(), []))
C(
    "grad/input-no-grad",
    GraphError,
    "grad",
    lambda c: (lambda x: call(mg.grad, (x * 2.0).sum(), T(2, 2, grad=False)))(T(2, 2)),
)
C("grad/unused-input", GraphError, "grad", lambda c: call(mg.grad, (T(2, 2) * 2.0).sum(), T(2, 2)))
C("grad/constant-output", GraphError, "grad", lambda c: call(mg.grad, T(1, 1, grad=False), T(2, 2)))
C("grad/non-scalar", GraphError, "grad", lambda c: (lambda x: call(mg.grad, x * 2.0, x))(T(2, 3)), ((2, 3),))
C(
    "grad/seed-count",
    GraphError,
    "grad",
    lambda c: (lambda x: call(mg.grad, (x * 2.0).sum(), x, [T(1, 1), T(1, 1)]))(T(2, 2)),
)
C(
    "grad/seed-shape",
    (GraphError, ShapeError),
    "grad",
    lambda c: (lambda x: call(mg.grad, x * 2.0, x, T(3, 2)))(T(2, 3)),
    ((3, 2), (2, 3)),
)
C("grad/seed-string", TypeError, "grad", lambda c: (lambda x: call(mg.grad, (x * 2.0).sum(), x, "abc"))(T(2, 2)))
C("grad/inputs-floats", TypeError, "grad", lambda c: call(mg.grad, (T(2, 2) * 2.0).sum(), [1.0]))
C("grad/inputs-array", TypeError, "grad", lambda c: call(mg.grad, (T(2, 2) * 2.0).sum(), np.ones((2, 2))))
C("grad/outputs-string", TypeError, "grad", lambda c: call(mg.grad, "y", T(2, 2)))
C("grad/outputs-none", TypeError, "grad", lambda c: call(mg.grad, None, T(2, 2)))
C("grad/released", GraphError, "second time", lambda c: (lambda xy: call(mg.grad, xy[1], xy[0]))(used_twice()))
C("requires_grad_/non-leaf-off", GraphError, "requires_grad_", lambda c: call(nonleaf().requires_grad_, False))
C("requires_grad_/int64", DTypeError, "grad", lambda c: call(I([[1]]).requires_grad_))
C("retain_grad/constant", GraphError, "retain_grad", lambda c: call(T(2, 2, grad=False).retain_grad))

# -- nn modules ----------------------------------------------------------------------------------------
for label, args, expect in [
    ("in-zero", (0, 3), ValueError),
    ("out-negative", (3, -1), ValueError),
    ("in-float", (3.0, 2), TypeError),
    ("in-string", ("3", 2), TypeError),
    ("in-none", (None, 2), TypeError),
    ("in-bool", (True, 2), TypeError),
    ("out-numpy-float", (3, np.float64(2.0)), TypeError),
]:
    C(f"Linear/{label}", expect, "Linear", lambda c, a=args: call(nn.Linear, *a))
C("Linear/dtype-int64", DTypeError, "Linear", lambda c: call(nn.Linear, 3, 2, dtype="int64"))
C("Linear/dtype-float16", DTypeError, "float16", lambda c: call(nn.Linear, 3, 2, dtype="float16"))
C("Linear/backend", BackendError, "gpu", lambda c: call(nn.Linear, 3, 2, backend="gpu"))


def _linear_forward(x: Callable[[], Any]) -> Build:
    def build(c: Ctx) -> Any:
        mg.manual_seed(0)
        layer = nn.Linear(3, 2)
        return call(layer, x(), watch=(layer,))

    return build


C("Linear/forward-width", ShapeError, "linear", _linear_forward(lambda: T(4, 5)), ((4, 5), (2, 3)))
C("Linear/forward-transposed", ShapeError, "linear", _linear_forward(lambda: T(3, 4)), ((3, 4), (2, 3)))
C("Linear/forward-float64", DTypeError, "linear", _linear_forward(lambda: T(4, 3, dtype="float64")))
C("Linear/forward-int64", DTypeError, "linear", _linear_forward(lambda: I([[1, 2, 3]])))
C("Linear/forward-backend", BackendError, "linear", _linear_forward(lambda: T(4, 3, backend=other())))
C("Linear/forward-array", TypeError, "linear", _linear_forward(lambda: np.ones((4, 3))))
C("Linear/forward-list", TypeError, "linear", _linear_forward(lambda: [[1.0, 2.0, 3.0]]))
for label, sizes, expect in [
    ("one-size", [784], ValueError),
    ("empty", [], ValueError),
    ("zero", [784, 0, 10], ValueError),
    ("negative", [784, -1], ValueError),
    ("float", [784.0, 10], TypeError),
    ("string-size", [784, "10"], TypeError),
    ("none-size", [784, None], TypeError),
    ("bool-size", [784, True], TypeError),
    ("int", 784, TypeError),
    ("string", "784,10", TypeError),
    ("none", None, TypeError),
]:
    C(f"MLP/sizes-{label}", expect, "MLP", lambda c, s=sizes: call(nn.MLP, s))
for label, kwargs, expect in [
    ("activation-unknown", {"activation": "gelu"}, ValueError),
    ("activation-instance", {"activation": nn.ReLU()}, TypeError),
    ("activation-number", {"activation": 5}, TypeError),
    ("activation-none", {"activation": None}, TypeError),
    ("activation-function", {"activation": F.relu}, TypeError),
    ("activation-class", {"activation": int}, TypeError),
    ("dropout-one", {"dropout": 1.0}, ValueError),
    ("dropout-negative", {"dropout": -0.1}, ValueError),
    ("dropout-nan", {"dropout": NAN}, ValueError),
    ("dropout-string", {"dropout": "0.5"}, TypeError),
    ("dtype", {"dtype": "int64"}, DTypeError),
    ("backend", {"backend": "gpu"}, BackendError),
]:
    name = "gpu" if label == "backend" else "MLP"
    C(f"MLP/{label}", expect, name, lambda c, k=kwargs: call(nn.MLP, [2, 3, 2], **k))
C(
    "MLP/forward-width",
    ShapeError,
    "linear",
    lambda c: (lambda m: call(m, T(4, 5), watch=(m,)))(mlp()),
    ((4, 5), (4, 3)),
)
C("Sequential/number", TypeError, "Sequential", lambda c: call(nn.Sequential, 5))
C("Sequential/class", TypeError, "Sequential", lambda c: call(nn.Sequential, nn.ReLU))
C("Sequential/second-string", TypeError, "Sequential", lambda c: call(nn.Sequential, nn.ReLU(), "x"))
C("Sequential/index-out-of-range", IndexError, "Sequential", lambda c: call(operator.getitem, mlp(), 10), index=True)
C("Sequential/index-string", TypeError, "Sequential", lambda c: call(operator.getitem, mlp(), "a"))
C("Dropout/p-two", ValueError, "Dropout", lambda c: call(nn.Dropout, 2))
C("Dropout/p-negative", ValueError, "Dropout", lambda c: call(nn.Dropout, -0.5))
C("Dropout/p-string", TypeError, "Dropout", lambda c: call(nn.Dropout, "0.5"))
C("dropout/p-big", ValueError, "dropout", lambda c: call(F.dropout, T(2, 2), 1.5))
C("dropout/p-string", TypeError, "dropout", lambda c: call(F.dropout, T(2, 2), "0.5"))
C("dropout/array", TypeError, "dropout", lambda c: call(F.dropout, np.ones((2, 2)), 0.5))
C("LeakyReLU/slope-string", TypeError, "LeakyReLU", lambda c: call(nn.LeakyReLU, "0.1"))
for lcls in ("CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss"):
    C(f"{lcls}/reduction-unknown", ValueError, lcls, lambda c, k=lcls: call(getattr(nn, k), reduction="avg"))
    C(
        f"{lcls}/reduction-none-object",
        (ValueError, TypeError),
        lcls,
        lambda c, k=lcls: call(getattr(nn, k), reduction=None),
    )
for fname in ("cross_entropy", "nll_loss"):
    C(f"{fname}/reduction", ValueError, fname, lambda c, f=fname: call(getattr(F, f), T(2, 3), [0, 1], reduction="avg"))
C("mse_loss/reduction", ValueError, "mse_loss", lambda c: call(F.mse_loss, T(2, 3), T(2, 3), reduction="avg"))
C(
    "bce/reduction",
    ValueError,
    "binary_cross_entropy",
    lambda c: call(F.binary_cross_entropy_with_logits, T(2, 3), T(2, 3), reduction=1),
)


def _module_call(method: str, *args: Any) -> Build:
    """``mlp()[0].method(*args)``; an argument given as a lambda is made when the case runs."""

    def build(c: Ctx) -> Any:
        model = mlp()
        made = [a() if callable(a) and getattr(a, "__name__", "") == "<lambda>" else a for a in args]
        return call(getattr(model[0], method), *made, watch=(model,))

    return build


C(
    "register_parameter/dotted",
    KeyError,  # PyTorch's convention for a bad module-attribute name; the message names the method
    "a.b",
    _module_call("register_parameter", "a.b", lambda: nn.Parameter(T(1, 1))),
)
C(
    "register_parameter/empty",
    KeyError,
    "name",
    _module_call("register_parameter", "", lambda: nn.Parameter(T(1, 1))),
)
C(
    "register_parameter/number-name",
    TypeError,
    "parameter",
    _module_call("register_parameter", 5, lambda: nn.Parameter(T(1, 1))),
)
C("register_parameter/tensor", TypeError, "Parameter", _module_call("register_parameter", "w", lambda: T(1, 1)))
C("add_module/number", TypeError, "Module", _module_call("add_module", "x", 5))
C("add_module/dotted", KeyError, "a.b", _module_call("add_module", "a.b", nn.ReLU()))
C("setattr/tensor-over-parameter", TypeError, "weight", _module_call("__setattr__", "weight", lambda: T(2, 3)))
C("Module.train/string", (ValueError, TypeError), "train", _module_call("train", "yes"))
C("Module.to/int64", DTypeError, "to", _module_call("to", "int64"))
C("Module.to/backend", BackendError, "gpu", _module_call("to", None, "gpu"))


def _load(state: Callable[[], Any], strict: bool = True) -> Build:
    def build(c: Ctx) -> Any:
        model = mlp()
        return call(model.load_state_dict, state(), strict, watch=(model,))

    return build


C(
    "load_state_dict/missing",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": None})),
    extra=("2.bias", "missing"),
)
C(
    "load_state_dict/unexpected",
    CheckpointError,
    "load_state_dict",
    _load(lambda: {**mlp_state(), "3.weight": np.ones((2, 2))}),
    extra=("3.weight", "unexpected"),
)
C(
    "load_state_dict/shape",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"0_weight": np.ones((3, 4))})),
    ((3, 4), (4, 3)),
    extra=("0.weight",),
)
C(
    "load_state_dict/bias-1d-length",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"0_bias": np.ones(5)})),
    ((1, 4),),
    extra=("0.bias", "5"),
)
C(
    "load_state_dict/3d",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"0_weight": np.ones((4, 3, 1))})),
    extra=("0.weight",),
)
C(
    "load_state_dict/0d",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array(1.0)})),
    extra=("2.bias",),
)
C(
    "load_state_dict/shape-not-strict",
    CheckpointError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"0_weight": np.ones((3, 4))}), strict=False),
    ((3, 4), (4, 3)),
)
C(
    "load_state_dict/entry-list",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": [[0.0, 0.0]]})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-string",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": "zeros"})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-dict",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": {"a": 1}})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-number",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": 0.5})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-str-array",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array([["a", "b"]])})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-object-array",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array([[None, None]])})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-complex-array",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array([[1j, 2j]])})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-bool-array",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array([[True, False]])})),
    extra=("2.bias",),
)
C(
    "load_state_dict/entry-object-array-int",
    TypeError,
    "load_state_dict",
    _load(lambda: mlp_state(**{"2_bias": np.array([[1, None]], dtype=object)})),
    extra=("2.bias",),
)
C("load_state_dict/not-a-mapping", TypeError, "load_state_dict", _load(lambda: list(mlp_state().items())))
C("load_state_dict/none", TypeError, "load_state_dict", _load(lambda: None))
C("load_state_dict/number-key", CheckpointError, "load_state_dict", _load(lambda: {**mlp_state(), 0: np.ones((1, 1))}))

# -- nn.init -----------------------------------------------------------------------------------------


def _init(fn: Callable[..., Any], *args: Any, target: Callable[[], Any] | None = None, **kwargs: Any) -> Build:
    def build(c: Ctx) -> Any:
        t = nn.Parameter(T(3, 4, grad=False)) if target is None else target()
        return call(fn, t, *args, **kwargs)

    return build


C("init.uniform_/a-string", TypeError, "uniform_", _init(init.uniform_, "a", 1.0))
C("init.uniform_/a-above-b", ValueError, "uniform_", _init(init.uniform_, 1.0, 0.0))
C("init.uniform_/b-inf", ValueError, "uniform_", _init(init.uniform_, 0.0, INF))
C("init.uniform_/int64", DTypeError, "uniform_", _init(init.uniform_, target=lambda: I([[1, 2]])))
C("init.uniform_/array", TypeError, "uniform_", _init(init.uniform_, target=lambda: np.zeros((2, 2))))
C("init.normal_/std-negative", ValueError, "normal_", _init(init.normal_, 0.0, -1.0))
C("init.normal_/std-string", TypeError, "normal_", _init(init.normal_, 0.0, "1"))
C("init.normal_/mean-inf", ValueError, "normal_", _init(init.normal_, INF, 1.0))
C("init.constant_/string", TypeError, "constant_", _init(init.constant_, "a"))
C("init.constant_/array", TypeError, "constant_", _init(init.constant_, 1.0, target=lambda: np.zeros((2, 2))))
C("init.kaiming_uniform_/mode", ValueError, "kaiming_uniform_", _init(init.kaiming_uniform_, mode="fan_x"))
C("init.kaiming_uniform_/nonlinearity", ValueError, "gelu", _init(init.kaiming_uniform_, nonlinearity="gelu"))
C(
    "init.kaiming_uniform_/array",
    TypeError,
    "kaiming_uniform_",
    _init(init.kaiming_uniform_, target=lambda: np.zeros((2, 2))),
)
C("init.kaiming_normal_/a-string", TypeError, "kaiming_normal_", _init(init.kaiming_normal_, a="x"))
C("init.xavier_uniform_/gain-string", TypeError, "xavier_uniform_", _init(init.xavier_uniform_, gain="x"))
C("init.xavier_normal_/gain-negative", ValueError, "xavier_normal_", _init(init.xavier_normal_, gain=-1.0))
C("init.calculate_gain/unknown", ValueError, "calculate_gain", lambda c: call(init.calculate_gain, "gelu"))
C(
    "init.calculate_gain/slope-string",
    TypeError,
    "calculate_gain",
    lambda c: call(init.calculate_gain, "leaky_relu", "x"),
)

# -- optimisers ----------------------------------------------------------------------------------------


def _param() -> nn.Parameter:
    return nn.Parameter(T(2, 2, grad=False))


def _opt(cls: Any, params: Callable[[], Any], **kwargs: Any) -> Build:
    def build(c: Ctx) -> Any:
        ps = params()
        return call(cls, ps, **kwargs)

    return build


for cls in (optim.SGD, optim.Adam, optim.AdamW):
    n = cls.__name__
    C(f"{n}/no-params", ValueError, n, _opt(cls, lambda: []))
    C(f"{n}/consumed-generator", ValueError, n, _opt(cls, lambda: iter([])))
    C(f"{n}/model", TypeError, n, _opt(cls, mlp))
    C(f"{n}/number", TypeError, n, _opt(cls, lambda: 5))
    C(f"{n}/none", TypeError, n, _opt(cls, lambda: None))
    C(f"{n}/single-tensor", TypeError, n, _opt(cls, _param))
    C(f"{n}/array", TypeError, n, _opt(cls, lambda: [np.zeros((2, 2))]))
    C(f"{n}/list-of-lists", TypeError, n, _opt(cls, lambda: [[1.0, 2.0]]))
    C(f"{n}/int64", DTypeError, n, _opt(cls, lambda: [I([[1, 2]])]))
    C(f"{n}/non-leaf", ValueError, n, _opt(cls, lambda: [nonleaf()]))
    C(f"{n}/duplicate", ValueError, n, _opt(cls, lambda: (lambda p: [p, p])(_param())))
    C(f"{n}/set", TypeError, n, _opt(cls, lambda: {_param()}))
    C(f"{n}/group-without-params", ValueError, n, _opt(cls, lambda: [{"lr": 0.1}]))
    C(f"{n}/group-empty-params", ValueError, n, _opt(cls, lambda: [{"params": []}]))
    C(f"{n}/group-overlap", ValueError, n, _opt(cls, lambda: (lambda p: [{"params": [p]}, {"params": [p]}])(_param())))
    C(f"{n}/group-set", TypeError, n, _opt(cls, lambda: [{"params": {_param()}}]))
    C(f"{n}/group-not-dict", TypeError, n, _opt(cls, lambda: [{"params": [_param()]}, [_param()]]))
    for label, value, expect in [
        ("negative", -0.1, ValueError),
        ("nan", NAN, ValueError),
        ("inf", INF, ValueError),
        ("string", "0.1", TypeError),
        ("none", None, TypeError),
        ("bool", True, TypeError),
        ("list", [0.1], TypeError),
    ]:
        C(f"{n}/lr-{label}", expect, n, _opt(cls, lambda: [_param()], lr=value))
    C(f"{n}/weight_decay-negative", ValueError, n, _opt(cls, lambda: [_param()], weight_decay=-1.0))
    C(f"{n}/weight_decay-string", TypeError, n, _opt(cls, lambda: [_param()], weight_decay="0"))
    C(f"{n}/group-lr-negative", ValueError, n, _opt(cls, lambda: [{"params": [_param()], "lr": -1.0}]))
C("SGD/momentum-negative", ValueError, "SGD", _opt(optim.SGD, lambda: [_param()], momentum=-0.5))
C("SGD/momentum-string", TypeError, "SGD", _opt(optim.SGD, lambda: [_param()], momentum="0.9"))
C("SGD/momentum-nan", ValueError, "SGD", _opt(optim.SGD, lambda: [_param()], momentum=NAN))
C("SGD/dampening-string", TypeError, "SGD", _opt(optim.SGD, lambda: [_param()], dampening="x"))
C("SGD/nesterov-no-momentum", ValueError, "SGD", _opt(optim.SGD, lambda: [_param()], nesterov=True))
C(
    "SGD/nesterov-dampening",
    ValueError,
    "SGD",
    _opt(optim.SGD, lambda: [_param()], momentum=0.9, nesterov=True, dampening=0.1),
)
for cls in (optim.Adam, optim.AdamW):
    n = cls.__name__
    for label, betas, expect in [
        ("one", (0.9,), ValueError),
        ("three", (0.9, 0.99, 0.999), ValueError),
        ("beta1-one", (1.0, 0.999), ValueError),
        ("beta2-negative", (0.9, -0.1), ValueError),
        ("beta-nan", (NAN, 0.999), ValueError),
        ("string", "ab", TypeError),
        ("number", 0.9, TypeError),
        ("string-item", ("a", 0.9), TypeError),
        ("none-item", (0.9, None), TypeError),
        ("set", {0.9, 0.99}, TypeError),
    ]:
        C(f"{n}/betas-{label}", expect, n, _opt(cls, lambda: [_param()], betas=betas))
    C(f"{n}/eps-negative", ValueError, n, _opt(cls, lambda: [_param()], eps=-1e-8))
    C(f"{n}/eps-string", TypeError, n, _opt(cls, lambda: [_param()], eps="1e-8"))


def _step_with_bad_second_grad(cls: Any, bad: Callable[[], mg.Tensor2D], **kwargs: Any) -> Build:
    def build(c: Ctx) -> Any:
        p1, p2 = nn.Parameter(T(2, 2, grad=False)), nn.Parameter(T(2, 3, grad=False, start=7))
        opt = cls([p1, p2], lr=0.1, **kwargs)
        p1.grad = T(2, 2, grad=False, start=2)
        p2.grad = T(2, 3, grad=False, start=2)
        opt.step()  # some state to keep
        p1.grad = T(2, 2, grad=False, start=3)
        p2.grad = bad()
        return call(opt.step, watch=(opt, p1, p2))

    return build


for cls, kw in [(optim.SGD, {"momentum": 0.9}), (optim.Adam, {}), (optim.AdamW, {"amsgrad": True})]:
    n = cls.__name__
    C(
        f"{n}.step/grad-shape",
        ShapeError,
        f"{n}.step",
        _step_with_bad_second_grad(cls, lambda: T(3, 2, grad=False), **kw),
        ((3, 2), (2, 3)),
    )
    C(
        f"{n}.step/grad-dtype",
        DTypeError,
        f"{n}.step",
        _step_with_bad_second_grad(cls, lambda: T(2, 3, grad=False, dtype="float64"), **kw),
    )
    C(
        f"{n}.step/grad-backend",
        BackendError,
        f"{n}.step",
        _step_with_bad_second_grad(cls, lambda: T(2, 3, grad=False, backend=other()), **kw),
    )
    C(
        f"{n}.step/grad-int64",
        DTypeError,
        f"{n}.step",
        _step_with_bad_second_grad(cls, lambda: I([[1, 2, 3], [4, 5, 6]]), **kw),
    )


def _opt_method(method: str, arg: Callable[[optim.Optimizer], Any]) -> Build:
    def build(c: Ctx) -> Any:
        opt, p = trained_sgd()
        return call(getattr(opt, method), arg(opt), watch=(opt, p))

    return build


def _groups_with(**changes: Any) -> Callable[[optim.Optimizer], Any]:
    def make(opt: optim.Optimizer) -> Any:
        sd = opt.state_dict()
        group = dict(sd["param_groups"][0])
        for k, v in changes.items():
            if v is None:
                group.pop(k, None)
            else:
                group[k] = v
        return {"state": sd["state"], "param_groups": [group]}

    return make


C("SGD.load_state_dict/empty", CheckpointError, "SGD.load_state_dict", _opt_method("load_state_dict", lambda o: {}))
C(
    "SGD.load_state_dict/not-dict",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: [1, 2]),
)
C(
    "SGD.load_state_dict/group-without-params",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", _groups_with(params=None)),
)
C(
    "SGD.load_state_dict/groups-number",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {}, "param_groups": 5}),
)
C(
    "SGD.load_state_dict/group-not-dict",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {}, "param_groups": [5]}),
)
C(
    "SGD.load_state_dict/two-groups",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {}, "param_groups": good_sgd_groups(o) * 2}),
)
C(
    "SGD.load_state_dict/param-index-string",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", _groups_with(params=["a"])),
)
C(
    "SGD.load_state_dict/param-count",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", _groups_with(params=[0, 1])),
)
C(
    "SGD.load_state_dict/state-number",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": 5, "param_groups": good_sgd_groups(o)}),
)
C(
    "SGD.load_state_dict/state-key-string",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {"x": {}}, "param_groups": good_sgd_groups(o)}),
)
C(
    "SGD.load_state_dict/state-unknown-param",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {7: {}}, "param_groups": good_sgd_groups(o)}),
)
C(
    "SGD.load_state_dict/state-entry-not-dict",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", lambda o: {"state": {0: 5}, "param_groups": good_sgd_groups(o)}),
)
C(
    "SGD.load_state_dict/buffer-shape",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method(
        "load_state_dict",
        lambda o: {"state": {0: {"momentum_buffer": np.ones((3, 3))}}, "param_groups": good_sgd_groups(o)},
    ),
    ((3, 3), (2, 2)),
)
C(
    "SGD.load_state_dict/buffer-strings",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method(
        "load_state_dict",
        lambda o: {
            "state": {0: {"momentum_buffer": np.array([["a", "b"], ["c", "d"]])}},
            "param_groups": good_sgd_groups(o),
        },
    ),
)
C("SGD.load_state_dict/lr-negative", ValueError, "SGD", _opt_method("load_state_dict", _groups_with(lr=-1.0)))
C("SGD.load_state_dict/lr-string", TypeError, "SGD", _opt_method("load_state_dict", _groups_with(lr="0.1")))
C(
    "SGD.load_state_dict/lr-missing",
    CheckpointError,
    "SGD.load_state_dict",
    _opt_method("load_state_dict", _groups_with(lr=None)),
)
C(
    "SGD.add_param_group/overlap",
    ValueError,
    "SGD",
    _opt_method("add_param_group", lambda o: {"params": o.param_groups[0]["params"]}),
)
C(
    "SGD.add_param_group/lr-negative",
    ValueError,
    "SGD",
    _opt_method("add_param_group", lambda o: {"params": [_param()], "lr": -1.0}),
)
C("SGD.add_param_group/number", TypeError, "SGD", _opt_method("add_param_group", lambda o: 5))
C("SGD.add_param_group/no-params", ValueError, "SGD", _opt_method("add_param_group", lambda o: {"lr": 0.1}))
for scls, first in [(StepLR, "step_size"), (CosineAnnealingLR, "T_max")]:
    n = scls.__name__
    C(f"{n}/{first}-zero", ValueError, n, lambda c, s=scls: (lambda o, p: call(s, o, 0, watch=(o, p)))(*trained_sgd()))
    C(
        f"{n}/{first}-string",
        TypeError,
        n,
        lambda c, s=scls: (lambda o, p: call(s, o, "2", watch=(o, p)))(*trained_sgd()),
    )
    C(
        f"{n}/second-string",
        TypeError,
        n,
        lambda c, s=scls: (lambda o, p: call(s, o, 2, "x", watch=(o, p)))(*trained_sgd()),
    )
    C(
        f"{n}/last_epoch-negative",
        ValueError,
        n,
        lambda c, s=scls: (lambda o, p: call(s, o, 2, last_epoch=-5, watch=(o, p)))(*trained_sgd()),
    )
    C(
        f"{n}/resume-without-initial-lr",
        ValueError,
        n,
        lambda c, s=scls: (lambda o, p: call(s, o, 2, last_epoch=3, watch=(o, p)))(*trained_sgd()),
    )
    C(f"{n}/model", TypeError, n, lambda c, s=scls: call(s, mlp(), 2))

# -- cross_entropy and friends: labels ---------------------------------------------------------------


def _ce(
    targets: Callable[[], Any], fn: Callable[..., Any] = F.cross_entropy, logits: Callable[[], Any] | None = None
) -> Build:
    def build(c: Ctx) -> Any:
        x = T(4, 3) if logits is None else logits()
        return call(fn, x, targets())

    return build


for fname, fn in [
    ("cross_entropy", F.cross_entropy),
    ("nll_loss", F.nll_loss),
    ("CrossEntropyLoss", nn.CrossEntropyLoss()),
]:
    name = "cross_entropy" if fname == "CrossEntropyLoss" else fname
    for label, targets, expect, extra in [
        ("out-of-range", lambda: [0, 1, 2, 3], ValueError, ("3",)),
        ("far-out-of-range", lambda: [0, 1, 2, 1000], ValueError, ("1000",)),
        ("negative", lambda: [0, 1, -1, 2], ValueError, ("-1",)),
        ("too-short", lambda: [0, 1, 2], ValueError, ()),
        ("too-long", lambda: [0, 1, 2, 0, 1], ValueError, ()),
        ("empty", lambda: [], ValueError, ()),
        ("floats", lambda: [0.0, 1.0, 2.0, 0.0], (TypeError, ValueError), ()),
        ("strings", lambda: ["a", "b", "c", "d"], TypeError, ()),
        ("digit-string", lambda: "0120", TypeError, ()),
        ("none", lambda: None, TypeError, ()),
        ("number", lambda: 2, TypeError, ()),
        ("bools", lambda: [True, False, True, False], (TypeError, ValueError), ()),
        ("nested-lists", lambda: [[0], [1], [2], [0]], (TypeError, ValueError), ()),
        ("huge-int", lambda: [2**70, 0, 0, 0], ValueError, ()),
        ("array-out-of-range", lambda: np.array([0, 1, 2, 3]), ValueError, ("3",)),
        ("array-float", lambda: np.array([0.0, 1.0, 2.0, 0.0]), (TypeError, ValueError), ()),
        ("array-2x2", lambda: np.array([[0, 1], [2, 0]]), ValueError, ()),
        ("array-4x2", lambda: np.zeros((4, 2), dtype=np.int64), ValueError, ()),
        ("tensor-out-of-range", lambda: I([[0], [1], [2], [3]]), ValueError, ("3",)),
        ("tensor-negative", lambda: I([[0], [-1], [2], [1]]), ValueError, ("-1",)),
        ("tensor-length", lambda: I([[0], [1], [2]]), ShapeError, ()),
        ("tensor-4x2", lambda: I([[0, 1]] * 4), ShapeError, ()),
        ("tensor-2x2", lambda: I([[0, 1], [1, 0]]), ShapeError, ()),
        ("tensor-float", lambda: T(4, 1, grad=False), (TypeError, ValueError), ()),
        ("tensor-backend", lambda: I([[0], [1], [2], [0]], backend=other()), BackendError, ()),
    ]:
        shapes: tuple[tuple[int, int], ...] = ()
        if label in ("tensor-length", "tensor-4x2", "tensor-2x2"):
            shapes = ((4, 3), (3, 1) if label == "tensor-length" else (4, 2) if label == "tensor-4x2" else (2, 2))
        logits = (lambda: T(4, 3).log_softmax()) if fname == "nll_loss" else None
        C(f"{fname}/labels-{label}", expect, name, _ce(targets, fn, logits), shapes=shapes, extra=extra)
C("cross_entropy/probs-shape", ValueError, "cross_entropy", _ce(lambda: T(4, 2, grad=False)), ((4, 2), (4, 3)))
C("cross_entropy/probs-dtype", DTypeError, "cross_entropy", _ce(lambda: T(4, 3, grad=False, dtype="float64")))
C("cross_entropy/probs-backend", BackendError, "cross_entropy", _ce(lambda: T(4, 3, grad=False, backend=other())))
C("cross_entropy/logits-array", TypeError, "cross_entropy", _ce(lambda: [0, 1, 2, 0], logits=lambda: np.zeros((4, 3))))
for label, args, expect in [
    ("out-of-range", ([0, 3], 3), ValueError),
    ("negative", ([-1], 3), ValueError),
    ("zero-classes", ([0, 1], 0), ValueError),
    ("classes-string", ([0, 1], "3"), TypeError),
    ("classes-float", ([0, 1], 3.0), TypeError),
    ("targets-number", (5, 3), TypeError),
    ("targets-none", (None, 3), TypeError),
    ("targets-empty", ([], 3), ValueError),
    ("targets-strings", (["a"], 3), TypeError),
    ("targets-floats", ([0.5], 3), (TypeError, ValueError)),
]:
    C(f"one_hot/{label}", expect, "one_hot", lambda c, a=args: call(F.one_hot, *a))
C("one_hot/dtype", DTypeError, "int8", lambda c: call(F.one_hot, [0], 3, dtype="int8"))

# -- metrics -------------------------------------------------------------------------------------------
C("accuracy/lengths", ValueError, "accuracy", lambda c: call(accuracy, [1, 2], [1]))
C("accuracy/empty", ValueError, "accuracy", lambda c: call(accuracy, [], []))
C("accuracy/strings", TypeError, "accuracy", lambda c: call(accuracy, ["a"], [1]))
C("accuracy/none", TypeError, "accuracy", lambda c: call(accuracy, None, [1]))
C("accuracy/floats", (TypeError, ValueError), "accuracy", lambda c: call(accuracy, [0.5, 1.5], [0, 1]))
C("accuracy/float-tensor", (TypeError, ValueError), "accuracy", lambda c: call(accuracy, T(2, 1, grad=False), [0, 1]))
C("confusion_matrix/label-too-big", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, [0, 1], [0, 10]))
C("confusion_matrix/label-negative", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, [0, 1], [0, -1]))
C("confusion_matrix/pred-too-big", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, [0, 12], [0, 1]))
C("confusion_matrix/lengths", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, [0, 1], [0]))
C("confusion_matrix/classes-zero", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, [0], [0], 0))
C("confusion_matrix/classes-string", TypeError, "confusion_matrix", lambda c: call(confusion_matrix, [0], [0], "10"))
C("predict/array", TypeError, "predict", lambda c: (lambda m: call(predict, m, np.zeros((2, 3)), watch=(m,)))(mlp()))
C(
    "predict/batch-zero",
    ValueError,
    "predict",
    lambda c: (lambda m: call(predict, m, T(2, 3, grad=False), 0, watch=(m,)))(mlp()),
)
C(
    "predict/batch-negative",
    ValueError,
    "predict",
    lambda c: (lambda m: call(predict, m, T(2, 3, grad=False), -1, watch=(m,)))(mlp()),
)
C(
    "predict/batch-float",
    TypeError,
    "predict",
    lambda c: (lambda m: call(predict, m, T(2, 3, grad=False), 1.5, watch=(m,)))(mlp()),
)
C(
    "predict/width",
    ShapeError,
    "linear",
    lambda c: (lambda m: call(predict, m, T(2, 5, grad=False), watch=(m,)))(mlp()),
    ((2, 5), (4, 3)),
)
C("predict/not-a-model", TypeError, "predict", lambda c: call(predict, 5, T(2, 3, grad=False)))

# -- gradcheck ------------------------------------------------------------------------------------------
C(
    "gradcheck/eps-zero",
    ValueError,
    "gradcheck",
    lambda c: call(mg.gradcheck, mg.exp, [T(1, 2, dtype="float64")], eps=0.0),
)
C(
    "gradcheck/eps-string",
    TypeError,
    "gradcheck",
    lambda c: call(mg.gradcheck, mg.exp, [T(1, 2, dtype="float64")], eps="a"),
)
C("gradcheck/fn-string", TypeError, "gradcheck", lambda c: call(mg.gradcheck, "exp", [T(1, 2, dtype="float64")]))
C(
    "gradcheck/fn-returns-float",
    TypeError,
    "gradcheck",
    lambda c: call(mg.gradcheck, lambda x: 1.0, [T(1, 2, dtype="float64")]),
)
C("gradcheck/no-grad-inputs", GradcheckError, "gradcheck", lambda c: call(mg.gradcheck, mg.exp, [T(1, 2, grad=False)]))
C("gradcheck/inputs-number", (GradcheckError, TypeError), "gradcheck", lambda c: call(mg.gradcheck, mg.exp, 5))
C(
    "gradgradcheck/eps-zero",
    ValueError,
    "gradcheck",
    lambda c: call(mg.gradgradcheck, mg.exp, [T(1, 2, dtype="float64")], eps=0.0),
)

# -- data ------------------------------------------------------------------------------------------------


def _loader(x: Callable[[], Any], y: Callable[[], Any], *args: Any, **kwargs: Any) -> Build:
    return lambda c: call(DataLoader, x(), y(), *args, **kwargs)


C(
    "DataLoader/lengths",
    ShapeError,
    "DataLoader",
    _loader(lambda: T(10, 3, grad=False), lambda: I([[0]] * 9), 4),
    ((10, 3), (9, 1)),
)
C("DataLoader/batch-zero", ValueError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, 0))
C("DataLoader/batch-negative", ValueError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, -1))
C("DataLoader/batch-float", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, 2.5))
C("DataLoader/batch-string", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, "4"))
C("DataLoader/batch-none", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, None))
C("DataLoader/batch-bool", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, True))
C("DataLoader/x-array", TypeError, "DataLoader", _loader(lambda: np.zeros((10, 3)), lambda: None, 4))
C("DataLoader/x-list", TypeError, "DataLoader", _loader(lambda: [[1.0]] * 10, lambda: None, 4))
C("DataLoader/y-list", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: list(range(10)), 4))
C("DataLoader/seed-string", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, 4, seed="a"))
C("DataLoader/seed-float", TypeError, "DataLoader", _loader(lambda: T(10, 3), lambda: None, 4, seed=1.5))
C("load_mnist/missing-dir", DataError, "MNIST", lambda c: call(load_mnist, c.tmp / "nope"), extra=("nope",))
C(
    "load_mnist/file-not-dir",
    DataError,
    "MNIST",
    lambda c: call(load_mnist, file_with(c, "f.txt", b"hello")),
    extra=("f.txt",),
)
C(
    "load_mnist/empty-files",
    DataError,
    "train-images",
    lambda c: ([file_with(c, n, b"") for n in mg.data.mnist.NAMES], call(load_mnist, c.tmp))[1],
)
C(
    "load_mnist/text-files",
    DataError,
    "train-images",
    lambda c: ([file_with(c, n, b"not an idx file\n" * 4) for n in mg.data.mnist.NAMES], call(load_mnist, c.tmp))[1],
)
C("load_mnist/root-number", TypeError, "load_mnist", lambda c: call(load_mnist, 5))
C("load_mnist/root-list", TypeError, "load_mnist", lambda c: call(load_mnist, ["a"]))
C("load_mnist/sample-dtype", DTypeError, "load_mnist", lambda c: call(load_mnist, sample=True, dtype="int64"))
C("load_mnist/sample-dtype-unknown", DTypeError, "float16", lambda c: call(load_mnist, sample=True, dtype="float16"))
C("load_mnist/sample-backend", BackendError, "gpu", lambda c: call(load_mnist, sample=True, backend="gpu"))
C("load_mnist/sample-and-root", ValueError, "load_mnist", lambda c: call(load_mnist, c.tmp, sample=True))
C("load_mnist/timeout-string", TypeError, "timeout", lambda c: call(load_mnist, c.tmp, download=True, timeout="5"))
C("load_mnist/timeout-negative", ValueError, "timeout", lambda c: call(load_mnist, c.tmp, download=True, timeout=-1))
C("load_mnist/timeout-nan", ValueError, "timeout", lambda c: call(load_mnist, c.tmp, download=True, timeout=NAN))
C(
    "load_mnist/mirrors-string",
    ValueError,
    "mirrors",
    lambda c: call(load_mnist, c.tmp, download=True, mirrors="https://x/"),
)
C(
    "load_mnist/mirrors-number",
    (TypeError, ValueError),
    "mirror",
    lambda c: call(load_mnist, c.tmp, download=True, mirrors=[5]),
)
C("load_mnist/mirrors-not-list", TypeError, "mirrors", lambda c: call(load_mnist, c.tmp, download=True, mirrors=5))

# -- checkpoints --------------------------------------------------------------------------------------


def _ckpt(ctx: Ctx) -> Path:
    path = ctx.tmp / "w.safetensors"
    mg.save({"w": T(2, 2, grad=False)}, path)
    return path


C(
    "load/missing-file",
    (CheckpointError, FileNotFoundError),
    "missing.safetensors",
    lambda c: call(mg.load, c.tmp / "missing.safetensors"),
)
C("load/directory", (CheckpointError, IsADirectoryError), "adir", lambda c: call(mg.load, subdir(c, "adir")))
C(
    "load/text-file",
    CheckpointError,
    "notes.txt",
    lambda c: call(mg.load, file_with(c, "notes.txt", b"hello, this is not a checkpoint\n")),
)
C(
    "load/empty-file",
    CheckpointError,
    "empty.safetensors",
    lambda c: call(mg.load, file_with(c, "empty.safetensors", b"")),
)
C(
    "load/zip-file",
    CheckpointError,
    "model.pt",
    lambda c: call(mg.load, file_with(c, "model.pt", b"PK\x03\x04" + bytes(60))),
)
C(
    "load/pickle-file",
    CheckpointError,
    "model.pkl",
    lambda c: call(mg.load, file_with(c, "model.pkl", b"\x80\x04\x95" + bytes(40))),
)
C(
    "load/idx-file",
    CheckpointError,
    "labels",
    lambda c: call(mg.load, SAMPLE_LABELS / next(p.name for p in SAMPLE_LABELS.iterdir() if "labels" in p.name)),
)
C(
    "load/json-file",
    CheckpointError,
    "h.json",
    lambda c: call(mg.load, file_with(c, "h.json", b'{"w": {"dtype": "F32"}}')),
)
C(
    "load/truncated",
    CheckpointError,
    "w.safetensors",
    lambda c: (lambda p: (p.write_bytes(p.read_bytes()[:-3]), call(mg.load, p))[1])(_ckpt(c)),
)
C("load/path-number", TypeError, "load", lambda c: call(mg.load, 5))
C("load/path-none", TypeError, "load", lambda c: call(mg.load, None))
C("load/dtype-int64", DTypeError, "load", lambda c: call(mg.load, _ckpt(c), dtype="int64"))
C("load/backend", BackendError, "gpu", lambda c: call(mg.load, _ckpt(c), backend="gpu"))
C(
    "load_metadata/text-file",
    CheckpointError,
    "notes.txt",
    lambda c: call(mg.io.load_metadata, file_with(c, "notes.txt", b"hello")),
)
C(
    "save/missing-folder",
    (CheckpointError, FileNotFoundError),
    "nodir",
    lambda c: call(mg.save, {"w": T(2, 2)}, c.tmp / "nodir" / "m.safetensors", watch=(c.tmp,)),
)
C(
    "save/array-value",
    TypeError,
    "save",
    lambda c: call(mg.save, {"w": np.zeros((2, 2))}, c.tmp / "m.safetensors", watch=(c.tmp,)),
)
C("save/number", TypeError, "save", lambda c: call(mg.save, 5, c.tmp / "m.safetensors", watch=(c.tmp,)))
C("save/list", TypeError, "save", lambda c: call(mg.save, [T(2, 2)], c.tmp / "m.safetensors", watch=(c.tmp,)))
C(
    "save/metadata-number",
    TypeError,
    "save",
    lambda c: call(mg.save, {"w": T(2, 2)}, c.tmp / "m.safetensors", metadata={"k": 1}, watch=(c.tmp,)),
)
C(
    "save/metadata-list",
    TypeError,
    "save",
    lambda c: call(mg.save, {"w": T(2, 2)}, c.tmp / "m.safetensors", metadata=["k"], watch=(c.tmp,)),
)
C(
    "save/empty-name",
    ValueError,
    "save",
    lambda c: call(mg.save, {"": T(2, 2)}, c.tmp / "m.safetensors", watch=(c.tmp,)),
)
C("save/number-name", TypeError, "save", lambda c: call(mg.save, {1: T(2, 2)}, c.tmp / "m.safetensors", watch=(c.tmp,)))
C(
    "save/reserved-name",
    ValueError,
    "save",
    lambda c: call(mg.save, {"__metadata__": T(2, 2)}, c.tmp / "m.safetensors", watch=(c.tmp,)),
)
C("save/path-number", TypeError, "save", lambda c: call(mg.save, {"w": T(2, 2)}, 5))
C(
    "save/over-existing-bad-value",
    TypeError,
    "save",
    lambda c: (lambda p: call(mg.save, {"w": T(2, 2), "v": "x"}, p, watch=(p,)))(_ckpt(c)),
)

# -- viz --------------------------------------------------------------------------------------------------


def _viz(fn_name: str, root: Callable[[], Any], *args: Any, **kwargs: Any) -> Build:
    def build(c: Ctx) -> Any:
        from matgrad import viz

        return call(getattr(viz, fn_name), root(), *args, **kwargs)

    return build


def _loss() -> mg.Tensor2D:
    x = T(2, 3)
    return (x * 2.0).sum()


def _digraph() -> Any:
    from matgrad.viz import draw_graph

    return draw_graph(_loss())


def _loss_after_backward() -> mg.Tensor2D:
    y = _loss()
    y.backward()
    return y


C("draw_graph/number", TypeError, "draw_graph", _viz("draw_graph", lambda: 5))
C("draw_graph/array", TypeError, "draw_graph", _viz("draw_graph", lambda: np.zeros((2, 2))))
C("draw_graph/empty-list", TypeError, "draw_graph", _viz("draw_graph", lambda: []))
C("draw_graph/list-with-number", TypeError, "draw_graph", _viz("draw_graph", lambda: [_loss(), 5]))
C("draw_graph/module", TypeError, "draw_graph", _viz("draw_graph", mlp))
C("draw_graph/rankdir-unknown", ValueError, "draw_graph", _viz("draw_graph", _loss, rankdir="XY"))
C("draw_graph/rankdir-lower", ValueError, "draw_graph", _viz("draw_graph", _loss, rankdir="lr"))
C("draw_graph/rankdir-number", (TypeError, ValueError), "draw_graph", _viz("draw_graph", _loss, rankdir=5))
C("draw_graph/rankdir-list", (TypeError, ValueError), "draw_graph", _viz("draw_graph", _loss, rankdir=["LR"]))
C("draw_graph/max_nodes-zero", ValueError, "draw_graph", _viz("draw_graph", _loss, max_nodes=0))
C("draw_graph/max_nodes-negative", ValueError, "draw_graph", _viz("draw_graph", _loss, max_nodes=-5))
C("draw_graph/max_nodes-string", TypeError, "draw_graph", _viz("draw_graph", _loss, max_nodes="10"))
C("draw_graph/max_nodes-float", (TypeError, ValueError), "draw_graph", _viz("draw_graph", _loss, max_nodes=2.5))
C("draw_graph/params-number", TypeError, "draw_graph", _viz("draw_graph", _loss, params=5))
C("draw_graph/params-list", TypeError, "draw_graph", _viz("draw_graph", _loss, params=[1, 2]))
C(
    "draw_graph/backward-constant",
    GraphError,
    "draw_graph",
    _viz("draw_graph", lambda: T(2, 2, grad=False) * 2.0, backward=True),
)
C("draw_graph/backward-released", GraphError, "draw_graph", _viz("draw_graph", _loss_after_backward, backward=True))
C("text_graph/number", TypeError, "text_graph", _viz("text_graph", lambda: 5))
C("text_graph/max_lines-zero", ValueError, "text_graph", _viz("text_graph", _loss, max_lines=0))
C("text_graph/max_lines-string", TypeError, "text_graph", _viz("text_graph", _loss, max_lines="3"))
C("text_graph/params-number", TypeError, "text_graph", _viz("text_graph", _loss, params=5))
C("render_graph/suffix", ValueError, "render_graph", lambda c: _viz("render_graph", _loss, c.tmp / "g.xyz")(c))
C("render_graph/no-suffix", ValueError, "render_graph", lambda c: _viz("render_graph", _loss, c.tmp / "graph")(c))
C(
    "render_graph/missing-folder",
    (MatgradError, FileNotFoundError),
    "nodir",
    lambda c: _viz("render_graph", _loss, c.tmp / "nodir" / "g.dot")(c),
)
C("render_graph/root-number", TypeError, "draw_graph", lambda c: _viz("render_graph", lambda: 5, c.tmp / "g.dot")(c))
C("render_graph/path-number", TypeError, "render_graph", _viz("render_graph", _loss, 5))
C("render_graph/path-none", TypeError, "render_graph", _viz("render_graph", _loss, None))
C(
    "render_graph/digraph-options",
    TypeError,
    "render_graph",
    lambda c: _viz("render_graph", _digraph, c.tmp / "g.dot", rankdir="TB")(c),
)


def _model_graph(
    x: Callable[[], Any], y: Callable[[], Any], model: Callable[[], Any] = mlp_with_grads, **kwargs: Any
) -> Build:
    def build(c: Ctx) -> Any:
        from matgrad.viz import draw_model_graph

        m = model()
        return call(draw_model_graph, m, x(), y(), **kwargs)

    return build


C("draw_model_graph/x-array", TypeError, "draw_model_graph", _model_graph(lambda: np.zeros((2, 3)), lambda: [0, 1]))
C(
    "draw_model_graph/x-width",
    ShapeError,
    "linear",
    _model_graph(lambda: T(2, 5, grad=False), lambda: [0, 1]),
    ((2, 5), (4, 3)),
)
C("draw_model_graph/labels", ValueError, "cross_entropy", _model_graph(lambda: T(2, 3, grad=False), lambda: [0, 7]))
C("draw_model_graph/labels-length", ValueError, "cross_entropy", _model_graph(lambda: T(2, 3, grad=False), lambda: [0]))
C(
    "draw_model_graph/rankdir",
    ValueError,
    "draw_graph",
    _model_graph(lambda: T(2, 3, grad=False), lambda: [0, 1], rankdir="XY"),
)
C(
    "draw_model_graph/model-number",
    TypeError,
    "draw_model_graph",
    _model_graph(lambda: T(2, 3, grad=False), lambda: [0, 1], model=lambda: 5),
)


# Sizes past any address space (10**20 elements): refused at once, before any allocation. Run in a
# child process whose address space is capped, so a factory that does try to allocate fails
# there with MemoryError instead of taking this machine's memory.
ABSURD = 10**10
ABSURD_CASES = [
    *(
        Case(f"{f}/absurd-size", ValueError, f, lambda c, f=f: call(getattr(mg, f), ABSURD, ABSURD))
        for f in ("zeros", "ones", "rand", "randn", "eye", "full", "uniform")
    ),
    Case("expand/absurd-size", ValueError, "expand", lambda c: call(mg.ops.expand, T(1, 1), ABSURD, ABSURD)),
    Case("one_hot/absurd-classes", ValueError, "one_hot", lambda c: call(F.one_hot, [0], ABSURD**2)),
    Case("Linear/absurd-size", ValueError, "Linear", lambda c: call(nn.Linear, ABSURD, ABSURD)),
]
_ABSURD_RESULTS: dict[str, dict[str, list[str]]] = {}
_ABSURD_CHILD = """
import json, os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2**28, 2**28))
sys.path.insert(0, sys.argv[1])
import matgrad as mg
import test_bad_inputs as t
mg.set_backend(sys.argv[2])
results = {}
for case in t.ABSURD_CASES:
    try:
        results[case.id] = t.run_case(case, t.Ctx(Path(sys.argv[3])))
    except MemoryError:
        results[case.id] = ["MemoryError while building or checking the case"]
print("RESULTS" + json.dumps(results))
"""


def absurd_results(backend: str, tmp: Path) -> dict[str, list[str]]:
    if backend not in _ABSURD_RESULTS:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", _ABSURD_CHILD, os.path.dirname(HERE), backend, str(tmp)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise AssertionError(f"the capped child process died (status {proc.returncode}): {tail}")
        _ABSURD_RESULTS[backend] = json.loads(line[len("RESULTS") :])
    return _ABSURD_RESULTS[backend]


@pytest.mark.parametrize("case", ABSURD_CASES, ids=[c.id for c in ABSURD_CASES])
def test_absurd_sizes_are_refused_before_allocating(backend: str, case: Case, tmp_path: Path) -> None:
    COUNTS["hand-picked"] += 1
    problems = absurd_results(backend, tmp_path)[case.id]
    if problems:
        pytest.fail(
            f"[{case.id}] (in a child process capped at 256 MiB)\n  - " + "\n  - ".join(problems), pytrace=False
        )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(backend: str, case: Case, tmp_path: Path) -> None:
    check(case, Ctx(tmp_path))


def test_case_ids_are_unique() -> None:
    ids = Counter(c.id for c in CASES)
    assert [i for i, n in ids.items() if n > 1] == []


# ---------------------------------------------------------------------------------------------
# the command line: one line on stderr, a non-zero exit, never a traceback
# ---------------------------------------------------------------------------------------------


class CliCase(NamedTuple):
    id: str
    argv: Callable[[Ctx], list[str]]
    name: str  # the stderr line must contain it
    before_training: bool = False  # the error must come before any epoch runs


def _files(ctx: Ctx, content: bytes) -> str:
    folder = ctx.tmp / "mnist"
    folder.mkdir()
    for n in mg.data.mnist.NAMES:
        (folder / n).write_bytes(content)
    return str(folder)


def _foreign_ckpt(ctx: Ctx) -> str:
    path = ctx.tmp / "foo.safetensors"
    mg.save({"foo": T(2, 2, grad=False)}, path)
    return str(path)


def _truncated_ckpt(ctx: Ctx) -> str:
    path = saved_mlp(ctx, [784, 16, 10])
    path.write_bytes(path.read_bytes()[:-100])
    return str(path)


QUICK = ["--limit", "32", "--epochs", "1", "--batch-size", "16", "--quiet"]
CLI_CASES = [
    CliCase("unknown-command", lambda c: ["frobnicate"], "frobnicate"),
    CliCase("unknown-option", lambda c: ["train", "--bogus"], "--bogus"),
    CliCase("epochs-zero", lambda c: ["train", "--epochs", "0"], "--epochs"),
    CliCase("epochs-text", lambda c: ["train", "--epochs", "x"], "--epochs"),
    CliCase("epochs-float", lambda c: ["train", "--epochs", "1.5"], "--epochs"),
    CliCase("lr-negative", lambda c: ["train", "--lr", "-1"], "--lr"),
    CliCase("lr-nan", lambda c: ["train", "--lr", "nan"], "--lr"),
    CliCase("lr-inf", lambda c: ["train", "--lr", "inf"], "--lr"),
    CliCase("lr-text", lambda c: ["train", "--lr", "fast"], "--lr"),
    CliCase("momentum-negative", lambda c: ["train", "--momentum", "-0.5"], "--momentum"),
    CliCase("batch-size-zero", lambda c: ["train", "--batch-size", "0"], "--batch-size"),
    CliCase("hidden-text", lambda c: ["train", "--hidden", "a,b"], "--hidden"),
    CliCase("hidden-zero", lambda c: ["train", "--hidden", "0"], "--hidden"),
    CliCase("limit-zero", lambda c: ["train", "--limit", "0"], "--limit"),
    CliCase("seed-text", lambda c: ["train", "--seed", "x"], "--seed"),
    CliCase("seed-negative", lambda c: ["train", "--seed", "-1", *QUICK], "seed", before_training=True),
    CliCase("backend-unknown", lambda c: ["train", "--backend", "gpu"], "--backend"),
    CliCase("optimizer-unknown", lambda c: ["train", "--optimizer", "lbfgs"], "--optimizer"),
    CliCase("data-missing", lambda c: ["train", "--data", str(c.tmp / "nope"), *QUICK], "nope", before_training=True),
    CliCase("data-empty-files", lambda c: ["train", "--data", _files(c, b""), *QUICK], "mnist", before_training=True),
    CliCase(
        "data-text-files",
        lambda c: ["train", "--data", _files(c, b"hello\n" * 10), *QUICK],
        "mnist",
        before_training=True,
    ),
    CliCase(
        "save-folder-missing",
        lambda c: ["train", "--save", str(c.tmp / "nodir" / "m.safetensors"), *QUICK],
        "--save",
        before_training=True,
    ),
    CliCase(
        "graph-folder-missing",
        lambda c: ["train", "--graph", str(c.tmp / "nodir" / "g.svg"), *QUICK],
        "--graph",
        before_training=True,
    ),
    CliCase(
        "graph-suffix", lambda c: ["train", "--graph", str(c.tmp / "g.xyz"), *QUICK], "g.xyz", before_training=True
    ),
    CliCase("eval-no-model", lambda c: ["eval"], "--model"),
    CliCase(
        "eval-missing-file", lambda c: ["eval", "--model", str(c.tmp / "missing.safetensors")], "missing.safetensors"
    ),
    CliCase("eval-directory", lambda c: ["eval", "--model", str(subdir(c, "adir"))], "adir"),
    CliCase("eval-text-file", lambda c: ["eval", "--model", str(file_with(c, "notes.txt", b"hello\n"))], "notes.txt"),
    CliCase("eval-empty-file", lambda c: ["eval", "--model", str(file_with(c, "e.safetensors", b""))], "e.safetensors"),
    CliCase(
        "eval-zip-file", lambda c: ["eval", "--model", str(file_with(c, "m.pt", b"PK\x03\x04" + bytes(60)))], "m.pt"
    ),
    CliCase("eval-truncated", lambda c: ["eval", "--model", _truncated_ckpt(c)], "m.safetensors"),
    CliCase("eval-not-an-mlp", lambda c: ["eval", "--model", _foreign_ckpt(c)], "foo.safetensors"),
    CliCase(
        "eval-sizes-metadata-text",
        lambda c: ["eval", "--model", str(saved_mlp(c, [784, 16, 10], {"sizes": "a,b"}))],
        "sizes",
    ),
    CliCase(
        "eval-sizes-metadata-zero",
        lambda c: ["eval", "--model", str(saved_mlp(c, [784, 16, 10], {"sizes": "784,0,10"}))],
        "sizes",
    ),
    CliCase(
        "eval-sizes-metadata-wrong",
        lambda c: ["eval", "--model", str(saved_mlp(c, [784, 16, 10], {"sizes": "784,32,10"}))],
        "0.weight",
    ),
    CliCase("eval-wrong-width", lambda c: ["eval", "--model", str(saved_mlp(c, [5, 4, 10]))], "784"),
    CliCase(
        "eval-missing-data",
        lambda c: ["eval", "--model", str(saved_mlp(c, [784, 16, 10])), "--data", str(c.tmp / "nope")],
        "nope",
    ),
    CliCase("eval-backend-unknown", lambda c: ["eval", "--model", "x", "--backend", "gpu"], "--backend"),
    CliCase("eval-idx-file", lambda c: ["eval", "--model", str(next(SAMPLE_LABELS.glob("*labels*")))], "labels"),
    CliCase("graph-folder-missing-o", lambda c: ["graph", "-o", str(c.tmp / "nodir" / "x.svg")], "nodir"),
    CliCase("graph-suffix-o", lambda c: ["graph", "-o", str(c.tmp / "x.txt")], "x.txt"),
    CliCase("graph-batch-zero", lambda c: ["graph", "--batch-size", "0"], "--batch-size"),
    CliCase("graph-hidden-negative", lambda c: ["graph", "--hidden", "-3"], "--hidden"),
    CliCase("info-extra-argument", lambda c: ["info", "--verbose"], "--verbose"),
]


def run_cli(argv: list[str]) -> tuple[int | None, str, str, str]:
    """``matgrad.cli.main(argv)`` in-process: (exit status, stdout, stderr, uncaught exception)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | None
    uncaught = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # an uncaught exception is a traceback for the user
            code = None
            uncaught = "".join(traceback.format_exception(exc))
    return code, out.getvalue(), err.getvalue(), uncaught


def cli_problems(
    code: int | None, stdout: str, stderr: str, uncaught: str, name: str, before_training: bool
) -> list[str]:
    problems = []
    if uncaught:
        problems.append("uncaught exception (a traceback for the user): " + uncaught.strip().splitlines()[-1])
    elif code in (0, None):
        problems.append(f"exit status {code!r}, expected non-zero")
    lines = stderr.strip("\n").splitlines()
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, expected exactly one")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    if name not in stderr.replace("\\", "/"):
        problems.append(f"stderr does not mention {name!r}")
    for pattern in RAW_MESSAGES[:-1]:
        if re.search(pattern, stderr):
            problems.append(f"raw NumPy/CPython message on stderr (matches {pattern!r})")
            break
    if before_training and re.search(r"^epoch\s+\d", stdout, re.M):
        problems.append("the error came only after training had run (check options before the first epoch)")
    if problems:
        problems.append(f"stderr: {stderr.strip()[:300]!r}")
    return problems


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(backend: str, case: CliCase, tmp_path: Path) -> None:
    COUNTS["hand-picked"] += 1
    ctx = Ctx(tmp_path)
    argv = case.argv(ctx)
    saved = global_state()
    try:
        code, stdout, stderr, uncaught = run_cli(argv)
    finally:
        restore_global_state(saved)
    problems = cli_problems(code, stdout, stderr, uncaught, case.name, case.before_training)
    if problems:
        pytest.fail(f"[cli {case.id}] matgrad {' '.join(argv)}\n  - " + "\n  - ".join(problems), pytrace=False)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["train", "--epochs", "0"], "--epochs"),
        (["eval", "--model", "NOTES"], "notes.txt"),
        (["eval", "--model", "MISSING"], "missing.safetensors"),
    ],
)
def test_cli_in_a_real_process(tmp_path: Path, argv: list[str], name: str) -> None:
    """The same through ``python -m matgrad.cli``: what a user's shell sees."""
    COUNTS["hand-picked"] += 1
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    argv = [
        str(notes) if a == "NOTES" else str(tmp_path / "missing.safetensors") if a == "MISSING" else a for a in argv
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "matgrad.cli", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    problems = cli_problems(proc.returncode, proc.stdout, proc.stderr, "", name, False)
    if problems:
        pytest.fail(f"[python -m matgrad.cli {' '.join(argv)}]\n  - " + "\n  - ".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------
# hypothesis: bad inputs drawn at random
# ---------------------------------------------------------------------------------------------

sizes = st.integers(1, 5)
shapes = st.tuples(sizes, sizes)


def broadcasts(sa: tuple[int, int], sb: tuple[int, int]) -> bool:
    """matgrad's rule: equal shapes, or one operand (1,n), (m,1) or (1,1) of the other's (m,n)."""
    if sa == sb:
        return True
    out = (max(sa[0], sb[0]), max(sa[1], sb[1]))
    if sa != out and sb != out:
        return False
    small = sb if sa == out else sa
    return all(s in (1, o) for s, o in zip(small, out))


def hyp(case: Case, ctx: Ctx) -> None:
    """One hypothesis example; a failure names the drawn arguments (the caller's parameters)."""
    caller = sys._getframe(1)
    code = caller.f_code
    names = [*code.co_varnames[: code.co_argcount], "opname", "reverse"]
    drawn = {k: caller.f_locals[k] for k in names if k in caller.f_locals and k not in ("backend", "tmp_path", "data")}
    example = ", ".join(f"{k}={v!r}" for k, v in drawn.items())
    check(case._replace(id=f"hypothesis: {case.id} [{example}]"), ctx, "hypothesis")


@given(data=st.data(), sa=shapes, sb=shapes)
def test_hyp_binary_shape_mismatch(backend: str, tmp_path: Path, data: st.DataObject, sa: Any, sb: Any) -> None:
    assume(not broadcasts(sa, sb))
    opname = data.draw(st.sampled_from([*BINARY, "add_"]), label="op")
    if opname == "add_":
        case = Case(
            "add_",
            ShapeError,
            "add_",
            lambda c: call(nograd(lambda: T(*sa, grad=False).add_(T(*sb, grad=False)))),
            (sa, sb),
        )
    else:
        fn = BINARY[opname]
        reverse = data.draw(st.booleans(), label="reverse")
        a, b = (sb, sa) if reverse else (sa, sb)
        case = Case(opname, ShapeError, opname, lambda c: call(fn, T(*a), T(*b)), (a, b))
    hyp(case, Ctx(tmp_path))


@given(sa=shapes, sb=shapes, which=st.sampled_from(["matmul", "linear"]))
def test_hyp_matmul_inner_mismatch(backend: str, tmp_path: Path, sa: Any, sb: Any, which: str) -> None:
    assume(sa[1] != sb[0] if which == "matmul" else sa[1] != sb[1])
    fn = operator.matmul if which == "matmul" else F.linear
    hyp(Case(which, ShapeError, which, lambda c: call(fn, T(*sa), T(*sb)), (sa, sb)), Ctx(tmp_path))


bad_elements = st.sampled_from([None, "1", b"x", True, False, 1j, [1.0], (2.0,), {}, set(), object()])
numbers_ = st.one_of(st.integers(-5, 5), st.floats(-10, 10, allow_nan=False))


@st.composite
def bad_nested_lists(draw: st.DrawFn) -> list[Any]:
    """A list of rows that is ragged, has an empty row, or holds a non-number."""
    nrows = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, 4), min_size=nrows, max_size=nrows))
    rows: list[list[Any]] = [[draw(numbers_) for _ in range(k)] for k in lengths]
    flaw = draw(st.sampled_from(["ragged", "element", "empty"]))
    if flaw == "element" or (flaw == "ragged" and nrows == 1):
        i = draw(st.integers(0, nrows - 1))
        rows[i].insert(draw(st.integers(0, len(rows[i]))), draw(bad_elements))
    elif flaw == "empty":
        rows[draw(st.integers(0, nrows - 1))] = []
    valid = len(set(map(len, rows))) == 1 and len(rows[0]) > 0
    valid = valid and all(type(v) in (int, float) for r in rows for v in r)
    if valid:  # the draw happened to be fine: spoil it
        rows[0] = [*rows[0], 1.0]
        if len(rows) == 1:
            rows[0][0] = None
    return rows


@given(rows=bad_nested_lists(), dtype=st.sampled_from([None, "float64", "int64"]))
def test_hyp_bad_nested_lists(backend: str, tmp_path: Path, rows: list[Any], dtype: Any) -> None:
    hyp(
        Case("Tensor2D", (ShapeError, TypeError), "Tensor2D", lambda c: call(mg.Tensor2D, rows, dtype=dtype)),
        Ctx(tmp_path),
    )


@given(
    n=st.integers(1, 6),
    c=st.integers(1, 6),
    labels=st.lists(st.integers(-3, 9), max_size=8),
    form=st.sampled_from(["list", "column", "row", "array"]),
    fn=st.sampled_from(["cross_entropy", "nll_loss"]),
)
def test_hyp_bad_labels(backend: str, tmp_path: Path, n: int, c: int, labels: list[int], form: str, fn: str) -> None:
    assume(len(labels) != n or any(not 0 <= v < c for v in labels))
    assume(labels or form in ("list", "array"))

    def make() -> Any:
        if form == "column":
            return I([[v] for v in labels])
        if form == "row":
            return I([labels])
        if form == "array":
            return np.array(labels, dtype=np.int64)
        return list(labels)

    wrong_length = len(labels) != n
    shapes_: tuple[tuple[int, int], ...] = ((n, c), (len(labels), 1)) if wrong_length and form == "column" else ()
    case = Case(fn, ValueError, fn, lambda ctx: call(getattr(F, fn), T(n, c), make()), shapes_)
    hyp(case, Ctx(tmp_path))


@given(shape=shapes, r=st.integers(-3, 12), k=st.integers(-3, 12))
def test_hyp_reshape(backend: str, tmp_path: Path, shape: Any, r: int, k: int) -> None:
    size = shape[0] * shape[1]
    ok = (
        (r >= 1 and k >= 1 and r * k == size)
        or (r == -1 and k >= 1 and size % k == 0)
        or (k == -1 and r >= 1 and size % r == 0)
    )
    assume(not ok)
    hyp(Case("reshape", ValueError, "reshape", lambda c: call(T(*shape).reshape, r, k)), Ctx(tmp_path))


@given(shape=shapes, i=st.integers(-12, 12), j=st.integers(-12, 12), how=st.sampled_from(["row", "cell", "list"]))
def test_hyp_index_out_of_range(backend: str, tmp_path: Path, shape: Any, i: int, j: int, how: str) -> None:
    m, n = shape
    in_rows, in_cols = -m <= i < m, -n <= j < n
    assume(not in_rows or (how == "cell" and not in_cols))
    key: Any = i if how == "row" else (i, j) if how == "cell" else [0, i]
    if how == "list":
        assume(not in_rows)
    hyp(
        Case("index", IndexError, f"{m}x{n}", lambda c: call(operator.getitem, T(m, n), key), index=True), Ctx(tmp_path)
    )


bad_sizes = st.one_of(
    st.integers(-10, 0).map(lambda v: (v, ValueError)),
    st.floats(allow_nan=True).map(lambda v: (v, TypeError)),
    st.text(max_size=3).map(lambda v: (v, TypeError)),
    st.booleans().map(lambda v: (v, TypeError)),
    st.none().map(lambda v: (v, TypeError)),
)


@given(fname=st.sampled_from(["zeros", "ones", "rand", "randn", "eye", "full"]), bad=bad_sizes, first=st.booleans())
def test_hyp_factory_sizes(backend: str, tmp_path: Path, fname: str, bad: Any, first: bool) -> None:
    value, expect = bad
    if fname == "eye" and not first:
        assume(value is not None)  # eye(3, None) is the 3x3 identity
    args = (value, 3) if first else (3, value)
    fn = getattr(mg, fname)
    extra = (1.0,) if fname == "full" else ()
    hyp(Case(fname, expect, fname, lambda c: call(fn, *args, *extra)), Ctx(tmp_path))


bad_hyper = st.one_of(
    st.floats(max_value=-1e-12).map(lambda v: (v, ValueError)),
    st.sampled_from([NAN, INF, -INF]).map(lambda v: (v, ValueError)),
    st.text(max_size=4).map(lambda v: (v, TypeError)),
    st.sampled_from([None, True, [0.1], {}]).map(lambda v: (v, TypeError)),
)


@given(
    opt=st.sampled_from(["SGD", "Adam", "AdamW"]),
    option=st.sampled_from(["lr", "weight_decay", "momentum", "eps"]),
    bad=bad_hyper,
)
def test_hyp_optimizer_options(backend: str, tmp_path: Path, opt: str, option: str, bad: Any) -> None:
    value, expect = bad
    if option == "momentum":
        assume(opt == "SGD")
    if option == "eps":
        assume(opt != "SGD")
    if value == INF:
        assume(option in ("lr", "momentum"))  # a huge weight decay or eps is odd but not invalid
    cls = getattr(optim, opt)
    hyp(Case(opt, expect, opt, _opt(cls, lambda: [_param()], **{option: value})), Ctx(tmp_path))


@given(
    opt=st.sampled_from(["Adam", "AdamW"]),
    betas=st.one_of(
        st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)).filter(
            lambda b: not (0 <= b[0] < 1 and 0 <= b[1] < 1)
        ),
        st.lists(st.floats(0, 0.99), max_size=4).filter(lambda b: len(b) != 2).map(tuple),
    ),
)
def test_hyp_adam_betas(backend: str, tmp_path: Path, opt: str, betas: Any) -> None:
    cls = getattr(optim, opt)
    hyp(Case(opt, ValueError, opt, _opt(cls, lambda: [_param()], betas=betas)), Ctx(tmp_path))


@given(
    fname=st.sampled_from([*REDUCTIONS, "softmax", "log_softmax", "logsumexp", "cat"]),
    axis=st.one_of(
        st.integers().filter(lambda a: a not in (0, 1, -1, -2)).map(lambda a: (a, ValueError)),
        st.one_of(st.floats(), st.text(max_size=2), st.booleans(), st.tuples(st.integers(0, 1))).map(
            lambda a: (a, TypeError)
        ),
    ),
)
def test_hyp_axis(backend: str, tmp_path: Path, fname: str, axis: Any) -> None:
    value, expect = axis
    if fname == "cat":
        case = Case("cat", expect, "cat", lambda c: call(mg.cat, [T(2, 2), T(2, 2)], axis=value))
    else:
        fn = getattr(mg.ops, fname)
        case = Case(fname, expect, fname, lambda c: call(fn, T(2, 3), value))
    hyp(case, Ctx(tmp_path))


@given(bad=bad_sizes, rows=st.integers(1, 9), y_rows=st.integers(1, 9))
def test_hyp_dataloader(backend: str, tmp_path: Path, bad: Any, rows: int, y_rows: int) -> None:
    value, expect = bad
    if rows != y_rows:  # mismatched lengths win over the batch size (any error naming DataLoader)
        case = Case("DataLoader", ShapeError, "DataLoader", _loader(lambda: T(rows, 2), lambda: I([[0]] * y_rows), 4))
    else:
        case = Case("DataLoader", expect, "DataLoader", _loader(lambda: T(rows, 2), lambda: None, value))
    hyp(case, Ctx(tmp_path))


@given(
    key=st.sampled_from(["0.weight", "0.bias", "2.weight", "2.bias"]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_hyp_load_state_dict_shapes(backend: str, tmp_path: Path, key: str, shape: list[int]) -> None:
    model_shapes = {"0.weight": [4, 3], "0.bias": [1, 4], "2.weight": [2, 4], "2.bias": [1, 2]}
    fits = shape == model_shapes[key] or (model_shapes[key][0] == 1 and shape == model_shapes[key][1:])
    assume(not fits)
    case = Case(
        "load_state_dict",
        CheckpointError,
        "load_state_dict",
        _load(lambda: mlp_state(**{key.replace(".", "_"): np.ones(shape)})),
        extra=(key,),
    )
    hyp(case, Ctx(tmp_path))


@given(content=st.binary(max_size=64))
def test_hyp_load_garbage(backend: str, tmp_path: Path, content: bytes) -> None:
    # a valid file needs a JSON object right after the length field: leave those to test_io
    assume(
        len(content) < 8
        or int.from_bytes(content[:8], "little") > len(content) - 8
        or not content[8:].lstrip().startswith(b"{")
    )
    path = tmp_path / "g.safetensors"
    path.write_bytes(content)
    hyp(Case("load", CheckpointError, "g.safetensors", lambda c: call(mg.load, path)), Ctx(tmp_path))


@given(
    labels=st.lists(st.integers(-20, 30), min_size=1, max_size=6),
    classes=st.integers(1, 12),
)
def test_hyp_confusion_matrix(backend: str, tmp_path: Path, labels: list[int], classes: int) -> None:
    assume(any(not 0 <= v < classes for v in labels))
    preds = [0] * len(labels)
    hyp(
        Case(
            "confusion_matrix", ValueError, "confusion_matrix", lambda c: call(confusion_matrix, preds, labels, classes)
        ),
        Ctx(tmp_path),
    )


# ---------------------------------------------------------------------------------------------
# the count (keep last in the module)
# ---------------------------------------------------------------------------------------------


def test_zz_report_case_count(capsys: pytest.CaptureFixture[str]) -> None:
    """How many bad inputs this run tried; printed, and written to $MATGRAD_BAD_INPUTS_SUMMARY."""
    distinct = len(CASES) + len(ABSURD_CASES) + len(CLI_CASES) + 3
    summary = {
        "hand_picked_cases": distinct,
        "hand_picked_runs": COUNTS["hand-picked"],
        "hypothesis_examples": COUNTS["hypothesis"],
        "total_tried": COUNTS["hand-picked"] + COUNTS["hypothesis"],
    }
    with capsys.disabled():
        print(
            f"\nbad inputs tried: {summary['total_tried']} ({distinct} hand-picked cases run "
            f"{summary['hand_picked_runs']} times over the backends, {summary['hypothesis_examples']} "
            "hypothesis examples)"
        )
    target = os.environ.get("MATGRAD_BAD_INPUTS_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
    assert distinct > 0
