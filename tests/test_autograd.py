"""Graph semantics: accumulation, broadcasting, grad modes, release, long chains, higher order."""

from __future__ import annotations

import sys

import pytest

import matgrad as mg
import matgrad.functional as F
from matgrad.testing import assert_close


def leaf(rows: list[list[float]], **kw: object) -> mg.Tensor2D:
    return mg.Tensor2D(rows, dtype="float64", requires_grad=True, **kw)  # type: ignore[arg-type]


# -- accumulation across every use ------------------------------------------------------------


def test_square_by_reuse(backend: str) -> None:
    x = leaf([[3.0, -2.0]])
    (x * x).sum().backward()
    assert x.grad.tolist() == [[6.0, -4.0]]


def test_doubling_chain_accumulates(backend: str) -> None:
    a = leaf([[1.0]])
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.item() == 4.0


def test_diamond(backend: str) -> None:
    x = leaf([[2.0]])
    left = x * 3.0
    right = x.exp()
    y = left * right  # d/dx 3x e^x = 3 e^x (1 + x)
    y.backward()
    assert_close(x.grad, [[3 * 2.718281828459045**2 * 3]], rtol=1e-12)


def test_grad_accumulates_across_backward_calls(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    assert x.grad.tolist() == [[5.0, 5.0]]


def test_intermediate_has_no_grad_unless_retained(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    h = x * 2.0
    kept = x * 3.0
    kept.retain_grad()
    (h + kept).sum().backward()
    assert h.grad is None
    assert kept.grad.tolist() == [[1.0, 1.0]]
    assert x.grad.tolist() == [[5.0, 5.0]]


# -- broadcasting: gradients summed back in the engine ---------------------------------------


@pytest.mark.parametrize("small", [(1, 3), (2, 1), (1, 1)])
def test_broadcast_gradients_have_input_shape(backend: str, small: tuple[int, int]) -> None:
    big = leaf([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    s = mg.Tensor2D([[0.5] * small[1]] * small[0], dtype="float64", requires_grad=True)
    upstream = mg.Tensor2D([[1.0, 10.0, 100.0], [1000.0, 10000.0, 100000.0]], dtype="float64")
    (big * s).backward(upstream)
    assert s.grad.shape == small
    expected = [[u * b for u, b in zip(ru, rb)] for ru, rb in zip(upstream.tolist(), big.tolist())]
    if small[0] == 1:
        expected = [[sum(col) for col in zip(*expected)]]
    if small[1] == 1:
        expected = [[sum(row)] for row in expected]
    assert_close(s.grad, expected, rtol=1e-12)
    assert big.grad.shape == (2, 3)


def test_broadcast_reductions_chain(backend: str) -> None:
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    centred = x - x.mean(axis=0)  # (2,2) - (1,2)
    loss = (centred * centred).sum()
    loss.backward()
    # d/dx sum((x - mean)^2) = 2 (x - mean), since the deviations sum to zero per column
    assert_close(x.grad, [[-2.0, -2.0], [2.0, 2.0]], rtol=1e-12)


# -- grad modes -------------------------------------------------------------------------------


def test_no_grad_context_and_decorator(backend: str) -> None:
    x = leaf([[1.0]])
    with mg.no_grad():
        y = x * 2.0
        assert not mg.is_grad_enabled()
    assert mg.is_grad_enabled()
    assert not y.requires_grad and y.op is None

    @mg.no_grad()
    def double(t: mg.Tensor2D) -> mg.Tensor2D:
        return t * 2.0

    z = double(x)
    assert not z.requires_grad and mg.is_grad_enabled()


def test_enable_grad_inside_no_grad(backend: str) -> None:
    x = leaf([[1.0]])
    with mg.no_grad():
        with mg.enable_grad():
            y = x * 2.0
        z = x * 2.0
    assert y.requires_grad and not z.requires_grad


def test_set_grad_enabled_forms(backend: str) -> None:
    x = leaf([[1.0]])
    with mg.set_grad_enabled(False):
        assert not (x * 1.0).requires_grad
    assert mg.is_grad_enabled()
    mg.set_grad_enabled(False)
    try:
        assert not mg.is_grad_enabled()
    finally:
        mg.set_grad_enabled(True)

    @mg.set_grad_enabled(False)
    def f(t: mg.Tensor2D) -> mg.Tensor2D:
        return t * 1.0

    assert mg.is_grad_enabled()
    assert not f(x).requires_grad
    assert mg.is_grad_enabled()


def test_no_grad_restores_on_exception(backend: str) -> None:
    with pytest.raises(RuntimeError), mg.no_grad():
        raise RuntimeError("boom")
    assert mg.is_grad_enabled()


def test_detach_cuts_the_graph(backend: str) -> None:
    x = leaf([[2.0]])
    y = (x * 3.0).detach()
    assert y.is_leaf and not y.requires_grad
    z = x * y
    z.backward()
    assert x.grad.item() == 6.0


def test_requires_grad_rules(backend: str) -> None:
    x = mg.Tensor2D([[1.0]])
    assert not x.requires_grad
    assert x.requires_grad_() is x and x.requires_grad
    y = x * 2.0
    with pytest.raises(mg.GraphError, match="non-leaf"):
        y.requires_grad_(False)
    with pytest.raises(mg.DTypeError, match="floating"):
        mg.Tensor2D([[1]], dtype="int64").requires_grad_()
    with pytest.raises(mg.GraphError):
        mg.Tensor2D([[1.0]]).retain_grad()


def test_constant_inputs_get_no_gradient(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    c = mg.Tensor2D([[3.0, 4.0]], dtype="float64")
    (x * c).sum().backward()
    assert c.grad is None
    assert x.grad.tolist() == [[3.0, 4.0]]


# -- backward: seeds, release, errors --------------------------------------------------------


def test_non_scalar_backward_needs_grad(backend: str) -> None:
    y = leaf([[1.0, 2.0]]) * 2.0
    with pytest.raises(mg.GraphError, match=r"1x2, not 1x1"):
        y.backward()


def test_grad_argument_must_match(backend: str) -> None:
    y = leaf([[1.0, 2.0]]) * 2.0
    with pytest.raises(mg.GraphError, match="must match"):
        y.backward(mg.Tensor2D([[1.0]], dtype="float64"))


def test_backward_on_constant_is_an_error(backend: str) -> None:
    with pytest.raises(mg.GraphError, match="does not require grad"):
        mg.Tensor2D([[1.0]]).backward()


def test_second_backward_through_released_graph(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    loss = (x.exp() * 2.0).sum()
    loss.backward()
    with pytest.raises(mg.GraphError, match=r"second time.*retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_second_backward(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert x.grad.tolist() == [[4.0, 8.0]]


def test_release_drops_saved_buffers_but_keeps_structure(backend: str) -> None:
    logits = leaf([[1.0, 2.0, 3.0]])
    loss = F.cross_entropy(logits, [2])
    op = loss.op
    assert op.saved is not None
    loss.backward()
    assert op.released and op.saved is None
    assert loss.inputs == (logits,)  # the graph can still be drawn after backward


def test_a_kept_loss_keeps_its_activations_a_detached_one_does_not(backend: str) -> None:
    """The graph after backward holds its tensors (so it can be drawn); loss.item()/detach() let go."""
    import gc
    import weakref

    model = mg.nn.MLP([4, 3, 2])
    kept = []
    refs = []
    for keep in (lambda t: t, lambda t: t.detach(), lambda t: t.item()):
        x = mg.Tensor2D([[0.5, -1.0, 2.0, 0.0]])
        hidden = model[0](x)
        loss = F.cross_entropy(model[2](model[1](hidden)), [1])
        loss.backward()
        kept.append(keep(loss))
        refs.append(weakref.ref(hidden))
        del x, hidden, loss
    gc.collect()
    assert [r() is not None for r in refs] == [True, False, False]


def test_saved_probs_not_kept_under_no_grad(backend: str) -> None:
    logits = leaf([[1.0, 2.0, 3.0]])
    with mg.no_grad():
        loss = F.cross_entropy(logits, [2])
    assert loss.op is None


def test_hundred_thousand_op_chain(backend: str) -> None:
    """Iterative topological sort: no RecursionError at the default recursion limit."""
    assert sys.getrecursionlimit() <= 10_000
    x = mg.Tensor2D([[1.0]], dtype="float64", requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    y.backward()
    assert x.grad.item() == 1.0
    assert y.item() == 100_001.0


def test_wide_fan_in(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    total = mg.cat([x * float(k) for k in range(1000)], axis=0).sum()
    total.backward()
    assert x.grad.tolist() == [[sum(range(1000))] * 2]


# -- matgrad.grad -----------------------------------------------------------------------------


def test_grad_leaves_dot_grad_alone(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    y = (x * x).sum()
    (gx,) = mg.grad(y, x)
    assert gx.tolist() == [[2.0, 4.0]]
    assert x.grad is None


def test_grad_multiple_inputs_and_outputs(backend: str) -> None:
    a = leaf([[1.0]])
    b = leaf([[2.0]])
    ga, gb = mg.grad([a * b, a + b], [a, b])
    assert (ga.item(), gb.item()) == (3.0, 2.0)


def test_grad_unused_input(backend: str) -> None:
    a = leaf([[1.0]])
    b = leaf([[2.0]])
    y = a * 3.0
    with pytest.raises(mg.GraphError, match="not used"):
        mg.grad(y, [a, b], retain_graph=True)
    ga, gb = mg.grad(y, [a, b], allow_unused=True)
    assert ga.item() == 3.0 and gb is None


def test_grad_of_intermediate(backend: str) -> None:
    x = leaf([[2.0]])
    h = x * 3.0
    y = h * h
    (gh,) = mg.grad(y, h)
    assert gh.item() == 12.0


# -- higher order ------------------------------------------------------------------------------


def test_second_derivative_of_cube(backend: str) -> None:
    x = leaf([[2.0]])
    y = x**3
    (g,) = mg.grad(y, x, create_graph=True)
    assert g.requires_grad
    (h,) = mg.grad(g, x)
    assert g.item() == 12.0 and h.item() == 12.0


def test_backward_create_graph_keeps_differentiable_grad(backend: str) -> None:
    x = leaf([[1.5]])
    (x.sigmoid() * x).backward(create_graph=True)
    g = x.grad
    assert g is not None and g.requires_grad
    (h,) = mg.grad(g, x)
    s = 1 / (1 + 2.718281828459045**-1.5)
    # d2/dx2 [x s(x)] = 2 s' + x s'' with s' = s(1-s), s'' = s'(1-2s)
    ds = s * (1 - s)
    assert_close(h, [[2 * ds + 1.5 * ds * (1 - 2 * s)]], rtol=1e-10)


def test_hessian_vector_product_of_mlp_loss(backend: str) -> None:
    """Hv via double backward equals the finite difference of the gradient along v."""
    mg.manual_seed(3)
    x = mg.randn(6, 4, dtype="float64")
    targets = [0, 2, 1, 2, 0, 1]
    w1 = mg.randn(5, 4, dtype="float64", requires_grad=True)
    b1 = mg.randn(1, 5, dtype="float64", requires_grad=True)
    w2 = mg.randn(3, 5, dtype="float64", requires_grad=True)
    params = [w1, b1, w2]
    vs = [mg.randn(*p.shape, dtype="float64") for p in params]

    def loss_of(ps: list[mg.Tensor2D]) -> mg.Tensor2D:
        h = F.linear(x, ps[0], ps[1]).tanh()
        return F.cross_entropy(F.linear(h, ps[2]), targets)

    grads = mg.grad(loss_of(params), params, create_graph=True)
    gv = sum(((g * v).sum() for g, v in zip(grads, vs)), mg.zeros(1, 1, dtype="float64"))
    hv = mg.grad(gv, params)

    eps = 1e-5

    def grad_at(sign: float) -> list[list[list[float]]]:
        shifted = [mg.Tensor2D(p.detach() + sign * eps * v, requires_grad=True) for p, v in zip(params, vs)]
        return [g.tolist() for g in mg.grad(loss_of(shifted), shifted)]

    plus, minus = grad_at(1.0), grad_at(-1.0)
    for h, gp, gm in zip(hv, plus, minus):
        fd = [[(a - b) / (2 * eps) for a, b in zip(ra, rb)] for ra, rb in zip(gp, gm)]
        assert_close(h, fd, rtol=1e-5, atol=1e-8)


# -- dtypes through the graph ------------------------------------------------------------------


def test_float32_stays_float32(backend: str) -> None:
    x = mg.randn(4, 3, requires_grad=True)
    w = mg.randn(2, 3, requires_grad=True)
    loss = F.cross_entropy(F.linear(x, w).relu() * 2.0 + 1.0, [0, 1, 1, 0])
    assert loss.dtype == "float32"
    loss.backward()
    assert x.grad.dtype == "float32" and w.grad.dtype == "float32"


def test_dtype_conversion_is_differentiable(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64", requires_grad=True)
    (x.float() * 3.0).sum().backward()
    assert x.grad.dtype == "float64"
    assert x.grad.tolist() == [[3.0, 3.0]]


def test_leaf_gradients_never_share_storage(backend: str) -> None:
    """Regression: add's rule returns one gradient for both inputs, and both leaves stored it."""
    x = leaf([[1.0, 2.0]])
    y = leaf([[3.0, 4.0]])
    (x + y).sum().backward()
    assert x.grad is not y.grad
    with mg.no_grad():
        x.grad.add_(10.0)
    assert y.grad.tolist() == [[1.0, 1.0]]


def test_leaf_gradient_does_not_alias_the_seed(backend: str) -> None:
    x = leaf([[1.0, 2.0]])
    seed = mg.Tensor2D([[5.0, 6.0]], dtype="float64")
    x.backward(seed)
    with mg.no_grad():
        seed.add_(1.0)
    assert x.grad.tolist() == [[5.0, 6.0]]
