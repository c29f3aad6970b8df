"""Data parallelism (matgrad.distributed, DataLoader sharding, matgrad train under torchrun).

Two launches of 2 processes over 127.0.0.1 with gloo (each costs seconds of importing torch):
tests/distributed_worker.py (collectives, DistributedDataParallel, the 100-step equivalence run,
then a crash of rank 1 inside ``matgrad train``), and ``torchrun -m matgrad train`` itself. The
rest runs in this process, in a group of one where a group is needed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from itertools import chain
from pathlib import Path
from typing import Any

import distributed_worker as worker
import pytest
from hypothesis import given
from hypothesis import strategies as st

import matgrad as mg
import matgrad.distributed as dist
import matgrad.functional as F
from matgrad import nn
from matgrad._parallel import rank_tag
from matgrad.cli import main
from matgrad.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT = 240  # seconds: a hang (a rank waiting for one that is gone) fails instead of blocking the suite

# Float32: the two runs add the same numbers in a different order (a 64-row matmul's sums vs two
# 32-row sums added by the all-reduce; one batch mean vs the mean of two), so each step's gradient
# differs by a few units in the last place (~1e-7 relative), and 100 SGD steps carry that on
# without blowing it up: measured 4e-7 at most. 1e-5 leaves a margin of 25. In float64 the same
# reordering gives ~1e-16 (measured 4e-16): the gap is rounding, and shrinks with the precision.
RTOL = {"float32": 1e-5, "float64": 1e-12}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGS`` over 127.0.0.1, matgrad from this tree."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    env.pop("MATGRAD_BACKEND", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("ranks")
    proc = torchrun(str(ROOT / "tests" / "distributed_worker.py"), str(out), cwd=out)
    ranks = []
    for r in range(2):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote nothing:\n{proc.stdout}\n{proc.stderr}"
        ranks.append(json.loads(path.read_text()))
    return {"proc": proc, "ranks": ranks, "dir": out}


# -- collectives ----------------------------------------------------------------------------------


def _f32(v: float) -> float:
    import struct

    return float(struct.unpack("f", struct.pack("f", v))[0])


@pytest.mark.parametrize("backend", worker.BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_all_reduce_and_broadcast_across_two_processes(two_ranks: dict[str, Any], backend: str, dtype: str) -> None:
    def values(rank: int) -> list[list[float]]:
        v = [[rank + 1, 2 * rank - 1], [0.5 * (rank + 1), 3]]
        return [[int(x) if dtype == "int64" else x for x in row] for row in v]

    a, b = values(0), values(1)
    combine = {
        "sum": lambda x, y: x + y,
        "avg": lambda x, y: (x + y) / 2,
        "max": max,
        "min": min,
        "product": lambda x, y: x * y,
    }
    for op, f in combine.items():
        if op == "avg" and dtype == "int64":
            continue
        expected = [[f(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
        for rank in two_ranks["ranks"]:
            result, alias, version = rank["collectives"][f"all_reduce {op} {backend} {dtype}"]
            assert result == expected, (op, rank["rank"])
            assert alias == expected  # in place: a tensor sharing the storage sees it
            assert version == 1  # counted as an in-place change
    for rank in two_ranks["ranks"]:
        result, version = rank["collectives"][f"broadcast {backend} {dtype}"]
        assert result == [[11, 2], [3, 4]]  # rank 1's values (src=1), everywhere
        assert version == (0 if rank["rank"] == 1 else 1)  # changed only where it was received


@pytest.mark.parametrize("backend", worker.BACKENDS)
def test_ddp_copies_rank_0_parameters_and_averages_gradients(two_ranks: dict[str, Any], backend: str) -> None:
    r0, r1 = (rank["ddp"][backend] for rank in two_ranks["ranks"])
    assert r0["before"] != r1["before"]  # different seeds: different initial parameters
    assert r0["after"] == r1["after"] == r0["before"]  # rank 0's everywhere
    assert r0["local"] != r1["local"]  # different data: different gradients
    for i, (g0, g1) in enumerate(zip(r0["local"], r1["local"])):
        if i == 1:  # the bias whose .grad was None: zeros
            expected = [[0.0] * len(g0[0])]
        else:  # (a + b) / 2 rounded once to float32, as the all-reduce's sum then the exact halving
            expected = [[_f32(_f32(x + y) / 2) for x, y in zip(ra, rb)] for ra, rb in zip(g0, g1)]
        assert r0["averaged"][i] == r1["averaged"][i] == expected
    assert r0["buckets"] == 4  # a 60-byte cap: several buckets, all reduced


def test_ddp_refuses_models_that_differ_across_processes(two_ranks: dict[str, Any]) -> None:
    for rank in two_ranks["ranks"]:
        message = rank["ddp"]["mismatch"]
        assert message.startswith("DistributedDataParallel: the models differ across processes")
        assert "53..63 values" in message and "build the same model" in message


# -- equivalence: 2 processes x 32 rows == 1 process x 64 rows --------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_processes_of_32_reproduce_one_of_64(two_ranks: dict[str, Any], dtype: str) -> None:
    steps = worker.STEPS if dtype == "float32" else worker.STEPS_FLOAT64
    one = worker.train(dtype, steps=steps)
    for rank in two_ranks["ranks"]:
        two = rank[dtype]
        assert len(two["losses"]) == len(one["losses"]) == steps
        assert two["losses"] == pytest.approx(one["losses"], rel=RTOL[dtype], abs=0)
        assert two["test_acc"] == one["test_acc"]
    assert one["losses"][-1] < 0.6 * one["losses"][0]  # it did learn: the comparison is not of two flat lines


# -- failure -------------------------------------------------------------------------------------------


def test_a_crash_in_one_process_ends_every_process_and_writes_nothing(two_ranks: dict[str, Any]) -> None:
    proc = two_ranks["proc"]
    assert proc.returncode != 0
    assert "RuntimeError: rank 1 crashed on purpose" in proc.stderr  # the crash, reported by its own rank
    rank0, rank1 = two_ranks["ranks"]
    assert "failure" not in rank1  # rank 1 died inside matgrad train
    failure = rank0["failure"]
    assert failure["code"] == 1  # rank 0 stopped too, with one line saying why
    lines = failure["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failure["stderr"]
    assert lines[0].startswith("matgrad train [rank 0/2]: error: ")
    assert "another process stopped" in lines[0] or "SIGTERM" in lines[0]
    assert list((two_ranks["dir"] / "failed").iterdir()) == []  # no checkpoint, no temporary file


# -- matgrad train under torchrun ---------------------------------------------------------------------


def test_matgrad_train_under_torchrun_reports_once_and_matches_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    common = ["--limit", "640", "--epochs", "2", "--hidden", "16", "--backend", "numpy", "--quiet"]
    save = ["--save", "model.safetensors"]
    # --compile: the all-reduce must run outside the captured step, or the replays would skip it
    proc = torchrun("-m", "matgrad", "train", "--batch-size", "32", "--compile", *save, *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("matgrad 0.1.0 | backend numpy") == 1  # rank 0 alone prints
    assert "batch 32 per process x 2 processes = 64 per step" in out
    assert out.count("saved the model to model.safetensors") == 1
    assert "error" not in proc.stderr.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # one file, written once
    assert mg.load(tmp_path / "model.safetensors").keys() == {"0.weight", "0.bias", "2.weight", "2.bias"}

    previous = mg.get_backend()
    try:
        assert main(["train", "--batch-size", "64", *common]) == 0
    finally:
        mg.set_backend(previous)
    alone = capsys.readouterr().out
    line = re.compile(r"epoch +\d+/2 +loss ([\d.]+) +train acc +([\d.]+)% +test acc +([\d.]+)%")
    two, one = line.findall(out), line.findall(alone)
    assert len(two) == len(one) == 2
    for (loss2, *acc2), (loss1, *acc1) in zip(two, one):
        assert float(loss2) == pytest.approx(float(loss1), abs=1.5e-4)  # printed to 4 decimals
        assert acc2 == acc1


# -- in this process: no torch needed ---------------------------------------------------------------


def test_importing_matgrad_imports_no_torch() -> None:
    code = "import sys, matgrad, matgrad.distributed, matgrad.cli; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_without_torch_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    assert not dist.is_initialized()
    for call in (dist.init_process_group, dist.get_rank, dist.barrier):
        with pytest.raises(dist.DistributedError, match=re.escape('pip install "matgrad[distributed]"')):
            call()


def test_init_process_group_names_what_torchrun_did_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    for name in dist.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(dist.DistributedError, match="MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE not set; launch"):
        dist.init_process_group()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(dist.DistributedError, match="RANK='two' is not a whole number"):
        dist.init_process_group()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(dist.DistributedError, match=r"rank 2 is outside 0\.\.1"):
        dist.init_process_group()
    with pytest.raises(mg.ArgumentError, match="timeout must be a positive number of seconds"):
        dist.init_process_group(timeout=-1)


def test_rank_tag_marks_error_lines_of_one_process_among_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_tag() == ""
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_tag() == ""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert rank_tag() == " [rank 3/4]"


# -- in this process: a group of one -----------------------------------------------------------------


@pytest.fixture
def group_of_one(tmp_path: Path) -> Any:
    pytest.importorskip("torch")
    assert not dist.is_initialized()
    dist.init_process_group(init_method=f"file://{tmp_path / 'store'}", world_size=1, rank=0)
    try:
        yield sys.modules["torch.distributed"]
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def test_without_a_group_every_call_says_to_initialise() -> None:
    pytest.importorskip("torch")
    assert not dist.is_initialized()
    t = mg.zeros(1, 1)
    for call in (dist.get_rank, dist.get_world_size, dist.barrier, lambda: dist.all_reduce(t)):
        with pytest.raises(dist.DistributedError, match=r"init_process_group\(\) first"):
            call()
    with pytest.raises(dist.DistributedError, match=r"init_process_group\(\) first"):
        dist.DistributedDataParallel(nn.MLP([2, 2]))


@pytest.mark.parametrize("backend", worker.BACKENDS)
def test_all_reduce_works_in_place_on_the_tensors_own_storage(
    group_of_one: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []

    def doubling(tensor: Any, op: Any = None, **kwargs: Any) -> None:  # stands for the other ranks' sum
        seen.append(tensor)
        tensor.mul_(2)

    monkeypatch.setattr(group_of_one, "all_reduce", doubling)
    t = mg.Tensor2D([[1.0, 2.0], [3.0, 4.0]], backend=backend)
    native, alias = t.native, t.detach()
    assert dist.all_reduce(t) is t
    assert t.native is native and t.tolist() == alias.tolist() == [[2.0, 4.0], [6.0, 8.0]]
    if backend == "numpy":  # torch.from_numpy: the reduced tensor is the array's own memory
        assert seen[0].data_ptr() == native.ctypes.data
    assert t._version == 1


def test_all_reduce_and_broadcast_check_their_arguments(group_of_one: Any) -> None:
    with pytest.raises(mg.ArgumentTypeError, match="all_reduce: expected a Tensor2D"):
        dist.all_reduce([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(mg.ArgumentError, match="op must be one of"):
        dist.all_reduce(mg.zeros(1, 1), op="mean")
    with pytest.raises(mg.DTypeError, match="AVG of an int64"):
        dist.all_reduce(mg.Tensor2D([[1]], dtype="int64"), op=dist.ReduceOp.AVG)
    with pytest.raises(mg.GraphError, match=r"under `with matgrad\.no_grad"):
        dist.all_reduce(mg.zeros(1, 1).requires_grad_())
    with pytest.raises(mg.ArgumentError, match=r"src must be a rank in 0\.\.0"):
        dist.broadcast(mg.zeros(1, 1), src=1)
    with pytest.raises(dist.DistributedError, match="already rank 0 of 1"):
        dist.init_process_group()
    assert dist.get_rank() == 0 and dist.get_world_size() == 1
    dist.barrier()


def test_ddp_reduces_in_buckets_not_per_parameter(group_of_one: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    reduce = group_of_one.all_reduce

    def counting(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tensor.numel())
        return reduce(tensor, *args, **kwargs)

    mg.manual_seed(0)
    model = nn.MLP([784, 128, 10])  # 4 parameters, 101,770 values
    ddp = dist.DistributedDataParallel(model)
    monkeypatch.setattr(group_of_one, "all_reduce", counting)
    x, y = mg.randn(8, 784), mg.Tensor2D([[i % 10] for i in range(8)], dtype="int64")
    F.cross_entropy(ddp(x), y).backward()
    before = [p.grad.tolist() for p in model.parameters()]  # type: ignore[union-attr]
    ddp.average_gradients()
    assert calls == [101_770]  # one all-reduce for the whole step (PyTorch's 25 MB bucket)
    assert [p.grad.tolist() for p in model.parameters()] == before  # type: ignore[union-attr]  # alone: the mean is itself
    assert "buckets=[101,770]" in repr(ddp)
    assert list(ddp.state_dict()) == ["module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"]

    small = dist.DistributedDataParallel(model, bucket_cap_mb=0.2)  # 200 kB: the 401 kB weight alone, then the rest
    calls.clear()
    small.average_gradients()
    assert calls == [100_352, 128 + 1_280 + 10]

    model[2].double()  # type: ignore[index]  # a float64 layer: a bucket of its own dtype
    mixed = dist.DistributedDataParallel(model)
    for p in model.parameters():
        p.grad = mg.ones_like(p)
    calls.clear()
    mixed.average_gradients()
    assert calls == [100_480, 1_290]
    assert [p.grad.dtype for p in model.parameters()] == ["float32", "float32", "float64", "float64"]  # type: ignore[union-attr]


def test_ddp_checks_its_arguments_and_the_gradients(group_of_one: Any) -> None:
    with pytest.raises(mg.ArgumentTypeError, match=r"expected a matgrad nn\.Module"):
        dist.DistributedDataParallel(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(mg.ArgumentError, match="bucket_cap_mb must be a positive number"):
        dist.DistributedDataParallel(nn.MLP([2, 2]), bucket_cap_mb=0)
    model = nn.MLP([3, 2])
    ddp = dist.DistributedDataParallel(model)
    model[0].weight.grad = mg.zeros(3, 2)  # type: ignore[index]
    with pytest.raises(mg.ShapeError, match=r"a 2x3 float32 parameter on numpy has a .grad of 3x2"):
        ddp.average_gradients()


# -- DataLoader sharding --------------------------------------------------------------------------------


def _rows(batches: Any) -> list[list[int]]:
    return [[int(v) for row in b.tolist() for v in row] for b in batches]


@given(
    n=st.integers(1, 70),
    batch=st.integers(1, 9),
    world=st.integers(1, 4),
    drop_last=st.booleans(),
    seed=st.integers(0, 3),
)
def test_shards_of_a_step_together_are_the_global_batch(
    n: int, batch: int, world: int, drop_last: bool, seed: int
) -> None:
    x = mg.Tensor2D([[float(i)] for i in range(n)], backend="python")
    shards = [
        DataLoader(x, None, batch, shuffle=True, seed=seed, drop_last=drop_last, rank=r, world_size=world)
        for r in range(world)
    ]
    alone = DataLoader(x, None, batch * world, shuffle=True, seed=seed, drop_last=drop_last)
    for _ in range(2):  # two epochs: every rank draws the same new permutation
        parts = [_rows(s) for s in shards]
        whole = _rows(alone)
        steps = len(shards[0])
        assert all(len(s) == steps and len(p) == steps for s, p in zip(shards, parts))  # the same number of steps
        for k in range(steps):
            assert len({len(p[k]) for p in parts}) == 1  # equal parts: the plain mean of the ranks' means is right
        glued = [list(chain.from_iterable(p[k] for p in parts)) for k in range(steps)]
        if drop_last or n % world == 0:  # the same rows, step by step, in the same order
            assert glued == whole
        else:  # padded with the permutation's first rows, to a multiple of world_size
            flat = list(chain.from_iterable(glued))
            order = list(chain.from_iterable(whole))
            assert flat[: len(order)] == order and flat[len(order) :] == (order * world)[: len(flat) - len(order)]
            assert len(flat) % world == 0 and len(flat) - len(order) < world


def test_dataloader_sharding_arguments_are_checked() -> None:
    x = mg.zeros(10, 2)
    with pytest.raises(mg.ArgumentError, match="give both rank and world_size"):
        DataLoader(x, None, 2, rank=0)
    with pytest.raises(mg.ArgumentError, match=r"rank must be in 0\.\.1 for world_size=2, got 2"):
        DataLoader(x, None, 2, rank=2, world_size=2)
    with pytest.raises(mg.ArgumentError, match="world_size must be at least 1"):
        DataLoader(x, None, 2, rank=0, world_size=0)
    with pytest.raises(mg.ArgumentTypeError, match="rank must be an int"):
        DataLoader(x, None, 2, rank=0.0, world_size=2)  # type: ignore[arg-type]
    loader = DataLoader(x, None, 2, rank=1, world_size=2)
    assert repr(loader).endswith("rank=1, world_size=2)") and len(loader) == 3  # 5 rows each: 2, 2, 1


@pytest.mark.parametrize(
    ("backend", "device", "expected"),
    [
        ("torch", "cuda", "nccl"),
        ("torch", "cuda:1", "nccl"),
        ("torch", "cpu", "gloo"),
        ("torch", None, "gloo"),
        ("numpy", None, "gloo"),
        (None, None, "gloo"),
        ("cupy", None, "gloo"),
    ],
)
def test_matgrad_train_joins_with_nccl_where_its_tensors_are_on_cuda(backend: Any, device: Any, expected: str) -> None:
    import argparse

    from matgrad._parallel import group_backend

    assert group_backend(argparse.Namespace(backend=backend, device=device)) == expected
