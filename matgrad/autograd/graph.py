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
from matgrad.autograd.grad_mode import debug, state
from matgrad.tensor import Tensor2D, _wrap

if TYPE_CHECKING:
    from matgrad.backends.base import Backend, Data

__all__ = ["Op", "RemovableHandle", "raise_modified", "record", "register_record_hook"]

_sequence = itertools.count()
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
    * ``differentiable``: False for ops whose result never needs a gradient (argmax, compare);
    * ``saves`` / ``saves_output``: the inputs / the output whose *values* backward reads;
    * ``check(*inputs)``: an optional method for op-specific shape checks (matmul's inner size).

    ``name`` defaults to the lower-cased class name. Everything else a subclass needs (the
    exponent of ``Pow``, the axis of ``Sum``) goes in its own ``__slots__`` and ``__init__``.
    """

    __slots__ = (
        "_out",
        "grad_out",
        "inputs",
        "mark",
        "needs_input_grad",
        "released",
        "saved",
        "scope",
        "seq",
        "site",
        "versions",
    )

    name: ClassVar[str] = "op"
    arity: ClassVar[int] = 1
    broadcast: ClassVar[bool] = False
    float_only: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True
    saves: ClassVar[tuple[int, ...]] = ()
    saves_output: ClassVar[bool] = False
    views: ClassVar[bool] = False  # the output may share the input's storage (reshape): one version counter
    _has_check: ClassVar[bool] = False
    _checks_saved: ClassVar[bool] = False  # saves something, or overrides check_saved
    _moves: ClassVar[bool] = False  # defines result_backend: the output lives on another backend

    # Set by ``record`` when the op joins a graph (slots, so unset on ops that never do).
    inputs: tuple[Tensor2D, ...]
    needs_input_grad: tuple[bool, ...]
    released: bool
    saved: Any
    scope: tuple[Any, ...]
    seq: int  # creation order: an op's inputs were all made by ops with smaller numbers
    site: str
    versions: tuple[int, ...]  # versions of the saved inputs (then the output) when recorded
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
        cls._checks_saved = bool(cls.saves or cls.saves_output) or any(
            "check_saved" in k.__dict__ for k in cls.__mro__ if k is not Op
        )

    def __call__(self, *args: Any) -> Tensor2D:
        """Apply the op: check the operands as declared, run ``forward``, record the result."""
        inputs = _operands(self, args)
        if self._has_check:
            self.check(*inputs)
        be = inputs[0]._backend
        n = len(inputs)
        if n == 1:
            data = self.forward(be, inputs[0]._data)
        elif n == 2:
            data = self.forward(be, inputs[0]._data, inputs[1]._data)
        else:
            data = self.forward(be, *[t._data for t in inputs])
        if self._moves:
            be = self.result_backend(be)
        out = record(self, data, be, inputs)
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
        if self.saves:
            versions, inputs = self.versions, self.inputs
            for k, i in enumerate(self.saves):
                vc = inputs[i]._vc
                if vc is not None and vc.count != versions[k]:
                    raise_modified(self, f"input #{i}", inputs[i], versions[k])
        if self.saves_output:
            out = self._out()
            if out is not None and _version(out) != self.versions[-1]:
                raise_modified(self, "output", out, self.versions[-1])

    def __repr__(self) -> str:
        return f"<{self.describe()} op>"


_object_new = object.__new__
_ZEROS = [(0,) * n for n in range(8)]


def record(op: Op, data: Data, backend: Backend, inputs: tuple[Tensor2D, ...]) -> Tensor2D:
    """Wrap ``data`` as the output of ``op``; link it into the graph when grad mode is on."""
    out = _wrap(data, backend)
    st = state
    if st.anomaly:
        _check_forward(op, out, inputs)
    if st.grad_enabled and op.differentiable:
        needs = tuple(map(_requires_grad, inputs))
        if True in needs:
            op.inputs = inputs
            op.needs_input_grad = needs
            op.released = False
            op.grad_out = None
            op.mark = None
            op.seq = next(_sequence)
            if op.saves_output:
                op._out = weakref.ref(out)
                op.versions = (*[_version(inputs[i]) for i in op.saves], _version(out))
            elif op.saves:
                for i in op.saves:  # a storage never changed in place is at version 0: the common case
                    if inputs[i]._vc is not None:
                        op.versions = tuple([_version(inputs[j]) for j in op.saves])
                        break
                else:
                    op.versions = _ZEROS[len(op.saves)]
            if debug.on or st.anomaly:
                op.site = user_site()
            if _record_hooks:
                for hook in _record_hooks:
                    hook(op)
            out._op = op
            out.requires_grad = True
    return out


def _version(t: Tensor2D) -> int:
    vc = t._vc
    return 0 if vc is None else vc.count


def raise_modified(op: Op, what: str, t: Tensor2D, saved: int) -> None:
    """The error for a saved tensor changed in place: which op, which tensor, how, and the fix."""
    label = f"{t.nrows}x{t.ncols}" + (f" {t.name!r}" if t.name else "")
    how = (t._vc.changed if t._vc is not None else "") or "an in-place change"
    raise GraphError(
        f"backward through {op.describe()}: its {what} ({label}) was modified by {how} after "
        f"{op.describe()} saved it for backward (version {_version(t)}, saved at version {saved}){_site_of(op)}; "
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
