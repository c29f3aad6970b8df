"""The recording side of autograd: the ``Op`` base class, its single apply path, and graph hooks.

Every differentiable operation is one ``Op`` subclass: ``forward(backend, *data)`` computes the
output from raw matrices with backend kernels, ``backward(grad, *inputs)`` returns one gradient
(a ``Tensor2D`` expression, or ``None``) per input. Calling an op instance, ``Mul()(a, b)``, is
the only way anything enters a graph: operands are checked as the class declares (``arity``,
``broadcast``, ``float_only``, an optional ``check``), ``forward`` runs, and ``record`` links the
output to the op when grad mode is on and an input requires grad. A user's ``Function`` goes
through the same door (``matgrad.autograd.function``).

Saved tensors are version-checked: an op that reads an input (``saves``) or its output
(``saves_output``) in backward remembers their versions, and backward refuses to run if one was
changed in place since (see ``Tensor2D._version``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import weakref
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from matgrad._checks import operands as _operands
from matgrad._errors import AnomalyError, GraphError, user_site
from matgrad.autograd.grad_mode import ANOMALY, GRAD, debug, state
from matgrad.tensor import CHANGES, Tensor2D, _wrap

if TYPE_CHECKING:
    from matgrad.backends.base import Backend, Data

__all__ = ["Op", "RemovableHandle", "raise_modified", "record", "register_record_hook"]

_sequence = itertools.count()
_UNARY, _BINARY, _PAIR = 1, 2, 3
_requires_grad = operator.attrgetter("requires_grad")

RecordHook = Callable[["Op"], None]
_record_hooks: list[RecordHook] = []


class RemovableHandle:
    """What ``register_*_hook`` returns: ``handle.remove()`` unregisters the hook (as PyTorch)."""

    def __init__(self, hooks: list[Any], hook: Any) -> None:
        self._hooks = hooks
        self._hook = hook

    def remove(self) -> None:
        with contextlib.suppress(ValueError):  # not "if in: remove": another thread may remove it in between
            self._hooks.remove(self._hook)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register_record_hook(hook: RecordHook) -> RemovableHandle:
    """Call ``hook(op)`` each time an op joins a graph (after its inputs and sequence number are set).

    For tools that annotate the graph, such as the diagrams' module clusters; the hook must not
    change the op's inputs or outputs.
    """
    _record_hooks.append(hook)
    return RemovableHandle(_record_hooks, hook)


class _OpMeta(type):
    """Gives every op class ``__slots__ = ()`` unless it declares its own: ops are many and small."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any) -> _OpMeta:
        ns.setdefault("__slots__", ())
        return super().__new__(mcls, name, bases, ns, **kw)


class Op(metaclass=_OpMeta):
    """One node of the graph: the op that produced a tensor, with its inputs in order.

    A subclass defines ``forward`` and ``backward`` and declares what its operands must be:

    * ``arity``: the number of tensor inputs (``-1``: any number);
    * ``broadcast``: an element-wise op; numbers and 2-D arrays become constants, and (1,n),
      (m,1), (1,1) operands broadcast (the engine sums their gradients back); with ``arity`` 3
      the first operand is a condition of any dtype (``where``);
    * ``float_only``: every input must be float32/float64 (int64 is refused with a clear error);
    * ``saves`` / ``saves_output``: the inputs / the output whose *values* backward reads;
    * ``check(*inputs)``: an optional method for op-specific shape checks (matmul's inner size).

    ``name`` defaults to the lower-cased class name. Everything else a subclass needs (the
    exponent of ``Pow``, the axis of ``Sum``) goes in its own ``__slots__`` and ``__init__``.
    """

    __slots__ = (
        "_out",
        "_scope",
        "clock",
        "grad_out",
        "inputs",
        "mark",
        "needs_input_grad",
        "released",
        "saved",
        "seq",
        "site",
        "versions",
    )

    name: ClassVar[str] = "op"
    arity: ClassVar[int] = 1
    broadcast: ClassVar[bool] = False
    float_only: ClassVar[bool] = True
    saves: ClassVar[tuple[int, ...]] = ()
    saves_output: ClassVar[bool] = False
    views: ClassVar[bool] = False  # the output may share the input's storage (reshape): one version counter
    _has_check: ClassVar[bool] = False
    _kind: ClassVar[int] = 0  # _UNARY, _BINARY, _PAIR or 0: which path of __call__ fits the declarations
    _checks_saved: ClassVar[bool] = False  # saves something, or overrides check_saved
    _moves: ClassVar[bool] = False  # defines result_backend: the output lives on another backend

    # Set by ``record`` when the op joins a graph (slots, so unset on ops that never do).
    inputs: tuple[Tensor2D, ...]
    needs_input_grad: tuple[bool, ...]
    released: bool
    saved: Any
    seq: int  # creation order: an op's inputs were all made by ops with smaller numbers
    site: str
    clock: int  # tensor.CHANGES when recorded: if it has not moved since, nothing saved can have changed
    # Engine scratch (no dicts keyed by id() on the hot path): the gradient of this op's output
    # accumulated so far during a backward pass, and the token of the last walk that visited it.
    grad_out: Tensor2D | None
    mark: object
    _out: weakref.ref[Tensor2D]

    # Each subclass defines these two with its own arity, e.g.
    #   def forward(self, be, a, b) -> Data
    #   def backward(self, grad, a, b) -> tuple[Tensor2D | None, Tensor2D | None]
    forward: Callable[..., Data]
    backward: Callable[..., tuple[Tensor2D | None, ...]]
    # Optional, with the op's own arity: op-specific checks beyond the declarations (matmul's
    # inner sizes), raising a matgrad error. Called only when a subclass defines it.
    check: Callable[..., None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()
        cls._has_check = any("check" in k.__dict__ for k in cls.__mro__ if k is not Op)
        cls._moves = any("result_backend" in k.__dict__ for k in cls.__mro__ if k is not Op)
        plain = not (cls._has_check or cls._moves or cls.views)
        cls._kind = _BINARY if plain and cls.broadcast and cls.arity == 2 else _UNARY if plain and cls.arity == 1 else 0
        if not cls._kind and cls.arity == 2 and not (cls.broadcast or cls._moves or cls.views):
            cls._kind = _PAIR  # two operands of any shapes, the op's own check() deciding (matmul)
        cls._checks_saved = bool(cls.saves or cls.saves_output) or any(
            "check_saved" in k.__dict__ for k in cls.__mro__ if k is not Op
        )

    def __call__(self, *args: Any) -> Tensor2D:
        """Apply the op: check the operands as declared, run ``forward``, record the result."""
        # The two commonest shapes of op get a path with as few calls and lookups as possible:
        # every op runs through here, forward and in every backward rule.
        kind = self._kind
        if kind >= _BINARY and len(args) == 2:  # _BINARY: same shapes; _PAIR: any, the op's check() decides
            a, b = args
            if not (
                isinstance(a, Tensor2D)
                and isinstance(b, Tensor2D)
                and a._backend is b._backend
                and ((da := a._data.dtype) is (db := b._data.dtype) or da == db)
                and (kind == _PAIR or a._data.shape == b._data.shape)
                and (not self.float_only or da in a._backend.float_types)
            ):
                a, b = _operands(self, args)
            if kind == _PAIR and self._has_check:
                self.check(a, b)
            be = a._backend
            out = _wrap(self.forward(be, a._data, b._data), be)
            mode = state.mode
            if mode == GRAD:
                if a.requires_grad or b.requires_grad:
                    _link(self, out, (a, b), False)
            elif mode:
                _record_slow(self, out, (a, b), mode)
            return out
        if kind == _UNARY and len(args) == 1:
            a = args[0]
            if not isinstance(a, Tensor2D) or (self.float_only and a._data.dtype not in a._backend.float_types):
                (a,) = _operands(self, args)
            be = a._backend
            out = _wrap(self.forward(be, a._data), be)
            mode = state.mode
            if mode == GRAD:
                if a.requires_grad:
                    _link(self, out, (a,), False)
            elif mode:
                _record_slow(self, out, (a,), mode)
            return out
        inputs = args
        if self.broadcast or not args or (self.arity != -1 and len(args) != self.arity):
            inputs = _operands(self, args)
        else:  # tensors on one backend with one dtype: checked here; anything else, and errors, in _checks
            first = args[0]
            if not isinstance(first, Tensor2D):
                inputs = _operands(self, args)
            else:
                be, dt = first._backend, first._data.dtype
                for t in args:
                    if not isinstance(t, Tensor2D) or t._backend is not be or t._data.dtype != dt:
                        inputs = _operands(self, args)
                        break
                else:
                    if self.float_only and dt not in be.float_types:
                        inputs = _operands(self, args)
        if self._has_check:
            self.check(*inputs)
        be = inputs[0]._backend
        n = len(inputs)
        if n == 1:
            data = self.forward(be, inputs[0]._data)
        elif n == 2:
            data = self.forward(be, inputs[0]._data, inputs[1]._data)
        elif n == 3:
            data = self.forward(be, inputs[0]._data, inputs[1]._data, inputs[2]._data)
        else:
            data = self.forward(be, *[t._data for t in inputs])
        if self._moves:
            be = self.result_backend(be)
        out = _wrap(data, be)
        mode = state.mode  # record(), inlined
        if mode == GRAD:
            for t in inputs:
                if t.requires_grad:
                    _link(self, out, inputs, False)
                    break
        elif mode:
            _record_slow(self, out, inputs, mode)
        if self.views and be.aliases(data, inputs[0]._data):
            out._vc = inputs[0]._version_counter()
        return out

    def result_backend(self, be: Backend) -> Backend:
        """The backend the output lives on (the inputs' one, except for conversions)."""
        return be

    @property
    def output(self) -> Tensor2D:
        """The tensor this op produced (held weakly, so the graph has no reference cycles)."""
        out = self._out() if getattr(self, "_out", None) is not None else None
        if out is None:
            raise GraphError(f"{self.describe()}: its output tensor no longer exists")
        return out

    @property
    def scope(self) -> tuple[Any, ...]:
        """The modules this op was recorded inside, outermost first (``()`` outside any module).

        Set by the diagrams' module tracking (``matgrad.viz.scope``), not by the engine.
        """
        return getattr(self, "_scope", ())

    @scope.setter
    def scope(self, modules: tuple[Any, ...]) -> None:
        self._scope = modules

    def clear(self) -> None:
        """Forget a gradient left waiting here by a failed backward pass."""
        self.grad_out = None

    def release(self) -> None:
        """Drop what forward saved for backward; a later backward through here is an error."""
        self.released = True
        self.saved = None

    def describe(self) -> str:
        """Short label for diagrams and messages, e.g. ``pow(2)``; subclasses add parameters."""
        return self.name

    def check_saved(self) -> None:
        """Raise if a tensor saved for backward was changed in place since the op was recorded."""
        clock = self.clock
        if self.saves:
            inputs = self.inputs
            for i in self.saves:
                vc = inputs[i]._vc
                if vc is not None and vc.clock > clock:
                    raise_modified(self, f"input #{i}", inputs[i])
        if self.saves_output:
            out = self._out()
            if out is not None and out._vc is not None and out._vc.clock > clock:
                raise_modified(self, "output", out)

    def __repr__(self) -> str:
        return f"<{self.describe()} op>"


_object_new = object.__new__


def record(op: Op, data: Data, backend: Backend, inputs: tuple[Tensor2D, ...]) -> Tensor2D:
    """Wrap ``data`` as the output of ``op``; link it into the graph when grad mode is on."""
    out = _wrap(data, backend)
    mode = state.mode
    if mode == GRAD:
        for t in inputs:
            if t.requires_grad:
                _link(op, out, inputs, False)
                break
    elif mode:
        _record_slow(op, out, inputs, mode)
    return out


def _record_slow(op: Op, out: Tensor2D, inputs: tuple[Tensor2D, ...], mode: int) -> None:
    """``record`` with anomaly detection on: check the output first, then link it."""
    if mode & ANOMALY:
        _check_forward(op, out, inputs)
    if mode & GRAD and True in map(_requires_grad, inputs):
        _link(op, out, inputs, bool(mode & ANOMALY))


def _link(op: Op, out: Tensor2D, inputs: tuple[Tensor2D, ...], anomaly: bool) -> None:
    """Make ``op`` the node that produced ``out``: inputs, what backward will need, its order."""
    op.inputs = inputs
    op.needs_input_grad = tuple(map(_requires_grad, inputs))
    op.released = False
    op.grad_out = None
    op.mark = None
    op.seq = next(_sequence)
    op.clock = CHANGES[0]  # saved tensors changed after this clock make backward refuse
    if op.saves_output:
        op._out = weakref.ref(out)
    if anomaly or debug.on:
        op.site = user_site()
    if _record_hooks:
        for hook in _record_hooks:
            hook(op)
    out._op = op
    out.requires_grad = True


def _version(t: Tensor2D) -> int:
    vc = t._vc
    return 0 if vc is None else vc.count


def raise_modified(op: Op, what: str, t: Tensor2D) -> None:
    """The error for a saved tensor changed in place: which op, which tensor, how, and the fix."""
    label = f"{t.nrows}x{t.ncols}" + (f" {t.name!r}" if t.name else "")
    how = (t._vc.changed if t._vc is not None else "") or "an in-place change"
    raise GraphError(
        f"backward through {op.describe()}: its {what} ({label}) was modified by {how} after "
        f"{op.describe()} saved it for backward (now at version {_version(t)}){_site_of(op)}; "
        "the gradient would be wrong. Change it after backward, or give the op a copy (x.clone()) "
        "and change the original"
    )


def _shapes(tensors: Any) -> str:
    return ", ".join(f"{t.nrows}x{t.ncols}" for t in tensors)


def _site_of(op: Op) -> str:
    site = getattr(op, "site", None)
    return f"; the op was called at {site}" if site else ""


def _check_forward(op: Op, out: Tensor2D, inputs: tuple[Tensor2D, ...]) -> None:
    if not out._backend.all_finite(out._data) and all(t._backend.all_finite(t._data) for t in inputs):
        raise AnomalyError(
            f"{op.describe()} produced NaN or Inf in its {out.nrows}x{out.ncols} output from "
            f"finite inputs ({_shapes(inputs)})"
        )
