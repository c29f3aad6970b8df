"""A user's Function: each mistake is a matgrad error naming the class and where it is defined, and
the Function appears under its class name wherever built-in ops appear under theirs."""

from __future__ import annotations

from typing import Any

import pytest

import matgrad as mg
from matgrad.viz import draw_graph, text_graph


def _returning(make_grad: Any, n_args: int = 1) -> type[mg.Function]:
    class Scale(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D, *rest: Any) -> mg.Tensor2D:
            return x * 2.0

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> Any:
            return make_grad(g)

    return Scale


def _backward_of(fn: type[mg.Function], *args: Any) -> None:
    fn.apply(*args).sum().backward()


def _where(pattern: str) -> str:
    # the class, its backward, and this file's line where it was defined
    return rf"Scale\.backward \(defined at .*test_function_errors\.py:\d+\).*{pattern}"


def test_the_wrong_number_of_gradients(backend: str) -> None:
    x = mg.ones(2, 3, backend=backend, requires_grad=True)
    with pytest.raises(mg.GraphError, match=_where(r"returned 2 gradient\(s\) but forward takes 1 argument")):
        _backward_of(_returning(lambda g: (g * 2.0, g)), x)


def test_a_gradient_of_the_wrong_shape(backend: str) -> None:
    x = mg.ones(2, 3, backend=backend, requires_grad=True)
    with pytest.raises(mg.ShapeError, match=_where("the gradient for argument #0 is 3x2 but the argument is 2x3")):
        _backward_of(_returning(lambda g: g.T), x)


def test_a_gradient_of_the_wrong_dtype(backend: str) -> None:
    x = mg.ones(2, 3, backend=backend, requires_grad=True)
    with pytest.raises(mg.DTypeError, match=_where("is float64 but the argument is float32")):
        _backward_of(_returning(lambda g: g.to("float64")), x)


def test_a_gradient_on_another_backend() -> None:
    x = mg.ones(2, 3, backend="numpy", requires_grad=True)
    with pytest.raises(mg.BackendError, match=_where("is on python but the argument is on numpy")):
        _backward_of(_returning(lambda g: g.to(backend="python")), x)


def test_a_gradient_that_is_not_a_tensor(backend: str) -> None:
    x = mg.ones(2, 3, backend=backend, requires_grad=True)
    with pytest.raises(TypeError, match=_where("the gradient for argument #0 is a float, not a Tensor2D")):
        _backward_of(_returning(lambda g: 2.0), x)


def test_a_gradient_for_a_number_argument(backend: str) -> None:
    x = mg.ones(2, 3, backend=backend, requires_grad=True)
    with pytest.raises(mg.GraphError, match=_where("a gradient for argument #1, a float, not a tensor; return None")):
        _backward_of(_returning(lambda g: (g * 2.0, g)), x, 3.0)


@pytest.mark.parametrize(
    ("result", "said"),
    [
        (lambda x: x.tolist(), "returned a list holding list, list"),
        (lambda x: 2.0, "returned float"),
        (lambda x: (), "returned an empty tuple"),
        (lambda x: (x, 1.0), "returned a tuple holding Tensor2D, float"),
    ],
)
def test_a_forward_that_returns_something_else(backend: str, result: Any, said: str) -> None:
    class Bad(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D) -> Any:
            return result(x)

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> Any:
            return g

    x = mg.ones(2, 2, backend=backend, requires_grad=True)
    with pytest.raises(TypeError, match=rf"Bad\.forward \(defined at .*test_function_errors\.py:\d+\) {said}"):
        Bad.apply(x)


def test_instantiating_and_keyword_tensors_are_explained() -> None:
    Scale = _returning(lambda g: g * 2.0)
    with pytest.raises(TypeError, match=r"a Function is not instantiated; call Scale\.apply"):
        Scale()
    w = mg.ones(1, 1, requires_grad=True)
    with pytest.raises(TypeError, match="passed as w= requires grad"):
        Scale.apply(mg.ones(1, 1), w=w)


class Reciprocal(mg.Function):
    """``C = 1 / A``;  ``dA = -G / A^2``."""

    @staticmethod
    def forward(ctx: Any, a: mg.Tensor2D) -> mg.Tensor2D:
        ctx.save_for_backward(a)
        return 1.0 / a

    @staticmethod
    def backward(ctx: Any, g: mg.Tensor2D) -> mg.Tensor2D:
        (a,) = ctx.saved_tensors
        return -g / (a * a * 0.0)  # a wrong rule: inf and NaN from finite values


def test_a_function_is_named_in_diagrams_and_anomaly_errors(backend: str) -> None:
    a = mg.Tensor2D([[1.0, 2.0]], backend=backend, requires_grad=True)
    out = (Reciprocal.apply(a) * 2.0).sum()
    assert "Reciprocal" in text_graph(out)
    assert "Reciprocal" in draw_graph(out).source
    with mg.detect_anomaly(), pytest.raises(mg.AnomalyError, match="Reciprocal") as caught:
        out.backward()
    assert "backward" in str(caught.value)
    assert a.grad is None  # nothing accumulated from a rule that failed
