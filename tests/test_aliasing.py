"""What a user receives as a gradient owns its storage, and under create_graph stays in the graph.

* ``.grad`` after ``backward`` and the results of ``matgrad.grad`` never share storage with each
  other, with the engine (its 1x1 seed is fresh per call), or with tensors the user holds (a
  user's ``Function`` returning a saved tensor), except a ``grad_outputs`` tensor passed straight
  through by ``grad`` (PyTorch documents the same); NumPy reshape views count as the same storage.
* With ``backward(create_graph=True)`` every leaf's ``.grad`` is connected to the graph, also when
  one gradient object reached two leaves: gradient penalties through ``.grad`` match PyTorch.
* Identity ``reshape``, ``expand`` and a full slice ``a[:, :]`` are new tensors (reshape and the
  slice share storage, as PyTorch's views), so ``retain_grad()`` on one acts on it alone.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import matgrad as mg
from matgrad import ops

torch = pytest.importorskip("torch")


def leaf(rows: list[list[float]], **kw: Any) -> mg.Tensor2D:
    return mg.Tensor2D(rows, dtype="float64", requires_grad=True, **kw)


def storage(t: mg.Tensor2D) -> int:
    return t._backend.storage(t._data)


def shares(a: mg.Tensor2D, b: mg.Tensor2D) -> bool:
    if a.backend == "numpy":
        return bool(np.shares_memory(a.numpy(), b.numpy()))
    return storage(a) == storage(b)


# -- no gradient aliases another, the engine's state, or a user's tensor -------------------------


def test_changing_a_grad_result_in_place_never_affects_later_gradients(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    for _ in range(3):
        (g,) = mg.grad(x.sum(), [x])  # sum's rule expands the engine's 1x1 seed
        assert g.tolist() == [[1.0, 1.0]]
        with mg.no_grad():
            g.mul_(5)
    s = (x * 1.0).sum()
    (g1,) = mg.grad(s, [s])  # the gradient of a root with respect to itself: the seed itself
    with mg.no_grad():
        g1.mul_(5)
    (g2,) = mg.grad((x * 1.0).sum(), [x])
    assert g1.tolist() == [[5.0]] and g2.tolist() == [[1.0, 1.0]]


def test_two_results_of_one_grad_call_have_distinct_storage(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    l1 = (x * 2.0).sum()
    l2 = (x * 3.0).sum()
    g1, g2 = mg.grad(l1 + l2, [l1, l2])  # add's rule hands one object to both inputs
    assert not shares(g1, g2)
    with mg.no_grad():
        g1.mul_(7)
    assert g2.tolist() == [[1.0]]


def test_reshape_views_of_one_gradient_count_as_the_same_storage(backend: str) -> None:
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    w = leaf([[1.0, 1.0, 1.0, 1.0]])
    gx, gw = mg.grad((x.reshape(1, 4) * 1.0 + w).sum(), [x, w])
    assert not shares(gx, gw)
    with mg.no_grad():
        gw.mul_(3)
    assert gx.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_leaf_grads_after_backward_never_share_storage(backend: str) -> None:
    a = leaf([[1.0, 2.0]])
    b = leaf([[3.0, 4.0]])
    c = leaf([[5.0, 6.0]])
    (a + b + c.reshape(1, 2)).sum().backward()
    grads = [a.grad, b.grad, c.grad]
    assert all(not shares(p, q) for i, p in enumerate(grads) for q in grads[i + 1 :])


def test_a_user_grad_output_passes_through_grad_once(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    y = leaf([[3.0, 4.0]])
    seed = mg.Tensor2D([[1.0, 1.0]], dtype="float64")
    gx, gy = mg.grad(x + y, [x, y], grad_outputs=seed)
    assert gx is seed or gy is seed  # passed straight through, as PyTorch
    assert not shares(gx, gy)  # but never to two results


def test_backward_never_stores_the_users_seed_itself(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    seed = mg.Tensor2D([[5.0, 6.0]], dtype="float64")
    (x * 1.0).backward(seed)
    assert not shares(x.grad, seed)


def test_a_function_returning_a_saved_tensor_as_gradient_gets_a_copy(backend: str) -> None:
    class TimesC(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D, c: mg.Tensor2D) -> mg.Tensor2D:
            ctx.save_for_backward(c)
            return x * c

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> tuple[mg.Tensor2D, None]:
            (c,) = ctx.saved_tensors
            return c, None  # the seed is 1: c is the gradient, returned as is

    c = mg.Tensor2D([[2.0, 3.0]], dtype="float64")
    x = leaf([[1.0, 1.0]])
    TimesC.apply(x, c).sum().backward()
    assert x.grad.tolist() == [[2.0, 3.0]] and not shares(x.grad, c)
    with mg.no_grad():
        x.grad.mul_(5)
    assert c.tolist() == [[2.0, 3.0]]
    (g,) = mg.grad(TimesC.apply(x, c).sum(), [x])
    assert not shares(g, c)


def test_accumulated_grads_are_new_tensors(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    (x * 2.0).sum().backward()
    first = x.grad
    (x * 3.0).sum().backward()
    assert x.grad is not first and first.tolist() == [[2.0, 2.0]] and x.grad.tolist() == [[5.0, 5.0]]


# -- create_graph: every .grad stays in the graph (gradient penalties) ----------------------------


def _penalty_case(name: str) -> tuple[Callable[..., Any], list[list[list[float]]]]:
    cases: dict[str, tuple[Callable[..., Any], list[list[list[float]]]]] = {
        # one gradient object reaches both leaves (add's rule): the issue's case
        "shared_gradient": (lambda a, b: (a + b).exp().sum(), [[[-0.5]], [[-0.5]]]),
        "diamond": (lambda x, w: ((x * w).tanh() * (x * w).exp()).sum(), [[[0.3, -0.7]], [[1.2, 0.4]]]),
        "reuse": (lambda x, w: (x * x * w + x).sum(), [[[0.5, -1.5]], [[2.0, 3.0]]]),
        "broadcast_row": (lambda x, b: (x + b).sigmoid().sum(), [[[0.1, -0.2], [0.3, 0.4]], [[0.5, -0.5]]]),
        "broadcast_scalar": (lambda x, s: ((x * s).exp() + x).sum(), [[[0.2, -0.4], [0.6, 0.1]], [[0.7]]]),
        "matmul": (lambda x, w: (x @ w).tanh().sum(), [[[0.5, -1.0], [0.25, 2.0]], [[0.3, -0.1], [0.8, 0.2]]]),
        "same_leaf_twice": (lambda x, w: (x * x).sum() + (w + w).sum(), [[[1.5, -2.0]], [[0.5, 1.0]]]),
    }
    return cases[name]


PENALTY_CASES = [
    "shared_gradient",
    "diamond",
    "reuse",
    "broadcast_row",
    "broadcast_scalar",
    "matmul",
    "same_leaf_twice",
]


@pytest.mark.parametrize("name", PENALTY_CASES)
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_gradient_penalty_through_dot_grad_matches_pytorch(backend: str, name: str) -> None:
    fn, values = _penalty_case(name)
    xs = [leaf(v) for v in values]
    fn(*xs).backward(create_graph=True)
    assert all(x.grad.requires_grad or x.grad.op is None for x in xs)
    penalty = sum(((x.grad * x.grad).sum() for x in xs), start=mg.Tensor2D([[0.0]], dtype="float64"))
    penalty.backward()
    ts = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    fn(*ts).backward(create_graph=True)
    tpenalty = sum((t.grad * t.grad).sum() for t in ts)
    tpenalty.backward()
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_the_issues_gradient_penalty_is_4_over_e(backend: str) -> None:
    """P = |dL/da|^2 + |dL/db|^2 for L = exp(a + b) at a + b = -1/2: dP/da = 4 exp(2(a + b)) = 4/e.

    With b's .grad a plain copy cut from the graph, half of it was lost: 2/e = 0.7358.
    """
    a = leaf([[-0.25]])
    b = leaf([[-0.25]])
    (a + b).exp().sum().backward(create_graph=True)
    ga, gb = a.grad, b.grad
    assert ga.requires_grad and gb.requires_grad
    (penalty,) = mg.grad((ga * ga + gb * gb).sum(), [a])
    assert penalty.item() == pytest.approx(4 / np.e, rel=1e-12)


# -- identity reshape, expand and full slice are new tensors --------------------------------------

IDENTITY = {
    "reshape": lambda t: t.reshape(*t.shape),
    "reshape_minus_one": lambda t: t.reshape(t.nrows, -1),
    "expand": lambda t: ops.expand(t, *t.shape),
    "full_slice": lambda t: t[:, :],
}


@pytest.mark.parametrize("kind", sorted(IDENTITY))
def test_an_identity_view_is_a_new_tensor_and_retain_grad_acts_on_it_alone(backend: str, kind: str) -> None:
    x = leaf([[1.0, -2.0], [3.0, 0.5]])
    h = x * 2.0
    v = IDENTITY[kind](h)
    assert v is not h and v.op is not None and v.shape == h.shape
    v.retain_grad()
    (v * 3.0).sum().backward()
    assert v.grad.tolist() == [[3.0, 3.0], [3.0, 3.0]]
    assert h.grad is None  # retain_grad on the view did not reach h
    assert x.grad.tolist() == [[6.0, 6.0], [6.0, 6.0]]


@pytest.mark.parametrize("kind", ["reshape", "reshape_minus_one", "full_slice"])
def test_identity_reshape_and_full_slice_share_storage_and_version(backend: str, kind: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    v = IDENTITY[kind](x)
    assert shares(v, x)
    v.mul_(10)
    assert x.tolist() == [[10.0, 20.0]] and x._version == v._version == 1


def test_identity_expand_is_a_copy(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    v = ops.expand(x, 1, 2)
    assert not shares(v, x)
