"""Class-index targets reach the loss kernel without a per-element Python loop, whatever holds them,
and an integer NumPy array becomes an int64 tensor (as ``torch.tensor`` does)."""

from __future__ import annotations

from typing import Any

import pytest

import matgrad as mg
import matgrad.functional as F

np = pytest.importorskip("numpy")


class _NoPythonLoop(np.ndarray):  # type: ignore[misc]
    """An int array that fails if anything walks it element by element in Python."""

    def tolist(self) -> Any:
        raise AssertionError("targets were converted to a Python list")

    def __iter__(self) -> Any:
        raise AssertionError("targets were iterated in Python")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            raise AssertionError("targets were read one element at a time")
        return super().__getitem__(key)


def test_an_integer_numpy_array_keeps_int64() -> None:
    assert mg.Tensor2D(np.array([[1, 2]])).dtype == "int64"
    assert mg.Tensor2D(np.array([[1, 2]], dtype=np.int32)).dtype == "int64"
    assert mg.Tensor2D(np.array([[1.5]])).dtype == mg.get_default_dtype()
    assert mg.Tensor2D([[1, 2]]).dtype == mg.get_default_dtype()  # a list of ints: floats, as before
    assert mg.Tensor2D(np.array([[1, 2]]), dtype="float64").dtype == "float64"


@pytest.mark.parametrize("shape", [(6,), (6, 1), (1, 6)])
def test_numpy_targets_are_not_walked_in_python(shape: tuple[int, ...]) -> None:
    # (the python backend stores lists, so there the conversion is the one loop it needs)
    logits = mg.randn(6, 4, backend="numpy", requires_grad=True)
    values = np.array([0, 3, 1, 2, 3, 0], dtype=np.int64)
    targets = values.reshape(shape).view(_NoPythonLoop)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    want = F.cross_entropy(logits.detach(), values.tolist())
    assert loss.item() == want.item()


def test_every_holder_of_targets_gives_the_same_loss_and_gradient(backend: str) -> None:
    mg.manual_seed(3)
    x = mg.randn(5, 3, backend=backend)
    classes = [2, 0, 1, 1, 2]
    holders = [
        classes,
        tuple(classes),
        np.array(classes),
        np.array(classes, dtype=np.uint8).reshape(5, 1),
        mg.Tensor2D([[c] for c in classes], dtype="int64", backend=backend),
        mg.Tensor2D(np.array([classes]), backend=backend),  # int64 from the array, a 1x5 row
    ]
    results = []
    for targets in holders:
        logits = x.clone().requires_grad_()
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        results.append((loss.item(), logits.grad.tolist()))
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize(
    ("targets", "error", "said"),
    [
        (np.array([0, 1, 4]), mg.ArgumentError, "target 4 is out of range for 4 classes"),
        (np.array([0, -1, 2]), mg.ArgumentError, "target -1 is out of range"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "class indices must be integers, got an array of float64"),
        (np.array([0, 1]), mg.ShapeError, "got 2"),
        (np.zeros((3, 2), dtype=np.int64), mg.ShapeError, r"got an array of shape \(3, 2\)"),
    ],
)
def test_bad_numpy_targets_are_clear_errors(backend: str, targets: Any, error: type, said: str) -> None:
    logits = mg.randn(3, 4, backend=backend, requires_grad=True)
    with pytest.raises(error, match=said):
        F.cross_entropy(logits, targets)
