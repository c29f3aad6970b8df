"""``Function``: an op written by a user, with the user's own backward rule, shaped like PyTorch's.

    class Softplus(mg.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x.relu() + (-x.abs()).exp().log1p())   # any Tensor2D code; not recorded

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x.sigmoid()                       # Tensor2D ops: differentiable again

    y = Softplus.apply(x)

``apply`` runs ``forward`` with recording off, then records one op, named after the class, whose
rule is ``backward``. It goes through the same door as matgrad's own ops (``graph.record``): the
same grad mode, anomaly checks, version checks of saved tensors, diagrams and gradcheck reports.
Mistakes in a Function are matgrad errors that name the class and the file:line where its
``forward`` or ``backward`` is defined.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

from matgrad._errors import ArgumentTypeError, BackendError, DTypeError, GraphError, ShapeError
from matgrad.autograd.grad_mode import GRAD, no_grad, state
from matgrad.autograd.graph import Op, raise_modified, record
from matgrad.backends.base import Backend, Data
from matgrad.tensor import CHANGES, Tensor2D, _wrap

__all__ = ["Function", "FunctionCtx"]


def _defined_at(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "?"


class FunctionCtx:
    """What ``forward`` leaves for ``backward``.

    ``ctx.save_for_backward(*tensors)`` and ``ctx.saved_tensors`` keep tensors (version-checked:
    backward refuses to run if one was changed in place since); ``ctx.needs_input_grad`` is a
    tuple of bools, one per forward argument; any other attribute can be set freely.
    """

    needs_input_grad: tuple[bool, ...]

    def __init__(self) -> None:
        self._saved: tuple[Tensor2D | None, ...] = ()
        self._clock = -1
        self._released = False
        self.materialize_grads = True

    def save_for_backward(self, *tensors: Tensor2D | None) -> None:
        """Keep tensors (inputs, outputs or intermediates) for ``backward``."""
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, Tensor2D):
                raise ArgumentTypeError(
                    f"save_for_backward: argument #{i} is a {type(t).__name__}; save tensors only "
                    "(keep other values as attributes: ctx.alpha = alpha)"
                )
        self._saved = tensors
        self._clock = CHANGES[0]  # the op's clock: a saved tensor changed after it makes backward refuse

    @property
    def saved_tensors(self) -> tuple[Tensor2D | None, ...]:
        """The tensors given to ``save_for_backward``, in order."""
        if self._released:
            raise GraphError(
                "saved_tensors: this Function's graph was released by a backward pass; pass retain_graph=True "
                "to the first backward (or recompute the forward pass)"
            )
        return self._saved

    def set_materialize_grads(self, value: bool) -> None:
        """With False, an output that received no gradient is passed to ``backward`` as None, not zeros."""
        self.materialize_grads = bool(value)


class FunctionOp(Op):
    """The graph node of one ``Function.apply`` call; a subclass per Function carries its name."""

    __slots__ = ("args", "ctx", "fn", "grads", "kwargs", "n_outputs", "output_refs")
    arity, float_only = -1, False
    fn_class: ClassVar[type[Function]]

    def __init__(self, fn: type[Function], ctx: FunctionCtx, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.ctx = ctx
        self.args = args
        self.kwargs = kwargs
        self.n_outputs = 1
        self.grads: list[Tensor2D | None] = []
        self.output_refs: list[weakref.ref[Tensor2D]] = []

    def describe(self) -> str:
        return self.fn.__name__

    def definition_site(self) -> str:
        """Where the Function's ``backward`` is defined (file:line)."""
        return _defined_at(self.fn.backward)

    def check_saved(self) -> None:
        ctx = self.ctx
        for k, t in enumerate(ctx._saved):
            if t is not None and t._vc is not None and t._vc.clock > self.clock:
                raise_modified(self, f"saved tensor #{k}", t)

    def release(self) -> None:
        super().release()
        self.ctx._released = True
        self.grads = []

    def clear(self) -> None:
        self.grad_out = None
        self.grads = [None] * self.n_outputs

    def forward(self, be: Backend, *data: Data) -> Data:  # never called: apply ran the user's forward
        raise NotImplementedError

    def backward(self, grad: Tensor2D, *inputs: Tensor2D) -> tuple[Tensor2D | None, ...]:
        fn = self.fn
        if self.n_outputs == 1:
            outs: list[Tensor2D | None] = [grad]
        else:
            outs = self.grads
            self.grads = [None] * self.n_outputs
        if self.ctx.materialize_grads:
            outs = [g if g is not None else _zeros_like_output(self, k) for k, g in enumerate(outs)]
        result = fn.backward(self.ctx, *outs)  # type: ignore[arg-type]
        return self._unshared(self._check_grads(result))

    def _unshared(self, grads: tuple[Tensor2D | None, ...]) -> tuple[Tensor2D | None, ...]:
        """The gradients, copied where one is a tensor the user holds (an input, a saved tensor,
        a ``ctx`` attribute, an output): the engine hands gradients out as ``.grad``, and a user's
        later in-place change of one must not reach the other (as PyTorch clones a gradient
        someone else holds)."""
        held: set[int] = set()
        candidates: list[Any] = [*self.args, *self.ctx._saved, *vars(self.ctx).values()]
        candidates += [ref() for ref in self.output_refs]
        for t in candidates:
            for u in t if isinstance(t, (tuple, list)) else (t,):
                if isinstance(u, Tensor2D):
                    held.add(u._backend.storage(u._data))
        out: list[Tensor2D | None] = []
        for g in grads:
            if g is not None and g._backend.storage(g._data) in held:
                g = g.clone() if state.mode & GRAD else _wrap(g._backend.copy(g._data), g._backend)
            out.append(g)
        return tuple(out)

    def _check_grads(self, result: Any) -> tuple[Tensor2D | None, ...]:
        name, site = self.fn.__name__, self.definition_site()
        where = f"{name}.backward (defined at {site})"
        if not isinstance(result, tuple):
            result = (result,)
        n = len(self.args)
        if len(result) < n or any(g is not None for g in result[n:]):
            raise GraphError(
                f"{where} returned {len(result)} gradient(s) but forward takes {n} argument(s); "
                "return one per forward argument (None for non-tensors and inputs that need none)"
            )
        grads: list[Tensor2D | None] = []
        for i, (arg, g) in enumerate(zip(self.args, result)):
            if not isinstance(arg, Tensor2D):
                if g is not None:
                    raise GraphError(
                        f"{where} returned a gradient for argument #{i}, a {type(arg).__name__}, "
                        "not a tensor; return None there"
                    )
                continue
            if g is None:
                grads.append(None)
                continue
            if not isinstance(g, Tensor2D):
                raise ArgumentTypeError(
                    f"{where}: the gradient for argument #{i} is a {type(g).__name__}, not a Tensor2D"
                )
            if g._backend is not arg._backend:
                raise BackendError(
                    f"{where}: the gradient for argument #{i} is on {g.backend} but the argument is on {arg.backend}"
                )
            if g.dtype != arg.dtype:
                raise DTypeError(
                    f"{where}: the gradient for argument #{i} is {g.dtype} but the argument is {arg.dtype}"
                )
            (r, c), (gr, gc) = arg.shape, g.shape
            if (r, c) != (gr, gc) and ((r != 1 and r != gr) or (c != 1 and c != gc)):
                raise ShapeError(
                    f"{where}: the gradient for argument #{i} is {gr}x{gc} but the argument is {r}x{c}; "
                    "a gradient has its argument's shape"
                )
            grads.append(g)
        return tuple(grads)


def _zeros_like_output(op: FunctionOp, k: int) -> Tensor2D:
    t = op.output_refs[k]() if k < len(op.output_refs) else None
    if t is None:
        raise GraphError(f"{op.describe()}: output #{k} no longer exists, so its zero gradient has no shape")
    return _wrap(t._backend.full(t.nrows, t.ncols, 0.0, t.dtype), t._backend)


class _Output(Op):
    """Output ``k`` of a Function with several: ``C = output k``;  stores ``G`` for the Function's rule."""

    __slots__ = ("data", "index", "owner")
    float_only = False

    def __init__(self, owner: FunctionOp, index: int, data: Data) -> None:
        self.owner = owner
        self.index = index
        self.data = data

    def describe(self) -> str:
        return f"{self.owner.describe()}[{self.index}]"

    def forward(self, be: Backend, packed: Data) -> Data:
        out, self.data = self.data, None
        return out

    def backward(self, grad: Tensor2D, packed: Tensor2D) -> tuple[Tensor2D | None, ...]:
        self.owner.grads[self.index] = grad
        return (_wrap(packed._backend.full(1, 1, 0.0, packed.dtype), packed._backend),)


_op_classes: dict[type, type[FunctionOp]] = {}


def _op_class(fn: type[Function]) -> type[FunctionOp]:
    cls = _op_classes.get(fn)
    if cls is None:  # setdefault: two threads making it at once keep one class
        made = type(fn.__name__, (FunctionOp,), {"name": fn.__name__, "__module__": fn.__module__, "fn_class": fn})
        cls = _op_classes.setdefault(fn, made)
    return cls


class Function:
    """Base class of ops a user writes: subclass it with static ``forward`` and ``backward``.

    ``forward(ctx, *args, **kwargs)`` runs with recording off and returns a Tensor2D or a tuple of
    them; ``backward(ctx, *grad_outputs)`` returns one gradient per positional forward argument
    (None for non-tensors and inputs that need none), written with Tensor2D ops so that
    ``create_graph=True`` differentiates through it. Call it with ``MyOp.apply(*args, **kwargs)``.
    Tensors passed by keyword are constants (no gradient); pass differentiable inputs positionally.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any, **kwargs: Any) -> Any:
        """The computation (see the class docstring)."""
        raise NotImplementedError("a Function subclass must define a static forward(ctx, *args)")

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Tensor2D) -> Any:
        """One gradient per forward argument (see the class docstring)."""
        raise NotImplementedError("a Function subclass must define a static backward(ctx, *grad_outputs)")

    def __init__(self) -> None:
        raise ArgumentTypeError(
            f"{type(self).__name__}: a Function is not instantiated; call {type(self).__name__}.apply(...)"
        )

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Run ``forward`` and record one op whose rule is ``backward``."""
        for key, value in kwargs.items():
            if isinstance(value, Tensor2D) and value.requires_grad:
                raise ArgumentTypeError(
                    f"{cls.__name__}.apply: the tensor passed as {key}= requires grad, but keyword "
                    "arguments are constants; pass it positionally to get its gradient"
                )
        inputs = tuple(a for a in args if isinstance(a, Tensor2D))
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor2D) and a.requires_grad for a in args)
        with no_grad():
            result = cls.forward(ctx, *args, **kwargs)
        single = isinstance(result, Tensor2D)
        outs = (result,) if single else result
        if not isinstance(outs, (tuple, list)) or not outs or not all(isinstance(o, Tensor2D) for o in outs):
            got = (
                type(result).__name__
                if single or not isinstance(outs, (tuple, list))
                else (
                    f"an empty {type(outs).__name__}"
                    if not outs
                    else f"a {type(outs).__name__} holding {', '.join(type(o).__name__ for o in outs)}"
                )
            )
            raise ArgumentTypeError(
                f"{cls.__name__}.forward (defined at {_defined_at(cls.forward)}) returned {got}; "
                "forward must return a Tensor2D or a tuple of them"
            )
        if not (state.mode & GRAD and True in (t.requires_grad for t in inputs)):
            return result if single else tuple(outs)
        op = _op_class(cls)(cls, ctx, args, kwargs)
        if single:
            o = outs[0]
            out = record(op, o._data, o._backend, inputs)
            op.clock = ctx._clock  # saved in forward, before the op was recorded
            _share_version(out, o)
            op.output_refs = [weakref.ref(out)]
            _connect_saved_outputs(ctx, outs, [out])
            return out
        be = outs[0]._backend
        op.n_outputs = len(outs)
        op.grads = [None] * len(outs)
        packed = record(op, be.full(1, 1, 0.0, outs[0].dtype if outs[0].dtype != "int64" else "float32"), be, inputs)
        op.clock = ctx._clock
        results = []
        for k, o in enumerate(outs):
            r = _Output(op, k, o._data)(packed) if packed.requires_grad else o
            _share_version(r, o)
            results.append(r)
        op.output_refs = [weakref.ref(r) for r in results]
        _connect_saved_outputs(ctx, outs, results)
        return tuple(results)


def _connect_saved_outputs(ctx: FunctionCtx, made: Any, recorded: list[Tensor2D]) -> None:
    """A saved output becomes the recorded output, so a second derivative flows through it (as PyTorch).

    Anything else forward saved and computed itself stays a constant to the second derivative:
    save inputs and outputs, and recompute intermediates in backward, when that matters.
    """
    swap = {id(m): r for m, r in zip(made, recorded)}
    if any(t is not None and id(t) in swap for t in ctx._saved):
        ctx._saved = tuple(swap.get(id(t), t) if t is not None else None for t in ctx._saved)


def _share_version(out: Tensor2D, src: Tensor2D) -> None:
    """``out`` wraps ``src``'s storage: one version counter for both (``src`` may be saved)."""
    if out is not src:
        out._vc = src._version_counter()
