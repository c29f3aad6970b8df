"""One process of tests/test_distributed.py's 2-process runs (started by torchrun), and the training both compare.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT_DIR

Runs, in one launch (each launch costs seconds of importing torch): collectives on both backends,
DistributedDataParallel (parameter broadcast, gradient averaging, a mismatched model), the
100-step training whose losses the test compares with one process, and last, since it ends the
group, ``matgrad train`` with rank 1 crashing mid-training. Each rank writes what it saw to
``OUT_DIR/rank{r}.json`` as it goes, and nothing to stdout; the tests do the judging.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim
from matgrad.data import DataLoader, load_mnist
from matgrad.metrics import accuracy, predict

STEPS = 100  # optimiser steps compared
GLOBAL_BATCH = 64  # rows per step: 1 process x 64, or 2 processes x 32
LIMIT = 3200  # rows of the sample trained on: 50 steps per epoch, so 100 steps are 2 epochs
HIDDEN = 64  # MLP 784-64-10
LR = 0.05
MOMENTUM = 0.9
SEED = 0
STEPS_FLOAT64 = 30  # fewer in float64 (slower matmuls): enough to show the gap shrinks with the precision
FAIL_AT = 5  # the step at which rank 1 crashes in the failure run


def train(dtype: str, rank: int = 0, world_size: int = 1, steps: int = STEPS) -> dict[str, Any]:
    """SGD on the MNIST sample, ``GLOBAL_BATCH`` rows per step split over ``world_size`` processes.

    Returns the loss of every step (the mean over the global batch: averaged over the ranks) and
    the final test accuracy. With ``world_size`` 1 it needs no process group.
    """
    import matgrad.distributed as dist

    mg.set_backend("numpy")
    mg.set_default_dtype(dtype)
    try:
        data = load_mnist(sample=True)
        x, y = data.x_train[:LIMIT].to(dtype), data.y_train[:LIMIT]
        mg.manual_seed(SEED)
        model = nn.MLP([784, HIDDEN, 10])
        ddp = dist.DistributedDataParallel(model) if world_size > 1 else None
        opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        shard = {"rank": rank, "world_size": world_size} if world_size > 1 else {}
        loader = DataLoader(x, y, GLOBAL_BATCH // world_size, shuffle=True, seed=SEED, **shard)
        losses: list[float] = []
        while len(losses) < steps:
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                if ddp is not None:
                    ddp.average_gradients()
                opt.step()
                value = loss.detach()
                if world_size > 1:
                    with mg.no_grad():
                        dist.all_reduce(value, op=dist.ReduceOp.AVG)  # equal shards: the global batch's mean
                losses.append(value.item())
                if len(losses) == steps:
                    break
        test_acc = accuracy(predict(model, data.x_test.to(dtype)), data.y_test)
        return {"losses": losses, "test_acc": test_acc}
    finally:
        mg.set_default_dtype("float32")


# The numpy backend shares its arrays with torch, torch is torch, the python backend goes through
# an array and array_api_strict (standing for cupy: no memory torch can share) through a NumPy copy.
BACKENDS = [b for b in ("numpy", "python", "torch", "array_api_strict") if b in mg.available_backends()]


def _collectives(rank: int, world: int) -> dict[str, Any]:
    import matgrad.distributed as dist

    out: dict[str, Any] = {}
    for backend in BACKENDS:
        for dtype in ("float32", "float64", "int64"):
            for op in ("sum", "avg", "max", "min", "product"):
                if op == "avg" and dtype == "int64":
                    continue
                t = mg.Tensor2D([[rank + 1, 2 * rank - 1], [0.5 * (rank + 1), 3]], dtype=dtype, backend=backend)
                alias = t.detach()  # shares the storage: must see the result too
                dist.all_reduce(t, op=op)
                out[f"all_reduce {op} {backend} {dtype}"] = [t.tolist(), alias.tolist(), t._version]
            t = mg.Tensor2D([[10 * rank + 1, 2], [3, 4]], dtype=dtype, backend=backend)
            dist.broadcast(t, src=world - 1)
            out[f"broadcast {backend} {dtype}"] = [t.tolist(), t._version]
    return out


def _ddp(rank: int, world: int) -> dict[str, Any]:
    import matgrad.distributed as dist

    out: dict[str, Any] = {}
    for backend in BACKENDS:
        mg.set_backend(backend)
        mg.manual_seed(100 + rank)  # a different init on every rank: the broadcast must fix it
        model = nn.MLP([6, 5, 3])
        before = [p.tolist() for p in model.parameters()]
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=60e-6)  # 60 bytes: several buckets
        after = [p.tolist() for p in model.parameters()]
        x = mg.randn(4, 6)  # each rank its own data, so its own gradients
        y = mg.Tensor2D([[rank], [1], [2], [0]], dtype="int64")
        F.cross_entropy(ddp(x), y).backward()
        local = [p.grad.tolist() for p in model.parameters()]  # type: ignore[union-attr]
        model[0].bias.grad = None  # a parameter without a gradient counts as zeros  # type: ignore[index]
        ddp.average_gradients()
        averaged = [p.grad.tolist() for p in model.parameters()]  # type: ignore[union-attr]
        out[backend] = {
            "before": before,
            "after": after,
            "local": local,
            "averaged": averaged,
            "buckets": len(ddp.buckets()),
        }
    mg.set_backend("numpy")
    mg.manual_seed(0)
    try:
        dist.DistributedDataParallel(nn.MLP([6, 5 + rank, 3]))
        out["mismatch"] = "no error"
    except dist.DistributedError as exc:
        out["mismatch"] = str(exc)
    return out


def _failing_train(rank: int, out_dir: Path) -> dict[str, Any]:
    """``matgrad train`` on both ranks; rank 1's optimiser raises at step ``FAIL_AT``."""
    from matgrad.cli import main

    if rank == 1:
        calls = [0]
        step = optim.SGD.step

        def crash(self: optim.SGD, closure: Any = None) -> Any:
            calls[0] += 1
            if calls[0] == FAIL_AT:
                raise RuntimeError("rank 1 crashed on purpose")
            return step(self, closure)

        optim.SGD.step = crash  # type: ignore[method-assign]
    save = out_dir / "failed" / "model.safetensors"
    save.parent.mkdir(exist_ok=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--limit", "640", "--epochs", "3", "--batch-size", "32", "--quiet", "--save", str(save)])
    return {"code": code, "stderr": err.getvalue()}


def main() -> None:
    import matgrad.distributed as dist

    out_dir = Path(sys.argv[1])
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    path = out_dir / f"rank{rank}.json"
    results: dict[str, Any] = {"rank": rank, "world_size": world}

    def record(name: str, value: Any) -> None:
        results[name] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, path)

    record("collectives", _collectives(rank, world))
    record("ddp", _ddp(rank, world))
    record("float32", train("float32", rank, world))
    record("float64", train("float64", rank, world, STEPS_FLOAT64))
    with contextlib.redirect_stdout(io.StringIO()):  # rank 0's report of the failed run is not the test's output
        record("failure", _failing_train(rank, out_dir))
    sys.stdout.flush()
    dist.destroy_process_group()
    sys.exit(results["failure"]["code"])


if __name__ == "__main__":
    main()
