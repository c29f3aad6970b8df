"""Data parallelism on this machine: one MNIST epoch with 1 process vs 2, and what the all-reduce costs.

Run:  python benchmarks/distributed_scaling.py --data /work/shared/data/mnist [--repeats 3] [--json out.json]
Tiny: python benchmarks/distributed_scaling.py --limit 640 --repeats 1 --collective-iters 5

Both configurations train the MLP 784-128-10 (SGD lr 0.05, momentum 0.9, float32, numpy backend)
on the same 64 rows per step in the same order, from the same initial weights:

- 1 process: ``DataLoader(x, y, 64)``, the plain loop (torch is not even imported);
- 2 processes over 127.0.0.1 (gloo): ``DataLoader(x, y, 32, rank=r, world_size=2)``,
  ``DistributedDataParallel`` and ``average_gradients()`` between ``backward()`` and ``step()``.

Every process runs with 1 thread (OMP/MKL/OPENBLAS_NUM_THREADS=1, ``torch.set_num_threads(1)``), so 2
processes use the 2 cores. Processes are started as torchrun starts them (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT in the environment), without the launcher's own start-up. The timed epoch
runs between two barriers, after data loading and model set-up. In each step of the 2-process run
the time inside ``average_gradients()`` (pack, all-reduce, divide, unpack) is measured apart: it
includes waiting for the slower rank, so it is the all-reduce's share of the step as the step sees it.

After training, the 2 processes time bare all-reduces (``--collective-iters`` each, median) of
1 float (latency) and of the MLP's 101,770 gradients (407 KB), for the on-paper scaling figures of
docs/distributed.md. The machine is shared: medians over ``--repeats`` runs (1 and 2 processes
alternating) are printed with the load average, and should be read as indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import REPO, SAMPLE_DIR, loadavg, machine_info, markdown_table, summary, thread_env, write_json

SIZES = [784, 128, 10]  # the MNIST MLP
GLOBAL_BATCH = 64  # rows per optimiser step, split over the processes
LR, MOMENTUM, SEED = 0.05, 0.9, 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- one process of a run ---------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    import matgrad as mg
    import matgrad.functional as F
    from matgrad import nn, optim
    from matgrad.data import DataLoader, load_mnist
    from matgrad.metrics import accuracy, predict

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dist: Any = None
    if world > 1:
        import torch

        torch.set_num_threads(1)
        import matgrad.distributed as dist

        dist.init_process_group()
    mg.set_backend("numpy")
    data = load_mnist(args.data) if args.data != SAMPLE_DIR else load_mnist(sample=True)
    x, y = data.x_train, data.y_train
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    mg.manual_seed(SEED)
    model = nn.MLP(SIZES)
    ddp = dist.DistributedDataParallel(model) if dist else None
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    shard = {"rank": rank, "world_size": world} if dist else {}
    loader = DataLoader(x, y, GLOBAL_BATCH // world, shuffle=True, seed=SEED, **shard)
    reduce_s: list[float] = []
    if dist:
        dist.barrier()
    t0 = time.perf_counter()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        if ddp is not None:
            r0 = time.perf_counter()
            ddp.average_gradients()
            reduce_s.append(time.perf_counter() - r0)
        opt.step()
    if dist:
        dist.barrier()
    epoch_s = time.perf_counter() - t0
    result: dict[str, Any] = {"rank": rank, "world": world, "epoch_s": epoch_s, "steps": len(loader)}
    result["allreduce_s"] = sum(reduce_s)
    if rank == 0:
        result["test_acc"] = accuracy(predict(model, data.x_test), data.y_test)
    if dist:
        result["collectives"] = _time_collectives(dist, args.collective_iters)
        dist.destroy_process_group()
    with open(os.path.join(args.out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def _time_collectives(dist: Any, iters: int) -> dict[str, float]:
    """Median seconds of bare all-reduces: 1 float (latency) and the MLP's gradients (a bucket)."""
    import matgrad as mg

    params = sum(a * b + b for a, b in pairwise(SIZES))
    out = {}
    for name, n in (("1 float", 1), (f"{params:,} floats", params)):
        t = mg.zeros(1, n)
        times = []
        for _ in range(iters + 2):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[2:])  # the first two warm the connections
    return out


# -- the launcher -------------------------------------------------------------------------------------


def launch(world: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start ``world`` processes of this script as torchrun would, wait, and read what each wrote."""
    with tempfile.TemporaryDirectory() as out:
        env = thread_env(1)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        port = str(_free_port())
        procs = []
        for rank in range(world):
            env_r = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
            env_r.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--out", out, "--data", args.data]
            command += ["--limit", str(args.limit or 0), "--collective-iters", str(args.collective_iters)]
            procs.append(subprocess.Popen(command, env=env_r))
        codes = [p.wait(timeout=args.timeout) for p in procs]
        if any(codes):
            raise SystemExit(f"a {world}-process run failed (exit codes {codes})")
        results = []
        for rank in range(world):
            with open(os.path.join(out, f"rank{rank}.json"), encoding="utf-8") as fh:
                results.append(json.load(fh))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default=os.environ.get("MATGRAD_MNIST_DIR", SAMPLE_DIR), help="MNIST directory")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--collective-iters", type=int, default=50, help="bare all-reduces timed (default 50)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    info = machine_info()
    runs: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for world in (1, 2):  # alternating, so a burst of load from other jobs hits both
            runs[world].append(launch(world, args))
    info["loadavg_after"] = loadavg()

    one = [r[0]["epoch_s"] for r in runs[1]]
    two = [r[0]["epoch_s"] for r in runs[2]]
    steps = runs[2][0][0]["steps"]
    share = [statistics.mean(p["allreduce_s"] for p in r) / r[0]["epoch_s"] for r in runs[2]]
    per_step_ms = [1e3 * statistics.mean(p["allreduce_s"] for p in r) / steps for r in runs[2]]
    speedups = [a / b for a, b in zip(one, two)]
    rows_n = runs[1][0][0]["steps"] * GLOBAL_BATCH
    print(f"# Data parallelism: MLP {'-'.join(map(str, SIZES))}, {GLOBAL_BATCH} rows per step, ~{rows_n:,} rows")
    print(f"\n{info['date']}, commit {info['commit']}, {info['cpus']} CPUs ({info['cpu']}), load {info['loadavg']}")
    print(f"{args.repeats} runs each, 1 thread per process; medians (min-max)\n")

    def fmt(xs: list[float], unit: str = "s", scale: float = 1.0) -> str:
        return f"{statistics.median(xs) * scale:.2f} {unit} ({min(xs) * scale:.2f}-{max(xs) * scale:.2f})"

    print(
        markdown_table(
            ["processes", "batch per process", "steps", "epoch time", "all-reduce per step", "share of the step"],
            [
                ["1", str(GLOBAL_BATCH), str(runs[1][0][0]["steps"]), fmt(one), "-", "-"],
                ["2", str(GLOBAL_BATCH // 2), str(steps), fmt(two), fmt(per_step_ms, "ms"), fmt(share, "%", 100)],
            ],
        )
    )
    print(
        f"\nspeed-up of 2 processes over 1: {statistics.median(speedups):.2f}x (per run: "
        f"{', '.join(f'{s:.2f}' for s in speedups)})"
    )
    accs = {runs[w][0][0]["test_acc"] for w in (1, 2)}
    print(f"test accuracy after the epoch: {', '.join(f'{a:.2%}' for a in sorted(accs))} (1 and 2 processes)")
    coll = {k: [r[0]["collectives"][k] for r in runs[2]] for k in runs[2][0][0]["collectives"]}
    print("\nbare all-reduce between the 2 processes (gloo over 127.0.0.1), median of the runs' medians:\n")
    print(markdown_table(["payload", "time"], [[k, f"{statistics.median(v) * 1e6:,.0f} us"] for k, v in coll.items()]))
    print(f"\nload average after: {info['loadavg_after']}")
    if args.json:
        figures = {
            "one_process_epoch_s": summary(one),
            "two_process_epoch_s": summary(two),
            "speedup": summary(speedups),
            "allreduce_share": summary(share),
            "allreduce_ms_per_step": summary(per_step_ms),
            "collectives_s": {k: summary(v) for k, v in coll.items()},
            "runs": runs,
        }
        write_json(args.json, {"machine": info, "args": vars(args), "figures": figures})


if __name__ == "__main__":
    main()
