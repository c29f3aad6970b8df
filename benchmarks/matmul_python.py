"""Pure-Python matmul strategies, measured side by side on one product.

Run:  python benchmarks/matmul_python.py [--m 64 --k 784 --n 128] [--repeats 5] [--json out.json]

Every strategy computes the same (m x k) @ (k x n) product of row-major flat lists. For each the
script prints million multiply-adds per second (best of --repeats; the slow loop strategies run
once on a smaller product and are scaled by their multiply-add count) and the worst error
relative to |a| |b| against an exactly rounded reference (math.fsum), next to float32's unit
roundoff 2^-24 = 6.0e-8: a strategy must stay far below it. The last one, "matgrad kernel", is
what matgrad.backends.python uses (math.sumprod on Python 3.12+, else math.dist on unit vectors).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import platform
import random
import sys
import time
from itertools import repeat
from typing import Callable

from matgrad.backends.python import dot_products

Strategy = Callable[[list[float], list[float], int, int, int], list[float]]
mul = operator.mul


def index_loops_ijk(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """The textbook triple loop, reading b down a column (strided access)."""
    out = [0.0] * (m * n)
    for i in range(m):
        for j in range(n):
            s = 0.0
            for p in range(k):
                s += a[i * k + p] * b[p * n + j]
            out[i * n + j] = s
    return out


def index_loops_ikj(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """The blog post's i-k-j order: the inner loop walks a row of b and of the output contiguously."""
    out = [0.0] * (m * n)
    for i in range(m):
        base = i * n
        for p in range(k):
            aip = a[i * k + p]
            row = p * n
            for j in range(n):
                out[base + j] += aip * b[row + j]
    return out


def row_scaling_ikj(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """i-k-j with the inner loop in C: out_row += a[i,p] * b_row_p via map."""
    b_rows = [b[p * n : (p + 1) * n] for p in range(k)]
    out: list[float] = []
    for i in range(m):
        acc = [0.0] * n
        for p, aip in enumerate(a[i * k : (i + 1) * k]):
            acc = list(map(operator.add, acc, map(mul, b_rows[p], repeat(aip))))
        out.extend(acc)
    return out


def sum_map_columns(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """Pre-transposed columns; each dot product is sum(map(operator.mul, row, col))."""
    rows = [a[i * k : (i + 1) * k] for i in range(m)]
    cols = [b[j::n] for j in range(n)]
    return [sum(map(mul, r, c)) for r in rows for c in cols]


def dist_unnormalised(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """a.b = (|a|^2 + |b|^2 - dist(a, b)^2) / 2: one C call per product, but error ~ eps (|a|^2 + |b|^2)."""
    rows = [a[i * k : (i + 1) * k] for i in range(m)]
    cols = [b[j::n] for j in range(n)]
    dist, hypot = math.dist, math.hypot
    cn = [hypot(*c) ** 2 for c in cols]
    out: list[float] = []
    for r in rows:
        rn = hypot(*r) ** 2
        out.extend([0.5 * (rn + x - d * d) for x, d in zip(cn, map(dist, repeat(r), cols))])
    return out


def sumprod(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """math.sumprod (Python 3.12+): a C dot product with extended-precision accumulation."""
    rows = [a[i * k : (i + 1) * k] for i in range(m)]
    cols = [b[j::n] for j in range(n)]
    sp = math.sumprod  # type: ignore[attr-defined]
    return [sp(r, c) for r in rows for c in cols]


def matgrad_kernel(a: list[float], b: list[float], m: int, k: int, n: int) -> list[float]:
    """matgrad.backends.python.dot_products: sumprod on 3.12+, else math.dist on unit vectors."""
    rows = [a[i * k : (i + 1) * k] for i in range(m)]
    cols = [b[j::n] for j in range(n)]
    return dot_products(rows, cols)


def reference(a: list[float], b: list[float], m: int, k: int, n: int) -> tuple[list[float], list[float]]:
    """Exactly rounded products (fsum) and the scale |a_i| |b_j| of each."""
    rows = [a[i * k : (i + 1) * k] for i in range(m)]
    cols = [b[j::n] for j in range(n)]
    exact = [math.fsum(map(mul, r, c)) for r in rows for c in cols]
    scale = [math.hypot(*r) * math.hypot(*c) for r in rows for c in cols]
    return exact, scale


def time_it(fn: Strategy, args: tuple[list[float], list[float], int, int, int], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--k", type=int, default=784)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    m, k, n = args.m, args.k, args.n

    rng = random.Random(0)
    a = [rng.gauss(0.0, 1.0) for _ in range(m * k)]
    b = [rng.gauss(0.0, 1.0) for _ in range(k * n)]
    exact, scale = reference(a, b, m, k, n)
    # the index loops are slow: time them on 8 rows, the same inner sizes
    small_m = min(m, 8)
    a_small = a[: small_m * k]

    strategies: list[tuple[str, Strategy, bool]] = [
        ("index loops, i-j-k", index_loops_ijk, True),
        ("index loops, i-k-j (blog order)", index_loops_ikj, True),
        ("row scaling i-k-j, map", row_scaling_ikj, True),
        ("sum(map(mul)) over columns", sum_map_columns, False),
        ("math.dist, unnormalised", dist_unnormalised, False),
    ]
    if hasattr(math, "sumprod"):
        strategies.append(("math.sumprod (3.12+)", sumprod, False))
    strategies.append(("matgrad kernel", matgrad_kernel, False))

    print(
        f"Python {platform.python_version()} on {platform.machine()}; product ({m}x{k}) @ ({k}x{n}) = "
        f"{m * k * n / 1e6:.2f} M multiply-adds; float32 unit roundoff 2^-24 = {2.0**-24:.1e}"
    )
    print(f"{'strategy':34} {'M mult-add/s':>13} {'vs sum(map)':>12} {'max error / (|a||b|)':>21}")
    results = []
    for name, fn, small in strategies:
        if small:
            seconds = time_it(fn, (a_small, b, small_m, k, n), 1)
            macs = small_m * k * n
            out = fn(a_small, b, small_m, k, n)
            ref, sc = exact[: small_m * n], scale[: small_m * n]
        else:
            seconds = time_it(fn, (a, b, m, k, n), args.repeats)
            macs = m * k * n
            out = fn(a, b, m, k, n)
            ref, sc = exact, scale
        error = max(abs(x - y) / s for x, y, s in zip(out, ref, sc))
        results.append(
            {
                "strategy": name,
                "mmacs_per_s": macs / seconds / 1e6,
                "max_relative_error": error,
                "measured_on_rows": small_m if small else m,
            }
        )
    base = next(r["mmacs_per_s"] for r in results if r["strategy"].startswith("sum(map"))
    for r in results:
        print(
            f"{r['strategy']:34} {r['mmacs_per_s']:13.1f} {r['mmacs_per_s'] / base:11.2f}x "
            f"{r['max_relative_error']:21.1e}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"python": sys.version, "shape": [m, k, n], "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
