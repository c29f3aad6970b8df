"""Data parallelism on this machine: one MNIST epoch with 1 process vs 2, and what the all-reduce costs.

Run:  python benchmarks/distributed_scaling.py --data /work/shared/data/mnist [--repeats 3] [--json out.json]
Tiny: python benchmarks/distributed_scaling.py --limit 640 --batches 64 --repeats 1 --collective-iters 5

Both configurations train the MLP 784-128-10 (SGD lr 0.05, momentum 0.9, float32, numpy backend)
on the same B rows per step in the same order, from the same initial weights, for each B of
``--batches`` (default 64 and 512: the per-step compute grows with B, the all-reduce does not):

- 1 process: ``DataLoader(x, y, B)``, the plain loop (torch is not even imported);
- 2 processes over 127.0.0.1 (gloo): ``DataLoader(x, y, B // 2, rank=r, world_size=2)``,
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
SWEEP_ROWS = (8, 32, 64, 128, 256, 512, 1024)  # batch sizes of the one-process step-time sweep
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
    loader = DataLoader(x, y, args.batch // world, shuffle=True, seed=SEED, **shard)
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
    result: dict[str, Any] = {"rank": rank, "world": world, "epoch_s": epoch_s, "steps": len(loader), "rows": x.nrows}
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


def sweep(args: argparse.Namespace) -> None:
    """One process, 1 thread: the best time of a training step at several batch sizes (no torch)."""
    import matgrad as mg
    import matgrad.functional as F
    from matgrad import nn, optim

    mg.set_backend("numpy")
    mg.manual_seed(SEED)
    model = nn.MLP(SIZES)
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    result = {}
    for rows in SWEEP_ROWS:
        x, y = mg.rand(rows, SIZES[0]), mg.Tensor2D([[i % 10] for i in range(rows)], dtype="int64")
        times = []
        for _ in range(args.sweep_steps + 3):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        result[rows] = min(times[3:])  # the least disturbed by other jobs: what the core can do
    with open(os.path.join(args.out, "sweep.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least squares ``t = a + b * rows``: the fixed cost of a step and the cost of each row."""
    xs, ys = list(points), list(points.values())
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


# -- the launcher -------------------------------------------------------------------------------------


def launch(world: int, batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
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
            command += ["--batch", str(batch)]
            procs.append(subprocess.Popen(command, env=env_r))
        codes = [p.wait(timeout=args.timeout) for p in procs]
        if any(codes):
            raise SystemExit(f"a {world}-process run failed (exit codes {codes})")
        results = []
        for rank in range(world):
            with open(os.path.join(out, f"rank{rank}.json"), encoding="utf-8") as fh:
                results.append(json.load(fh))
        return results


def run_sweep(args: argparse.Namespace) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as out:
        env = thread_env(1)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--sweep", "--out", out]
        subprocess.run([*command, "--sweep-steps", str(args.sweep_steps)], env=env, check=True, timeout=args.timeout)
        with open(os.path.join(out, "sweep.json"), encoding="utf-8") as fh:
            return {int(k): v for k, v in json.load(fh).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default=os.environ.get("MATGRAD_MNIST_DIR", SAMPLE_DIR), help="MNIST directory")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    parser.add_argument("--batches", default="64,512", help="rows per step, split over the processes (default 64,512)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--collective-iters", type=int, default=50, help="bare all-reduces timed (default 50)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--sweep-steps", type=int, default=30, help="steps timed per batch size in the sweep")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sweep(args) if args.sweep else worker(args)
        return
    batches = [int(b) for b in args.batches.split(",")]
    if any(b < 2 or b % 2 for b in batches):
        parser.error("--batches: even numbers of rows, so that 2 processes split each step equally")

    info = machine_info()
    runs: dict[tuple[int, int], list[list[dict[str, Any]]]] = {(b, w): [] for b in batches for w in (1, 2)}
    for _ in range(args.repeats):
        for batch in batches:
            for world in (1, 2):  # alternating, so a burst of load from other jobs hits both
                runs[batch, world].append(launch(world, batch, args))
    sweeps = [run_sweep(args) for _ in range(args.repeats)]
    info["loadavg_after"] = loadavg()

    def fmt(xs: list[float], unit: str = "s", scale: float = 1.0) -> str:
        return f"{statistics.median(xs) * scale:.2f} {unit} ({min(xs) * scale:.2f}-{max(xs) * scale:.2f})"

    rows = []
    figures: dict[str, Any] = {}
    for batch in batches:
        one = [r[0]["epoch_s"] for r in runs[batch, 1]]
        two = [r[0]["epoch_s"] for r in runs[batch, 2]]
        steps = runs[batch, 2][0][0]["steps"]
        reduce_s = [statistics.mean(p["allreduce_s"] for p in r) for r in runs[batch, 2]]
        share = [a / r[0]["epoch_s"] for a, r in zip(reduce_s, runs[batch, 2])]
        per_step = [a / steps for a in reduce_s]
        speedups = [a / b for a, b in zip(one, two)]
        accs = [runs[batch, w][0][0]["test_acc"] for w in (1, 2)]
        compute1 = [t / steps for t in one]
        compute2 = [(r[0]["epoch_s"] - a) / steps for a, r in zip(reduce_s, runs[batch, 2])]
        rows.append(
            [
                str(batch),
                "1",
                str(batch),
                str(steps),
                fmt(one),
                fmt(compute1, "ms", 1e3),
                "-",
                "-",
                "1.00x",
                f"{accs[0]:.2%}",
            ]
        )
        rows.append(
            [
                str(batch),
                "2",
                str(batch // 2),
                str(steps),
                fmt(two),
                fmt(compute2, "ms", 1e3),
                fmt(per_step, "ms", 1e3),
                fmt(share, "%", 100),
                f"{statistics.median(speedups):.2f}x",
                f"{accs[1]:.2%}",
            ]
        )
        figures[f"batch {batch}"] = {
            "one_process_epoch_s": summary(one),
            "two_process_epoch_s": summary(two),
            "speedup": summary(speedups),
            "allreduce_share": summary(share),
            "allreduce_s_per_step": summary(per_step),
            "test_acc": accs,
        }
    n_rows = runs[batches[0], 1][0][0]["rows"]
    print(f"# Data parallelism: one epoch of MLP {'-'.join(map(str, SIZES))} on {n_rows:,} MNIST images")
    print(f"\n{info['date']}, commit {info['commit']}, {info['cpus']} CPUs ({info['cpu']}), load {info['loadavg']}")
    print(f"{args.repeats} runs of each, 1 thread per process; medians (min-max)\n")
    header = ["rows per step", "processes", "rows per process", "steps", "epoch time", "rest of the step"]
    header += ["all-reduce per step"]
    header += ["share of the step", "speed-up", "test acc"]
    print(markdown_table(header, rows))
    coll_runs = [r[0]["collectives"] for b in batches for r in runs[b, 2]]
    coll = {k: [c[k] for c in coll_runs] for k in coll_runs[0]}
    figures["bare_allreduce_s"] = {k: summary(v) for k, v in coll.items()}
    print("\nbare all-reduce between the 2 processes (gloo over 127.0.0.1), median of the runs' medians:\n")
    print(markdown_table(["payload", "time"], [[k, f"{statistics.median(v) * 1e6:,.0f} us"] for k, v in coll.items()]))
    step = {rows: statistics.median(s[rows] for s in sweeps) for rows in SWEEP_ROWS}
    a, b = fit_line(step)
    figures["one_process_step_s"] = step
    figures["fit"] = {"fixed_s": a, "per_row_s": b}
    print("\none process, 1 thread: time of a training step (forward, backward, SGD step) by batch size")
    print(f"(the best of {args.sweep_steps} steps, median over the runs):\n")
    print(markdown_table(["rows", *map(str, SWEEP_ROWS)], [["ms", *(f"{step[r] * 1e3:.2f}" for r in SWEEP_ROWS)]]))
    print(f"\nleast-squares line: {a * 1e3:.3f} ms per step + {b * 1e6:.2f} us per row")
    print(f"\nload average after: {info['loadavg_after']}")
    if args.json:
        write_json(
            args.json,
            {"machine": info, "args": vars(args), "figures": figures, "runs": {str(k): v for k, v in runs.items()}},
        )


if __name__ == "__main__":
    main()
