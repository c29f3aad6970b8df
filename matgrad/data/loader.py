"""``DataLoader``: mini-batches of rows, reshuffled reproducibly each epoch, optionally sharded across processes."""

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

    With ``rank`` and ``world_size`` (data parallelism, see ``matgrad.distributed``), every process
    draws the same permutation and takes its own part of each *global* batch of
    ``batch_size * world_size`` rows: rank ``r``'s k-th batch is the r-th of ``world_size`` equal,
    contiguous parts of the k-th global batch. So 2 processes with ``batch_size=32`` see, step by
    step, the same 64 rows as 1 process with ``batch_size=64``. When ``world_size`` does not
    divide the number of rows, the epoch is first padded with rows from the start of the
    permutation to a multiple of ``world_size`` (as ``torch.utils.data.DistributedSampler``), so
    every rank runs the same number of equal-sized steps; ``drop_last`` instead drops the rows that
    do not fill a whole global batch.
    """

    def __init__(
        self,
        x: Tensor2D,
        y: Tensor2D | None,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
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
        self.rank, self.world_size = _check_shard(rank, world_size)
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = _backends._seed if seed is None else seed
        self._rng = random.Random(self.seed)

    def __len__(self) -> int:
        n, b, w = self.x.nrows, self.batch_size, self.world_size
        if self.drop_last:
            return n // (b * w)
        share = -(-n // w)  # each rank's rows: ceil(n / w), padded as torch's DistributedSampler
        return -(-share // b)

    def __repr__(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return (
            f"DataLoader({self.x.nrows} rows, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}{shard})"
        )

    def __iter__(self) -> Iterator[Any]:
        order = list(range(self.x.nrows))
        if self.shuffle:  # drawn here, not at the first next(): epochs follow the iter() calls
            self._rng.shuffle(order)
        if self.world_size > 1:
            order = self._shard(order)
        return self._epoch(order)

    def _shard(self, order: list[int]) -> list[int]:
        """This rank's rows, batch after batch: its part of each global batch of ``batch_size * world_size``."""
        w, r = self.world_size, self.rank
        glob = self.batch_size * w
        if self.drop_last:
            order = order[: len(order) - len(order) % glob]
        else:  # pad with the first rows (repeated if need be) to a multiple of world_size, as torch
            pad = -len(order) % w
            order = order + (order * -(-pad // len(order)))[:pad]
        mine: list[int] = []
        for lo in range(0, len(order), glob):
            part = (min(lo + glob, len(order)) - lo) // w
            mine += order[lo + r * part : lo + (r + 1) * part]
        return mine

    def _epoch(self, order: list[int]) -> Iterator[Any]:
        if not order:  # drop_last, and fewer rows than one global batch
            return
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


def _check_shard(rank: Any, world_size: Any) -> tuple[int, int]:
    """``(rank, world_size)`` checked; ``(0, 1)`` when neither is given."""
    if rank is None and world_size is None:
        return 0, 1
    if rank is None or world_size is None:
        raise ArgumentError(
            f"DataLoader: give both rank and world_size (got rank={rank!r}, world_size={world_size!r}); "
            "under torchrun: rank=matgrad.distributed.get_rank(), world_size=matgrad.distributed.get_world_size()"
        )
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(f"DataLoader: {name} must be an int, got {type(value).__name__}")
    if world_size < 1:
        raise ArgumentError(f"DataLoader: world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ArgumentError(f"DataLoader: rank must be in 0..{world_size - 1} for world_size={world_size}, got {rank}")
    return rank, world_size
