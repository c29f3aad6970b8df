"""DataLoader: batch shapes, drop_last, every row once per epoch, reproducible shuffling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import matgrad as mg
from matgrad import ArgumentError, ShapeError
from matgrad.data import DataLoader


def column(n: int, backend: str | None = None, dtype: str = "float64") -> mg.Tensor2D:
    """Row i holds (i, 10 i): a batch's rows say where they came from."""
    return mg.Tensor2D([[float(i), 10.0 * i] for i in range(n)], dtype=dtype, backend=backend)


def rows_of(batch: mg.Tensor2D) -> list[int]:
    return [int(r[0]) for r in batch.tolist()]


def epoch(loader: DataLoader) -> list[list[int]]:
    return [rows_of(xb) for xb, _ in loader]


@pytest.mark.parametrize(("n", "batch_size", "drop_last", "sizes"), [
    (10, 3, False, [3, 3, 3, 1]),
    (10, 3, True, [3, 3, 3]),
    (9, 3, False, [3, 3, 3]),
    (9, 3, True, [3, 3, 3]),
    (2, 5, False, [2]),
    (2, 5, True, []),
    (1, 1, False, [1]),
])  # fmt: skip
def test_batch_shapes_and_len(backend: str, n: int, batch_size: int, drop_last: bool, sizes: list[int]) -> None:
    x = column(n)
    y = mg.Tensor2D([[i] for i in range(n)], dtype="int64")
    loader = DataLoader(x, y, batch_size, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(sizes)
    assert [xb.shape for xb, _ in batches] == [(s, 2) for s in sizes]
    assert [yb.shape for _, yb in batches] == [(s, 1) for s in sizes]
    for xb, yb in batches:
        assert xb.backend == yb.backend == backend
        assert (xb.dtype, yb.dtype) == ("float64", "int64")
        assert xb.is_leaf and not xb.requires_grad
        assert [r[0] for r in yb.tolist()] == rows_of(xb)  # x and y rows stay paired
        assert [r[1] for r in xb.tolist()] == [10.0 * i for i in rows_of(xb)]


def test_in_order_without_shuffle(backend: str) -> None:
    assert epoch(DataLoader(column(7), column(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_y_none_yields_x_only(backend: str) -> None:
    batches = list(DataLoader(column(5), None, 2, shuffle=True, seed=1))
    assert all(isinstance(b, mg.Tensor2D) for b in batches)
    assert sorted(i for b in batches for i in rows_of(b)) == list(range(5))


@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**32))
def test_every_row_once_per_epoch(n: int, batch_size: int, seed: int) -> None:
    loader = DataLoader(column(n, "python"), None, batch_size, shuffle=True, seed=seed)
    for _ in range(2):
        seen = [i for b in loader for i in rows_of(b)]
        assert sorted(seen) == list(range(n))


def test_drop_last_with_shuffle_drops_only_the_tail(backend: str) -> None:
    loader = DataLoader(column(10), None, 4, shuffle=True, drop_last=True, seed=3)
    seen = [i for b in loader for i in rows_of(b)]
    assert len(seen) == 8 and len(set(seen)) == 8


def test_seed_reproducible_and_epochs_differ(backend: str) -> None:
    a = DataLoader(column(50), column(50), 8, shuffle=True, seed=123)
    b = DataLoader(column(50), column(50), 8, shuffle=True, seed=123)
    epochs_a = [epoch(a) for _ in range(3)]
    assert epochs_a == [epoch(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    assert epochs_a[0] != epoch(DataLoader(column(50), column(50), 8, shuffle=True, seed=124))
    assert epochs_a[0] != epoch(DataLoader(column(50), column(50), 8))


def test_same_order_on_both_backends() -> None:
    orders = []
    for name in mg.available_backends():
        loader = DataLoader(column(40, name), column(40, name), 6, shuffle=True, seed=7)
        orders.append([epoch(loader) for _ in range(2)])
    assert all(o == orders[0] for o in orders)


def test_unseeded_follows_manual_seed(backend: str) -> None:
    def first_epoch() -> list[list[int]]:
        return epoch(DataLoader(column(30), column(30), 4, shuffle=True))

    mg.manual_seed(5)
    first = first_epoch()
    mg.manual_seed(5)
    assert first_epoch() == first
    mg.manual_seed(6)
    assert first_epoch() != first


def test_epoch_drawn_at_iter_not_at_first_next() -> None:
    loader = DataLoader(column(20, "python"), None, 5, shuffle=True, seed=0)
    it1, it2 = iter(loader), iter(loader)
    e2 = [rows_of(b) for b in it2]
    e1 = [rows_of(b) for b in it1]
    ref = DataLoader(column(20, "python"), None, 5, shuffle=True, seed=0)
    assert e1 == [rows_of(b) for b in ref]
    assert e2 == [rows_of(b) for b in ref]


def test_mixed_backends_pair_rows() -> None:
    if "numpy" not in mg.available_backends():
        pytest.skip("NumPy is not installed")
    loader = DataLoader(column(12, "numpy"), column(12, "python"), 5, shuffle=True, seed=2)
    for xb, yb in loader:
        assert (xb.backend, yb.backend) == ("numpy", "python")
        assert rows_of(xb) == rows_of(yb)


def test_numpy_batches_are_contiguous_copies() -> None:
    np = pytest.importorskip("numpy")
    x = column(10, "numpy")
    for shuffle in (False, True):
        for xb, _ in DataLoader(x, x, 4, shuffle=shuffle, seed=0):
            arr = xb.numpy()
            assert arr.flags.c_contiguous and not np.shares_memory(arr, x.numpy())


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([[1.0]], None, 1), {}, TypeError, "x must be a Tensor2D"),
        ((column(3), [[1.0]] * 3, 1), {}, TypeError, "y must be a Tensor2D or None"),
        ((column(3), column(4), 1), {}, ShapeError, "x has 3 rows but y has 4"),
        ((column(3), None, 0), {}, ArgumentError, "batch_size must be positive, got 0"),
        ((column(3), None, -2), {}, ArgumentError, "batch_size must be positive"),
        ((column(3), None, 2.0), {}, TypeError, "batch_size must be an int"),
        ((column(3), None, True), {}, TypeError, "batch_size must be an int"),
        ((column(3), None, 2), {"seed": 1.5}, TypeError, "seed must be an int or None"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DataLoader(*args, **kwargs)


def test_repr() -> None:
    assert repr(DataLoader(column(3, "python"), None, 2, seed=4)) == (
        "DataLoader(3 rows, batch_size=2, shuffle=False, drop_last=False, seed=4)"
    )
