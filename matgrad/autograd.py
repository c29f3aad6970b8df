"""The autograd engine: grad mode, the ``Op`` base class, graph recording and backward.

Every op is one ``Op`` subclass with ``forward`` (backend kernels on raw matrices) and
``backward`` (input gradients written as ``Tensor2D`` expressions) side by side. Because the
rules are tensor expressions, running them with grad mode on (``create_graph=True``) records
the gradient's own graph: second derivatives come for free.

Broadcasting is settled here, once: when a rule returns a gradient shaped like the output but
its input was a broadcast ``(1, n)``, ``(m, 1)`` or ``(1, 1)`` operand, the engine sums it back.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import weakref
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal, Sequence, TypeVar

from matgrad._errors import AnomalyError, GraphError, at_user_site, user_site
from matgrad.tensor import Tensor2D, _wrap

if TYPE_CHECKING:
    from matgrad.backends.base import Backend, Data

__all__ = [
    "Op",
    "backward",
    "detect_anomaly",
    "enable_grad",
    "grad",
    "is_grad_enabled",
    "no_grad",
    "is_anomaly_enabled",
    "set_debug",
    "set_grad_enabled",
]

F = TypeVar("F", bound=Callable[..., Any])

# Module globals read on every op: the cheapest state CPython can look up.
_grad_enabled = True
_anomaly = False
_debug = os.environ.get("MATGRAD_DEBUG", "").strip() not in ("", "0", "false", "False")
# The stack of nn.Modules being called (outermost first), recorded on each op for diagrams.
_scope: tuple[Any, ...] = ()
_sequence = itertools.count()


def is_grad_enabled() -> bool:
    """True when new ops record the graph (the default)."""
    return _grad_enabled


class _GradMode:
    """Context manager and decorator that sets grad mode and restores it on exit."""

    _mode: bool = True

    def __init__(self) -> None:
        self._prev: list[bool] = []

    def __enter__(self) -> None:
        global _grad_enabled
        self._prev.append(_grad_enabled)
        _grad_enabled = self._mode

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._prev.pop()

    def _fresh(self) -> _GradMode:
        return type(self)()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Run without recording the graph (inference, optimiser updates). Also a decorator."""

    _mode = False


class enable_grad(_GradMode):
    """Record the graph even inside ``no_grad``. Also a decorator."""

    _mode = True


class set_grad_enabled(_GradMode):
    """Set grad mode to ``mode``: a plain call, a context manager or a decorator (as PyTorch)."""

    def __init__(self, mode: bool) -> None:
        global _grad_enabled
        super().__init__()
        self._mode = bool(mode)
        self._prev.append(_grad_enabled)
        _grad_enabled = self._mode  # a plain call takes effect at once

    def __enter__(self) -> None:
        pass  # applied in __init__; __exit__ restores the mode saved there

    def _fresh(self) -> _GradMode:
        mode = self._mode
        return enable_grad() if mode else no_grad()

    def __call__(self, fn: F) -> F:
        global _grad_enabled
        _grad_enabled = self._prev.pop()  # used as a decorator: undo the change made in __init__
        return super().__call__(fn)


class detect_anomaly:
    """Check every op's output and every gradient for NaN and Inf; raise ``AnomalyError`` at the first.

    A context manager (``with matgrad.detect_anomaly():``) and a decorator. The error names the
    op that produced the first non-finite value, forward or backward, its shapes, and the
    user's file and line where that op was called. Outside it the check costs nothing.
    """

    def __init__(self) -> None:
        self._prev: list[bool] = []

    def __enter__(self) -> detect_anomaly:
        global _anomaly
        self._prev.append(_anomaly)
        _anomaly = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _anomaly
        _anomaly = self._prev.pop()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect_anomaly():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def is_anomaly_enabled() -> bool:
    """True inside ``detect_anomaly()``."""
    return _anomaly


def set_debug(mode: bool = True) -> None:
    """Record the user's call site on every op (also ``MATGRAD_DEBUG=1``), so errors raised later,
    in backward or by anomaly detection, point at the user's own line. Costs a stack walk per op."""
    global _debug
    _debug = bool(mode)


class Op:
    """One node of the graph: the op that produced a tensor, with its inputs in order.

    Subclasses define ``forward(backend, *data)`` returning the output matrix and
    ``backward(grad, *inputs)`` returning one gradient (a ``Tensor2D``, or ``None``) per input.
    A rule may return a gradient shaped like the output for a broadcast input: the engine sums
    it back. ``saved`` holds whatever forward keeps for backward; it is dropped when the graph
    is released.
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
    )

    name: ClassVar[str] = "op"
    needs_output: ClassVar[bool] = False

    # Set by ``record`` when the op joins a graph (slots, so unset on ops that never do).
    inputs: tuple[Tensor2D, ...]
    needs_input_grad: tuple[bool, ...]
    released: bool
    saved: Any
    scope: tuple[Any, ...]
    seq: int  # creation order: an op's inputs were all made by ops with smaller numbers
    site: str
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

    @property
    def output(self) -> Tensor2D:
        """The tensor this op produced (held weakly, so the graph has no reference cycles)."""
        out = self._out() if getattr(self, "_out", None) is not None else None
        if out is None:
            raise GraphError(f"{self.name}: its output tensor no longer exists")
        return out

    def release(self) -> None:
        """Drop what forward saved for backward; a later backward through here is an error."""
        self.released = True
        self.saved = None

    def describe(self) -> str:
        """Short label for diagrams and messages, e.g. ``pow(2)``; subclasses add parameters."""
        return self.name

    def __repr__(self) -> str:
        return f"<{self.describe()} op>"


_requires_grad = operator.attrgetter("requires_grad")


def record(op: Op, data: Data, backend: Backend, inputs: tuple[Tensor2D, ...]) -> Tensor2D:
    """Wrap ``data`` as the output of ``op``; link it into the graph when grad mode is on."""
    out = _wrap(data, backend)
    if _anomaly:
        _check_forward(op, out, inputs)
    if _grad_enabled:
        needs = tuple(map(_requires_grad, inputs))
        if True in needs:
            op.inputs = inputs
            op.needs_input_grad = needs
            op.released = False
            op.grad_out = None
            op.mark = None
            op.seq = next(_sequence)
            op.scope = _scope
            if op.needs_output:
                op._out = weakref.ref(out)
            if _debug or _anomaly:
                op.site = user_site()
            out._op = op
            out.requires_grad = True
    return out


def _shapes(tensors: Iterable[Tensor2D]) -> str:
    return ", ".join(f"{t.nrows}x{t.ncols}" for t in tensors)


def _site_of(op: Op) -> str:
    site = getattr(op, "site", None)
    if site:
        return f"; the op was called at {site}"
    return (
        "; its call site was not recorded: run the forward pass inside detect_anomaly() "
        "or after matgrad.set_debug(True) to see it"
    )


def _check_forward(op: Op, out: Tensor2D, inputs: tuple[Tensor2D, ...]) -> None:
    if not out._backend.all_finite(out._data) and all(t._backend.all_finite(t._data) for t in inputs):
        raise AnomalyError(
            at_user_site(
                f"{op.describe()} produced NaN or Inf in its {out.nrows}x{out.ncols} output from "
                f"finite inputs ({_shapes(inputs)})"
            )
        )


def _check_backward(op: Op, inp: Tensor2D, g: Tensor2D, index: int) -> None:
    if not g._backend.all_finite(g._data):
        raise AnomalyError(
            f"backward of {op.describe()} produced NaN or Inf in the gradient of its input "
            f"#{index} ({inp.nrows}x{inp.ncols}); inputs were {_shapes(op.inputs)}"
            f"{_site_of(op)}"
        )


def _sum_to(g: Tensor2D, shape: tuple[int, int], op: Op) -> Tensor2D:
    """Sum a gradient back over the axes its input was broadcast along."""
    gr, gc = g.shape
    r, c = shape
    axis: Literal[0, 1] | None = (
        None if (r == 1 and gr != 1 and c == 1 and gc != 1) else 0 if (r == 1 and gr != 1) else 1
    )
    if _grad_enabled:  # create_graph: the reduction must be part of the gradient's graph
        g = g.sum(axis=axis)
    else:
        g = _wrap(g._backend.sum(g._data, axis), g._backend)
    if g.shape != shape:  # a rule returned a wrong shape: a bug in matgrad, not in user code
        raise GraphError(f"backward of {op.name} gave a {gr}x{gc} gradient for a {r}x{c} input")
    return g


def _topological_order(roots: Sequence[Tensor2D]) -> list[Tensor2D]:
    """Every tensor that needs a gradient, inputs before outputs: leaves first, then op outputs.

    The tensors reachable from ``roots`` (a loop with an explicit stack, so a chain of any length
    works under the default recursion limit), sorted by the creation number of the op that made
    them: an op's inputs always exist before it, so creation order is a topological order
    (PyTorch's engine orders by the same kind of sequence number). Visited ops are marked with a
    token for this walk; only leaves need a set.
    """
    token = object()
    leaves: list[Tensor2D] = []
    made: list[Tensor2D] = []
    seen_leaves: set[int] = set()
    stack: list[Tensor2D] = []
    for root in roots:
        op = root._op
        if op is None:
            if id(root) not in seen_leaves:
                seen_leaves.add(id(root))
                leaves.append(root)
        elif op.mark is not token:
            op.mark = token
            stack.append(root)
    while stack:
        node = stack.pop()
        made.append(node)
        for inp in node._op.inputs:  # type: ignore[union-attr]
            if not inp.requires_grad:
                continue
            op = inp._op
            if op is None:
                if id(inp) not in seen_leaves:
                    seen_leaves.add(id(inp))
                    leaves.append(inp)
            elif op.mark is not token:
                op.mark = token
                stack.append(inp)
    made.sort(key=_creation)
    return leaves + made


_creation = operator.attrgetter("_op.seq")


_ONES: dict[tuple[Any, Any], Tensor2D] = {}


def _seed_grad(root: Tensor2D, g: Tensor2D | None, where: str) -> Tensor2D:
    if g is None:
        if root.shape != (1, 1):
            raise GraphError(
                at_user_site(
                    f"{where}: the output is {root.nrows}x{root.ncols}, not 1x1, so its gradient "
                    "is ambiguous; reduce it first (out.sum(), out.mean()) or pass grad= a tensor "
                    "of the same shape"
                )
            )
        key = (root._backend, root._data.dtype)
        one = _ONES.get(key)
        if one is None:  # never mutated: an engine seed never becomes a .grad without a copy
            one = _ONES[key] = _wrap(root._backend.full(1, 1, 1.0, root.dtype), root._backend)
        return one
    if not isinstance(g, Tensor2D):
        try:
            g = Tensor2D(g, dtype=root.dtype, backend=root.backend)
        except (TypeError, ValueError) as exc:  # name the call the bad grad was given to
            raise type(exc)(at_user_site(f"{where}: grad= {str(exc).replace('Tensor2D: ', '', 1)}")) from None
    if g.shape != root.shape or g._backend is not root._backend or g.dtype != root.dtype:
        raise GraphError(
            at_user_site(
                f"{where}: grad is {g.nrows}x{g.ncols} {g.dtype} on {g.backend} but the output is "
                f"{root.nrows}x{root.ncols} {root.dtype} on {root.backend}; they must match"
            )
        )
    return g


def _run(
    roots: Sequence[Tensor2D],
    seeds: Sequence[Tensor2D],
    retain_graph: bool,
    create_graph: bool,
    wanted: dict[int, int] | None = None,
    order: list[Tensor2D] | None = None,
) -> dict[int, Tensor2D]:
    """Propagate ``seeds`` from ``roots`` to every tensor that requires grad.

    With ``wanted`` (``id(tensor) -> position``) the gradients of those tensors are returned and
    ``.grad`` is left alone; otherwise leaves (and tensors with ``retain_grad``) accumulate into
    ``.grad``. All or nothing: ``.grad`` is written, and the graph released, only once every rule
    has run, so an error (a released graph, an anomaly) leaves everything as it was.
    """
    global _grad_enabled
    if order is None:
        order = _topological_order(roots)
    for node in reversed(order):  # from the output, so the message names the op nearest to it
        op = node._op
        if op is not None and op.released:
            raise GraphError(
                at_user_site(
                    f"backward through {op.describe()} a second time: its graph was released by the "
                    "first backward; pass retain_graph=True to the first call (or recompute the forward pass)"
                )
            )
    # A made tensor's pending gradient waits on its op (op.grad_out); a leaf's waits here.
    at_leaves: dict[int, Tensor2D] = {}
    for r, s in zip(roots, seeds):
        _accumulate(r, s, at_leaves)
    captured: dict[int, Tensor2D] = {}
    stores: list[tuple[Tensor2D, Tensor2D]] = []  # (tensor, its gradient), written at the end
    saved_mode = _grad_enabled
    _grad_enabled = create_graph
    try:
        for node in reversed(order):
            op = node._op
            if op is None:
                g = at_leaves.pop(id(node), None)
            else:
                g = op.grad_out
                op.grad_out = None
            if g is None:
                continue
            if wanted is not None:
                if id(node) in wanted:
                    captured[id(node)] = g
            elif op is None or node._retain:
                stores.append((node, g))
            if op is None:
                continue
            in_grads = _backward_unchecked(op, g) if _anomaly else op.backward(g, *op.inputs)
            for i, (inp, need, ig) in enumerate(zip(op.inputs, op.needs_input_grad, in_grads)):
                if not need or ig is None:
                    continue
                if ig._data.shape != inp._data.shape:
                    ig = _sum_to(ig, inp.shape, op)
                if _anomaly:
                    _check_backward(op, inp, ig, i)
                # _accumulate, inlined: this loop runs for every edge of the graph
                iop = inp._op
                if iop is None:
                    prev = at_leaves.get(id(inp))
                    at_leaves[id(inp)] = ig if prev is None else prev + ig
                else:
                    prev = iop.grad_out
                    iop.grad_out = ig if prev is None else prev + ig
        if stores:
            _store_grads(stores, seeds, create_graph)
    except BaseException:
        for node in order:  # a failed pass leaves no gradient waiting on an op
            if node._op is not None:
                node._op.grad_out = None
        raise
    finally:
        _grad_enabled = saved_mode
    if not retain_graph:
        for node in order:
            if node._op is not None:
                node._op.release()
    return captured


def _accumulate(t: Tensor2D, g: Tensor2D, at_leaves: dict[int, Tensor2D]) -> None:
    """Add ``g`` to the gradient waiting for ``t`` (on its op, or in ``at_leaves`` for a leaf)."""
    op = t._op
    if op is None:
        prev = at_leaves.get(id(t))
        at_leaves[id(t)] = g if prev is None else prev + g
    else:
        prev = op.grad_out
        op.grad_out = g if prev is None else prev + g


def _store_grads(stores: list[tuple[Tensor2D, Tensor2D]], seeds: Sequence[Tensor2D], create_graph: bool) -> None:
    """Accumulate into ``.grad``, never letting two tensors (or the caller's seed) share storage.

    A rule may return one gradient object for two inputs (add does), so storage already handed
    out is copied before it becomes a second tensor's ``.grad``.
    """
    handed_out = {id(s._data) for s in seeds}
    for node, g in stores:
        g_store = g if create_graph or not g.requires_grad else g.detach()
        if node.grad is not None:
            g_store = node.grad + g_store
        elif id(g_store._data) in handed_out:
            g_store = _wrap(g_store._backend.copy(g_store._data), g_store._backend)
        handed_out.add(id(g_store._data))
        node.grad = g_store


def _backward_unchecked(op: Op, g: Tensor2D) -> tuple[Tensor2D | None, ...]:
    global _anomaly
    _anomaly = False
    try:
        return op.backward(g, *op.inputs)
    finally:
        _anomaly = True


def backward(
    tensor: Tensor2D,
    grad: Tensor2D | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> None:
    """Accumulate d(tensor)/d(leaf) into every leaf's ``.grad`` (see ``Tensor2D.backward``)."""
    if not tensor.requires_grad:
        raise GraphError(
            at_user_site(
                "backward: this tensor does not require grad, so there is no graph to walk; "
                "create the leaves with requires_grad=True (and not under no_grad())"
            )
        )
    seed = _seed_grad(tensor, grad, "backward")
    keep = create_graph if retain_graph is None else retain_graph
    _run([tensor], [seed], keep, create_graph)


def _as_sequence(x: Any, what: str, allow_none: bool = False) -> list[Any]:
    """A tensor or a list/tuple of tensors (``None`` allowed in grad_outputs) as a list."""
    if isinstance(x, Tensor2D):
        return [x]
    if isinstance(x, (list, tuple)) and all(isinstance(t, Tensor2D) or (allow_none and t is None) for t in x):
        return list(x)
    raise TypeError(
        at_user_site(f"grad: {what} must be a Tensor2D or a list of Tensor2D, got {type(x).__name__} {x!r:.60}")
    )


def grad(
    outputs: Tensor2D | Sequence[Tensor2D],
    inputs: Tensor2D | Sequence[Tensor2D],
    grad_outputs: Tensor2D | Sequence[Tensor2D | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor2D | None, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, returned, with ``.grad`` untouched.

    As ``torch.autograd.grad``: ``grad_outputs`` seeds non-scalar outputs; ``create_graph=True``
    makes the result differentiable (Hessian-vector products); an input the outputs do not
    depend on is an error unless ``allow_unused=True``, which returns ``None`` for it.
    """
    outs = _as_sequence(outputs, "outputs")
    ins = _as_sequence(inputs, "inputs")
    if not outs or not ins:
        raise GraphError(at_user_site("grad: outputs and inputs must each hold at least one tensor"))
    if grad_outputs is None:
        seeds_in: list[Tensor2D | None] = [None] * len(outs)
    else:
        seeds_in = _as_sequence(grad_outputs, "grad_outputs", allow_none=True)
    if len(seeds_in) != len(outs):
        raise GraphError(f"grad: {len(outs)} outputs but {len(seeds_in)} grad_outputs")
    for t in ins:
        if not t.requires_grad:
            raise GraphError(at_user_site("grad: an input does not require grad; create it with requires_grad=True"))
    roots, seeds = [], []
    for o, s in zip(outs, seeds_in):
        if not o.requires_grad:
            raise GraphError(at_user_site("grad: an output does not depend on any tensor that requires grad"))
        roots.append(o)
        seeds.append(_seed_grad(o, s, "grad"))
    keep = create_graph if retain_graph is None else retain_graph
    order = _topological_order(roots)
    if not allow_unused:  # checked before anything runs, so nothing is released by a failed call
        reached = {id(t) for t in order}
        for i, t in enumerate(ins):
            if id(t) not in reached:
                raise GraphError(
                    at_user_site(
                        f"grad: input #{i} ({t.nrows}x{t.ncols}) was not used to compute the outputs; "
                        "pass allow_unused=True to get None for it"
                    )
                )
    captured = _run(roots, seeds, keep, create_graph, {id(t): i for i, t in enumerate(ins)}, order)
    return tuple(captured.get(id(t)) for t in ins)
