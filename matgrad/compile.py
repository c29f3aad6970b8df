"""``matgrad.compile``: trace a training step once, then replay its kernels without building a graph.

    step = matgrad.compile(train_step)      # train_step(xb, yb): forward, loss, zero_grad, backward, step
    for xb, yb in loader:
        loss = step(xb, yb)
    print(step.plan)                         # the captured kernels, one per line, with shapes

How it works (tinygrad's TinyJit, with CUDA graphs' rule "never replay what you cannot prove is
the same"):

1. **Capture.** A call runs ``fn`` eagerly while every backend kernel it calls is recorded: the
   kernel, its constants, and where each matrix argument comes from (an input of this call, the
   result of an earlier kernel, or a matrix that outlives the call, such as a parameter's).
   An optimiser whose update depends only on its options and state tensors (``SGD``:
   ``capturable``) has its kernels recorded too, and a replay first checks its options (the
   learning rate) are unchanged; if they change between calls (a schedule), its ``step`` is
   called again at every replay from then on instead. ``Optimizer.step`` of the others (Adam,
   whose step counts change its constants), ``zero_grad``, learning-rate schedulers and a
   ``DistributedDataParallel``'s ``average_gradients`` are recorded as calls to make again, so
   their Python state stays live. The ``.grad`` that ``backward`` leaves on each parameter is
   recorded too. An in-place change that no kernel made (``set_``, a
   collective on a tensor) makes the step run eagerly.
2. **Validation.** The next call with the same signature is captured again. Only when two
   consecutive captures are identical (same kernels, same constants, the same persistent
   matrices, the same values read back into Python) is the plan trusted. The first steps of
   an optimiser (creating its state) therefore never get baked in.
3. **Replay.** Later calls with the same signature (shapes, dtypes, backends of the tensors,
   Python values of the other arguments, grad mode) run the plan: straight-line code generated
   for it, calling the same kernels in the same order on the new inputs, with no graph, no
   operand checks, and each intermediate freed after its last use. Where the backend's kernels
   can write into a given array (NumPy's ``out=``), an intermediate nothing outside can see (not
   returned, not a ``.grad``, not viewed by another result) is written into a buffer the plan
   owns, reused by every call and shared by results whose lifetimes do not overlap; a gradient
   left as a ``.grad`` is written into a buffer of its own when its reference count proves
   nothing else holds the previous call's. The same kernels write the same bits there. Before running, it checks
   that every module that ran is in the same train/eval mode and every parameter still has the
   storage it had; values the step read back into Python (``tolist``) are compared as it goes.
   Any difference falls back to a new capture: never a wrong result.

What is *not* captured: Python side effects of ``fn`` other than the ones above (printing,
appending to a list, counters of your own) happen only while capturing; Python numbers computed
inside ``fn`` from something other than its arguments are baked into the plan when they are the
same in two captures (pass a varying number as an argument, or a tensor); the result of a
replay is a tensor without a graph. Anomaly detection and debug mode always run eagerly.
"""

from __future__ import annotations

import builtins
import functools
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from matgrad import backends as _backends
from matgrad._errors import ArgumentTypeError
from matgrad.autograd import engine as _engine
from matgrad.autograd.grad_mode import ANOMALY, debug, state
from matgrad.backends.base import Backend
from matgrad.tensor import Tensor2D, _wrap

__all__ = ["CompiledFunction", "compile"]

_KERNELS = tuple(
    name
    for name, value in vars(Backend).items()
    if callable(value) and not name.startswith("_") and name not in ("storage", "aliases", "dtype")
)
# storage, aliases and dtype answer questions about matrices that the plan's kernels fix: they are
# neither recorded nor guarded.
_MUTATING = ("assign", "axpy", "seed")
_MAX_CAPTURES = 6  # captures in a row that disagree before a signature is run eagerly for good
_MAX_PLANS = 8


class _Bail(Exception):
    """A replay found that this call differs from the captured one (raised before any side effect)."""


# ---------------------------------------------------------------------------------------------
# what a capture records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """Where a matrix argument comes from: ``("in", i)``, ``("slot", k)`` or ``("ext", k)``."""

    kind: str
    index: int


@dataclass
class Kernel:
    backend: Backend
    name: str
    args: tuple[Any, ...]  # Refs and constants (possibly nested in lists and tuples)
    kwargs: dict[str, Any]
    outs: tuple[int, ...] | None  # slots of the matrix results (one, or a tuple's)
    observed: Any = None  # a Python result (tolist, all_finite, ...): compared at replay
    observes: bool = False
    shapes: tuple[Any, ...] = ()  # result shapes and dtypes, for printing


@dataclass
class Call:
    """A method to call again at replay (``Optimizer.step``, ``zero_grad``, a scheduler's ``step``)."""

    owner: int  # index into the plan's objects
    method: str
    args: tuple[Any, ...]
    label: str


@dataclass
class SetGrads:
    """After a ``backward``: each leaf's ``.grad`` becomes a slot's matrix (or None)."""

    leaves: list[tuple[Ref, Ref | None, int]]  # (the leaf: "in" or "obj", its gradient or None, backend object)


@dataclass
class MarkChanged:
    """An in-place change of a persistent tensor (its version counter moves at replay too)."""

    tensor: Ref
    how: str


@dataclass
class Trace:
    items: list[Any] = field(default_factory=list)
    externals: list[Any] = field(default_factory=list)  # persistent matrices, by position
    objects: list[Any] = field(default_factory=list)  # persistent Python objects (optimisers, leaves)
    n_slots: int = 0
    output: Any = None  # the return value's structure, with Refs
    modules: list[tuple[Any, bool]] = field(default_factory=list)
    params: list[tuple[Tensor2D, Any]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # id(external matrix) -> parameter name
    options: list[tuple[Any, Any]] = field(default_factory=list)  # (optimiser, its groups' options): checked first
    viewed: set[int] = field(default_factory=set)  # slots another result shares memory with: never buffered
    problem: str = ""  # why this capture cannot be replayed ("" when it can)


def _same(a: Any, b: Any) -> bool:
    """Equality of captured constants and observations, NaN equal to NaN, types included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Ref):
        return bool(a == b)
    if isinstance(a, (int, str, bool, type(None), slice)):
        return bool(a == b)
    return a is b


def _same_trace(a: Trace, b: Trace) -> bool:
    if a.problem or b.problem or len(a.items) != len(b.items) or a.n_slots != b.n_slots:
        return False
    if len(a.externals) != len(b.externals) or any(x is not y for x, y in zip(a.externals, b.externals)):
        return False
    if len(a.objects) != len(b.objects) or any(x is not y for x, y in zip(a.objects, b.objects)):
        return False
    for x, y in zip(a.items, b.items):
        if type(x) is not type(y):
            return False
        if isinstance(x, Kernel):
            if (x.backend is not y.backend or x.name != y.name or x.outs != y.outs or x.observes != y.observes) or not (
                _same(x.args, y.args) and _same(x.kwargs, y.kwargs) and _same(x.observed, y.observed)
            ):
                return False
        elif isinstance(x, Call):
            if (x.owner, x.method, x.label) != (y.owner, y.method, y.label) or not _same(x.args, y.args):
                return False
        elif isinstance(x, SetGrads):
            if x.leaves != y.leaves:
                return False
        elif isinstance(x, MarkChanged) and (x.tensor != y.tensor or x.how != y.how):
            return False
    if len(a.options) != len(b.options) or any(
        x[0] is not y[0] or not _same(x[1], y[1]) for x, y in zip(a.options, b.options)
    ):
        return False
    return _same(a.output, b.output) and [(m, t) for m, t in a.modules] == [(m, t) for m, t in b.modules]


# ---------------------------------------------------------------------------------------------
# capturing
# ---------------------------------------------------------------------------------------------


class _Recorder:
    """Records kernel calls, optimiser calls and .grad writes while ``fn`` runs eagerly."""

    def __init__(self, inputs: list[Any]) -> None:
        self.trace = Trace()
        self.inputs = {id(x): i for i, x in enumerate(inputs) if x is not None}
        self.input_objects: dict[int, int] = {}  # id(Tensor2D argument) -> its position
        self.slots: dict[int, int] = {}
        self.keep: list[Any] = []  # every matrix seen, alive until the capture ends (ids stay unique)
        self.ext_index: dict[int, int] = {}
        self.obj_index: dict[int, int] = {}
        self.depth = 0  # >0 inside a kernel or a recorded call: nested work is not recorded
        # a side effect that must not happen twice (an update, a .grad written): a replay can no
        # longer give up and run eagerly after it, so no value may be read back into Python later
        self.mutated = False
        self.native_types: tuple[type, ...] = ()
        self.thread = threading.get_ident()  # other threads' kernels run, unrecorded
        self.written: set[int] = set()  # matrices a recorded kernel changed in place
        self.volatile: set[int] = set()  # optimisers whose options change between calls: called, not captured

    def ours(self) -> bool:
        return not self.depth and threading.get_ident() == self.thread

    # -- references ----------------------------------------------------------------------------
    def ref(self, value: Any) -> Any:
        if isinstance(value, self.native_types):
            key = id(value)
            if key in self.slots:
                return Ref("slot", self.slots[key])
            if key in self.inputs:
                return Ref("in", self.inputs[key])
            index = self.ext_index.get(key)
            if index is None:
                index = self.ext_index[key] = len(self.trace.externals)
                self.trace.externals.append(value)
                self.keep.append(value)
            return Ref("ext", index)
        if isinstance(value, list):
            return [self.ref(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.ref(v) for v in value)
        if isinstance(value, (int, float, str, bool, type(None), slice)):
            return value
        self.fail(f"a kernel received a {type(value).__name__}, which a plan cannot hold")
        return None

    def obj(self, value: Any) -> int:
        key = id(value)
        index = self.obj_index.get(key)
        if index is None:
            index = self.obj_index[key] = len(self.trace.objects)
            self.trace.objects.append(value)
        return index

    def tensor_ref(self, t: Tensor2D) -> Ref:
        position = self.input_objects.get(id(t))
        return Ref("in", position) if position is not None else Ref("obj", self.obj(t))

    def note_views(self, backend: Backend, result: Any) -> None:
        """A result sharing memory with an earlier result (a view, or the matrix itself): that slot's
        memory is seen beyond its own uses, so a plan never gives it a reused buffer."""
        for r in result if isinstance(result, tuple) else (result,):
            if isinstance(r, self.native_types):
                base = self.slots.get(backend.storage(r))
                if base is not None:
                    self.trace.viewed.add(base)

    def new_slot(self, value: Any) -> int:
        k = self.trace.n_slots
        self.trace.n_slots += 1
        self.slots[id(value)] = k
        self.keep.append(value)
        return k

    def fail(self, why: str) -> None:
        if not self.trace.problem:
            self.trace.problem = why

    # -- the kernels ---------------------------------------------------------------------------
    def kernel(self, backend: Backend, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        @functools.wraps(method)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            if not recorder.ours():
                return method(*args, **kwargs)
            refs = recorder.ref(args)
            krefs = {k: recorder.ref(v) for k, v in kwargs.items()}
            recorder.depth += 1
            try:
                result = method(*args, **kwargs)
            finally:
                recorder.depth -= 1
            item = Kernel(backend, name, refs, krefs, None)
            if backend.buffered:
                recorder.note_views(backend, result)
            if isinstance(result, recorder.native_types):
                item.outs = (recorder.new_slot(result),)
                item.shapes = ((tuple(result.shape), backend.dtype(result)),)  # type: ignore[attr-defined]
            elif isinstance(result, tuple) and result and all(isinstance(r, recorder.native_types) for r in result):
                item.outs = tuple(recorder.new_slot(r) for r in result)
                item.shapes = tuple((tuple(r.shape), backend.dtype(r)) for r in result)
            elif result is not None or name not in _MUTATING:
                item.observes, item.observed = True, _freeze(result)
                if recorder.mutated:
                    recorder.fail(f"{name}() read a value back into Python after a side effect of the step")
            if name in _MUTATING:
                recorder.mutated = True
                if args:
                    recorder.written.add(id(args[0]))
            recorder.trace.items.append(item)
            return result

        return recorded

    # -- calls replayed as calls ---------------------------------------------------------------
    def call(self, owner: Any, method: str, original: Callable[..., Any], label: str) -> Callable[..., Any]:
        recorder = self

        @functools.wraps(original)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            if not recorder.ours():
                return original(*args, **kwargs)
            if kwargs or any(not isinstance(a, (int, float, bool, type(None))) for a in args):
                recorder.fail(f"{label} was called with arguments a plan cannot hold")
            recorder.trace.items.append(Call(recorder.obj(owner), method, args, label))
            if method != "zero_grad":  # zero_grad may run twice (replay, then eager): the rest may not
                recorder.mutated = True
            recorder.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                recorder.depth -= 1

        return recorded


def _freeze(value: Any) -> Any:
    """A Python result of a kernel as plain, comparable data (NumPy scalars and arrays as lists)."""
    if isinstance(value, list):
        return [_freeze(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


class _Capture:
    """Patches the kernels of every backend, optimisers, schedulers and ``backward`` for one call."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.undo: list[Callable[[], None]] = []

    def __enter__(self) -> _Capture:
        rec = self.recorder
        from matgrad.nn.module import Module, register_module_forward_pre_hook
        from matgrad.optim.lr_scheduler import LRScheduler
        from matgrad.optim.optimizer import Optimizer

        backends = list(_backends._instances.values())
        rec.native_types = tuple({_native_type(be) for be in backends})
        for be in backends:
            for name in _KERNELS:
                method = getattr(be, name)
                setattr(be, name, rec.kernel(be, name, method))
            self.undo.append(functools.partial(_restore, be, _KERNELS))
        from matgrad.distributed import DistributedDataParallel

        for cls, method, label in (
            (Optimizer, "step", "{}.step()"),
            (Optimizer, "zero_grad", "{}.zero_grad()"),
            (Module, "zero_grad", "{}.zero_grad()"),
            (LRScheduler, "step", "{}.step()"),
            (DistributedDataParallel, "average_gradients", "{}.average_gradients()"),
        ):
            self._patch_class(cls, method, label)
        original_backward = _engine.backward
        _engine.backward = self._backward(original_backward)
        self.undo.append(lambda: setattr(_engine, "backward", original_backward))
        original_mark = Tensor2D._mark_changed
        Tensor2D._mark_changed = self._mark(original_mark)  # type: ignore[method-assign]
        self.undo.append(lambda: setattr(Tensor2D, "_mark_changed", original_mark))
        seen: dict[int, Any] = {}

        def note(module: Any, args: Any) -> None:
            seen.setdefault(id(module), module)

        handle = register_module_forward_pre_hook(note)
        self.undo.append(handle.remove)
        self.seen = seen
        return self

    def _patch_class(self, cls: type, method: str, label: str) -> None:
        original = cls.__dict__[method]
        rec = self.recorder

        def wrapper(owner: Any, *args: Any, **kwargs: Any) -> Any:
            bound = functools.partial(original, owner)
            if (
                method == "step"
                and getattr(owner, "capturable", False)
                and id(owner) not in rec.volatile
                and not args
                and not kwargs
                and rec.ours()
            ):
                rec.trace.options.append((owner, _options(owner)))  # its kernels are recorded, guarded
                return bound()
            return rec.call(owner, method, bound, label.format(type(owner).__name__))(*args, **kwargs)

        setattr(cls, method, wrapper)
        self.undo.append(lambda: setattr(cls, method, original))

    def _backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        rec = self.recorder

        def backward(tensor: Tensor2D, grad: Any = None, retain_graph: Any = None, create_graph: bool = False) -> None:
            if not rec.ours():
                original(tensor, grad, retain_graph, create_graph)
                return None
            order = _engine._topological_order([tensor]) if tensor.requires_grad else []
            watched = [t for t in order if t._op is None or t._retain]
            original(tensor, grad, retain_graph, create_graph)
            leaves: list[tuple[Ref, Ref | None, int]] = []
            for t in watched:
                if t._op is not None:
                    rec.fail("retain_grad() on a tensor made inside the step: its .grad cannot be replayed")
                g = t.grad
                leaves.append((rec.tensor_ref(t), None if g is None else rec.ref(g._data), rec.obj(t._backend)))
            if create_graph:
                rec.fail("backward(create_graph=True) inside the step")
            rec.trace.items.append(SetGrads(leaves))
            rec.mutated = True
            return None

        return backward

    def _mark(self, original: Callable[..., None]) -> Callable[..., None]:
        rec = self.recorder

        def mark(tensor: Tensor2D, how: str) -> None:
            original(tensor, how)
            if rec.ours():
                if id(tensor._data) not in rec.written:
                    # set_, a collective or a NumPy write: a change no recorded kernel made
                    rec.fail(f"{how} changed a tensor in place without a kernel the plan could replay")
                rec.trace.items.append(MarkChanged(rec.tensor_ref(tensor), how))
                rec.mutated = True

        return mark

    def __exit__(self, *exc: object) -> None:
        while self.undo:
            self.undo.pop()()


def _options(optimizer: Any) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """An optimiser's groups as (parameter ids, options): what a replay of its kernels assumes."""
    return [
        (tuple(id(p) for p in g["params"]), {k: v for k, v in g.items() if k != "params"})
        for g in optimizer.param_groups
    ]


def _options_unchanged(optimizer: Any, snapshot: list[tuple[tuple[int, ...], dict[str, Any]]]) -> bool:
    """``_options(optimizer) == snapshot``, without building the new one (a replay checks it every call)."""
    groups = optimizer.param_groups
    if len(groups) != len(snapshot):
        return False
    for g, (ids, options) in zip(groups, snapshot):
        params = g["params"]
        if len(params) != len(ids) or len(g) != len(options) + 1:
            return False
        for k, v in options.items():
            if g.get(k, _MISSING) != v:
                return False
        for p, i in zip(params, ids):
            if id(p) != i:
                return False
    return True


_MISSING = object()


def _restore(be: Backend, names: Sequence[str]) -> None:
    for name in names:
        be.__dict__.pop(name, None)


def _native_type(be: Backend) -> type:
    return type(be.full(1, 1, 0.0, "float64"))


# ---------------------------------------------------------------------------------------------
# the plan: straight-line code generated from a validated trace
# ---------------------------------------------------------------------------------------------


class Plan:
    """A validated trace, compiled to one Python function; ``str(plan)`` lists its kernels."""

    def __init__(self, trace: Trace, signature: str, arg_names: list[str]) -> None:
        self.trace = trace
        self.signature = signature
        self.arg_names = arg_names
        self.last_use = self._last_use()
        self.notes: dict[int, str] = {}  # item position -> where its result goes, for printing
        self.into, self.buffers = self._allocate()
        self.run = self._generate({}, {})
        # The same code writing into the plan's buffers: one replay at a time may use them (a
        # second thread replaying meanwhile runs ``run``, allocating as eager does).
        self.run_buffered = self._generate(self.into, self.buffers) if self.into else None
        self.lock = threading.Lock()
        self.replays = 0

    def _last_use(self) -> dict[int, int]:
        """Each slot's last reader: an item's position, or ``len(items)`` for the return value."""
        t = self.trace
        last_use: dict[int, int] = {}
        for pos, item in enumerate(t.items):
            for ref in _refs(item):
                if ref.kind == "slot":
                    last_use[ref.index] = pos
        for ref in _refs_of(t.output):
            if ref.kind == "slot":
                last_use[ref.index] = len(t.items)
        return last_use

    def _allocate(self) -> tuple[dict[int, str], dict[str, Any]]:
        """Buffers the plan owns, reused from one replay to the next and between results whose
        lifetimes do not overlap: ``({item position: "out=bN" or "work=bN"}, {"bN": matrix})``.

        A result gets a buffer only where the plan proves nothing outside can see it: not returned,
        not left as a ``.grad``, and no other result a view of it (each kernel's ``buffered``
        keyword says it may write there). A buffer is free again after its result's last reader,
        and never given to a kernel that also reads it. A gradient left as a ``.grad`` gets a
        buffer of its own, used only when, at that point of the replay, nothing but the plan holds
        it (its reference count: last call's ``.grad`` was reset by ``zero_grad``, and nobody kept
        it or a view of it); otherwise that replay gives it a new matrix, as eager does.
        """
        t = self.trace
        returned = set(t.viewed) | {r.index for r in _refs_of(t.output) if r.kind == "slot"}
        grads: set[int] = set()
        for item in t.items:
            if isinstance(item, SetGrads):
                grads |= {g.index for _, g, _ in item.leaves if g is not None and g.kind == "slot"}
        escaping = returned | grads
        dying: dict[int, list[int]] = {}
        for slot, pos in self.last_use.items():
            dying.setdefault(pos, []).append(slot)
        free: dict[Any, list[str]] = {}
        kind_of: dict[str, Any] = {}
        buffers: dict[str, Any] = {}
        owner: dict[int, str] = {}  # slot -> its buffer
        layout: dict[int, tuple[tuple[int, ...], str]] = {}
        into: dict[int, str] = {}

        def take(backend: Backend, shape: tuple[int, ...], dtype: str) -> str:
            kind = (id(backend), shape, dtype)
            if free.get(kind):
                return free[kind].pop()
            name = f"b{len(buffers)}"
            buffers[name] = backend.full(shape[0], shape[1], 0.0, dtype)
            kind_of[name] = kind
            return name

        for pos, item in enumerate(t.items):
            released: list[str] = []
            if isinstance(item, Kernel) and item.outs is not None:
                layout.update(zip(item.outs, item.shapes))
            keyword = item.backend.buffered.get(item.name) if isinstance(item, Kernel) else None
            if keyword == "out" and item.outs is not None and len(item.outs) == 1 and len(item.shapes[0][0]) == 2:
                slot, (shape, dtype) = item.outs[0], item.shapes[0]
                if slot not in escaping:
                    owner[slot] = name = take(item.backend, shape, dtype)
                    into[pos], self.notes[pos] = f"out={name}", f"in {name}"
                    if slot not in self.last_use:  # never read: free at once
                        released.append(name)
                elif slot in grads and slot not in returned:
                    name = f"b{len(buffers)}"
                    buffers[name] = item.backend.full(shape[0], shape[1], 0.0, dtype)
                    into[pos] = f"out=({name} if _rc({name}) == _RC else None)"
                    self.notes[pos] = f"in {name} when free"
            elif keyword == "work" and len(item.args) > 2 and item.args[2] not in (1, -1):  # axpy scales by alpha
                source = item.args[1]
                if isinstance(source, Ref) and source.kind == "slot" and len(layout[source.index][0]) == 2:
                    name = take(item.backend, *layout[source.index])
                    into[pos], self.notes[pos] = f"work={name}", f"scratch {name}"
                    released.append(name)
            released += [owner[k] for k in dying.get(pos, ()) if k in owner]
            for name in released:
                free.setdefault(kind_of[name], []).append(name)
        self.buffer_of = owner  # slot -> the buffer its result is written into
        return into, buffers

    def _generate(self, into: dict[int, str], buffers: dict[str, Any]) -> Callable[..., Any]:
        t = self.trace
        env: dict[str, Any] = {"_Bail": _Bail, "_wrap": _wrap, "_same": _same, "_freeze": _freeze, **buffers}
        if buffers:
            env["_rc"], env["_RC"] = sys.getrefcount, _free_count()
        last_use = self.last_use
        lines = ["def replay(inputs, objects, committed):"]
        first_unsafe = next((pos for pos, item in enumerate(t.items) if _unsafe(item)), None)
        for k in range(len(t.externals)):
            env[f"e{k}"] = t.externals[k]
        for pos, item in enumerate(t.items):
            if pos == first_unsafe:
                lines.append("    committed[0] = True")
            if isinstance(item, Kernel):
                fn = f"k{pos}"
                env[fn] = getattr(type(item.backend), item.name).__get__(item.backend)
                args = ", ".join(
                    [*map(_source, item.args), *(f"{k}={_source(v)}" for k, v in item.kwargs.items())]
                    + ([into[pos]] if pos in into else [])
                )
                call = f"{fn}({args})"
                if item.outs is None:
                    if item.observes:
                        env[f"o{pos}"] = item.observed
                        lines.append(f"    if not _same(_freeze({call}), o{pos}): raise _Bail")
                    else:
                        lines.append(f"    {call}")
                elif len(item.outs) == 1:
                    lines.append(f"    v{item.outs[0]} = {call}")
                else:
                    lines.append(f"    {', '.join(f'v{k}' for k in item.outs)} = {call}")
            elif isinstance(item, Call):
                env[f"c{pos}"] = item.method
                lines.append(f"    getattr(objects[{item.owner}], c{pos})({', '.join(map(repr, item.args))})")
            elif isinstance(item, SetGrads):
                for leaf, grad, backend in item.leaves:
                    target = _source_tensor(leaf)
                    if grad is None:
                        lines.append(f"    {target}.grad = None")
                    else:
                        lines.append(f"    {target}.grad = _wrap({_source(grad)}, objects[{backend}])")
            elif isinstance(item, MarkChanged):
                env[f"h{pos}"] = item.how
                lines.append(f"    {_source_tensor(item.tensor)}._mark_changed(h{pos})")
            dead = [k for k, p in last_use.items() if p == pos]
            if dead:
                lines.append(f"    del {', '.join(f'v{k}' for k in sorted(dead))}")
        lines.append(f"    return {_source_output(t.output)}")
        code = "\n".join(lines)
        namespace: dict[str, Any] = {}
        exec(builtins.compile(code, "<matgrad plan>", "exec"), env, namespace)  # the code generated above
        self.source = code
        return namespace["replay"]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        t = self.trace
        names = {**{f"in{i}": n for i, n in enumerate(self.arg_names)}}
        header = f"plan of {self.signature}: {sum(isinstance(i, Kernel) for i in t.items)} kernels"
        if self.buffers:
            header += f", {len(self.buffers)} buffers reused by every call"
        out = [header]

        def show(ref: Any) -> str:
            if isinstance(ref, Ref):
                if ref.kind == "slot":
                    return f"v{ref.index}"
                if ref.kind == "in":
                    return names.get(f"in{ref.index}", f"in{ref.index}")
                if ref.kind == "ext":
                    return t.names.get(id(t.externals[ref.index]), f"c{ref.index}")
                return f"obj{ref.index}"
            if isinstance(ref, list):
                return "[" + ", ".join(map(show, ref)) + "]" if len(ref) <= 6 else f"<{len(ref)} values>"
            if isinstance(ref, tuple):
                return "(" + ", ".join(map(show, ref)) + ")"
            if isinstance(ref, float):
                return f"{ref:g}"
            return repr(ref)

        for pos, item in enumerate(t.items):
            if isinstance(item, Kernel):
                args = ", ".join([*map(show, item.args), *(f"{k}={show(v)}" for k, v in item.kwargs.items())])
                note = f"  [{self.notes[pos]}]" if pos in self.notes else ""
                if item.outs is None:
                    prefix = "  check " if item.observes else "  "
                    out.append(f"{prefix}{item.name}({args}){note}")
                else:
                    results = ", ".join(
                        f"v{k}: {'x'.join(map(str, shape))} {dtype}"
                        for k, (shape, dtype) in zip(item.outs, item.shapes)
                    )
                    out.append(f"  {results} = {item.name}({args}){note}")
            elif isinstance(item, Call):
                out.append(f"  call {item.label}")
            elif isinstance(item, SetGrads):
                grads = ", ".join(
                    f"{_leaf_name(t, leaf, names)}.grad = {'None' if g is None else show(g)}"
                    for leaf, g, _ in item.leaves
                )
                out.append(f"  {grads}")
        out.append(f"  return {_show_output(t.output, show)}")
        return "\n".join(out)


def _unsafe(item: Any) -> bool:
    """A side effect that must not happen twice: after it, a replay cannot hand over to eager."""
    if isinstance(item, Kernel):
        return item.name in _MUTATING
    if isinstance(item, Call):
        return item.method != "zero_grad"
    return isinstance(item, (SetGrads, MarkChanged))


def _refs(item: Any) -> list[Ref]:
    if isinstance(item, Kernel):
        return _refs_of((item.args, list(item.kwargs.values())))
    if isinstance(item, SetGrads):
        return [g for _, g, _ in item.leaves if g is not None]
    return []


def _refs_of(value: Any) -> list[Ref]:
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs_of(v)]
    return []


def _source(value: Any) -> str:
    if isinstance(value, Ref):
        if value.kind == "slot":
            return f"v{value.index}"
        if value.kind == "in":
            return f"inputs[{value.index}]"
        return f"e{value.index}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_source, value)) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(_source(v) + ", " for v in value) + ")"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, slice):
        return f"slice({value.start!r}, {value.stop!r}, {value.step!r})"
    return repr(value)


def _source_tensor(ref: Ref) -> str:
    return f"objects[{ref.index}]" if ref.kind == "obj" else f"inputs[-{ref.index + 1}]"


def _source_output(value: Any) -> str:
    if isinstance(value, tuple) and value and value[0] == "tensor":
        _, ref, backend_index = value
        return f"_wrap({_source(ref)}, objects[{backend_index}])"
    if isinstance(value, tuple) and value and value[0] == "seq":
        _, kind, parts = value
        inner = "".join(_source_output(p) + ", " for p in parts)
        return f"({inner})" if kind == "tuple" else f"[{inner}]"
    return "None"


def _show_output(value: Any, show: Callable[[Any], str]) -> str:
    if isinstance(value, tuple) and value and value[0] == "tensor":
        return show(value[1])
    if isinstance(value, tuple) and value and value[0] == "seq":
        return "(" + ", ".join(_show_output(p, show) for p in value[2]) + ")"
    return "None"


def _leaf_name(t: Trace, leaf: Ref, names: dict[str, str]) -> str:
    if leaf.kind == "obj":
        obj = t.objects[leaf.index]
        return t.names.get(id(obj._data), obj.name or f"obj{leaf.index}") if isinstance(obj, Tensor2D) else "?"
    return names.get(f"in{leaf.index}", f"in{leaf.index}")


# ---------------------------------------------------------------------------------------------
# the compiled function
# ---------------------------------------------------------------------------------------------


def _key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a plan is specific to: each argument's kind, shape, dtype, backend (device included) and
    ``requires_grad`` (a tensor) or value (a number), which arguments share storage, and grad mode.

    Read on every call, so built from raw attributes (a backend object stands for its device).
    """
    parts: list[Any] = []
    datas: list[int] = []
    for a in args:
        if isinstance(a, Tensor2D):
            d = a._data
            key = id(d)
            parts.append((d.shape, d.dtype, a._backend, a.requires_grad, datas.index(key) if key in datas else -1))
            datas.append(key)
        elif isinstance(a, (int, float, str, bool, type(None))):
            parts.append((type(a), a))
            datas.append(-1)
        else:
            raise ArgumentTypeError(
                f"matgrad.compile: an argument of type {type(a).__name__}; a compiled function takes Tensor2D "
                "arguments (and plain numbers, strings or None, which are part of its signature)"
            )
    parts.append(state.mode)
    return tuple(parts)


def _describe(args: tuple[Any, ...]) -> str:
    """How the signature prints: ``64x784 float32 numpy, 64x1 int64 numpy``."""
    return ", ".join(
        f"{a.nrows}x{a.ncols} {a.dtype} {a._backend.label}" if isinstance(a, Tensor2D) else repr(a) for a in args
    )


@dataclass
class _Entry:
    plan: Plan | None = None
    previous: Trace | None = None
    captures: int = 0
    eager: bool = False  # gave up: run eagerly for good
    why: str = ""


class CompiledFunction:
    """``matgrad.compile(fn)``: call it as ``fn``; ``.plan`` shows what it replays (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise ArgumentTypeError(f"matgrad.compile: expected a function, got {type(fn).__name__}")
        self.fn = fn
        self._entries: dict[Any, _Entry] = {}
        self._last: _Entry | None = None
        self._volatile: set[int] = set()  # ids of optimisers seen changing options (a schedule)
        self.stats = {"eager": 0, "captured": 0, "replayed": 0, "fallbacks": 0}
        functools.update_wrapper(self, fn)

    @property
    def plan(self) -> Plan | None:
        """The plan of the most recent signature (``print(step.plan)`` lists its kernels), or None."""
        return self._last.plan if self._last is not None else None

    @property
    def why_eager(self) -> str:
        """Why the most recent signature runs eagerly, if it does (empty otherwise)."""
        return self._last.why if self._last is not None else ""

    def reset(self) -> None:
        """Forget every plan: the next calls capture again."""
        self._entries.clear()
        self._last = None

    def __call__(self, *args: Any) -> Any:
        key = _key(args)
        if key[-1] & ANOMALY or debug.on:
            self.stats["eager"] += 1
            return self.fn(*args)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= _MAX_PLANS:
                self._entries.pop(next(iter(self._entries)))
            entry = self._entries[key] = _Entry()
        self._last = entry
        if entry.eager:
            self.stats["eager"] += 1
            return self.fn(*args)
        if entry.plan is not None:
            result = self._replay(entry.plan, args)
            if result is not _FALLBACK:
                return result
            self.stats["fallbacks"] += 1
            entry.plan, entry.previous, entry.captures = None, None, 0
        signature = f"{getattr(self.fn, '__name__', 'fn')}({_describe(args)})"
        return self._capture(entry, args, signature)

    def _capture(self, entry: _Entry, args: tuple[Any, ...], signature: str) -> Any:
        inputs = [a._data if isinstance(a, Tensor2D) else None for a in args]
        rec = _Recorder(inputs)
        rec.volatile = self._volatile
        rec.input_objects = {id(a): i for i, a in enumerate(args) if isinstance(a, Tensor2D)}
        with _capture_lock, _Capture(rec) as capture:
            result = self.fn(*args)
        trace = rec.trace
        trace.output = self._output(rec, result)
        trace.modules = [(m, bool(getattr(m, "training", True))) for m in capture.seen.values()]
        trace.params = [(p, p._data) for m, _ in trace.modules for p in _own_parameters(m)]
        trace.names = {}
        for m, _ in trace.modules:  # outermost module first: its names ("0.weight") win
            for name, p in _named(m):
                trace.names.setdefault(id(p._data), name)
        for optimizer, _ in trace.options:  # its state tensors, after their parameter: 0.weight.momentum_buffer
            for p, entries in getattr(optimizer, "state", {}).items():
                for key, value in entries.items():
                    if isinstance(value, Tensor2D) and id(p._data) in trace.names:
                        trace.names.setdefault(id(value._data), f"{trace.names[id(p._data)]}.{key}")
        self.stats["captured"] += 1
        entry.captures += 1
        if trace.problem:
            entry.eager, entry.why = True, trace.problem
        elif entry.previous is not None and _same_trace(entry.previous, trace):
            arg_names = _arg_names(self.fn, len(args))
            entry.plan = Plan(trace, signature, arg_names)
            entry.previous = None
        elif entry.captures >= _MAX_CAPTURES:
            entry.eager = True
            entry.why = f"{_MAX_CAPTURES} captures in a row differed (a Python branch or value that changes each call)"
        else:
            entry.previous = trace
        return result

    def _output(self, rec: _Recorder, result: Any) -> Any:
        if result is None:
            return None
        if isinstance(result, Tensor2D):
            ref = rec.ref(result._data)
            if not isinstance(ref, Ref):
                rec.fail("the step returned a tensor a plan cannot hold")
            return ("tensor", ref, rec.obj(result._backend))
        if isinstance(result, (tuple, list)):
            return ("seq", "tuple" if isinstance(result, tuple) else "list", [self._output(rec, r) for r in result])
        rec.fail(f"the step returned a {type(result).__name__}; a plan returns tensors (or None)")
        return None

    def _replay(self, plan: Plan, args: tuple[Any, ...]) -> Any:
        t = plan.trace
        for module, training in t.modules:
            if bool(getattr(module, "training", True)) != training:
                return _FALLBACK
        for p, data in t.params:
            if p._data is not data:
                return _FALLBACK
        for optimizer, options in t.options:  # a changed learning rate: capture again, never replay stale
            if not _options_unchanged(optimizer, options):
                self._volatile.add(id(optimizer))  # from now on its step is called again, not replayed
                return _FALLBACK
        inputs = [a._data if isinstance(a, Tensor2D) else None for a in args]
        inputs += [a for a in reversed(args)]  # inputs[-i-1]: the i-th argument itself (a leaf's .grad)
        committed = [False]
        try:
            if plan.run_buffered is not None and plan.lock.acquire(blocking=False):
                try:
                    result = plan.run_buffered(inputs, t.objects, committed)
                finally:
                    plan.lock.release()
            else:
                result = plan.run(inputs, t.objects, committed)
        except _Bail:
            return _FALLBACK
        except Exception:
            if committed[0]:
                raise
            return _FALLBACK  # e.g. a class index out of range: eager says it properly
        plan.replays += 1
        self.stats["replayed"] += 1
        return result


_FALLBACK = object()


def _free_count() -> int:
    """What ``sys.getrefcount`` says, inside generated code, of a buffer that only the plan holds (in
    its table of buffers and in the generated code's globals), measured the same way."""
    table = {"b": bytearray(1)}
    env: dict[str, Any] = {"_rc": sys.getrefcount, **table}
    exec(builtins.compile("def probe():\n    return _rc(b)", "<matgrad probe>", "exec"), env)  # as in a plan
    return int(env["probe"]())


_capture_lock = threading.Lock()  # one capture at a time: it patches kernels process-wide


def _own_parameters(module: Any) -> list[Tensor2D]:
    params = getattr(module, "_parameters", None)
    return [p for p in params.values() if p is not None] if isinstance(params, dict) else []


def _named(module: Any) -> list[tuple[str, Tensor2D]]:
    named = getattr(module, "named_parameters", None)
    return list(named()) if callable(named) else []


def _arg_names(fn: Callable[..., Any], n: int) -> list[str]:
    code = getattr(fn, "__code__", None)
    names = list(code.co_varnames[: code.co_argcount]) if code is not None else []
    return [names[i] if i < len(names) else f"arg{i}" for i in range(n)]


def compile(fn: Callable[..., Any]) -> CompiledFunction:
    """Trace ``fn`` (a training step) once and replay its kernels on later calls (see the module docstring).

    Usable as a decorator. ``step.plan`` prints the captured kernels; ``step.stats`` counts eager
    calls, captures, replays and fallbacks; ``step.reset()`` forgets the plans.
    """
    return CompiledFunction(fn)
