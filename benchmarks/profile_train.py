"""Profile one matgrad training epoch with cProfile: where does the Python time go?

Run:  python benchmarks/profile_train.py --data ../shared/data/mnist [--top 15] [--save epoch.prof]
      python benchmarks/profile_train.py --data ../shared/data/mnist --backend python --limit 2000

The loop is exactly train_compare.py's matgrad loop (784-128-10 by default, batch 64, SGD lr 0.1,
float32; shuffle, gather, forward, cross-entropy, zero_grad, backward, step). The script first
runs three epochs, each on a fresh permutation:

1. without any instrumentation: the epoch time to compare with train_compare.py;
2. with a stopwatch around every method of the backend object (``matgrad.backends.get(name)``,
   patched on the instance by this script, outermost calls only): the time spent inside the
   backend's kernels (for numpy: the NumPy calls plus one Python frame each) against the time
   outside them (matgrad's engine, ops, nn and optim in Python, plus the loop and its gather).
   This is the fraction inside NumPy kernels vs matgrad's Python, with little distortion;
3. under cProfile: the top functions by own time (tottime) and by cumulative time, and the own
   time split into categories: ``matgrad backend`` (the kernel methods of
   matgrad/backends/*.py: NumPy's ufuncs and operators such as ``a @ b`` or ``a += b`` are not
   function calls cProfile can see, so their time lands in the backend method that runs them),
   ``matgrad`` (the rest of matgrad), ``numpy Python`` (NumPy's own Python-level code:
   ``dtype.name``, ``np.sum``'s wrappers, ``errstate``...: overhead paid per call, not
   arithmetic), ``numpy C`` (explicit calls to NumPy builtins cProfile does see, e.g. the
   ``reduce`` of a ufunc), ``builtins and stdlib`` and ``the loop`` (this benchmark's loop).

cProfile adds a roughly constant cost per Python call, so it inflates the Python share.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

# Backend methods that do no arithmetic: metadata and conversions of tiny results.
BOOKKEEPING = {"dtype", "indices", "tolist", "to_numpy", "all_finite"}
CATEGORIES = ("matgrad backend", "matgrad", "numpy Python", "numpy C", "builtins and stdlib", "the loop")


def classify(func: tuple[str, int, str]) -> str:
    """The category of a pstats function key ``(file, line, name)``."""
    path, _, name = func
    norm = path.replace("\\", "/")
    if "/matgrad/backends/" in norm:
        return "matgrad backend"
    if "/matgrad/" in norm and "/benchmarks/" not in norm:
        return "matgrad"
    if "/numpy/" in norm:
        return "numpy Python"
    if "/benchmarks/" in norm:
        return "the loop"
    if path == "~" and ("numpy" in name or "ufunc" in name or "ndarray" in name or "_multiarray" in name):
        return "numpy C"
    return "builtins and stdlib"


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) per category, in seconds."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for func, (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        out[classify(func)] += tottime
    return out


def top_rows(stats: pstats.Stats, key: str, n: int) -> list[dict[str, Any]]:
    entries = []
    for func, (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append(
            {
                "function": pstats.func_std_string(func),
                "category": classify(func),
                "ncalls": nc,
                "primitive_calls": cc,
                "tottime_s": tt,
                "cumtime_s": ct,
            }
        )
    field = "tottime_s" if key == "tottime" else "cumtime_s"
    entries.sort(key=lambda e: -e[field])
    return entries[:n]


def kernel_timing(backend: Any, run: Any) -> tuple[float, dict[str, list[float]]]:
    """Run ``run()`` with a stopwatch around each method of ``backend``; return (wall time, per kernel)."""
    names = [n for n in dir(type(backend)) if not n.startswith("__") and callable(getattr(backend, n))]
    acc: dict[str, list[float]] = {}
    depth = [0]
    clock = time.perf_counter

    def timed(name: str, method: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            if depth[0]:
                return method(*a, **k)
            depth[0] = 1
            t0 = clock()
            try:
                return method(*a, **k)
            finally:
                dt = clock() - t0
                depth[0] = 0
                rec = acc.get(name)
                if rec is None:
                    acc[name] = [1, dt]
                else:
                    rec[0] += 1
                    rec[1] += dt

        return wrapper

    for name in names:
        setattr(backend, name, timed(name, getattr(backend, name)))
    try:
        t0 = clock()
        run()
        wall = clock() - t0
    finally:
        for name in names:
            delattr(backend, name)
    return wall, acc


def _short(function: str) -> str:
    """Trim site-packages and repository prefixes from a pstats function name."""
    for marker in ("site-packages/", _bench.REPO + "/"):
        if marker in function:
            function = function.split(marker, 1)[1]
    return function


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=_bench.SAMPLE_DIR, help="MNIST folder (default: the shipped sample)")
    p.add_argument("--limit", type=int, help="train on the first N images (default: all; 2000 for --backend python)")
    p.add_argument("--backend", choices=("numpy", "python"), default="numpy")
    p.add_argument("--models", default="784-128-10", help="layer sizes (default 784-128-10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gather", choices=("wrap", "index"), default="wrap", help="as in train_compare.py")
    p.add_argument("--top", type=int, default=15, help="functions listed per table (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="also write the raw cProfile data here (for snakeviz, pstats)")
    p.add_argument("--json", help="write the tables to this JSON file")
    args = p.parse_args()
    _bench.set_threads(args.threads)
    import numpy as np
    import reference_numpy as ref
    import train_compare as tc

    args.sizes = ref.parse_sizes(args.models)
    limit = args.limit if args.limit is not None else (2000 if args.backend == "python" else None)
    x, y, _, _ = ref.load_arrays(args.data, limit)
    n = len(x)
    trainer = tc._matgrad_trainer(args, args.backend, x, y)
    trainer["load"](ref.init_params(args.sizes, args.seed))
    epoch = trainer["epoch"]
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    epoch(rng.permutation(n))
    plain = time.perf_counter() - t0

    import matgrad as mg

    perm = rng.permutation(n)
    timed_wall, kernels = kernel_timing(mg.backends.get(args.backend), lambda: epoch(perm))
    inside = sum(v[1] for v in kernels.values())

    perm = rng.permutation(n)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    epoch(perm)
    profiler.disable()
    profiled = time.perf_counter() - t0

    stats = pstats.Stats(profiler)
    total = sum(breakdown(stats).values())
    parts = breakdown(stats)
    if args.save:
        stats.dump_stats(args.save)

    model = "-".join(map(str, args.sizes))
    info = _bench.machine_info()
    print(f"Measured {_bench.describe_machine(info)}")
    print(
        f"matgrad {args.backend} backend, {model}, one epoch of {n} images, batch {args.batch_size}, "
        f"{args.threads} threads: {plain:.3f} s without the profiler, {profiled:.3f} s under cProfile "
        f"({total:.3f} s of own time recorded)\n"
    )
    print(
        f"### Inside the backend's kernels vs outside (stopwatch per kernel call; epoch {timed_wall:.3f} s "
        f"with the stopwatches)\n"
    )
    krows = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    arith = sum(t for k, (_, t) in kernels.items() if k not in BOOKKEEPING)
    books = inside - arith
    outside = timed_wall - inside
    rows = [
        [
            k + (" (bookkeeping)" if k in BOOKKEEPING else ""),
            int(c),
            f"{t:.3f}",
            f"{t / c * 1e6:.1f}",
            f"{t / timed_wall:.1%}",
        ]
        for k, (c, t) in krows
    ]
    rows.append(["**arithmetic kernels**", "", f"{arith:.3f}", "", f"{arith / timed_wall:.1%}"])
    rows.append(["**bookkeeping calls**", "", f"{books:.3f}", "", f"{books / timed_wall:.1%}"])
    rows.append(["**outside the backend**", "", f"{outside:.3f}", "", f"{outside / timed_wall:.1%}"])
    print(_bench.markdown_table(["kernel", "calls", "seconds", "us per call", "share of epoch"], rows))
    print("\n### Own time by category (cProfile tottime)\n")
    print(
        _bench.markdown_table(
            ["category", "seconds", "share"],
            [[c, f"{parts[c]:.3f}", f"{parts[c] / total:.1%}"] for c in CATEGORIES],
        )
    )
    tables = {}
    for key in ("tottime", "cumulative"):
        rows = top_rows(stats, key, args.top)
        tables[key] = rows
        print(f"\n### Top {args.top} functions by {'own' if key == 'tottime' else 'cumulative'} time\n")
        print(
            _bench.markdown_table(
                ["ncalls", "tottime (s)", "cumtime (s)", "category", "function"],
                [
                    [
                        r["ncalls"],
                        f"{r['tottime_s']:.3f}",
                        f"{r['cumtime_s']:.3f}",
                        r["category"],
                        _short(r["function"]).replace("|", "/"),
                    ]
                    for r in rows
                ],
                "rrrll",
            )
        )
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats("tottime").print_stats(args.top)
    print(f"\n### pstats, sorted by tottime (top {args.top})\n")
    print("```")
    print(buf.getvalue().strip())
    print("```")
    if args.json:
        _bench.write_json(
            args.json,
            {
                "benchmark": "profile_train",
                "machine": info,
                "backend": args.backend,
                "model": model,
                "samples": n,
                "epoch_s": plain,
                "profiled_epoch_s": profiled,
                "own_time_by_category_s": parts,
                "kernel_timing": {
                    "epoch_s": timed_wall,
                    "inside_kernels_s": inside,
                    "bookkeeping": sorted(BOOKKEEPING),
                    "kernels": {k: {"calls": int(c), "seconds": t} for k, (c, t) in kernels.items()},
                },
                "top": tables,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
