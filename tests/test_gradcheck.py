"""gradcheck and gradgradcheck catch wrong rules, and say where."""

from __future__ import annotations

import pytest

import matgrad as mg
from matgrad.autograd import Op, record
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
    op = WrongAxisSum()
    return record(op, op.forward(a._backend, a._data), a._backend, (a,))


class WrongSecondDerivative(Op):
    """x^3 whose first derivative is right in value but built from a constant, so d2 is lost."""

    __slots__ = ()
    name = "cube_detached"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pow(a, 3.0)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad * (3.0 * a.detach() ** 2),)


def cube_detached(a: Tensor2D) -> Tensor2D:
    op = WrongSecondDerivative()
    return record(op, op.forward(a._backend, a._data), a._backend, (a,))


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
