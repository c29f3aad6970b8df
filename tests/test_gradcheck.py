"""gradcheck and gradgradcheck catch wrong rules, and say where."""

from __future__ import annotations

import pytest

import matgrad as mg
from matgrad.autograd import Op
from matgrad.backends.base import Backend, Data
from matgrad.tensor import Tensor2D


class WrongAxisSum(Op):
    """Row sums whose backward broadcasts G along the wrong axis: right only when G is all ones."""

    __slots__ = ()
    name = "wrong_axis_sum"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.sum(a, 1)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        total = grad.sum()  # should be grad expanded along each row; the sum loses which row
        return (mg.ones(*a.shape, dtype=a.dtype) * total / float(a.nrows),)


def wrong_axis_sum(a: Tensor2D) -> Tensor2D:
    return WrongAxisSum()(a)


class WrongSecondDerivative(Op):
    """x^3 whose first derivative is right in value but built from a constant, so d2 is lost."""

    __slots__ = ()
    name = "cube_detached"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pow(a, 3.0)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad * (3.0 * a.detach() ** 2),)


def cube_detached(a: Tensor2D) -> Tensor2D:
    return WrongSecondDerivative()(a)


def test_all_ones_would_hide_the_bug(backend: str) -> None:
    """The analytical gradient is right for an all-ones upstream gradient..."""
    x = mg.Tensor2D([[1.0, 2.0], [3.0, 4.0]], dtype="float64", requires_grad=True)
    wrong_axis_sum(x).backward(mg.ones(2, 1, dtype="float64"))
    assert x.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_random_upstream_catches_it(backend: str) -> None:
    """...so gradcheck's random upstream gradient is what exposes it."""
    x = mg.Tensor2D([[1.0, 2.0], [3.0, 4.0]], dtype="float64", requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(wrong_axis_sum, [x])
    message = str(info.value)
    assert "input #0 (2x2)" in message and "(row" in message and "col" in message
    assert "analytical" in message and "numerical" in message
    assert "absolute error" in message and "relative error" in message
    assert mg.gradcheck(wrong_axis_sum, [x], raise_exception=False) is False


def test_gradgradcheck_catches_lost_second_derivative(backend: str) -> None:
    x = mg.Tensor2D([[0.5, -1.5]], dtype="float64", requires_grad=True)
    assert mg.gradcheck(cube_detached, [x])  # first derivatives are right
    with pytest.raises(mg.GradcheckError):
        mg.gradgradcheck(cube_detached, [x])
    assert mg.gradgradcheck(lambda t: t**3, [x])


def test_inputs_are_checked_in_float64(backend: str) -> None:
    """float32 inputs: the check still runs in float64, so tight tolerances hold."""
    x = mg.Tensor2D([[0.3, -0.7, 1.1]], requires_grad=True)
    assert x.dtype == "float32"
    assert mg.gradcheck(lambda t: (t * t).exp().log_softmax(), [x], atol=1e-7, rtol=1e-6)


def test_only_inputs_requiring_grad_are_checked(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64", requires_grad=True)
    c = mg.Tensor2D([[3.0, 4.0]], dtype="float64")
    assert mg.gradcheck(lambda a, b: a * b, [x, c])
    with pytest.raises(mg.GradcheckError, match="no input requires grad"):
        mg.gradcheck(lambda b: b * 2.0, [c])


def test_multiple_outputs_and_unused_inputs(backend: str) -> None:
    a = mg.Tensor2D([[1.0]], dtype="float64", requires_grad=True)
    b = mg.Tensor2D([[2.0]], dtype="float64", requires_grad=True)
    assert mg.gradcheck(lambda x, y: (x * y, x.exp()), [a, b])
    assert mg.gradcheck(lambda x, y: x * 3.0, [a, b])  # y unused: zero both ways
    assert mg.gradgradcheck(lambda x, y: x * 3.0 + y, [a, b])  # second derivatives all zero


def test_non_tensor_output_is_a_type_error(backend: str) -> None:
    a = mg.Tensor2D([[1.0]], dtype="float64", requires_grad=True)
    with pytest.raises(TypeError, match="must return a Tensor2D"):
        mg.gradcheck(lambda x: 3.0, [a])


def test_gradcheck_leaves_global_rng_alone(backend: str) -> None:
    mg.manual_seed(5)
    expected = mg.rand(1, 3).tolist()
    mg.manual_seed(5)
    mg.gradcheck(lambda t: t * t, [mg.Tensor2D([[1.0, 2.0]], dtype="float64", requires_grad=True)])
    assert mg.rand(1, 3).tolist() == expected


# ---------------------------------------------------------------------------------------------
# which op is wrong: every op of the graph checked alone
# ---------------------------------------------------------------------------------------------


class Softplus(mg.Function):
    """A user's softplus whose backward is off by a factor on purpose (when ``scale`` != 1)."""

    scale = 1.0

    @staticmethod
    def forward(ctx: mg.autograd.FunctionCtx, x: Tensor2D) -> Tensor2D:
        ctx.save_for_backward(x)
        return (x.exp() + 1.0).log()

    @staticmethod
    def backward(ctx: mg.autograd.FunctionCtx, grad: Tensor2D) -> Tensor2D:
        (x,) = ctx.saved_tensors
        return grad * x.sigmoid() * Softplus.scale


class TwoOutputs(mg.Function):
    """``(x * y, x - y)`` with the second rule's sign wrong for y."""

    @staticmethod
    def forward(ctx: mg.autograd.FunctionCtx, x: Tensor2D, y: Tensor2D) -> tuple[Tensor2D, Tensor2D]:
        ctx.save_for_backward(x, y)
        return x * y, x - y

    @staticmethod
    def backward(ctx: mg.autograd.FunctionCtx, g1: Tensor2D, g2: Tensor2D) -> tuple[Tensor2D, Tensor2D]:
        x, y = ctx.saved_tensors
        return g1 * y + g2, g1 * x + g2  # d(x - y)/dy is -1: the second term should be -g2


def twenty_ops(x: Tensor2D, w: Tensor2D) -> Tensor2D:
    """About twenty built-in ops around one user Function in the middle."""
    h = (x @ w).tanh() * 2.0 + 0.5
    h = Softplus.apply(h.T.T)
    h = (h - h.mean(axis=0)) / (h.abs().max() + 1.0)
    z = h.softmax(axis=1) * 3.0 + h.sigmoid()
    return (z.log_softmax(axis=1).sum(axis=1) * 0.25 + (h**2).mean()).tanh()


@pytest.fixture
def wrong_softplus() -> None:
    Softplus.scale = 1.5
    yield
    Softplus.scale = 1.0


def test_the_report_points_at_the_wrong_function_in_twenty_ops(backend: str, wrong_softplus: None) -> None:
    mg.manual_seed(3)
    x = mg.randn(4, 3, dtype="float64", requires_grad=True)
    w = mg.randn(3, 5, dtype="float64", requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(twenty_ops, [x, w])
    culprits = info.value.culprits
    assert [c.op for c in culprits] == ["Softplus"], str(info.value)
    only = culprits[0]
    assert only.is_function and only.input == 0 and only.shape == (4, 5)
    assert only.defined_at == f"{__file__}:{Softplus.backward.__code__.co_firstlineno}"
    assert abs(only.analytical - 1.5 * only.numerical) < 1e-6 * max(1.0, abs(only.numerical))
    message = str(info.value)
    assert "gradcheck failed for input #" in message  # the existing report stays
    assert "Function Softplus (backward defined at " in message and "test_gradcheck.py:" in message


def test_the_same_function_passes_when_its_rule_is_right(backend: str) -> None:
    mg.manual_seed(3)
    x = mg.randn(4, 3, dtype="float64", requires_grad=True)
    w = mg.randn(3, 5, dtype="float64", requires_grad=True)
    assert mg.gradcheck(twenty_ops, [x, w])


def test_a_wrong_rule_of_a_function_with_two_outputs_is_found(backend: str) -> None:
    x = mg.Tensor2D([[0.5, -1.0], [2.0, 0.25]], dtype="float64", requires_grad=True)
    y = mg.Tensor2D([[1.5, 0.75], [-0.5, 1.0]], dtype="float64", requires_grad=True)

    def fn(a: Tensor2D, b: Tensor2D) -> Tensor2D:
        p, d = TwoOutputs.apply(a.exp(), b)
        return p * 2.0 + d.tanh()

    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(fn, [x, y])
    culprits = info.value.culprits
    assert [(c.op, c.input) for c in culprits] == [("TwoOutputs", 1)], str(info.value)


def test_a_wrong_op_class_is_named_too(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0], [3.0, 4.0]], dtype="float64", requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(lambda t: wrong_axis_sum(t.exp()) * 2.0, [x])
    culprits = info.value.culprits
    assert [c.op for c in culprits] == ["wrong_axis_sum"] and not culprits[0].is_function
    assert "op wrong_axis_sum (backward defined at" in str(info.value)


def test_when_no_op_is_wrong_the_report_says_so(backend: str) -> None:
    """A function drawing random numbers: every rule is right, the function is not deterministic."""
    x = mg.Tensor2D([[0.5, 1.0]], dtype="float64", requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(lambda t: t * mg.rand(1, 2, dtype="float64"), [x])
    assert info.value.culprits == []
    assert "every op's backward agrees" in str(info.value) and "not deterministic" in str(info.value)


def test_a_kink_at_an_input_is_reported_at_the_op_with_the_kink(backend: str) -> None:
    """relu at exactly 0: the one-sided slopes differ, so relu alone fails too, and is named."""
    x = mg.Tensor2D([[0.0, 1.0]], dtype="float64", requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(lambda t: (t * 2.0).relu(), [x])
    assert [c.op for c in info.value.culprits] == ["relu"]
