"""Micro-benchmarks: what matgrad's Python costs on top of the NumPy it calls.

Run:  python benchmarks/micro.py [--repeats 60] [--chain 100000] [--json out.json]
Tiny: python benchmarks/micro.py --repeats 3 --min-time 0.002 --chain 2000 --import-runs 2

Four sections, each printed as a Markdown table (and all of it to ``--json FILE``):

1. Per-op overhead, numpy backend, small float32 matrices: a (64,128) add, a (64,784)@(784,128)
   matmul and an (8,8)@(8,8) one (its overhead is not lost in the big product's jitter), relu of
   (64,128), linear (64,784) x (128,784) + (1,128), cross_entropy of (64,10) logits against
   int64 (64,1) targets, sum of (64,128); then linear forward + backward and a whole training step
   of 784-128-10 at batch 64 against ``reference_numpy.NumpyMLP.step``.
   Each matgrad statement and the NumPy statement that does the same arithmetic run in the same
   process, interleaved (matgrad, numpy, matgrad, numpy, ...) for ``--repeats`` rounds of
   ``timeit`` loops of at least ``--min-time`` seconds. The table gives, for each side, the best
   loop's microseconds per call (other jobs only ever add time, so the minimum is the steadiest
   estimate of the intrinsic cost), the overhead as the difference of the two minimums, and as
   a check the median of the paired per-round differences with its IQR (which a stall of the
   BLAS threads in a few rounds can swamp when the machine is busy). Three grad modes: ``no_grad``
   (inside ``matgrad.no_grad()``, inputs requiring grad, as parameters at inference), ``plain``
   (grad mode on, no input requires grad: data tensors) and ``grad`` (inputs require grad, so
   the op records a graph node). The NumPy side of cross_entropy in ``grad`` mode also computes
   the softmax that backward needs, as matgrad keeps it then.
2. ``import matgrad`` time in fresh interpreters (median of ``--import-runs``): alone (NumPy is
   not imported), after ``import numpy``, and ``import matgrad; matgrad.zeros(1, 1)`` (which
   imports NumPy for the default backend); plus the heaviest modules from ``-X importtime``.
3. Backward over a chain of ``--chain`` ops (``y = y * c`` on 1x1 tensors) in a fresh process per
   backend: forward and backward time, microseconds per node, and memory (RSS) of the graph and
   of the backward pass, and what is left after the graph is freed.
4. Optimiser overhead: ``SGD.step()`` over an MLP's parameters against the same in-place NumPy
   updates (``w -= float32(lr) * g``), and ``zero_grad()``.

``--backend array-api-numpy`` runs sections 1 and 4 on the Array API kernels serving NumPy
(``ArrayApiBackend("numpy")``, the code behind torch, cupy and array_api_strict) instead of the
hand-tuned numpy backend: the same NumPy arrays, so the overhead columns compare the two codes.

BLAS runs on one thread by default (``--threads``): the subject is the Python around the
kernels, and on a busy 2-core machine a 2-thread OpenBLAS call stalls for milliseconds whenever
one of its threads is descheduled, which swamps differences of a microsecond.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

# -- section 1: per-op overhead ------------------------------------------------------------------

BACKEND = "numpy"  # or "array-api-numpy" (--backend)


def _backend(mg: Any) -> Any:
    """The matgrad backend measured: numpy, or the Array API kernels over NumPy."""
    if BACKEND == "array-api-numpy":
        from matgrad.backends.array_api import ArrayApiBackend

        return ArrayApiBackend("numpy")
    return mg.backends.get("numpy")


def _ce_numpy(np: Any) -> tuple[Any, Any]:
    def ce(z: Any, y: Any) -> Any:
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        s = e.sum(axis=1, keepdims=True)
        return (np.log(s) + top - np.take_along_axis(z, y, axis=1)).mean()

    def ce_probs(z: Any, y: Any) -> Any:
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        s = e.sum(axis=1, keepdims=True)
        loss = (np.log(s) + top - np.take_along_axis(z, y, axis=1)).mean()
        return loss, e / s

    return ce, ce_probs


def op_cases(seed: int = 0) -> list[dict[str, Any]]:
    """Each case: name, shapes, the matgrad and NumPy statements, and their namespaces per mode."""
    import numpy as np

    import matgrad as mg

    be = _backend(mg)
    rng = np.random.default_rng(seed)
    F = mg.functional

    def arr(*shape: int) -> Any:
        return rng.standard_normal(shape, dtype=np.float32)

    def t(a: Any, grad: bool) -> Any:
        x = mg.Tensor2D.from_native(a, be)
        x.requires_grad = grad
        return x

    ce, ce_probs = _ce_numpy(np)
    a, b = arr(64, 128), arr(64, 128)
    x, w = arr(64, 784), arr(784, 128)
    s8, t8 = arr(8, 8), arr(8, 8)
    wl, bl = arr(128, 784), arr(1, 128)
    z, y = arr(64, 10), rng.integers(0, 10, size=(64, 1)).astype(np.int64)
    g = arr(64, 128)
    cases = [
        ("add", "(64,128) + (64,128)", "a + b", "a + b", {"a": a, "b": b}, ("a", "b")),
        ("matmul", "(64,784) @ (784,128)", "x @ w", "x @ w", {"x": x, "w": w}, ("x", "w")),
        # the same call where the kernel is tiny: the overhead without the big product's jitter
        ("matmul", "(8,8) @ (8,8)", "s @ t", "s @ t", {"s": s8, "t": t8}, ("s", "t")),
        ("relu", "(64,128)", "a.relu()", "np.maximum(a, 0.0)", {"a": a}, ("a",)),
        (
            "linear",
            "(64,784), W (128,784), b (1,128)",
            "F.linear(x, w, b)",
            "x @ w.T + b",
            {"x": x, "w": wl, "b": bl},
            ("x", "w", "b"),
        ),
        ("cross_entropy", "(64,10), targets (64,1)", "F.cross_entropy(z, y)", "ce(z, y)", {"z": z, "y": y}, ("z",)),
        ("sum", "(64,128) -> (1,1)", "a.sum()", "a.sum(keepdims=True)", {"a": a}, ("a",)),
    ]
    out = []
    for name, shapes, mg_stmt, np_stmt, data, floats in cases:
        for mode in ("no_grad", "plain", "grad"):
            grad = mode != "plain"
            mg_ns = {k: (t(v, grad and k in floats) if k in floats else t(v, False)) for k, v in data.items()}
            mg_ns.update(F=F, mg=mg)
            np_ns = dict(data, np=np, ce=ce_probs if (name == "cross_entropy" and mode == "grad") else ce)
            case = {"op": name, "shapes": shapes, "mode": mode, "matgrad": mg_stmt, "numpy": np_stmt}
            out.append({**case, "mg_ns": mg_ns, "np_ns": np_ns})
    # linear forward + backward: W and b require grad, x does not (a first layer)
    mg_ns = {"x": t(x, False), "w": t(wl.copy(), True), "b": t(bl.copy(), True), "g": t(g, False), "F": F}
    out.append(
        {
            "op": "linear fwd+bwd",
            "shapes": "(64,784), W (128,784), b (1,128)",
            "mode": "grad",
            "matgrad": "w.grad = None; b.grad = None; F.linear(x, w, b).backward(g)",
            "numpy": "y = x @ w.T + b; gw = g.T @ x; gb = g.sum(axis=0, keepdims=True)",
            "mg_ns": mg_ns,
            "np_ns": {"x": x, "w": wl, "b": bl, "g": g, "np": np},
        }
    )
    out.append(_train_step_case(mg, np, rng))
    return out


def _train_step_case(mg: Any, np: Any, rng: Any) -> dict[str, Any]:
    import reference_numpy as ref

    sizes = [784, 128, 10]
    params = ref.init_params(sizes, 0)
    be = _backend(mg)
    model = mg.nn.MLP(sizes, backend=be)
    with mg.no_grad():
        for lin, (w, b) in zip([m for m in model if isinstance(m, mg.nn.Linear)], params):
            lin.weight.copy_(mg.Tensor2D.from_native(w, be))
            lin.bias.copy_(mg.Tensor2D.from_native(b.reshape(1, -1), be))
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    xb = rng.random((64, 784), dtype=np.float32)
    yb = rng.integers(0, 10, size=64).astype(np.int64)
    mg_ns = {
        "model": model,
        "opt": opt,
        "F": mg.functional,
        "xb": mg.Tensor2D.from_native(xb, be),
        "yb": mg.Tensor2D.from_native(yb.reshape(-1, 1), be),
    }
    return {
        "op": "train step 784-128-10",
        "shapes": "batch 64: forward, loss, zero_grad, backward, SGD step",
        "mode": "grad",
        "matgrad": "loss = F.cross_entropy(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()",
        "numpy": "net.step(xb, yb)",
        "mg_ns": mg_ns,
        "np_ns": {"net": ref.NumpyMLP(params, 0.1, 64), "xb": xb, "yb": yb},
    }


def _calibrate(timer: timeit.Timer, min_time: float) -> int:
    """Calls per timing loop so that one loop takes about ``min_time`` seconds."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= min_time / 8 or number >= 1 << 20:
            return max(1, round(number * min_time / max(elapsed, 1e-9)))
        number *= 2


def measure_case(case: dict[str, Any], repeats: int, min_time: float) -> dict[str, Any]:
    import matgrad as mg

    mg_timer = timeit.Timer(case["matgrad"], globals=case["mg_ns"])
    np_timer = timeit.Timer(case["numpy"], globals=case["np_ns"])
    grad_off = case["mode"] == "no_grad"

    def run_mg(number: int) -> float:
        if grad_off:
            with mg.no_grad():
                return mg_timer.timeit(number) / number
        return mg_timer.timeit(number) / number

    number = _calibrate(np_timer, min_time)
    if grad_off:
        with mg.no_grad():
            mg_number = _calibrate(mg_timer, min_time)
    else:
        mg_number = _calibrate(mg_timer, min_time)
    t_mg, t_np = [], []
    for _ in range(repeats):
        t_mg.append(run_mg(mg_number))
        t_np.append(np_timer.timeit(number) / number)
    diffs = [a - b for a, b in zip(t_mg, t_np)]
    return {
        "matgrad_min_us": min(t_mg) * 1e6,
        "numpy_min_us": min(t_np) * 1e6,
        "overhead_min_us": (min(t_mg) - min(t_np)) * 1e6,
        "op": case["op"],
        "shapes": case["shapes"],
        "mode": case["mode"],
        "matgrad_stmt": case["matgrad"],
        "numpy_stmt": case["numpy"],
        "matgrad_us": statistics.median(t_mg) * 1e6,
        "numpy_us": statistics.median(t_np) * 1e6,
        "overhead_us": statistics.median(diffs) * 1e6,
        "overhead_iqr_us": [q * 1e6 for q in _bench.quartiles(diffs)[::2]],
        "calls_per_timing": [mg_number, number],
    }


# -- section 2: import time ----------------------------------------------------------------------

_IMPORT_SNIPPETS = {
    "import matgrad (numpy not imported)": (
        "import time, sys; t = time.perf_counter(); import matgrad; t = time.perf_counter() - t; "
        "print(t, 'numpy' in sys.modules)"
    ),
    "import matgrad after import numpy": (
        "import sys, time, numpy; t = time.perf_counter(); import matgrad; t = time.perf_counter() - t; "
        "print(t, 'numpy' in sys.modules)"
    ),
    "import matgrad; matgrad.zeros(1, 1)": (
        "import time, sys; t = time.perf_counter(); import matgrad; matgrad.zeros(1, 1); "
        "t = time.perf_counter() - t; print(t, 'numpy' in sys.modules)"
    ),
    "import numpy (for scale)": (
        "import time, sys; t = time.perf_counter(); import numpy; t = time.perf_counter() - t; "
        "print(t, 'numpy' in sys.modules)"
    ),
}


def import_times(runs: int, threads: int) -> dict[str, Any]:
    """Median ``import`` times in fresh interpreters, with and without matgrad's bytecode cached.

    "no bytecode cache" keeps ``PYTHONDONTWRITEBYTECODE`` as set here and uses whatever
    ``__pycache__`` sits beside the sources (none for a fresh checkout: every matgrad module is
    compiled on each import). "bytecode cached" points ``PYTHONPYCACHEPREFIX`` at a private
    folder, warmed by one untimed run, as after ``pip install`` (which compiles the package).
    """
    base = _bench.thread_env(threads)
    base.pop("MATGRAD_BACKEND", None)
    cold = dict(base, PYTHONDONTWRITEBYTECODE="1")
    cold.pop("PYTHONPYCACHEPREFIX", None)
    cache = tempfile.mkdtemp(prefix="matgrad-pycache-")
    warm = dict(base, PYTHONPYCACHEPREFIX=cache)
    warm.pop("PYTHONDONTWRITEBYTECODE", None)
    envs = {"bytecode cached": warm, "no bytecode cache": cold}
    samples: dict[tuple[str, str], list[float]] = {}
    pulls_numpy: dict[str, bool] = {}
    try:
        for code in _IMPORT_SNIPPETS.values():  # warm the private cache
            subprocess.run([sys.executable, "-c", code], env=warm, capture_output=True, text=True, check=True)
        for _ in range(runs):  # interleaved: one of each per round
            for cache_state, env in envs.items():
                for name, code in _IMPORT_SNIPPETS.items():
                    cmd = [sys.executable, "-c", code]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    seconds, has_numpy = out.stdout.split()
                    samples.setdefault((name, cache_state), []).append(float(seconds))
                    pulls_numpy[name] = has_numpy == "True"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    rows = [
        {
            "what": name,
            "bytecode": cache_state,
            "median_ms": statistics.median(v) * 1e3,
            "min_ms": min(v) * 1e3,
            "numpy_loaded": pulls_numpy[name],
        }
        for (name, cache_state), v in samples.items()
    ]
    matgrad_cache = os.path.isdir(os.path.join(_bench.REPO, "matgrad", "__pycache__"))
    # where the time goes: -X importtime of `import matgrad` (cumulative microseconds per module)
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import matgrad"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        "runs": runs,
        "rows": rows,
        "matgrad_pycache_beside_sources": matgrad_cache,
        "heaviest_modules_by_self_time": heaviest(out.stderr),
    }


def heaviest(importtime: str, top: int = 12) -> list[dict[str, Any]]:
    """The modules that ``import matgrad`` itself loads (not site's start-up imports), by self time.

    ``-X importtime`` prints each module after its own imports, indented by depth: matgrad's
    subtree is the run of deeper lines just before the top-level ``matgrad`` line.
    """
    entries = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|")
        depth = len(name) - len(name.lstrip(" "))
        entries.append((depth, name.strip(), int(self_us), int(cum_us)))
    end = next((i for i, e in enumerate(entries) if e[1] == "matgrad"), None)
    if end is None:
        return []
    start = end
    while start > 0 and entries[start - 1][0] > entries[end][0]:
        start -= 1
    subtree = sorted(entries[start : end + 1], key=lambda e: -e[2])
    return [{"module": n, "self_ms": su / 1e3, "cumulative_ms": cu / 1e3} for _, n, su, cu in subtree[:top]]


# -- section 3: a long chain -----------------------------------------------------------------------


def chain_worker(n: int, backend: str) -> dict[str, Any]:
    import gc

    import matgrad as mg

    x = mg.Tensor2D([[1.0]], requires_grad=True, backend=backend)
    c = mg.Tensor2D([[1.0000001]], backend=backend)
    gc.collect()
    objects0 = len(gc.get_objects())
    rss0 = _bench.rss_mib()
    t0 = time.perf_counter()
    y = x
    for _ in range(n):
        y = y * c
    t_fwd = time.perf_counter() - t0
    rss_graph = _bench.rss_mib()
    _bench.reset_peak_rss()
    t0 = time.perf_counter()
    y.backward()
    t_bwd = time.perf_counter() - t0
    peak_bwd = _bench.peak_rss_mib()
    rss_after_bwd = _bench.rss_mib()
    grad = x.grad.item()
    t0 = time.perf_counter()
    del y
    gc.collect()
    t_free = time.perf_counter() - t0
    rss_freed = _bench.rss_mib()
    objects_left = len(gc.get_objects()) - objects0
    return {
        "backend": backend,
        "ops": n,
        "forward_s": t_fwd,
        "backward_s": t_bwd,
        "free_s": t_free,
        "forward_us_per_op": t_fwd / n * 1e6,
        "backward_us_per_node": t_bwd / n * 1e6,
        "graph_mib": rss_graph - rss0,
        "graph_bytes_per_op": (rss_graph - rss0) * 2**20 / n,
        "backward_peak_over_graph_mib": peak_bwd - rss_graph,
        "after_backward_over_start_mib": rss_after_bwd - rss0,
        "after_free_over_start_mib": rss_freed - rss0,
        "x_grad": grad,
        "gc_objects_left_after_del": objects_left,
    }


def chain(n: int, backends: list[str], threads: int) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        cmd = [sys.executable, os.path.abspath(__file__), "--chain-worker", backend, "--chain", str(n)]
        out = subprocess.run(cmd, env=_bench.thread_env(threads), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            rows.append({"backend": backend, "ops": n, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


# -- section 4: optimiser ------------------------------------------------------------------------------


def optimizer_overhead(repeats: int, min_time: float) -> list[dict[str, Any]]:
    import numpy as np

    import matgrad as mg

    be = _backend(mg)
    rows = []
    for sizes in ([784, 128, 10], [784, 256, 128, 10]):
        model = mg.nn.MLP(sizes, backend=be)
        params = list(model.parameters())
        rng = np.random.default_rng(0)
        grads = [rng.standard_normal(p.shape, dtype=np.float32) * 1e-6 for p in params]
        for p, g in zip(params, grads):
            p.grad = mg.Tensor2D.from_native(g, be)
        opt = mg.optim.SGD(params, lr=0.1)
        raw = [(p.numpy().copy(), g) for p, g in zip(params, grads)]
        lr = np.float32(0.1)
        step = {
            "op": f"SGD.step, {'-'.join(map(str, sizes))} ({len(params)} tensors)",
            "shapes": "",
            "mode": "grad",
            "matgrad": "opt.step()",
            "numpy": "for w, g in raw:\n    w -= lr * g",
            "mg_ns": {"opt": opt},
            "np_ns": {"raw": raw, "lr": lr},
        }
        r = measure_case(step, repeats, min_time)
        r["per_tensor_overhead_us"] = r["overhead_min_us"] / len(params)
        rows.append(r)
        zero = {
            "op": f"zero_grad, {'-'.join(map(str, sizes))} (grads set each call)",
            "shapes": "",
            "mode": "grad",
            "matgrad": "for p, g in pg:\n    p.grad = g\nopt.zero_grad()",
            "numpy": "for p, g in pg:\n    p.grad = g",
            "mg_ns": {"opt": opt, "pg": [(p, p.grad) for p in params]},
            "np_ns": {"pg": [(p, p.grad) for p in params]},
        }
        rows.append(measure_case(zero, repeats, min_time))
    return rows


# -- output -----------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print(f"Measured {_bench.describe_machine(report['machine'])}; load average at end {report['loadavg_end']}")
    print(f"{report['threads']} BLAS threads; {report['repeats']} interleaved rounds of >= {report['min_time']} s each")
    print(f"\n### Per-op overhead, {report.get('backend', 'numpy')} backend (microseconds per call)\n")
    rows = [
        [
            r["op"],
            r["mode"],
            r["shapes"],
            f"{r['numpy_min_us']:.1f}",
            f"{r['matgrad_min_us']:.1f}",
            f"{r['overhead_min_us']:+.1f}",
            f"{r['overhead_us']:+.1f} ({r['overhead_iqr_us'][0]:+.1f} to {r['overhead_iqr_us'][1]:+.1f})",
        ]
        for r in report["ops"]
    ]
    print(
        _bench.markdown_table(
            [
                "op",
                "mode",
                "shapes",
                "numpy, best (us)",
                "matgrad, best (us)",
                "overhead, best-of (us)",
                "overhead, median paired (IQR)",
            ],
            rows,
            "lllrrrr",
        )
    )
    imp = report.get("import")
    if imp:
        print(f"\n### Import time (fresh interpreters, median of {imp['runs']})\n")
        print(
            _bench.markdown_table(
                ["what is timed", "matgrad bytecode", "median (ms)", "min (ms)", "numpy loaded after"],
                [
                    [r["what"], r["bytecode"], f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", r["numpy_loaded"]]
                    for r in imp["rows"]
                ],
                "llrrl",
            )
        )
        print("\nHeaviest modules in `python -X importtime -c 'import matgrad'` (one run, no bytecode cache):\n")
        print(
            _bench.markdown_table(
                ["module", "self (ms)", "cumulative (ms)"],
                [
                    [m["module"], f"{m['self_ms']:.1f}", f"{m['cumulative_ms']:.1f}"]
                    for m in imp["heaviest_modules_by_self_time"]
                ],
            )
        )
    ch = report.get("chain")
    if ch:
        print(f"\n### Backward over a chain of {ch[0]['ops']} ops (y = y * c, 1x1), fresh process per backend\n")
        rows = []
        for r in ch:
            if "error" in r:
                rows.append([r["backend"], "FAILED: " + " ".join(r["error"]), "", "", "", "", "", "", ""])
                continue
            rows.append(
                [
                    r["backend"],
                    f"{r['forward_s']:.2f} ({r['forward_us_per_op']:.1f} us/op)",
                    f"{r['backward_s']:.2f} ({r['backward_us_per_node']:.1f} us/node)",
                    f"{r['graph_mib']:.1f} ({r['graph_bytes_per_op']:.0f} B/op)",
                    f"{r['backward_peak_over_graph_mib']:+.1f}",
                    f"{r['after_backward_over_start_mib']:+.1f}",
                    f"{r['after_free_over_start_mib']:+.1f}",
                    f"{r['gc_objects_left_after_del']:+d}",
                    f"{r['free_s']:.2f}",
                ]
            )
        print(
            _bench.markdown_table(
                [
                    "backend",
                    "forward (s)",
                    "backward (s)",
                    "graph RSS (MiB)",
                    "backward peak over graph (MiB)",
                    "RSS after backward (MiB)",
                    "RSS after del (MiB)",
                    "objects left after del",
                    "del (s)",
                ],
                rows,
            )
        )
    opt = report.get("optimizer")
    if opt:
        print("\n### Optimiser overhead (microseconds per call)\n")
        rows = [
            [
                r["op"],
                f"{r['numpy_min_us']:.1f}",
                f"{r['matgrad_min_us']:.1f}",
                f"{r['overhead_min_us']:+.1f}",
                f"{r['overhead_us']:+.1f}",
            ]
            for r in opt
        ]
        header = ["call", "numpy, best (us)", "matgrad, best (us)", "overhead, best-of (us)", "overhead, median paired"]
        print(_bench.markdown_table(header, rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=60, help="interleaved rounds per op (default 60)")
    p.add_argument(
        "--min-time",
        type=float,
        default=0.005,
        help="seconds per timing loop (default 0.005: short loops often fit between other jobs' time slices)",
    )
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: see the docstring)")
    p.add_argument("--import-runs", type=int, default=15, help="fresh interpreters per import variant (0: skip)")
    p.add_argument("--chain", type=int, default=100_000, help="ops in the backward chain (0: skip)")
    p.add_argument("--chain-backends", default="numpy,python", help="backends for the chain (default numpy,python)")
    p.add_argument("--skip-ops", action="store_true", help="skip the per-op and optimiser sections")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument(
        "--backend",
        choices=("numpy", "array-api-numpy"),
        default="numpy",
        help="matgrad side of sections 1 and 4: the numpy backend, or the Array API kernels over NumPy",
    )
    p.add_argument("--chain-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    global BACKEND
    BACKEND = args.backend
    _bench.set_threads(args.threads)
    if args.chain_worker:
        print(json.dumps(chain_worker(args.chain, args.chain_worker)))
        return 0
    report: dict[str, Any] = {
        "benchmark": "micro",
        "machine": _bench.machine_info(),
        "threads": args.threads,
        "repeats": args.repeats,
        "min_time": args.min_time,
        "backend": args.backend,
        "ops": [],
    }
    if not args.skip_ops:
        for case in op_cases():
            report["ops"].append(measure_case(case, args.repeats, args.min_time))
            r = report["ops"][-1]
            print(f"{r['op']:>24} {r['mode']:8} {r['overhead_min_us']:+8.1f} us", file=sys.stderr, flush=True)
    if args.import_runs > 0:
        report["import"] = import_times(args.import_runs, args.threads)
    if args.chain > 0:
        report["chain"] = chain(args.chain, [b for b in args.chain_backends.split(",") if b], args.threads)
    if not args.skip_ops:
        report["optimizer"] = optimizer_overhead(args.repeats, args.min_time)
    report["loadavg_end"] = _bench.loadavg()
    print_report(report)
    if args.json:
        _bench.write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
