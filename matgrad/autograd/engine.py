"""The backward side of autograd: topological order, gradient propagation, ``backward`` and ``grad``.

``_propagate`` is the whole chain rule: from seeds at the roots, run every op's rule in reverse
creation order and hand each tensor the sum of the gradients reaching it. It writes no ``.grad``
and releases nothing; ``backward`` stores what it returns into ``.grad``, ``grad`` returns it.
Both first check that every op on the way can still run (not released, saved tensors unchanged),
so a failed call changes nothing.

Broadcasting is settled here, once: when a rule returns a gradient shaped like the output but its
input was a broadcast ``(1, n)``, ``(m, 1)`` or ``(1, 1)`` operand, the engine sums it back.
"""

from __future__ import annotations

import operator
import threading
from typing import TYPE_CHECKING, Any, Literal, Sequence

from matgrad._errors import AnomalyError, ArgumentTypeError, GraphError
from matgrad.autograd.grad_mode import ANOMALY, GRAD, state
from matgrad.tensor import CHANGES, Tensor2D, _wrap

if TYPE_CHECKING:
    from matgrad.autograd.graph import Op

__all__ = ["backward", "grad"]

# One backward pass at a time in the process. The walk keeps its scratch on the graph's ops (the
# pending gradient, a visit mark) and stores into shared leaves' .grad: two threads walking one
# graph, or accumulating into one parameter, must not interleave (PyTorch locks per node; one
# lock per pass is enough here, and costs one uncontended acquire per backward call). Forward
# passes never take it. Re-entrant: a Function's backward may call grad() itself.
_lock = threading.RLock()


def _shapes(tensors: Sequence[Tensor2D]) -> str:
    return ", ".join(f"{t.nrows}x{t.ncols}" for t in tensors)


def _site_of(op: Op) -> str:
    site = getattr(op, "site", None)
    if site:
        return f"; the op was called at {site}"
    return (
        "; its call site was not recorded: run the forward pass inside detect_anomaly() "
        "or after matgrad.set_debug(True) to see it"
    )


def _check_backward(op: Op, inp: Tensor2D, g: Tensor2D, index: int) -> None:
    if not g._backend.all_finite(g._data):
        raise AnomalyError(
            f"backward of {op.describe()} produced NaN or Inf in the gradient of its input "
            f"#{index} ({inp.nrows}x{inp.ncols}); inputs were {_shapes(op.inputs)}"
            f"{_site_of(op)}",
            site=False,  # the op's own call site, when recorded, is the line that matters
        )


def _sum_to(g: Tensor2D, shape: tuple[int, int], op: Op) -> Tensor2D:
    """Sum a gradient back over the axes its input was broadcast along."""
    gr, gc = g.shape
    r, c = shape
    if (r != 1 and r != gr) or (c != 1 and c != gc):  # not a broadcast: the rule is wrong
        raise GraphError(f"backward of {op.describe()} gave a {gr}x{gc} gradient for a {r}x{c} input")
    axis: Literal[0, 1] | None = (
        None if (r == 1 and gr != 1 and c == 1 and gc != 1) else 0 if (r == 1 and gr != 1) else 1
    )
    if state.mode & GRAD:  # create_graph: the reduction must be part of the gradient's graph
        return g.sum(axis=axis)
    return _wrap(g._backend.sum(g._data, axis), g._backend)


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


def _check_runnable(order: list[Tensor2D]) -> None:
    """Every op on the way must still hold its graph, and its saved tensors must be unchanged."""
    for node in reversed(order):  # from the output, so the message names the op nearest to it
        op = node._op
        if op is None:
            continue
        if op.released:
            _raise_released(op)
        if op._checks_saved:
            op.check_saved()


def _raise_released(op: Op) -> None:
    raise GraphError(
        f"backward through {op.describe()} a second time: its graph was released by the "
        "first backward; pass retain_graph=True to the first call (or recompute the forward pass)"
    )


def _propagate(
    order: list[Tensor2D],
    roots: Sequence[Tensor2D],
    seeds: Sequence[Tensor2D],
    create_graph: bool,
    capture: set[int] | None,
) -> list[tuple[Tensor2D, Tensor2D]]:
    """Run the chain rule from ``roots`` (seeded with ``seeds``) through ``order``, outputs first.

    Returns ``(tensor, gradient)`` for every tensor in ``capture`` (ids), or, with ``capture``
    None, for every leaf and every tensor marked ``retain_grad``. Rules run with grad mode set to
    ``create_graph``, so with it on the gradients carry their own graph. Each op is checked as
    the pass reaches it (not released, saved tensors unchanged). Pure: no ``.grad`` is written
    and nothing is released, so a failure, wherever it happens, changes nothing; no gradient is
    left waiting on an op.
    """
    at_leaves: dict[int, Tensor2D] = {}  # a made tensor's pending gradient waits on its op
    for root, seed in zip(roots, seeds):
        _accumulate(root, seed, at_leaves)
    found: list[tuple[Tensor2D, Tensor2D]] = []
    st = state
    saved_mode = st.mode
    anomaly = bool(saved_mode & ANOMALY)
    st.mode = (saved_mode | GRAD) if create_graph else (saved_mode & ~GRAD)
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
            if capture is None:
                if op is None or node._retain:
                    found.append((node, g))
            elif id(node) in capture:
                found.append((node, g))
            if op is None:
                continue
            if op.released:  # checked as the pass reaches each op: a failed pass changes nothing
                _raise_released(op)
            if op._checks_saved and op.clock != CHANGES[0]:  # something changed in place since
                op.check_saved()
            if anomaly:  # rules build ops of their own: check their gradients, not their forwards
                st.mode &= ~ANOMALY
                try:
                    in_grads = op.backward(g, *op.inputs)
                finally:
                    st.mode |= ANOMALY
            else:
                in_grads = op.backward(g, *op.inputs)
            for i, (inp, need, ig) in enumerate(zip(op.inputs, op.needs_input_grad, in_grads)):
                if not need or ig is None:
                    continue
                if ig._data.shape != inp._data.shape:
                    ig = _sum_to(ig, inp.shape, op)
                if anomaly:
                    _check_backward(op, inp, ig, i)
                # _accumulate, inlined: this loop runs for every edge of the graph
                iop = inp._op
                if iop is None:
                    prev = at_leaves.get(id(inp))
                    at_leaves[id(inp)] = ig if prev is None else prev + ig
                else:
                    prev = iop.grad_out
                    iop.grad_out = ig if prev is None else prev + ig
    except BaseException:
        for node in order:  # a failed pass leaves no gradient waiting on an op
            if node._op is not None:
                node._op.clear()
        raise
    finally:
        st.mode = saved_mode
    return found


def _accumulate(t: Tensor2D, g: Tensor2D, at_leaves: dict[int, Tensor2D]) -> None:
    """Add ``g`` to the gradient waiting for ``t`` (on its op, or in ``at_leaves`` for a leaf)."""
    op = t._op
    if op is None:
        prev = at_leaves.get(id(t))
        at_leaves[id(t)] = g if prev is None else prev + g
    else:
        prev = op.grad_out
        op.grad_out = g if prev is None else prev + g


def _own(g: Tensor2D, taken: set[int], create_graph: bool) -> Tensor2D:
    """``g``, or a copy when its storage was already handed out (a copy in the graph under create_graph)."""
    key = g._backend.storage(g._data)
    if key in taken:
        if create_graph:
            with _GradOn():
                g = g.clone()
        else:
            g = _wrap(g._backend.copy(g._data), g._backend)
        key = g._backend.storage(g._data)
    taken.add(key)
    return g


class _GradOn:
    def __enter__(self) -> None:
        self.prev = state.mode
        state.mode = self.prev | GRAD

    def __exit__(self, *exc: object) -> None:
        state.mode = self.prev


def _release(order: list[Tensor2D]) -> None:
    for node in order:
        if node._op is not None:
            node._op.release()


_ONES: dict[tuple[Any, str], Tensor2D] = {}


def _one(root: Tensor2D) -> Tensor2D:
    """The engine's 1x1 seed for ``root``'s backend and dtype, made once.

    Never handed out: ``backward`` and ``grad`` count its storage as taken, so a gradient that
    is the seed itself (a pass-through rule) reaches the user as a copy.
    """
    key = (root._backend, root.dtype)
    one = _ONES.get(key)
    if one is None:
        be = root._backend
        # the class's kernel, not a possibly patched instance's: a constant of the engine, made once,
        # is not part of the step that happened to need it first (matgrad.compile records steps)
        one = _ONES[key] = _wrap(type(be).full(be, 1, 1, 1.0, root.dtype), be)
    return one


def _seed_grad(root: Tensor2D, g: Any, where: str) -> Tensor2D:
    if g is None:
        if root.shape != (1, 1):
            raise GraphError(
                f"{where}: the output is {root.nrows}x{root.ncols}, not 1x1, so its gradient "
                "is ambiguous; reduce it first (out.sum(), out.mean()) or pass grad= a tensor "
                "of the same shape"
            )
        return _one(root)
    if not isinstance(g, Tensor2D):
        try:
            g = Tensor2D(g, dtype=root.dtype, backend=root.backend)
        except (TypeError, ValueError) as exc:  # name the call the bad grad was given to
            raise type(exc)(f"{where}: grad= {str(exc).replace('Tensor2D: ', '', 1)}") from None
    if g.shape != root.shape or g._backend is not root._backend or g.dtype != root.dtype:
        raise GraphError(
            f"{where}: grad is {g.nrows}x{g.ncols} {g.dtype} on {g.backend} but the output is "
            f"{root.nrows}x{root.ncols} {root.dtype} on {root.backend}; they must match"
        )
    seed: Tensor2D = g
    return seed


def backward(
    tensor: Tensor2D,
    grad: Tensor2D | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> None:
    """Accumulate d(tensor)/d(leaf) into every leaf's ``.grad`` (see ``Tensor2D.backward``)."""
    if not tensor.requires_grad:
        raise GraphError(
            "backward: this tensor does not require grad, so there is no graph to walk; "
            "create the leaves with requires_grad=True (and not under no_grad())"
        )
    seed = _seed_grad(tensor, grad, "backward")
    keep = create_graph if retain_graph is None else retain_graph
    with _lock:
        order = _topological_order([tensor])
        found = _propagate(order, [tensor], [seed], create_graph, None)
        # All or nothing: .grad is written only once every rule has run.
        taken = {seed._backend.storage(seed._data)}  # the caller's grad, or the engine's seed
        for node, g in found:
            if not create_graph and g.requires_grad:
                g = g.detach()
            if node.grad is not None:
                if create_graph:
                    with _GradOn():
                        g = node.grad + g
                else:
                    g = node.grad + g
                taken.add(g._backend.storage(g._data))
            else:
                key = g._backend.storage(g._data)
                if key in taken:  # another leaf (or the seed) has this storage already: a copy
                    g = _own(g, taken, create_graph)
                else:
                    taken.add(key)
            node.grad = g
        if not keep:
            _release(order)


def _as_sequence(x: Any, what: str, allow_none: bool = False) -> list[Any]:
    """A tensor or a list/tuple of tensors (``None`` allowed in grad_outputs) as a list."""
    if isinstance(x, Tensor2D):
        return [x]
    if isinstance(x, (list, tuple)) and all(isinstance(t, Tensor2D) or (allow_none and t is None) for t in x):
        return list(x)
    raise ArgumentTypeError(f"grad: {what} must be a Tensor2D or a list of Tensor2D, got {type(x).__name__} {x!r:.60}")


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
    depend on is an error unless ``allow_unused=True``, which returns ``None`` for it. Every
    result owns its storage, except a ``grad_outputs`` tensor passed straight through (as PyTorch).
    """
    outs = _as_sequence(outputs, "outputs")
    ins = _as_sequence(inputs, "inputs")
    if not outs or not ins:
        raise GraphError("grad: outputs and inputs must each hold at least one tensor")
    if grad_outputs is None:
        seeds_in: list[Tensor2D | None] = [None] * len(outs)
    else:
        seeds_in = _as_sequence(grad_outputs, "grad_outputs", allow_none=True)
    if len(seeds_in) != len(outs):
        raise GraphError(f"grad: {len(outs)} outputs but {len(seeds_in)} grad_outputs")
    for t in ins:
        if not t.requires_grad:
            raise GraphError("grad: an input does not require grad; create it with requires_grad=True")
    roots, seeds = [], []
    for o, s in zip(outs, seeds_in):
        if not o.requires_grad:
            raise GraphError("grad: an output does not depend on any tensor that requires grad")
        roots.append(o)
        seeds.append(_seed_grad(o, s, "grad"))
    keep = create_graph if retain_graph is None else retain_graph
    with _lock:
        order = _topological_order(roots)
        reached = {id(t) for t in order}
        if not allow_unused:  # checked before anything runs, so nothing is released by a failed call
            for i, t in enumerate(ins):
                if id(t) not in reached:
                    raise GraphError(
                        f"grad: input #{i} ({t.nrows}x{t.ncols}) was not used to compute the outputs; "
                        "pass allow_unused=True to get None for it"
                    )
        found = dict((id(t), g) for t, g in _propagate(order, roots, seeds, create_graph, {id(t) for t in ins}))
        if not keep:
            _release(order)
    # The user's own grad_outputs may pass through (PyTorch documents it); nothing else is shared.
    passed = {s._backend.storage(s._data) for s, given in zip(seeds, seeds_in) if given is not None}
    taken = {s._backend.storage(s._data) for s, given in zip(seeds, seeds_in) if given is None}  # engine seeds
    result: list[Tensor2D | None] = []
    for t in ins:
        g = found.get(id(t))
        if g is not None:
            key = g._backend.storage(g._data)
            if key in passed and key not in taken:
                taken.add(key)
            else:
                g = _own(g, taken, create_graph)
        result.append(g)
    return tuple(result)
