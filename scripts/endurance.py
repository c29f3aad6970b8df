"""Endurance: 2,000 training steps on MNIST batches keep the process's memory flat (issue 6).

    python scripts/endurance.py                                   # 2,000 steps, shipped sample, default backend
    python scripts/endurance.py --backend python --steps 400 --warmup 100 --batch-size 16
    python scripts/endurance.py --data ~/data/mnist               # the full MNIST files

An MLP 784-128-10 trains with SGD (momentum 0.9) on shuffled batches, epoch after epoch, for
--steps steps. After --warmup steps the process's resident memory (VmRSS from /proc/self/status)
is read every --every steps. The growth is the last reading minus the one taken at the end of the
warm-up; the exit status is 1 when it reaches --limit-mb (5 MB), 0 otherwise. No garbage collection
is forced between readings: RSS is what a training loop would see. As a second, finer signal, the
live Python memory blocks are counted after a full collection at both ends (a leak of Python
objects shows there even when it is too small to move RSS; free lists, which a full collection
empties, do not).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim
from matgrad.data import DataLoader, load_mnist

STEPS = 2000  # training steps in all
WARMUP = 200  # steps before the baseline reading (allocator pools, caches, optimiser state fill up)
EVERY = 100  # steps between readings
BATCH_SIZE = 64
HIDDEN = 128
LR = 0.05
LIMIT_MB = 5.0  # allowed growth from the end of the warm-up to the last step


def rss_bytes() -> int:
    """Resident set size now (VmRSS); the peak (ru_maxrss) where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"steps before the baseline (default {WARMUP})")
    p.add_argument("--every", type=int, default=EVERY, help=f"steps between readings (default {EVERY})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"rows per batch (default {BATCH_SIZE})")
    p.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden layer width (default {HIDDEN})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--limit-mb", type=float, default=LIMIT_MB, help=f"allowed growth in MB (default {LIMIT_MB})")
    p.add_argument("--data", metavar="DIR", help="directory of the four MNIST files (default: the shipped sample)")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: matgrad's default)")
    p.add_argument("--seed", type=int, default=0, help="seed for init and shuffling (default 0)")
    args = p.parse_args(argv)
    for name in ("steps", "every", "batch_size", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be at least 0 and below --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend:
        mg.set_backend(args.backend)
    mg.manual_seed(args.seed)
    data = load_mnist(sample=True) if args.data is None else load_mnist(args.data)
    source = "the shipped sample" if args.data is None else args.data
    model = nn.MLP([data.x_train.ncols, args.hidden, 10])
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader(data.x_train, data.y_train, args.batch_size, shuffle=True, seed=args.seed)
    print(
        f"matgrad {mg.__version__} | backend {mg.get_backend()} | MNIST {source}: {data.x_train.nrows} images | "
        f"MLP {data.x_train.ncols}-{args.hidden}-10, SGD lr {args.lr:g} momentum 0.9 | batch {args.batch_size}"
    )
    print(f"{args.steps} steps; memory read after {args.warmup} warm-up steps, then every {args.every}\n")
    print(f"{'step':>6}  {'RSS MB':>9}  {'growth MB':>9}  {'loss':>7}  {'s/100 steps':>11}")

    readings: list[tuple[int, int]] = []  # (step, rss)
    blocks_start = blocks = 0
    step, epoch = 0, 0
    started = last_time = time.perf_counter()
    last_step = 0
    while step < args.steps:
        epoch += 1
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            step += 1
            due = step >= args.warmup and (step - args.warmup) % args.every == 0
            if due or step == args.steps:
                now = time.perf_counter()
                if not readings:
                    gc.collect()
                    blocks_start = sys.getallocatedblocks()
                rss = rss_bytes()
                readings.append((step, rss))
                growth = (rss - readings[0][1]) / 2**20
                pace = (now - last_time) / max(step - last_step, 1) * 100
                print(f"{step:>6}  {rss / 2**20:>9.1f}  {growth:>+9.2f}  {value:>7.4f}  {pace:>11.2f}")
                last_time, last_step = now, step
            if step == args.steps:  # inside the epoch, as at the first reading: the same objects alive
                gc.collect()
                blocks = sys.getallocatedblocks() - blocks_start
                break

    base_step, base_rss = readings[0]
    end_step, end_rss = readings[-1]
    growth = (end_rss - base_rss) / 2**20
    peak = (max(r for _, r in readings) - base_rss) / 2**20
    ok = growth < args.limit_mb
    print(
        f"\nRSS growth from step {base_step} to step {end_step}: {growth:+.2f} MB (largest {peak:+.2f} MB; "
        f"limit {args.limit_mb:g} MB); live Python blocks after full collections {blocks:+,}; "
        f"{epoch} epochs in {time.perf_counter() - started:.1f} s"
    )
    print("PASS: memory is flat" if ok else "FAIL: memory grows")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
