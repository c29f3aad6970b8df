"""Tensor2D: construction, factories, attributes, operators, indexing and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import matgrad as mg

# -- construction -----------------------------------------------------------------------------


def test_from_rows_defaults(backend: str) -> None:
    t = mg.Tensor2D([[1, 2, 3], [4, 5, 6]])
    assert t.shape == (2, 3) and t.nrows == 2 and t.ncols == 3
    assert t.dtype == "float32" and t.backend == backend
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert t.is_leaf and t.op is None and t.inputs == () and t.grad is None and not t.requires_grad


def test_number_becomes_1x1(backend: str) -> None:
    t = mg.Tensor2D(2.5, dtype="float64")
    assert t.shape == (1, 1) and t.item() == 2.5 and float(t) == 2.5


def test_from_numpy_and_back(backend: str) -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    t = mg.Tensor2D(a, dtype="float64")
    assert t.tolist() == a.tolist()
    assert np.array_equal(t.numpy(), a)
    assert np.asarray(t).shape == (2, 3)
    assert mg.Tensor2D(a).dtype == "float32"  # float-first: arrays take the default dtype


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", np.float64, np.dtype("float32")])
def test_dtype_spellings(backend: str, dtype: object) -> None:
    t = mg.Tensor2D([[1, 2]], dtype=dtype)
    assert t.dtype == np.dtype(dtype).name


def test_float32_rounding_is_real(backend: str) -> None:
    t = mg.Tensor2D([[0.1]])
    assert t.item() == float(np.float32(0.1))
    assert mg.Tensor2D([[0.1]], dtype="float64").item() == 0.1


def test_copy_keeps_dtype_and_backend(backend: str) -> None:
    src = mg.Tensor2D([[1.5]], dtype="float64", backend="python")
    assert mg.Tensor2D(src).dtype == "float64" and mg.Tensor2D(src).backend == "python"
    assert mg.Tensor2D(src, backend="numpy").backend == "numpy"


def test_name_attribute(backend: str) -> None:
    t = mg.Tensor2D([[1.0]], name="w")
    assert t.name == "w" and "name='w'" in repr(t)


@pytest.mark.parametrize(
    "data, error, match",
    [
        ([], mg.ShapeError, "empty"),
        ([[]], mg.ShapeError, "empty"),
        ([1.0, 2.0], mg.ShapeError, "flat list"),
        ([[1.0, 2.0], [3.0]], mg.ShapeError, "ragged"),
        ([[1.0], 2.0], mg.ShapeError, "row 1"),
        ([[[1.0]]], mg.ShapeError, "more than 2 dimensions"),
        ([["a"]], TypeError, r"\[0\]\[0\] is a str"),
        ([[None]], TypeError, "NoneType"),
        ([[True]], TypeError, "bool"),
        ([[1 + 2j]], TypeError, "complex"),
        (True, TypeError, "bool"),
        (1j, TypeError, "complex"),
        ("abc", TypeError, "cannot make a matrix"),
        (None, TypeError, "cannot make a matrix"),
        (np.zeros(3), mg.ShapeError, "reshape"),
        (np.zeros((0, 3)), mg.ShapeError, "0x3"),
        (np.zeros((2, 2, 2)), mg.ShapeError, "3-D"),
        (np.array([[True]]), TypeError, "bool"),
        (np.array([["x"]]), TypeError, "not numeric"),
    ],
)
def test_bad_data(backend: str, data: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        mg.Tensor2D(data)


def test_bad_dtype_and_backend() -> None:
    with pytest.raises(mg.DTypeError, match="unknown dtype"):
        mg.Tensor2D([[1.0]], dtype="float16")
    with pytest.raises(mg.BackendError, match="unknown backend"):
        mg.Tensor2D([[1.0]], backend="cuda")


def test_int64_refuses_nan(backend: str) -> None:
    with pytest.raises(mg.DTypeError, match="NaN"):
        mg.Tensor2D([[math.nan]], dtype="int64")
    with pytest.raises(mg.DTypeError, match="NaN"):
        mg.Tensor2D([[math.inf]], dtype="float64").long()


def test_nan_and_inf_values_are_allowed_in_floats(backend: str) -> None:
    t = mg.Tensor2D([[math.nan, math.inf, -math.inf]])
    v = t.tolist()[0]
    assert math.isnan(v[0]) and v[1] == math.inf and v[2] == -math.inf


# -- factories and seeding --------------------------------------------------------------------


def test_factories(backend: str) -> None:
    assert mg.zeros(2, 3).tolist() == [[0.0] * 3] * 2
    assert mg.ones((2, 1)).tolist() == [[1.0], [1.0]]
    assert mg.full(1, 2, 7.0).tolist() == [[7.0, 7.0]]
    assert mg.full((1, 2), 7.0).tolist() == [[7.0, 7.0]]
    assert mg.eye(2).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert mg.eye(2, 3).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert mg.zeros(2, 2, dtype="int64").tolist() == [[0, 0], [0, 0]]
    t = mg.zeros(1, 1, requires_grad=True)
    assert t.requires_grad and t.is_leaf
    like = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    assert mg.zeros_like(like).dtype == "float64" and mg.ones_like(like).tolist() == [[1.0, 1.0]]
    assert mg.full_like(like, 3.0).tolist() == [[3.0, 3.0]]


@pytest.mark.parametrize("factory", ["rand", "randn", "uniform"])
def test_random_factories_repeat_with_seed(backend: str, factory: str) -> None:
    make = getattr(mg, factory)
    mg.manual_seed(42)
    a = make(3, 4).tolist()
    b = make(3, 4).tolist()
    mg.manual_seed(42)
    assert make(3, 4).tolist() == a
    assert a != b


def test_random_distributions(backend: str) -> None:
    u = mg.uniform(200, 50, -2.0, 3.0, dtype="float64")
    assert u.min().item() >= -2.0 and u.max().item() < 3.0
    assert abs(u.mean().item() - 0.5) < 0.1
    n = mg.randn(200, 50, dtype="float64")
    mean = n.mean().item()
    std = ((n - mean) ** 2).mean().item() ** 0.5
    assert abs(mean) < 0.05 and abs(std - 1.0) < 0.05


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: mg.zeros(0, 3), mg.ShapeError),
        (lambda: mg.zeros(-1, 3), mg.ShapeError),
        (lambda: mg.zeros(2.5, 3), TypeError),
        (lambda: mg.zeros(True, 3), TypeError),
        (lambda: mg.uniform(2, 2, 1.0, 0.0), ValueError),
        (lambda: mg.randn(2, 2, dtype="int64"), ValueError),
        (lambda: mg.full(2, 2, "x"), TypeError),
        (lambda: mg.manual_seed(1.5), TypeError),
    ],
)
def test_factory_errors(backend: str, call: object, error: type) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


# -- conversion, repr ---------------------------------------------------------------------------


def test_item_needs_1x1(backend: str) -> None:
    with pytest.raises(mg.ShapeError, match="1x1"):
        mg.zeros(2, 1).item()
    with pytest.raises(mg.ShapeError, match="ambiguous"):
        bool(mg.zeros(2, 1))
    assert bool(mg.ones(1, 1)) and not bool(mg.zeros(1, 1))


def test_repr(backend: str) -> None:
    x = mg.Tensor2D([[1.0, -2.5]], requires_grad=True)
    text = repr(x)
    assert text.startswith("Tensor2D([[  1., -2.5]]")
    assert "shape=1x2" in text and "dtype=float32" in text and f"backend={backend}" in text
    assert "requires_grad=True" in text
    assert "grad_fn=mul" in repr(x * 2.0)
    big = repr(mg.zeros(100, 100))
    assert "..." in big and big.count("\n") < 10


def test_to_between_backends_and_dtypes(backend: str) -> None:
    x = mg.Tensor2D([[1.25, 2.5]], dtype="float64")
    other = "python" if backend == "numpy" else "numpy"
    y = x.to(backend=other)
    assert y.backend == other and y.tolist() == x.tolist() and y.dtype == "float64"
    assert x.to("float32").dtype == "float32"
    assert x.to() is x
    assert x.long().tolist() == [[1, 2]] and x.long().dtype == "int64"
    assert x.double().dtype == "float64" and x.float().dtype == "float32"


# -- operators and broadcasting -----------------------------------------------------------------


def test_reflected_operators(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    assert (2 * x).tolist() == [[2.0, 4.0]]
    assert (1 - x).tolist() == [[0.0, -1.0]]
    assert (1 / x).tolist() == [[1.0, 0.5]]
    assert (3 + x).tolist() == [[4.0, 5.0]]
    assert (-x).tolist() == [[-1.0, -2.0]]
    assert (+x) is x
    assert abs(mg.Tensor2D([[-3.0]])).item() == 3.0
    assert (2**x).tolist() == [[2.0, 4.0]]
    assert (np.array([[1.0, 1.0]]) + x).tolist() == [[2.0, 3.0]]
    assert (x + np.array([[1.0, 1.0]])).tolist() == [[2.0, 3.0]]


def test_comparisons_give_masks(backend: str) -> None:
    a = mg.Tensor2D([[1.0, 2.0, 3.0]])
    assert (a > 1.5).tolist() == [[0.0, 1.0, 1.0]]
    assert (a == 2.0).tolist() == [[0.0, 1.0, 0.0]]
    assert (a <= 2.0).tolist() == [[1.0, 1.0, 0.0]]
    assert (a != 2.0).tolist() == [[1.0, 0.0, 1.0]]
    assert (a >= 3.0).tolist() == [[0.0, 0.0, 1.0]]
    assert (a < 2.0).tolist() == [[1.0, 0.0, 0.0]]
    labels = mg.Tensor2D([[1], [2]], dtype="int64")
    pred = mg.Tensor2D([[1], [0]], dtype="int64")
    acc = (pred == labels).mean()
    assert acc.item() == 0.5 and acc.dtype == "float32"
    assert not (a > 1.0).requires_grad
    assert hash(a) == id(a) or isinstance(hash(a), int)


@pytest.mark.parametrize(
    "left, right",
    [((2, 3), (3, 2)), ((2, 3), (2, 2)), ((1, 3), (2, 1)), ((2, 3), (3, 1)), ((4, 1), (1, 4))],
)
def test_broadcast_refusals(backend: str, left: tuple[int, int], right: tuple[int, int]) -> None:
    a, b = mg.zeros(*left), mg.zeros(*right)
    for op in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a / b, lambda: b + a):
        with pytest.raises(mg.ShapeError) as info:
            op()
        message = str(info.value)
        assert f"{left[0]}x{left[1]}" in message and f"{right[0]}x{right[1]}" in message
        assert "test_tensor.py" in message  # points at the user's own line


def test_transpose_hint(backend: str) -> None:
    with pytest.raises(mg.ShapeError, match=r"transpose"):
        mg.zeros(2, 3) + mg.zeros(3, 2)


def test_matmul_errors(backend: str) -> None:
    x, w = mg.zeros(64, 784), mg.zeros(128, 784)
    with pytest.raises(
        mg.ShapeError, match=r"matmul \(64x784\) @ \(128x784\): inner dimensions 784 and 128 differ.*b\.T"
    ):
        x @ w
    with pytest.raises(TypeError, match="use \\*"):
        x @ 2.0
    with pytest.raises(mg.DTypeError, match="floating"):
        mg.zeros(2, 2, dtype="int64") @ mg.zeros(2, 2, dtype="int64")


def test_mixing_backends_and_dtypes(backend: str) -> None:
    other = "python" if backend == "numpy" else "numpy"
    with pytest.raises(mg.BackendError, match="different backends"):
        mg.zeros(2, 2) + mg.zeros(2, 2, backend=other)
    with pytest.raises(mg.DTypeError, match=r"float32 and float64.*\.to\("):
        mg.zeros(2, 2) * mg.zeros(2, 2, dtype="float64")
    with pytest.raises(mg.BackendError):
        mg.zeros(2, 2) @ mg.zeros(2, 2, backend=other)


def test_unsupported_operand(backend: str) -> None:
    with pytest.raises(TypeError, match="str"):
        mg.zeros(1, 1) + "a"
    with pytest.raises(TypeError, match="exponent"):
        mg.zeros(1, 1) ** mg.zeros(1, 1)
    with pytest.raises(mg.DTypeError, match="non-integer"):
        mg.zeros(1, 1, dtype="int64") * 0.5


def test_int64_arithmetic(backend: str) -> None:
    a = mg.Tensor2D([[1, 2]], dtype="int64")
    assert (a + 1).tolist() == [[2, 3]] and (a * a).tolist() == [[1, 4]]
    assert (a - a).dtype == "int64"
    assert a.sum().tolist() == [[3]]
    with pytest.raises(mg.DTypeError, match="floating"):
        a / a
    with pytest.raises(mg.DTypeError, match="floating"):
        a.exp()


# -- indexing -----------------------------------------------------------------------------------


M = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]


@pytest.mark.parametrize(
    "key, expected",
    [
        (1, [[3.0, 4.0, 5.0]]),
        (-1, [[9.0, 10.0, 11.0]]),
        (slice(1, 3), [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]),
        (slice(None, None, 2), [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]]),
        ([3, 1, 3], [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]),
        ((slice(None), 1), [[1.0], [4.0], [7.0], [10.0]]),
        ((2, 0), [[6.0]]),
        ((1, [0, 2]), [[3.0, 5.0]]),
        (([0, 2], 1), [[1.0], [7.0]]),
        ((slice(0, 2), [2, 0]), [[2.0, 0.0], [5.0, 3.0]]),
        (([0, 3], [2, 1]), [[2.0], [10.0]]),
        ((range(2), slice(1, None)), [[1.0, 2.0], [4.0, 5.0]]),
        (np.array([2, 0]), [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]),
    ],
)
def test_indexing(backend: str, key: object, expected: list[list[float]]) -> None:
    x = mg.Tensor2D(M)
    assert x[key].tolist() == expected  # type: ignore[index]


def test_index_with_int64_tensor(backend: str) -> None:
    x = mg.Tensor2D(M)
    idx = mg.Tensor2D([[2], [0]], dtype="int64")
    assert x[idx].tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]


def test_gather_backward_scatter_adds(backend: str) -> None:
    x = mg.Tensor2D(M, dtype="float64", requires_grad=True)
    x[[1, 1, 3]].sum().backward()
    assert x.grad.tolist() == [[0.0] * 3, [2.0] * 3, [0.0] * 3, [1.0] * 3]


@pytest.mark.parametrize(
    "key, error, match",
    [
        (4, IndexError, "out of range for rows of a 4x3 tensor"),
        (-5, IndexError, "out of range"),
        ((0, 3), IndexError, "out of range for columns"),
        ([0, 7], IndexError, "index 7"),
        (slice(5, 9), mg.ShapeError, "selects no rows"),
        ([], mg.ShapeError, "empty"),
        ((0, 0, 0), IndexError, "1 or 2 indices"),
        ("a", TypeError, "cannot index"),
        (1.5, TypeError, "cannot index"),
        (True, TypeError, "bool"),
        ([0.5], TypeError, "ints"),
        (([0, 1], [0]), IndexError, "equal lengths"),
        (mg.Tensor2D([[0.0]]), TypeError, "int64"),
    ],
)
def test_index_errors(backend: str, key: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        mg.Tensor2D(M)[key]  # type: ignore[index]


def test_slices_do_not_share_storage(backend: str) -> None:
    """Regression: on numpy, x[0:2] was a view, so an in-place update leaked into x."""
    x = mg.Tensor2D([[1.0], [2.0], [3.0]])
    part = x[0:2]
    part.add_(100.0)
    assert x.tolist() == [[1.0], [2.0], [3.0]]
    assert x.reshape(1, 3).T is not x


def test_len_and_iteration(backend: str) -> None:
    x = mg.Tensor2D(M)
    assert len(x) == 4
    rows = list(x)
    assert len(rows) == 4 and rows[2].tolist() == [M[2]]


# -- reshape, cat, reductions ---------------------------------------------------------------


def test_reshape_rules(backend: str) -> None:
    x = mg.Tensor2D(M)
    assert x.reshape(2, 6).tolist() == [M[0] + M[1], M[2] + M[3]]
    assert x.reshape(-1, 2).shape == (6, 2)
    same = x.reshape(4, 3)  # a new tensor, as PyTorch's view: retain_grad() on it acts on it alone
    assert same is not x and same.tolist() == M
    with pytest.raises(mg.ShapeError, match="cannot read 4x3"):
        x.reshape(5, -1)
    with pytest.raises(mg.ShapeError, match="only one"):
        x.reshape(-1, -1)
    with pytest.raises(mg.ShapeError):
        x.reshape(0, 12)


def test_cat_errors(backend: str) -> None:
    with pytest.raises(mg.ShapeError, match="same number of columns"):
        mg.cat([mg.zeros(2, 3), mg.zeros(2, 2)], axis=0)
    with pytest.raises(TypeError):
        mg.cat([])
    with pytest.raises(mg.ShapeError, match="axis"):
        mg.cat([mg.zeros(1, 1)], axis=2)
    assert mg.cat([mg.zeros(2, 3)]).shape == (2, 3)


def test_reductions_keep_two_dimensions(backend: str) -> None:
    x = mg.Tensor2D(M)
    for name in ("sum", "mean", "max", "min"):
        f = getattr(x, name)
        assert f().shape == (1, 1) and f(axis=0).shape == (1, 3) and f(axis=1).shape == (4, 1)
    assert x.sum(axis=-1).shape == (4, 1)
    assert x.argmax().tolist() == [[11]] and x.argmax(axis=0).tolist() == [[3, 3, 3]]
    assert x.argmin(axis=1).tolist() == [[0]] * 4 and x.argmax().dtype == "int64"
    with pytest.raises(mg.ShapeError, match="axis"):
        x.sum(axis=2)


def test_max_ties_share_gradient(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 3.0, 3.0]], dtype="float64", requires_grad=True)
    x.max().backward()
    assert x.grad.tolist() == [[0.0, 0.5, 0.5]]


def test_nan_propagates_through_max_and_argmax(backend: str) -> None:
    x = mg.Tensor2D([[1.0, math.nan, 3.0]])
    assert math.isnan(x.max().item())
    assert x.argmax().item() == 1


# -- in-place updates ----------------------------------------------------------------------------


def test_in_place_updates(backend: str) -> None:
    p = mg.Tensor2D([[1.0, 2.0]], dtype="float64", requires_grad=True)
    g = mg.Tensor2D([[10.0, 20.0]], dtype="float64")
    with pytest.raises(mg.GraphError, match="no_grad"):
        p.add_(g)
    with mg.no_grad():
        assert p.add_(g, alpha=-0.1) is p
        assert p.tolist() == [[0.0, 0.0]]
        p.copy_(mg.Tensor2D([[3.0]], dtype="float64"))
        assert p.tolist() == [[3.0, 3.0]]
        p.mul_(2.0)
        assert p.tolist() == [[6.0, 6.0]]
        p.add_(1.0)
        assert p.tolist() == [[7.0, 7.0]]
        p.zero_()
        assert p.tolist() == [[0.0, 0.0]]
        with pytest.raises(mg.ShapeError):
            p.copy_(mg.zeros(3, 3, dtype="float64"))
    assert p.is_leaf and p.op is None


def test_in_place_float32_rounds(backend: str) -> None:
    p = mg.zeros(1, 1)
    p.add_(mg.Tensor2D([[0.1]]), alpha=1.0)
    assert p.item() == float(np.float32(0.1))


def test_pickle_and_deepcopy(backend: str) -> None:
    """Regression: the numpy backend holds a module, which made tensors unpicklable."""
    import copy
    import pickle

    x = mg.Tensor2D([[1.5, -2.0]], dtype="float64")
    for clone in (copy.deepcopy(x), pickle.loads(pickle.dumps(x))):
        assert clone.tolist() == x.tolist() and clone.backend == backend and clone.dtype == "float64"


def test_from_torch_tensor(backend: str) -> None:
    """Regression: a torch tensor's dtype has no .kind, which crashed validation."""
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    assert mg.Tensor2D(t, dtype="float64").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(mg.ShapeError, match=r"flat list|2-D"):
        mg.Tensor2D(torch.ones(3))


def test_where_with_two_numbers(backend: str) -> None:
    """Regression: where(cond, 1.0, -1.0) used to demand a tensor operand."""
    x = mg.Tensor2D([[1.0, -2.0], [3.0, 0.0]])
    out = mg.where(x > 0, 1.0, -1.0)
    assert out.tolist() == [[1.0, -1.0], [1.0, -1.0]] and out.dtype == "float32"


def test_python_float64_matmul_is_exact_on_small_integers() -> None:
    """Regression: the math.dist kernel gave 32.00000000000001 for [1,2,3].[4,5,6] in float64."""
    a = mg.Tensor2D([[1, 2, 3], [4, 5, 6]], dtype="float64", backend="python")
    assert (a @ a.T).tolist() == [[14.0, 32.0], [32.0, 77.0]]
    assert (a.float() @ a.float().T).tolist() == [[14.0, 32.0], [32.0, 77.0]]
