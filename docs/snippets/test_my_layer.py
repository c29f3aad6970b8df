"""Gradient checks for a layer of your own, with matgrad.gradcheck and hypothesis.

Run:  python -m pytest test_my_layer.py
"""

from hypothesis import given, settings
from hypothesis import strategies as st

import matgrad as mg
from matgrad import nn
from matgrad.testing import assert_close, broadcastable_pairs, matmul_pairs, matrices, shapes

# gradcheck evaluates the function twice per input element: keep the examples small and few,
# and give hypothesis no deadline (a slow first call is not a failure).
checks = settings(max_examples=25, deadline=None)


# -- the code under test ------------------------------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5):
    """Normalise each row of x to mean 0 and variance 1, then scale and shift per column."""
    mu = x.mean(axis=1)
    centered = x - mu
    var = (centered * centered).mean(axis=1)
    return centered / (var + eps).sqrt() * weight + bias


class LayerNorm(nn.Module):
    def __init__(self, features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(mg.ones(1, features))
        self.bias = nn.Parameter(mg.zeros(1, features))

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


def gated(a, b):
    """a * sigmoid(b): a gate that must broadcast either way round."""
    return a * b.sigmoid()


# -- the tests ----------------------------------------------------------------------------------

# Rows of at least 2 columns (a 1-column row has variance 0), values spread enough that the
# variance stays well away from 0.
rows = matrices(shapes(min_cols=2), st.floats(-3, 3, width=32), requires_grad=True).filter(
    lambda x: (x - x.mean(axis=1)).abs().max(axis=1).min().item() > 0.1
)


@checks
@given(x=rows, data=st.data())
def test_layer_norm_gradients(x, data):
    """Every element of every input: analytical gradients equal central differences."""
    weight = data.draw(matrices((1, x.ncols), requires_grad=True))
    bias = data.draw(matrices((1, x.ncols), requires_grad=True))
    assert mg.gradcheck(layer_norm, [x, weight, bias])


@checks
@given(x=rows)
def test_layer_norm_second_derivatives(x):
    weight = mg.ones(1, x.ncols, dtype="float64", requires_grad=True)
    bias = mg.zeros(1, x.ncols, dtype="float64", requires_grad=True)
    assert mg.gradgradcheck(layer_norm, [x, weight, bias])


@checks
@given(x=rows)
def test_layer_norm_normalises_each_row(x):
    # eps=0: with the default 1e-5, a row of small variance v comes out with variance v / (v + eps)
    y = LayerNorm(x.ncols, eps=0.0).double()(x)
    assert_close(y.mean(axis=1), mg.zeros(x.nrows, 1), atol=1e-6)
    assert_close((y * y).mean(axis=1), mg.ones(x.nrows, 1), rtol=1e-3)


@checks
@given(broadcastable_pairs(requires_grad=True))
def test_gate_broadcasts_gradients_back(pair):
    """(m, n) with (1, n), (m, 1) or (1, 1), either way round: each gradient has its input's shape."""
    a, b = pair
    assert mg.gradcheck(gated, [a, b])


@checks
@given(matmul_pairs(requires_grad=True))
def test_attention_like_product(pair):
    a, b = pair
    assert mg.gradcheck(lambda a, b: (a @ b).softmax(axis=1), [a, b])
