"""Function transforms: ``vjp``, ``jvp``, ``jacobian``, ``hessian``, ``hvp``, ``vhp``.

Names, signatures and return conventions are those of ``torch.autograd.functional``: ``func``
takes the tensors in ``inputs`` and returns a Tensor2D or a tuple of them; a single tensor in
gives a single tensor out, a tuple gives a tuple, and ``jacobian``/``hessian`` nest
``[output][input]`` when both sides are tuples.

Everything stays two-dimensional. The Jacobian of ``f: (m x n) -> (p x q)`` is a
``(p*q) x (m*n)`` Tensor2D whose row ``i*q + j``, column ``k*n + l`` holds
``d f[i, j] / d x[k, l]``: outputs and inputs are numbered row-major, so PyTorch's
``(p, q, m, n)`` Jacobian reshaped row-major to ``(p*q, m*n)`` is exactly matgrad's. The Hessian
of a 1x1 function of an ``(m x n)`` input is ``(m*n) x (m*n)``.

How each is computed (one forward pass of ``func`` each, never finite differences):

* ``vjp``: one backward pass.
* ``jvp``: the double-backward construction. ``g(u) = J^T u`` is built by a backward pass with
  ``create_graph=True`` at a dummy ``u``; ``g`` is linear in ``u``, so a backward pass of ``g``
  seeded with ``v`` gives ``d <g(u), v> / du = J v``. About three backward passes' work, not one
  forward pass's as a true forward mode would be.
* ``jacobian``: ``"reverse-mode"`` (default) runs one backward pass per output element on the
  one recorded graph (``retain_graph``), a row each; ``"forward-mode"`` builds ``J^T u`` once and
  runs one backward pass of it per input element, a column each (cheaper when the output has
  more elements than the input).
* ``hessian``: the Jacobian of the gradient (recorded with ``create_graph=True``), its outer
  Jacobian by rows or by columns (``outer_jacobian_strategy``).
* ``vhp``: ``v^T H`` in two backward passes; ``hvp``: ``H v`` by the double-backward trick on top
  of it (three). For a twice continuously differentiable ``func`` they are equal (``H`` is
  symmetric) and ``vhp`` is the cheaper.

``vectorize`` is accepted and ignored (matgrad has no vmap). ``strategy="forward-mode"`` works
without ``vectorize`` and also with ``create_graph=True`` and ``strict=True``, which PyTorch
refuses. Where PyTorch raises ``RuntimeError``/``TypeError`` matgrad raises its own errors, which
derive from them (``GraphError``, ``ShapeError``, ``ArgumentTypeError``...).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

from matgrad import ops as _ops
from matgrad._errors import ArgumentError, ArgumentTypeError, BackendError, DTypeError, GraphError, ShapeError
from matgrad.autograd import engine as _engine
from matgrad.autograd.grad_mode import enable_grad
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D

__all__ = ["hessian", "hvp", "jacobian", "jvp", "vhp", "vjp"]

Tensors = Union[Tensor2D, tuple[Tensor2D, ...]]
"""A single tensor or a tuple of them, as ``inputs``, ``v`` and most results are."""
Nested = Union[Tensor2D, tuple[Tensor2D, ...], tuple[tuple[Tensor2D, ...], ...]]
"""A Jacobian or a Hessian: a tensor, a tuple, or a tuple of tuples ``[output][input]``."""
Func = Callable[..., Any]

_STRATEGIES = ("reverse-mode", "forward-mode")


# -- arguments ----------------------------------------------------------------------------------


def _shape(t: Tensor2D) -> str:
    return f"{t.nrows}x{t.ncols}"


def _as_tuple(x: Any, what: str, fn: str) -> tuple[bool, tuple[Tensor2D, ...]]:
    """``(was_a_tuple, tensors)``; only a Tensor2D or a non-empty tuple of them is accepted."""
    if isinstance(x, Tensor2D):
        return False, (x,)
    if isinstance(x, tuple):
        if not x:
            raise ArgumentError(f"{fn}: {what} is an empty tuple; give a Tensor2D or a tuple of at least one")
        for i, el in enumerate(x):
            if not isinstance(el, Tensor2D):
                raise ArgumentTypeError(
                    f"{fn}: {what} must be a Tensor2D or a tuple of Tensor2D, but entry {i} is a {type(el).__name__}"
                )
        return True, x
    hint = "; make it a tuple: tuple(...)" if isinstance(x, list) else ""
    raise ArgumentTypeError(f"{fn}: {what} must be a Tensor2D or a tuple of Tensor2D, got {type(x).__name__}{hint}")


def _check_func(func: Any, fn: str) -> None:
    if not callable(func):
        raise ArgumentTypeError(f"{fn}: func must be a function of the input tensors, got {type(func).__name__}")


def _check_strategy(strategy: Any, fn: str, name: str) -> None:
    if strategy not in _STRATEGIES:
        raise ArgumentError(f'{fn}: {name} must be "reverse-mode" or "forward-mode", got {strategy!r}')


def _prepare_inputs(inputs: Sequence[Tensor2D], create_graph: bool, fn: str) -> tuple[Tensor2D, ...]:
    """Fresh tensors for ``func``: a differentiable alias of an input that requires grad when
    ``create_graph`` (results then flow back to it), a detached leaf requiring grad otherwise.

    Always new objects, so that ``func`` using the same tensor from a closure is told apart from
    its argument (as PyTorch does).
    """
    out = []
    for i, x in enumerate(inputs):
        if x.dtype not in FLOAT_DTYPES:
            raise DTypeError(
                f"{fn}: input {i} ({_shape(x)}) is {x.dtype}; derivatives need floating inputs, "
                "convert it with .double() or .float()"
            )
        out.append(x.reshape(x.nrows, x.ncols) if create_graph and x.requires_grad else x.detach().requires_grad_())
    return tuple(out)


def _call(func: Func, inputs: Sequence[Tensor2D], fn: str) -> tuple[bool, tuple[Tensor2D, ...]]:
    result = func(*inputs)
    if isinstance(result, tuple) and result and all(isinstance(o, Tensor2D) for o in result):
        return True, result
    if isinstance(result, Tensor2D):
        return False, (result,)
    if isinstance(result, tuple) and not result:
        got = "an empty tuple"
    elif isinstance(result, tuple):
        got = "a tuple holding " + ", ".join(type(o).__name__ for o in result)
    else:
        got = type(result).__name__ + ("; make it a tuple: tuple(...)" if isinstance(result, list) else "")
    raise ArgumentTypeError(f"{fn}: func must return a Tensor2D or a tuple of Tensor2D, got {got}")


def _check_outputs(outputs: Sequence[Tensor2D], strict: bool, fn: str) -> None:
    if not strict:
        return
    for i, out in enumerate(outputs):
        if not out.requires_grad:
            raise GraphError(
                f"{fn}(strict=True): output {i} of func ({_shape(out)}) does not require grad: it was not computed "
                "from the inputs by differentiable ops; pass strict=False to get zeros for it"
            )


def _single_output(outputs: Sequence[Tensor2D], is_tuple: bool, fn: str) -> Tensor2D:
    if is_tuple:
        raise ArgumentTypeError(f"{fn}: func must return a single 1x1 Tensor2D, got a tuple of {len(outputs)}")
    out = outputs[0]
    if out.shape != (1, 1):
        raise ShapeError(
            f"{fn}: func must return a 1x1 Tensor2D (a scalar function), got {_shape(out)}; reduce it "
            "(.sum(), .mean()) or use jacobian"
        )
    return out


def _prepare_v(
    v: Any, refs: Sequence[Tensor2D], refs_tuple: bool, create_graph: bool, fn: str, what: str
) -> tuple[Tensor2D, ...]:
    """``v`` checked against ``refs`` (the tensors it multiplies: inputs or outputs), entry by entry."""
    _, vs = _as_tuple(v, "v", fn)
    if len(vs) != len(refs):
        raise ShapeError(
            f"{fn}: v holds {len(vs)} tensor(s) but there {'is' if len(refs) == 1 else 'are'} {len(refs)} "
            f"{what}(s); give one v per {what}" + ("" if refs_tuple else ", a single Tensor2D")
        )
    out = []
    for i, (a, r) in enumerate(zip(vs, refs)):
        name = f"v[{i}]" if refs_tuple else "v"
        if a.shape != r.shape:
            raise ShapeError(
                f"{fn}: {name} is {_shape(a)} but {what} {i} is {_shape(r)}; v must have the shape of the "
                f"{what} it multiplies"
            )
        if a.kernels is not r.kernels:
            raise BackendError(f"{fn}: {name} is on {a.backend} but {what} {i} is on {r.backend}; move it with .to()")
        if a.dtype != r.dtype:
            raise DTypeError(f"{fn}: {name} is {a.dtype} but {what} {i} is {r.dtype}; convert it with .to({r.dtype!r})")
        out.append(a if create_graph and a.requires_grad else a.detach())
    return tuple(out)


def _v_or_scalar(
    v: Any, refs: Sequence[Tensor2D], refs_tuple: bool, create_graph: bool, fn: str, what: str
) -> tuple[Tensor2D | None, ...]:
    if v is not None:
        return _prepare_v(v, refs, refs_tuple, create_graph, fn, what)
    if len(refs) != 1 or refs[0].shape != (1, 1):
        shapes = ", ".join(_shape(r) for r in refs)
        raise GraphError(
            f"{fn}: v can be left out only when there is a single 1x1 {what}, but the {what}s are {shapes}; "
            f"pass v= a tensor shaped like each {what}"
        )
    return (None,)


# -- gradients ----------------------------------------------------------------------------------


def _zeros(ref: Tensor2D) -> Tensor2D:
    be = ref.kernels
    return Tensor2D.from_native(be.full(ref.nrows, ref.ncols, 0.0, ref.dtype), be)


def _grad(
    outputs: Sequence[Tensor2D | None],
    inputs: Sequence[Tensor2D],
    grad_outputs: Sequence[Tensor2D | None],
    create_graph: bool,
    retain_graph: bool | None = None,
) -> tuple[Tensor2D | None, ...]:
    """``grad`` over the outputs that require grad; None for an input they do not reach."""
    live = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and o.requires_grad]
    if not live:
        return (None,) * len(inputs)
    return _engine.grad(
        [o for o, _ in live],
        list(inputs),
        [g for _, g in live],
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )


def _fill_in_zeros(
    grads: Sequence[Tensor2D | None],
    refs: Sequence[Tensor2D],
    strict: bool,
    create_graph: bool,
    why: Callable[[int], str],
) -> tuple[Tensor2D, ...]:
    """Zeros for a missing gradient, or (strict) a GraphError saying ``why(i)``."""
    out = []
    for i, (g, ref) in enumerate(zip(grads, refs)):
        if g is None:
            if strict:
                raise GraphError(why(i) + "; pass strict=False to get zeros for it")
            g = _zeros(ref)
        elif strict and create_graph and not g.requires_grad:
            raise GraphError(why(i) + " (its derivative is a constant, so create_graph=True has nothing to record)")
        out.append(g)
    return tuple(out)


def _post(tensors: Sequence[Tensor2D], create_graph: bool) -> tuple[Tensor2D, ...]:
    """The results as returned: cut from the graph unless ``create_graph``."""
    return tuple(tensors) if create_graph else tuple(t.detach() if t.requires_grad else t for t in tensors)


def _unpack(res: tuple[Tensor2D, ...], is_tuple: bool) -> Tensors:
    return res if is_tuple else res[0]


def _unpack2(res: Sequence[Sequence[Tensor2D]], outer: bool, inner: bool) -> Nested:
    """``[output][input]`` blocks nested as PyTorch's: a tuple level only where the side was a tuple."""
    if inner:
        rows = tuple(tuple(r) for r in res)
        return rows if outer else rows[0]
    firsts = tuple(r[0] for r in res)
    return firsts if outer else firsts[0]


def _one_hot(ref: Tensor2D, k: int) -> Tensor2D:
    """A tensor shaped like ``ref``, zero but for a 1 at the row-major position ``k``."""
    be, (r, c) = ref.kernels, ref.shape
    return Tensor2D.from_native(be.take_adjoint(be.full(1, 1, 1.0, ref.dtype), r, c, [k // c], [k % c]), be)


def _assemble(parts: list[Tensor2D], axis: int, create_graph: bool) -> Tensor2D:
    """Rows (``axis=0``: each part read as one row) or columns (``axis=1``) stacked into one matrix."""
    if create_graph:
        shaped = [p.reshape(1, -1) if axis == 0 else p.reshape(-1, 1) for p in parts]
        return shaped[0] if len(shaped) == 1 else _ops.cat(shaped, axis)
    be = parts[0].kernels
    raw = [
        be.reshape(p.native, 1, p.nrows * p.ncols) if axis == 0 else be.reshape(p.native, p.nrows * p.ncols, 1)
        for p in parts
    ]
    return Tensor2D.from_native(be.cat(raw, 0 if axis == 0 else 1), be)  # a copy even of one part: owned, row-major


def _block_zeros(out: Tensor2D, inp: Tensor2D) -> Tensor2D:
    be = inp.kernels
    return Tensor2D.from_native(be.full(out.nrows * out.ncols, inp.nrows * inp.ncols, 0.0, inp.dtype), be)


def _independent(fn: str, i: int, out: Tensor2D, j: int, inp: Tensor2D) -> GraphError:
    return GraphError(
        f"{fn}(strict=True): output {i} ({_shape(out)}) does not depend on input {j} ({_shape(inp)}); "
        "pass strict=False to get a zero block for it"
    )


def _constant(fn: str, i: int, out: Tensor2D, j: int, inp: Tensor2D) -> GraphError:
    return GraphError(
        f"{fn}(strict=True): the Jacobian of output {i} ({_shape(out)}) with respect to input {j} "
        f"({_shape(inp)}) is a constant, so create_graph=True has nothing to record"
    )


def _jacobian_by_rows(
    outputs: Sequence[Tensor2D], inputs: Sequence[Tensor2D], create_graph: bool, strict: bool, fn: str
) -> list[list[Tensor2D]]:
    """``J[i][j]``, one backward pass per element of each output: row ``k`` of ``J[i]`` is
    ``e_k^T J[i]``, the gradients of ``outputs[i]`` seeded with the one-hot ``e_k``."""
    jac: list[list[Tensor2D]] = []
    for i, out in enumerate(outputs):
        rows: list[list[Tensor2D]] = [[] for _ in inputs]
        reached = [False] * len(inputs)
        if out.requires_grad:
            for k in range(out.nrows * out.ncols):
                gs = _grad([out], inputs, [_one_hot(out, k)], create_graph, retain_graph=True)
                for j, g in enumerate(gs):
                    if g is None:  # the whole output misses this input: every row would be None
                        continue
                    if k == 0 and strict and create_graph and not g.requires_grad:
                        raise _constant(fn, i, out, j, inputs[j])
                    reached[j] = True
                    rows[j].append(g)
        blocks = []
        for j, inp in enumerate(inputs):
            if not reached[j]:
                if strict:
                    raise _independent(fn, i, out, j, inp)
                blocks.append(_block_zeros(out, inp))
            else:
                blocks.append(_assemble(rows[j], 0, create_graph))
        jac.append(blocks)
    return jac


def _jacobian_by_columns(
    outputs: Sequence[Tensor2D], inputs: Sequence[Tensor2D], create_graph: bool, strict: bool, fn: str
) -> list[list[Tensor2D]]:
    """``J[i][j]``, one backward pass per input element: ``g = J^T u`` is recorded once at a dummy
    ``u`` (one per output); column ``l`` of ``J[i][j]`` is ``d <g_j, e_l> / d u_i = J[i][j] e_l``."""
    live = [i for i, o in enumerate(outputs) if o.requires_grad]
    us = [_zeros(outputs[i]).requires_grad_() for i in live]
    gin = _grad([outputs[i] for i in live], inputs, us, create_graph=True)
    cols: list[list[list[Tensor2D]]] = [[[] for _ in inputs] for _ in outputs]
    reached = [[False] * len(inputs) for _ in outputs]
    for j, (inp, g) in enumerate(zip(inputs, gin)):
        if g is None or not g.requires_grad:  # J^T u does not depend on u: this input's columns are zero
            continue
        for e in range(inp.nrows * inp.ncols):
            cs = _engine.grad(
                [g], us, [_one_hot(inp, e)], retain_graph=True, create_graph=create_graph, allow_unused=True
            )
            for c, i in zip(cs, live):
                if c is None:
                    continue
                if e == 0 and strict and create_graph and not c.requires_grad:
                    raise _constant(fn, i, outputs[i], j, inp)
                reached[i][j] = True
                cols[i][j].append(c)
    jac: list[list[Tensor2D]] = []
    for i, out in enumerate(outputs):
        blocks = []
        for j, inp in enumerate(inputs):
            if not reached[i][j]:
                if strict:
                    raise _independent(fn, i, out, j, inp)
                blocks.append(_block_zeros(out, inp))
            else:
                blocks.append(_assemble(cols[i][j], 1, create_graph))
        jac.append(blocks)
    return jac


def _jacobian_blocks(
    outputs: Sequence[Tensor2D],
    inputs: Sequence[Tensor2D],
    create_graph: bool,
    strict: bool,
    strategy: str,
    fn: str,
) -> list[list[Tensor2D]]:
    by = _jacobian_by_columns if strategy == "forward-mode" else _jacobian_by_rows
    blocks = by(outputs, inputs, create_graph, strict, fn)
    return [list(_post(row, create_graph)) for row in blocks]


# -- public functions ---------------------------------------------------------------------------


def vjp(
    func: Func, inputs: Tensors, v: Tensors | None = None, create_graph: bool = False, strict: bool = False
) -> tuple[Tensors, Tensors]:
    """The vector-Jacobian product ``v^T J``: one forward and one backward pass.

    Args:
        func: a function of the tensors in ``inputs`` returning a Tensor2D or a tuple of them.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        v: shaped like ``func``'s output (a tuple if it returns a tuple); may be left out when
            ``func`` returns a single 1x1 tensor (then it is 1).
        create_graph: record the computation, so that the output and the result can be
            differentiated again (with respect to the inputs that require grad, and ``v``).
        strict: raise a ``GraphError`` naming the input when the outputs do not depend on it
            (by default its product is zeros, the mathematical value).

    Returns:
        ``(func_output, vjp)``: ``func(*inputs)`` and ``sum_i <v_i, d out_i / d x>`` shaped like
        ``inputs`` (a tensor or a tuple, as given).
    """
    _check_func(func, "vjp")
    with enable_grad():
        in_tuple, xs = _as_tuple(inputs, "inputs", "vjp")
        xs = _prepare_inputs(xs, create_graph, "vjp")
        out_tuple, outs = _call(func, xs, "vjp")
        _check_outputs(outs, strict, "vjp")
        vs = _v_or_scalar(v, outs, out_tuple, create_graph, "vjp", "output")
        grads = _grad(outs, xs, vs, create_graph)
        res = _fill_in_zeros(
            grads,
            xs,
            strict,
            create_graph,
            lambda i: f"vjp(strict=True): the outputs of func do not depend on input {i}",
        )
    return _unpack(_post(outs, create_graph), out_tuple), _unpack(_post(res, create_graph), in_tuple)


def jvp(
    func: Func, inputs: Tensors, v: Tensors | None = None, create_graph: bool = False, strict: bool = False
) -> tuple[Tensors, Tensors]:
    """The Jacobian-vector product ``J v``, exact, by the double-backward construction.

    A backward pass with ``create_graph=True`` at a dummy ``u`` records ``g(u) = J^T u``, which
    is linear in ``u``; a backward pass of ``g`` seeded with ``v`` gives ``d <g(u), v> / du = J v``.
    Cost: one forward pass and about three backward passes' work (a true forward mode would
    cost about one more forward pass), for any ``func`` whose backward rules are Tensor2D ops,
    user ``Function``s included.

    Args:
        func: a function of the tensors in ``inputs`` returning a Tensor2D or a tuple of them.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        v: shaped like ``inputs`` (a tuple if they are); may be left out when ``inputs`` is a
            single 1x1 tensor (then it is 1).
        create_graph: record the computation, so that the output and the result can be
            differentiated again.
        strict: raise a ``GraphError`` naming the input (or output) when the outputs do not
            depend on an input (or an output on any input); by default zeros.

    Returns:
        ``(func_output, jvp)``: ``func(*inputs)`` and ``J v`` shaped like the output.
    """
    _check_func(func, "jvp")
    with enable_grad():
        in_tuple, xs = _as_tuple(inputs, "inputs", "jvp")
        xs = _prepare_inputs(xs, create_graph, "jvp")
        vs = _v_or_scalar(v, xs, in_tuple, create_graph, "jvp", "input")
        out_tuple, outs = _call(func, xs, "jvp")
        _check_outputs(outs, strict, "jvp")
        # J^T u is linear in u: its value at u = 0 does not matter, only its graph.
        us = tuple(_zeros(o).requires_grad_() if o.requires_grad else None for o in outs)
        live = [(o, u) for o, u in zip(outs, us) if u is not None]
        gin = _grad([o for o, _ in live], xs, [u for _, u in live], create_graph=True)
        if strict:
            for i, g in enumerate(gin):
                if g is None:
                    raise GraphError(
                        f"jvp(strict=True): the outputs of func do not depend on input {i}; "
                        "pass strict=False to get zeros for it"
                    )
        grads = _grad(gin, [u for u in us if u is not None], vs, create_graph)
        it = iter(grads)
        per_output = [next(it) if u is not None else None for u in us]
        res = _fill_in_zeros(
            per_output,
            outs,
            strict,
            create_graph,
            lambda i: f"jvp(strict=True): output {i} of func does not depend on the inputs",
        )
    return _unpack(_post(outs, create_graph), out_tuple), _unpack(_post(res, create_graph), out_tuple)


def jacobian(
    func: Func,
    inputs: Tensors,
    create_graph: bool = False,
    strict: bool = False,
    vectorize: bool = False,
    strategy: str = "reverse-mode",
) -> Nested:
    """The Jacobian of ``func`` at ``inputs``, as a matrix by row-major indexing.

    For ``f: (m x n) -> (p x q)`` the result is ``(p*q) x (m*n)``: row ``i*q + j``, column
    ``k*n + l`` holds ``d f[i, j] / d x[k, l]`` (PyTorch's ``(p, q, m, n)`` result reshaped
    row-major). It has the input's dtype and backend.

    Args:
        func: a function of the tensors in ``inputs`` returning a Tensor2D or a tuple of them.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        create_graph: record the computation, so that the Jacobian can be differentiated again.
        strict: raise a ``GraphError`` naming the output and the input when an output does not
            depend on an input (by default that block is zeros).
        vectorize: accepted for PyTorch compatibility and ignored (matgrad has no vmap).
        strategy: ``"reverse-mode"`` (default): one backward pass per output element, a row at a
            time, on the one recorded graph. ``"forward-mode"``: one backward pass per input
            element, a column at a time, of ``J^T u`` recorded once (the double-backward
            construction of ``jvp``); cheaper when the outputs have more elements than the inputs.

    Returns:
        A Tensor2D for one input and one output; a tuple over the inputs (or the outputs) when
        one side is a tuple; a tuple of tuples ``J[i][j]`` (output ``i``, input ``j``) when both are.
    """
    _check_func(func, "jacobian")
    _check_strategy(strategy, "jacobian", "strategy")
    with enable_grad():
        in_tuple, xs = _as_tuple(inputs, "inputs", "jacobian")
        xs = _prepare_inputs(xs, create_graph, "jacobian")
        out_tuple, outs = _call(func, xs, "jacobian")
        _check_outputs(outs, strict, "jacobian")
        blocks = _jacobian_blocks(outs, xs, create_graph, strict, strategy, "jacobian")
    return _unpack2(blocks, out_tuple, in_tuple)


def hessian(
    func: Func,
    inputs: Tensors,
    create_graph: bool = False,
    strict: bool = False,
    vectorize: bool = False,
    outer_jacobian_strategy: str = "reverse-mode",
) -> Nested:
    """The Hessian of a scalar (1x1) ``func`` at ``inputs``, as a matrix by row-major indexing.

    For an ``(m x n)`` input the result is ``(m*n) x (m*n)``: row ``i*n + j``, column ``k*n + l``
    holds ``d^2 f / d x[i, j] d x[k, l]``. It is the Jacobian of the gradient, which is recorded
    with ``create_graph=True`` in one backward pass.

    Args:
        func: a function of the tensors in ``inputs`` returning a single 1x1 Tensor2D.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        create_graph: record the computation, so that the Hessian can be differentiated again.
        strict: raise a ``GraphError`` naming the input when the output, or the gradient with
            respect to an input, does not depend on an input (a function linear in an input, or
            separable in two); by default those blocks are zeros.
        vectorize: accepted for PyTorch compatibility and ignored.
        outer_jacobian_strategy: ``"reverse-mode"`` (rows) or ``"forward-mode"`` (columns) for
            the outer Jacobian, as ``jacobian``'s ``strategy``.

    Returns:
        A Tensor2D for a single input; for a tuple of inputs, a tuple of tuples ``H[i][j]`` of
        shape ``(m_i*n_i) x (m_j*n_j)``, the derivative of the gradient of input ``i`` with
        respect to input ``j``.
    """
    _check_func(func, "hessian")
    _check_strategy(outer_jacobian_strategy, "hessian", "outer_jacobian_strategy")
    with enable_grad():
        in_tuple, xs = _as_tuple(inputs, "inputs", "hessian")
        xs = _prepare_inputs(xs, create_graph, "hessian")
        out_tuple, outs = _call(func, xs, "hessian")
        out = _single_output(outs, out_tuple, "hessian")
        _check_outputs(outs, strict, "hessian")
        grads = _fill_in_zeros(
            _grad([out], xs, [None], create_graph=True),
            xs,
            strict,
            False,
            lambda i: f"hessian(strict=True): the output of func does not depend on input {i}",
        )
        if strict:
            for i, g in enumerate(grads):
                if not g.requires_grad:
                    raise GraphError(
                        f"hessian(strict=True): the gradient with respect to input {i} does not depend on the "
                        "inputs (func is linear in it, so that row of the Hessian is zero); pass strict=False "
                        "to get zeros"
                    )
        blocks = _jacobian_blocks(grads, xs, create_graph, strict, outer_jacobian_strategy, "hessian")
    return _unpack2(blocks, in_tuple, in_tuple)


def vhp(
    func: Func, inputs: Tensors, v: Tensors | None = None, create_graph: bool = False, strict: bool = False
) -> tuple[Tensor2D, Tensors]:
    """The vector-Hessian product ``v^T H`` of a scalar (1x1) ``func``: two backward passes.

    The gradient is recorded with ``create_graph=True``; a backward pass of it seeded with ``v``
    gives ``v^T H``. The Hessian is never formed.

    Args:
        func: a function of the tensors in ``inputs`` returning a single 1x1 Tensor2D.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        v: shaped like ``inputs``; may be left out when ``inputs`` is a single 1x1 tensor.
        create_graph: record the computation, so that the output and the result can be
            differentiated again.
        strict: raise a ``GraphError`` naming the input when the output or its gradient does
            not depend on it; by default zeros.

    Returns:
        ``(func_output, vhp)``, the second shaped like ``inputs``.
    """
    return _hessian_product("vhp", func, inputs, v, create_graph, strict)


def hvp(
    func: Func, inputs: Tensors, v: Tensors | None = None, create_graph: bool = False, strict: bool = False
) -> tuple[Tensor2D, Tensors]:
    """The Hessian-vector product ``H v`` of a scalar (1x1) ``func``, without forming ``H``.

    ``v^T H`` is recorded at a dummy ``u`` in place of ``v`` (two backward passes, the second
    with ``create_graph=True``), then a third backward pass with respect to ``u`` seeded with
    ``v`` gives ``H v`` (the double-backward construction of ``jvp``). When ``H`` is symmetric
    (``func`` twice continuously differentiable), ``vhp`` gives the same in two passes.

    Args:
        func: a function of the tensors in ``inputs`` returning a single 1x1 Tensor2D.
        inputs: a Tensor2D or a tuple of them (floating dtypes).
        v: shaped like ``inputs``; may be left out when ``inputs`` is a single 1x1 tensor.
        create_graph: record the computation, so that the output and the result can be
            differentiated again.
        strict: raise a ``GraphError`` naming the input when the output or its gradient does
            not depend on it; by default zeros.

    Returns:
        ``(func_output, hvp)``, the second shaped like ``inputs``.
    """
    return _hessian_product("hvp", func, inputs, v, create_graph, strict)


def _hessian_product(
    fn: str, func: Func, inputs: Tensors, v: Tensors | None, create_graph: bool, strict: bool
) -> tuple[Tensor2D, Tensors]:
    _check_func(func, fn)
    with enable_grad():
        in_tuple, xs = _as_tuple(inputs, "inputs", fn)
        xs = _prepare_inputs(xs, create_graph, fn)
        vs = _v_or_scalar(v, xs, in_tuple, create_graph, fn, "input")
        out_tuple, outs = _call(func, xs, fn)
        out = _single_output(outs, out_tuple, fn)
        _check_outputs(outs, strict, fn)
        jac = _grad([out], xs, [None], create_graph=True)
        if strict:
            for i, g in enumerate(jac):
                if g is None:
                    raise GraphError(
                        f"{fn}(strict=True): the output of func does not depend on input {i}; "
                        "pass strict=False to get zeros for it"
                    )
                if not g.requires_grad:
                    raise GraphError(
                        f"{fn}(strict=True): the gradient with respect to input {i} does not depend on the "
                        "inputs (func is linear in it); pass strict=False to get zeros for it"
                    )
        if fn == "vhp":
            grads = _grad(jac, xs, vs, create_graph)
        else:
            us = [_zeros(x).requires_grad_() for x in xs]
            back = _grad(jac, xs, us, create_graph=True)  # H^T u, linear in u
            grads = _grad(back, us, vs, create_graph)
        res = _fill_in_zeros(
            grads,
            xs,
            strict,
            create_graph,
            lambda i: f"{fn}(strict=True): the gradient of func does not depend on input {i}",
        )
    return _post([out], create_graph)[0], _unpack(_post(res, create_graph), in_tuple)
