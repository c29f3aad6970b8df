"""Data parallelism on ``torch.distributed``: the gradients of every process, averaged by one all-reduce.

Every process (a *rank*) holds the whole model and trains on its own part of each batch; after
``backward()`` an all-reduce sums the gradients of all ranks, each divides by their number, and
every rank takes the same optimiser step. That is PyTorch's ``DistributedDataParallel`` and
Horovod, and it runs here on their engine, ``torch.distributed`` launched by ``torchrun`` (gloo
between CPU processes), not on sockets of matgrad's own::

    # torchrun --nproc-per-node 2 train.py          (or: torchrun --nproc-per-node 2 -m matgrad train)
    import matgrad.distributed as dist
    dist.init_process_group()                         # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun
    model = dist.DistributedDataParallel(nn.MLP([784, 128, 10]))    # rank 0's parameters everywhere
    loader = DataLoader(x, y, 32, shuffle=True, rank=dist.get_rank(), world_size=dist.get_world_size())
    for xb, yb in loader:                             # 2 ranks x 32 rows = the 64 rows of one step
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        model.average_gradients()                     # the all-reduce: one call per bucket, not per parameter
        opt.step()

matgrad's engine has no per-parameter gradient hooks, so the averaging is an explicit call between
``backward()`` and ``step()`` (where PyTorch's DDP hooks into backward itself).

Tensors of the numpy backend are shared with torch without a copy (``torch.from_numpy``); the
python backend's are copied into an ``array`` and back. PyTorch is imported on first use, never by
``import matgrad``: ``pip install "matgrad[distributed]"``.
"""

from __future__ import annotations

import atexit
import importlib.util
import numbers
import os
import sys
from array import array
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import Any, Callable, Iterator, Sequence

from matgrad import autograd as _autograd
from matgrad._errors import ArgumentError, ArgumentTypeError, DTypeError, GraphError, MatgradError, ShapeError
from matgrad.nn.module import Module
from matgrad.tensor import Tensor2D

__all__ = [
    "ENV_VARS",
    "DistributedDataParallel",
    "DistributedError",
    "ReduceOp",
    "all_reduce",
    "barrier",
    "broadcast",
    "destroy_process_group",
    "env_world_size",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_available",
    "is_initialized",
]

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What ``torchrun`` sets in every process it starts, and ``init_process_group`` reads."""

INSTALL = 'pip install "matgrad[distributed]"'
_LAUNCH = "launch the processes with torchrun (torchrun --nproc-per-node 2 script.py)"
_ARRAY_CODES = {"float32": "f", "float64": "d", "int64": "q"}
_ITEM_NUMPY = {"float32": "<f4", "float64": "<f8", "int64": "<i8"}
_ITEM_BYTES = {"float32": 4, "float64": 8, "int64": 8}


class DistributedError(MatgradError, RuntimeError):
    """A collective could not run: PyTorch missing, no process group, or another process gone."""


class ReduceOp:
    """How ``all_reduce`` combines the ranks' values (the names of ``torch.distributed.ReduceOp``)."""

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"


_OPS = ("sum", "avg", "product", "min", "max")


# -- the process group ----------------------------------------------------------------------------


def is_available() -> bool:
    """Whether PyTorch is installed, so that a process group can be made (nothing is imported)."""
    return importlib.util.find_spec("torch") is not None


def _dist(where: str) -> Any:
    """``torch.distributed``, imported now; a matgrad error saying how to install it when it is missing."""
    try:
        import torch.distributed as td
    except ImportError:
        raise DistributedError(f"{where}: data parallelism runs on PyTorch's torch.distributed; {INSTALL}") from None
    if not td.is_available():
        raise DistributedError(f"{where}: this PyTorch build has no torch.distributed; {INSTALL}")
    return td


def is_initialized() -> bool:
    """Whether this process is in a process group (False, without importing PyTorch, when it is not loaded)."""
    td = sys.modules.get("torch.distributed")
    return td is not None and bool(td.is_available() and td.is_initialized())


def _group(where: str) -> Any:
    td = _dist(where)
    if not td.is_initialized():
        raise DistributedError(
            f"{where}: no process group; call matgrad.distributed.init_process_group() first, in every process "
            "that torchrun starts (torchrun --nproc-per-node 2 script.py)"
        )
    return td


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by torchrun), or 1 when it is not set."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    return _env_int("WORLD_SIZE", text, 1)


def _env_int(name: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DistributedError(f"init_process_group: {name}={text!r} is not a whole number") from None
    if value < low:
        raise DistributedError(f"init_process_group: {name}={value}, but it must be at least {low}")
    return value


def init_process_group(
    backend: str = "gloo",
    init_method: str | None = None,
    world_size: int = -1,
    rank: int = -1,
    timeout: float | timedelta | None = None,
) -> None:
    """Join the group of processes that train together (as ``torch.distributed.init_process_group``).

    By default everything comes from the environment ``torchrun`` sets: ``RANK`` (this process,
    0 .. ``WORLD_SIZE`` - 1), ``WORLD_SIZE`` (how many), ``MASTER_ADDR`` and ``MASTER_PORT`` (where
    rank 0 listens). ``backend`` is ``"gloo"`` (CPU tensors) or any other that PyTorch knows:
    ``"nccl"`` for the torch backend on CUDA, where each process then takes the GPU that
    ``LOCAL_RANK`` names as its ``"cuda"``; ``timeout`` (seconds or a ``timedelta``) bounds how
    long a collective waits for a process that does not come (PyTorch's default: 30 minutes). A
    process that exits instead is noticed at once: the others' next collective raises
    ``DistributedError``.
    """
    if not isinstance(backend, str):
        raise ArgumentTypeError(f"init_process_group: backend must be a name such as 'gloo', got {backend!r}")
    for name, value in (("world_size", world_size), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(f"init_process_group: {name} must be an int, got {type(value).__name__}")
    wait: timedelta | None
    if timeout is None or isinstance(timeout, timedelta):
        wait = timeout
    elif isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) and 0 < float(timeout) < float("inf"):
        wait = timedelta(seconds=float(timeout))
    else:
        raise ArgumentError(f"init_process_group: timeout must be a positive number of seconds, got {timeout!r}")
    td = _dist("init_process_group")
    if td.is_initialized():
        raise DistributedError(
            f"init_process_group: this process is already rank {td.get_rank()} of {td.get_world_size()}; "
            "call destroy_process_group() first"
        )
    if init_method is None or init_method == "env://":
        need = (
            ["MASTER_ADDR", "MASTER_PORT"] + (["RANK"] if rank < 0 else []) + (["WORLD_SIZE"] if world_size < 0 else [])
        )
        missing = [name for name in need if not os.environ.get(name, "").strip()]
        if missing:
            raise DistributedError(
                f"init_process_group: {', '.join(missing)} not set; {_LAUNCH}, which sets RANK, WORLD_SIZE, "
                "MASTER_ADDR and MASTER_PORT, or set them yourself"
            )
        if world_size < 0:
            world_size = _env_int("WORLD_SIZE", os.environ["WORLD_SIZE"], 1)
        if rank < 0:
            rank = _env_int("RANK", os.environ["RANK"], 0)
        _env_int("MASTER_PORT", os.environ["MASTER_PORT"], 1)
    if world_size >= 1 and not 0 <= rank < world_size:
        raise DistributedError(
            f"init_process_group: rank {rank} is outside 0..{world_size - 1} (WORLD_SIZE {world_size})"
        )
    where = init_method or f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    options: dict[str, Any] = {} if wait is None else {"timeout": wait}
    local = os.environ.get("LOCAL_RANK", "").strip()
    if backend == "nccl" and local:  # one GPU per process: "cuda" means this process's GPU from now on
        _torch().cuda.set_device(_env_int("LOCAL_RANK", local, 0))
    try:
        td.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank, **options)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"init_process_group: rank {rank} could not join the group of {world_size} at {where} "
            f"({backend}): {_first_line(exc)}"
        ) from exc
    global _leave_registered
    if not _leave_registered:  # a process that exits while still in a group aborts in gloo's threads
        atexit.register(_leave)
        _leave_registered = True


_leave_registered = False


def _leave() -> None:
    if is_initialized():
        destroy_process_group()


def destroy_process_group() -> None:
    """Leave the process group (safe to call after another process has gone)."""
    if is_initialized():
        sys.modules["torch.distributed"].destroy_process_group()


def get_rank() -> int:
    """This process's number in the group, 0 .. ``get_world_size()`` - 1 (0 is the one that reports)."""
    return int(_group("get_rank").get_rank())


def get_world_size() -> int:
    """How many processes train together."""
    return int(_group("get_world_size").get_world_size())


def barrier() -> None:
    """Wait until every process of the group gets here."""
    td = _group("barrier")
    _collective("barrier", td, td.barrier)


# -- errors of collectives --------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _collective(where: str, td: Any, call: Callable[[], Any]) -> None:
    """Run one collective; a lost or late process becomes a DistributedError that says which it was."""
    try:
        call()
    except RuntimeError as exc:
        text = str(exc)
        low = text.lower()
        who = f"rank {td.get_rank()} of {td.get_world_size()}"
        if any(s in low for s in ("closed by peer", "connection reset", "read error", "broken pipe", "eof")):
            why = (
                "another process stopped before taking part (it raised an error, crashed or was killed: its own "
                "message says why)"
            )
        elif "timed out" in low or "timeout" in low:
            why = "another process did not take part within the timeout (it hangs, or is busy elsewhere)"
        else:
            why = _first_line(exc)
        raise DistributedError(f"{where} on {who}: {why}", site=False) from exc


# -- sharing a tensor's values with torch --------------------------------------------------------------


def _torch() -> Any:
    import torch

    return torch


@contextmanager
def _as_torch(t: Tensor2D, where: str) -> Iterator[Any]:
    """A torch tensor over ``t``'s values, whose changes ``t`` receives at the end of the block.

    The numpy backend shares the array (``torch.from_numpy``, no copy) and the torch backend is
    torch already; the python backend's flat list goes through an ``array`` (``torch.frombuffer``)
    and back into the same list, and the other Array API backends (cupy, array_api_strict)
    through a NumPy copy written back by their own ``assign``, so every alias of the matrix sees
    the new values.
    """
    torch = _torch()
    native = t.native
    kernels = t.kernels
    if type(native).__module__ == "numpy":
        if not native.flags.writeable:
            raise DistributedError(f"{where}: the {t.nrows}x{t.ncols} tensor is read-only; pass a copy (t.clone())")
        if native.flags.c_contiguous:
            yield torch.from_numpy(native)
        else:  # a view that is not row-major: reduce a row-major copy, then write it back
            buf = native.copy(order="C")
            yield torch.from_numpy(buf)
            native[...] = buf
    elif isinstance(native, torch.Tensor):
        yield native
    elif kernels.name == "python":  # the python backend's Matrix: a flat list
        buf = array(_ARRAY_CODES[t.dtype], native.data)
        yield torch.frombuffer(buf, dtype=getattr(torch, t.dtype))
        native.data[:] = buf.tolist()
    else:  # cupy, array_api_strict: no memory torch can share, so a host copy and back
        host = _host_copy(kernels, native)
        yield torch.from_numpy(host)
        kernels.assign(native, kernels.from_array(host, t.dtype))


def _host_copy(kernels: Any, native: Any) -> Any:
    """A writable, row-major NumPy copy of a matrix of any backend."""
    import numpy

    return numpy.array(kernels.to_numpy(native), order="C", copy=True)


def _check_tensor(where: str, tensor: Any) -> Tensor2D:
    if not isinstance(tensor, Tensor2D):
        raise ArgumentTypeError(f"{where}: expected a Tensor2D, got {type(tensor).__name__}")
    if tensor.requires_grad and _autograd.is_grad_enabled():
        raise GraphError(
            f"{where}: in-place change of a {tensor.nrows}x{tensor.ncols} tensor that requires grad while the graph "
            "is being recorded; do it under `with matgrad.no_grad():`"
        )
    return tensor


def all_reduce(tensor: Tensor2D, op: str = ReduceOp.SUM) -> Tensor2D:
    """Combine ``tensor`` across every process, in place: each ends with the same result; returns ``tensor``.

    ``op`` is ``ReduceOp.SUM`` (default), ``AVG``, ``PRODUCT``, ``MIN`` or ``MAX``. Every rank
    must call it with a tensor of the same shape and dtype. The change counts as an in-place
    one for the version checks of graphs that saved ``tensor``.
    """
    t = _check_tensor("all_reduce", tensor)
    if op not in _OPS:
        raise ArgumentError(f"all_reduce: op must be one of ReduceOp.SUM, AVG, PRODUCT, MIN, MAX, got {op!r}")
    if op == ReduceOp.AVG and t.dtype == "int64":
        raise DTypeError("all_reduce: AVG of an int64 tensor is not a whole number; use ReduceOp.SUM and divide")
    td = _group("all_reduce")
    torch_op = getattr(td.ReduceOp, op.upper())
    with _as_torch(t, "all_reduce") as shared:
        _collective("all_reduce", td, lambda: td.all_reduce(shared, op=torch_op))
    t._mark_changed("all_reduce")
    return t


def broadcast(tensor: Tensor2D, src: int = 0) -> Tensor2D:
    """Copy rank ``src``'s ``tensor`` into every other rank's, in place; returns ``tensor``."""
    t = _check_tensor("broadcast", tensor)
    td = _group("broadcast")
    n = td.get_world_size()
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < n:
        raise ArgumentError(f"broadcast: src must be a rank in 0..{n - 1}, got {src!r}")
    with _as_torch(t, "broadcast") as shared:
        _collective("broadcast", td, lambda: td.broadcast(shared, src=src))
    if td.get_rank() != src:
        t._mark_changed("broadcast")
    return t


# -- buckets: many gradients in a few flat buffers -----------------------------------------------------


def _pack(kernels: Any, natives: Sequence[Any], dtype: str) -> tuple[Any, Any]:
    """One flat buffer holding ``natives`` one after another, and a torch tensor sharing it.

    NumPy and torch matrices are laid into a buffer of their own kind (on the torch backend's
    device, so NCCL reduces GPU memory); the python backend's into an ``array``; the other Array
    API backends' into a host NumPy buffer.
    """
    torch = _torch()
    if kernels.name == "torch":
        flat = torch.cat([a.reshape(-1) for a in natives])
        return flat, flat
    if kernels.name == "python":
        flat = array(_ARRAY_CODES[dtype])
        for m in natives:
            flat.extend(m.data)
        return flat, torch.frombuffer(flat, dtype=getattr(torch, dtype))
    import numpy

    parts = natives if kernels.name == "numpy" else [kernels.to_numpy(a) for a in natives]
    buf = numpy.empty(sum(a.size for a in parts), dtype=_ITEM_NUMPY[dtype])
    at = 0
    for a in parts:
        buf[at : at + a.size] = a.reshape(-1)
        at += a.size
    return buf, torch.from_numpy(buf)


def _unpack(kernels: Any, buf: Any, shapes: Sequence[tuple[int, int]], dtype: str) -> list[Any]:
    """The matrices of ``shapes`` laid one after another in ``buf``: views of it on the numpy and
    torch backends, new matrices of the backend on the others."""
    out = []
    at = 0
    for r, c in shapes:
        piece = buf[at : at + r * c]
        at += r * c
        if kernels.name in ("numpy", "torch"):
            out.append(piece.reshape(r, c))
        elif kernels.name == "python":
            from matgrad.backends.python import Matrix

            out.append(Matrix(r, c, piece.tolist(), dtype))
        else:
            out.append(kernels.from_array(piece.reshape(r, c), dtype))
    return out


class DistributedDataParallel(Module):
    """``module`` trained by every process on its own data, with gradients averaged across them.

    As PyTorch's ``DistributedDataParallel(module)``: construction checks that every rank built
    the same model and copies rank 0's parameters to all (so a different random init elsewhere
    does not matter); calling it calls ``module``; its ``state_dict`` keys start with ``module.``.
    After ``loss.backward()``, call ``average_gradients()`` (matgrad has no hook inside backward
    for it to use): the gradients are laid into flat buckets of at most ``bucket_cap_mb``
    megabytes, one per backend and dtype (25 MB as PyTorch: the MNIST MLP's 101,770 float32
    gradients make one bucket), and each bucket takes one all-reduce, so a step makes a few
    collective calls, not one per parameter. A parameter without a gradient counts as zeros.
    """

    module: Module
    bucket_cap_mb: float
    rank: int
    world_size: int

    def __init__(self, module: Module, bucket_cap_mb: float = 25.0, broadcast_parameters: bool = True) -> None:
        if not isinstance(module, Module):
            raise ArgumentTypeError(
                f"DistributedDataParallel: expected a matgrad nn.Module, got {type(module).__name__}"
            )
        if (
            isinstance(bucket_cap_mb, bool)
            or not isinstance(bucket_cap_mb, numbers.Real)
            or not 0 < float(bucket_cap_mb) < float("inf")
        ):
            raise ArgumentError(
                f"DistributedDataParallel: bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}"
            )
        td = _group("DistributedDataParallel")
        super().__init__()
        self.module = module
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.rank = int(td.get_rank())
        self.world_size = int(td.get_world_size())
        self._check_same_model(td)
        if broadcast_parameters:
            self._broadcast_parameters(td)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{sum(p.nrows * p.ncols for p in b):,}" for b in self.buckets())
        return f"rank={self.rank}, world_size={self.world_size}, buckets=[{sizes}]"

    def buckets(self, trainable: bool = True) -> list[list[Tensor2D]]:
        """The parameters grouped as the all-reduces see them: by backend and dtype, then up to ``bucket_cap_mb``."""
        cap = self.bucket_cap_mb * 1e6
        groups: dict[tuple[str, str], list[list[Tensor2D]]] = {}
        sizes: dict[tuple[str, str], float] = {}
        for p in self.module.parameters():
            if trainable and not p.requires_grad:
                continue
            key = (p.backend, p.dtype)
            nbytes = p.nrows * p.ncols * _ITEM_BYTES[p.dtype]
            if key not in groups or (sizes[key] + nbytes > cap and groups[key][-1]):
                groups.setdefault(key, []).append([])
                sizes[key] = 0.0
            groups[key][-1].append(p)
            sizes[key] += nbytes
        return [bucket for buckets in groups.values() for bucket in buckets]

    def _check_same_model(self, td: Any) -> None:
        """One all-reduce of a fingerprint of the parameters' shapes: a different model anywhere is an error."""
        torch = _torch()
        params = list(self.module.parameters())
        shapes = 0
        for i, p in enumerate(params):
            shapes = (shapes * 1_000_003 + (i + 1) * (p.nrows * 65_537 + p.ncols) + len(p.dtype)) % (1 << 40)
        mine = [float(len(params)), float(sum(p.nrows * p.ncols for p in params)), float(shapes)]
        device = "cuda" if str(td.get_backend()) == "nccl" else "cpu"  # NCCL reduces GPU memory only
        both = torch.tensor(mine + [-v for v in mine], dtype=torch.float64, device=device)
        _collective("DistributedDataParallel", td, lambda: td.all_reduce(both, op=td.ReduceOp.MAX))
        high, low = both[:3].tolist(), [-v for v in both[3:].tolist()]
        if high != low:
            counts = f"{int(low[0])}..{int(high[0])}" if low[0] != high[0] else f"{int(low[0])}"
            values = f"{int(low[1]):,}..{int(high[1]):,}" if low[1] != high[1] else f"{int(low[1]):,}"
            raise DistributedError(
                f"DistributedDataParallel: the models differ across processes (rank {self.rank} has "
                f"{len(params)} parameters holding {int(mine[1]):,} values; across the ranks: {counts} parameters "
                f"holding {values} values, or shapes that differ); build the same model, "
                "with the same sizes, in every process",
                site=False,
            )

    def _broadcast_parameters(self, td: Any) -> None:
        """Rank 0's parameter values into every rank's parameters, in place, one broadcast per bucket."""
        for bucket in self.buckets(trainable=False):
            dtype = bucket[0].dtype
            kernels = bucket[0].kernels
            buf, flat = _pack(kernels, [p.native for p in bucket], dtype)
            _collective("DistributedDataParallel", td, partial(td.broadcast, flat, src=0))
            if self.rank == 0:
                continue
            for p, values in zip(bucket, _unpack(kernels, buf, [p.shape for p in bucket], dtype)):
                p.kernels.assign(p.native, values)
                p._mark_changed("DistributedDataParallel (rank 0's values)")

    def average_gradients(self) -> None:
        """Replace every parameter's ``.grad`` with the mean over all ranks: one all-reduce per bucket.

        Call it on every rank between ``loss.backward()`` and ``optimizer.step()``. The sum is
        reduced in the gradients' own dtype, then divided by the world size; on the numpy
        backend the new ``.grad`` tensors are views of the bucket (no copy back).
        """
        td = _group("average_gradients")
        n = self.world_size
        for bucket in self.buckets():
            dtype = bucket[0].dtype
            natives = []
            for p in bucket:
                g = p.grad
                if g is None:
                    natives.append(p.kernels.full(p.nrows, p.ncols, 0.0, dtype))
                    continue
                if g.shape != p.shape or g.kernels is not p.kernels or g.dtype != dtype:
                    raise ShapeError(
                        f"average_gradients: a {p.nrows}x{p.ncols} {dtype} parameter on {p.backend} has a .grad of "
                        f"{g.nrows}x{g.ncols} {g.dtype} on {g.backend}; gradients must match their parameter"
                    )
                natives.append(g.native)
            kernels = bucket[0].kernels
            buf, flat = _pack(kernels, natives, dtype)
            _collective("average_gradients", td, partial(td.all_reduce, flat, op=td.ReduceOp.SUM))
            if n > 1:
                flat.div_(n)
            for p, g in zip(bucket, _unpack(kernels, buf, [p.shape for p in bucket], dtype)):
                p.grad = Tensor2D.from_native(g, p.kernels)
