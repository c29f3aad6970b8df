"""``DataLoader``: mini-batches of rows, reshuffled reproducibly each epoch."""

from __future__ import annotations

import random
from typing import Any, Iterator

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, ShapeError
from matgrad.tensor import Tensor2D

__all__ = ["DataLoader"]


class DataLoader:
    """Batches of rows of ``x`` and ``y``: ``for xb, yb in DataLoader(x, y, 64, shuffle=True)``.

    Each ``iter()`` is one epoch of ``len(loader)`` batches covering every row once (the last
    batch is smaller unless ``drop_last``). With ``y=None`` it yields ``xb`` alone. With
    ``shuffle``, every epoch draws a new permutation from a ``random.Random`` seeded once with
    ``seed`` (default: the seed of ``matgrad.manual_seed``), so the sequence of epochs repeats
    and is the same on every backend. Batches are new leaf tensors (no graph back to ``x``).
    """

    def __init__(
        self,
        x: Tensor2D,
        y: Tensor2D | None,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
    ) -> None:
        if not isinstance(x, Tensor2D):
            raise ArgumentTypeError(
                f"DataLoader: x must be a Tensor2D, got {type(x).__name__}; wrap it with Tensor2D(...)"
            )
        if y is not None:
            if not isinstance(y, Tensor2D):
                raise ArgumentTypeError(f"DataLoader: y must be a Tensor2D or None, got {type(y).__name__}")
            if y.nrows != x.nrows:
                raise ShapeError(
                    f"DataLoader: x has {x.nrows} rows but y has {y.nrows} ({x.nrows}x{x.ncols} and "
                    f"{y.nrows}x{y.ncols}); each row of x needs its row of y"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ArgumentTypeError(f"DataLoader: batch_size must be an int, got {type(batch_size).__name__}")
        if batch_size <= 0:
            raise ArgumentError(f"DataLoader: batch_size must be positive, got {batch_size}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ArgumentTypeError(f"DataLoader: seed must be an int or None, got {type(seed).__name__}")
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = _backends._seed if seed is None else seed
        self._rng = random.Random(self.seed)

    def __len__(self) -> int:
        n, b = self.x.nrows, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.x.nrows} rows, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed})"
        )

    def __iter__(self) -> Iterator[Any]:
        order = list(range(self.x.nrows))
        if self.shuffle:  # drawn here, not at the first next(): epochs follow the iter() calls
            self._rng.shuffle(order)
        return self._epoch(order)

    def _epoch(self, order: list[int]) -> Iterator[Any]:
        tensors = [self.x] if self.y is None else [self.x, self.y]
        # One native index per backend (an int array on the numpy backend): each batch is then a
        # slice of it and a single `take`, with no Python loop over its elements. An index, not
        # a row slice, even in order: numpy's take returns a view for a slice, and a batch that
        # aliases the dataset would let an in-place op on the batch change the data.
        natives: dict[int, Any] = {}
        for t in tensors:
            be = t.kernels
            if id(be) not in natives:
                natives[id(be)] = be.indices(be.from_rows([order], "int64"))
        b, n = self.batch_size, len(order)
        for lo in range(0, len(self) * b, b):
            hi = min(lo + b, n)  # the Array API leaves a slice past the end unspecified
            batch = tuple(
                Tensor2D.from_native(t.kernels.take(t.native, natives[id(t.kernels)][lo:hi], slice(None)), t.kernels)
                for t in tensors
            )
            yield batch[0] if self.y is None else batch
