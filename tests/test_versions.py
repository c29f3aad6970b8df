"""In-place changes of tensors saved for backward: an error naming the op, never a wrong gradient.

Every storage has a version counter, shared by its aliases (``detach()``, reshape views, a full
slice ``a[:, :]``, a ``Parameter`` made from a tensor); in-place methods and optimiser steps
bump it; an op that reads an input (``saves``) or its output (``saves_output``) in backward
records their versions, and backward checks them all before running any rule (as PyTorch).

Two parts: the cases of issue 11 by name, and an audit over the op table: for every op and every
one of its inputs (and its output), change that tensor in place between forward and backward;
backward must then either raise, or give exactly the gradient it gives without the change (the
rule did not read that tensor). A silent difference is a saved tensor the declaration missed.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from op_table import CASES, Case

import matgrad as mg
import matgrad.functional as F

MODIFIED = "was modified by"


def leaf(rows: list[list[float]], requires_grad: bool = True) -> mg.Tensor2D:
    return mg.Tensor2D(rows, dtype="float64", requires_grad=requires_grad)


# -- the cases of issue 11 --------------------------------------------------------------------


def test_changing_a_saved_input_raises_with_the_op_the_tensor_and_the_fix(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    loss = (w * x).sum()
    x.mul_(10)  # gave w.grad [[30, 40]] instead of [[3, 4]]
    with pytest.raises(mg.GraphError) as info:
        loss.backward()
    text = str(info.value)
    assert "backward through mul: its input #1 (1x2) was modified by mul_() at" in text
    assert "test_versions.py" in text  # the line of the in-place call
    assert "(now at version 1)" in text and "x.clone()" in text
    assert w.grad is None  # all or nothing: nothing was written


def test_an_optimizer_step_between_two_backwards_of_one_forward_raises(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    mg.optim.SGD([w], lr=0.1).step()  # gave zeros, or the gradient at the new w, silently
    with pytest.raises(mg.GraphError, match=r"input #0 \(1x2\) was modified by SGD.step\(\)"):
        loss.backward()
    assert w.grad.tolist() == [[2.0, 4.0]]  # the first backward's gradient, untouched


def test_retain_graph_step_and_second_backward_of_a_model(backend: str) -> None:
    model = mg.nn.Linear(3, 2)
    x = mg.Tensor2D([[1.0, 2.0, 3.0]])
    loss = model(x).sum()
    loss.backward(retain_graph=True)
    opt = mg.optim.Adam(model.parameters(), lr=0.1)
    opt.step()
    with pytest.raises(mg.GraphError, match=r"Adam.step\(\)"):
        loss.backward()


def test_zeroing_an_exp_output_raises(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    y = x.exp()
    loss = y.sum()  # sum does not save y; exp reads its own output in backward
    with mg.no_grad():
        y.zero_()
    with pytest.raises(mg.GraphError, match=r"backward through exp: its output \(1x2\) was modified by zero_\(\)"):
        loss.backward()


def test_a_detached_alias_changed_in_place_raises(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]])
    loss = (w * x).sum()
    x.detach().mul_(10)  # the same storage, the same counter
    with pytest.raises(mg.GraphError, match=r"mul: its input #1 \(1x2\) was modified by mul_\(\)"):
        loss.backward()


@pytest.mark.parametrize("make_view", [lambda t: t.reshape(2, 1), lambda t: t[:, :], lambda t: t.detach()])
def test_the_base_changed_through_a_view_raises(backend: str, make_view: Callable[[Any], Any]) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    loss = (w * x).sum()
    view = make_view(x)
    view.mul_(10)
    with pytest.raises(mg.GraphError, match=MODIFIED):
        loss.backward()


def test_a_view_of_a_view_shares_the_counter(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    v = x.reshape(2, 1).reshape(1, 2)
    loss = (w * v).sum()
    x.add_(1.0)
    with pytest.raises(mg.GraphError, match=MODIFIED):
        loss.backward()
    assert v._version == x._version == 1


def test_a_parameter_made_from_a_tensor_shares_its_counter(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    p = mg.nn.Parameter(x)
    loss = (w * x).sum()
    with mg.no_grad():
        p.mul_(10)
    with pytest.raises(mg.GraphError, match=MODIFIED):
        loss.backward()


def test_a_copy_is_not_an_alias(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    c = mg.Tensor2D(x)  # copied: its own storage and counter
    loss = (w * c).sum()
    x.mul_(10)
    loss.backward()
    assert w.grad.tolist() == [[3.0, 4.0]] and c._version == 0


def test_a_transpose_is_a_copy_on_both_backends(backend: str) -> None:
    """A row's transpose was a view on the numpy backend only: both backends now copy."""
    w = leaf([[1.0], [2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    xt = x.T
    loss = (w * xt).sum()
    x.mul_(10)
    loss.backward()  # xt kept the values it was made with
    assert xt.tolist() == [[3.0], [4.0]] and w.grad.tolist() == [[3.0], [4.0]]


def test_changing_an_input_that_no_rule_reads_is_allowed(backend: str) -> None:
    """As PyTorch: add's rule never reads its inputs, so changing one is no error."""
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    loss = (w + x).sum() + (w - x).sum() + x.T.sum() + x.reshape(2, 1).sum()
    x.mul_(10)
    loss.backward()
    assert w.grad.tolist() == [[2.0, 2.0]]


def test_a_functions_saved_tensor_changed_in_place_raises(backend: str) -> None:
    class Square(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> mg.Tensor2D:
            (x,) = ctx.saved_tensors
            return g * 2.0 * x

    x = leaf([[3.0, 4.0]])
    loss = Square.apply(x).sum()
    with mg.no_grad():
        x.mul_(10)
    with pytest.raises(mg.GraphError, match=r"backward through Square: its saved tensor #0 \(1x2\) was modified"):
        loss.backward()


def test_a_failed_check_runs_no_rule_and_a_fresh_forward_works(backend: str) -> None:
    w = leaf([[1.0, 2.0]])
    x = leaf([[3.0, 4.0]], requires_grad=False)
    first = (w * 2.0).sum()  # an earlier, unaffected branch of the same loss
    loss = first + (w * x).sum()
    x.mul_(2)
    with pytest.raises(mg.GraphError):
        loss.backward()
    assert w.grad is None
    (w * x).sum().backward()
    assert w.grad.tolist() == [[6.0, 8.0]]


@pytest.mark.parametrize("loss_fn", [F.cross_entropy, F.nll_loss])
def test_class_targets_refilled_after_forward_give_the_forward_gradient(backend: str, loss_fn: Any) -> None:
    """The losses copy their class indices: a batch buffer refilled before backward changes nothing."""
    x = leaf([[3.0, -4.0, 0.5], [1.0, 2.0, 0.0]])
    y = mg.Tensor2D([[0], [2]], dtype="int64")
    want = mg.grad(loss_fn(x, y), [x])[0].tolist()
    loss = loss_fn(x, y)
    y.copy_(mg.Tensor2D([[1], [0]], dtype="int64"))
    loss.backward()
    assert x.grad.tolist() == want


def test_module_to_bumps_the_version_of_converted_parameters(backend: str) -> None:
    model = mg.nn.Linear(2, 1)
    x = mg.Tensor2D([[1.0, 2.0]])
    loss = model(x).sum()
    model.double()
    with pytest.raises(mg.GraphError, match=MODIFIED):
        loss.backward()


# -- the audit: every op, every input, its output ------------------------------------------------


def _inputs(case: Case, backend: str) -> list[mg.Tensor2D]:
    """Deterministic inputs in each input's domain (as tests/test_ops.py builds them)."""
    inputs = []
    for k, (r, c) in enumerate(case.shapes(3, 4)):
        rows = [[(-1) ** (i + j) * (0.25 + 0.125 * (i * c + j) + 0.5 * k) for j in range(c)] for i in range(r)]
        if case.domains[min(k, len(case.domains) - 1)] in ("positive", "probability"):
            rows = [[abs(v) / (1 + abs(v)) for v in row] for row in rows]
        inputs.append(mg.Tensor2D(rows, dtype="float64", backend=backend, requires_grad=True))
    return inputs


def _grads(case: Case, backend: str, change: int | None) -> list[Any]:
    """Input gradients of ``case`` with a fixed upstream; ``change``: the input (-1: the output)
    multiplied by 1.25 in place between forward and backward."""
    xs = _inputs(case, backend)
    out = case.fn(*xs)
    upstream = mg.Tensor2D(
        [[0.5 + 0.25 * ((i + 2 * j) % 5) for j in range(out.ncols)] for i in range(out.nrows)],
        dtype=out.dtype,
        backend=out.backend,
    )
    with mg.no_grad():
        if change == -1:
            out.detach().mul_(1.25)
        elif change is not None:
            xs[change].mul_(1.25)
    out.backward(upstream)
    return [x.grad.tolist() if x.grad is not None else None for x in xs]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_an_in_place_change_is_caught_or_harmless(case: Case, backend: str) -> None:
    want = _grads(case, backend, None)
    n_inputs = len(case.shapes(3, 4))
    for change in [*range(n_inputs), -1]:
        what = "the output" if change == -1 else f"input {change}"
        try:
            got = _grads(case, backend, change)
        except mg.GraphError as exc:
            assert MODIFIED in str(exc), exc
            continue
        assert got == want, f"{case.name}: {what} changed in place gave a different gradient, silently"


def _reads(op: type) -> set[str]:
    return {f"input {i}" for i in op.saves} | ({"output"} if op.saves_output else set())


COMPOSED = {
    "to_other_backend",
    "alias",
    "function_two_outputs",
    "nll_loss",
    "where",
    "cross_entropy_soft",
    "softplus_linear",
}


# Rows that feed the op a tensor derived from their input, or compose other ops around it.
SINGLE = [c for c in CASES if len(c.ops) == 1 and c.name not in COMPOSED]


@pytest.mark.parametrize("case", SINGLE, ids=lambda c: c.name)
def test_every_declared_saved_tensor_is_checked(case: Case, backend: str) -> None:
    """The other direction: changing what an op declares it reads does raise (the check is live)."""
    (op,) = case.ops
    for what in sorted(_reads(op)):
        index = -1 if what == "output" else int(what.split()[1])
        if index >= len(case.shapes(3, 4)):
            continue  # a number operand (a constant made by the op call), not one of the row's inputs
        with pytest.raises(mg.GraphError, match=MODIFIED):
            _grads(case, backend, index)


def test_a_function_whose_forward_changes_what_it_saved_is_refused(backend: str) -> None:
    """The check covers a change made inside forward itself, after save_for_backward."""

    class SaveThenScale(mg.Function):
        @staticmethod
        def forward(ctx, x, scratch):
            ctx.save_for_backward(scratch)
            out = x * scratch
            scratch.mul_(2.0)  # after saving it: backward would read the doubled values
            return out

        @staticmethod
        def backward(ctx, grad):
            (scratch,) = ctx.saved_tensors
            return grad * scratch, None

    x = leaf([[1.0, 2.0]])
    scratch = leaf([[3.0, 4.0]], requires_grad=False)
    with pytest.raises(mg.GraphError, match="saved tensor #0"):
        SaveThenScale.apply(x, scratch).sum().backward()
