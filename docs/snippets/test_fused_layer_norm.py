"""Tests for a Function of your own: a fused layer norm against its composed version.

Run:  python -m pytest test_fused_layer_norm.py
"""

from hypothesis import given, settings
from hypothesis import strategies as st

import matgrad as mg
from matgrad.testing import assert_close, matrices, shapes

checks = settings(max_examples=25, deadline=None)
values = st.floats(-3.0, 3.0)


def normalise(x, eps):
    """Each row of x to mean 0 and variance 1: (Y, sigma)."""
    centered = x - x.mean(axis=1)
    sigma = ((centered * centered).mean(axis=1) + eps).sqrt()
    return centered / sigma, sigma


class LayerNorm(mg.Function):
    """Y = (X - mean) / sigma per row;  dX = (G - mean(G) - Y * mean(G * Y)) / sigma."""

    @staticmethod
    def forward(ctx, x, eps=1e-5):
        ctx.save_for_backward(x)
        ctx.eps = eps
        return normalise(x, eps)[0]

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        y, sigma = normalise(x, ctx.eps)
        return (grad - grad.mean(axis=1) - y * (grad * y).mean(axis=1)) / sigma, None


def composed(x, eps=1e-5):
    centered = x - x.mean(axis=1)
    return centered / ((centered * centered).mean(axis=1) + eps).sqrt()


@checks
@given(x=matrices(shapes(max_rows=4, max_cols=5), values, requires_grad=True))
def test_the_rule_matches_numerical_derivatives(x):
    assert mg.gradcheck(LayerNorm.apply, [x])


@checks
@given(x=matrices(shapes(max_rows=4, max_cols=5), values, requires_grad=True))
def test_fused_equals_composed_in_value_and_gradient(x):
    fused, reference = LayerNorm.apply(x), composed(x)
    assert_close(fused, reference, rtol=1e-9, atol=1e-9)
    upstream = mg.randn(*x.shape, dtype="float64")
    (g_fused,) = mg.grad(fused, x, upstream)
    (g_reference,) = mg.grad(reference, x, upstream)
    assert_close(g_fused, g_reference, rtol=1e-7, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(x=matrices(shapes(max_rows=3, max_cols=4), values, requires_grad=True))
def test_second_derivatives(x):
    assert mg.gradgradcheck(LayerNorm.apply, [x])
