"""One MNIST training epoch in matgrad, hand-written NumPy and PyTorch, measured side by side.

Run:  python benchmarks/train_compare.py --data ../shared/data/mnist [--repeats 5] [--json out.json]
Tiny: python benchmarks/train_compare.py --limit 640 --repeats 1 --python-samples 128

Every framework trains the same MLP (784-128-10 and 784-256-128-10 by default: Linear layers,
ReLU, mean cross-entropy from logits, plain SGD lr 0.1, batch 64, float32) from the *same*
initial weights (PyTorch's default init, U(-1/sqrt(in), 1/sqrt(in)) for weights and biases,
drawn once per repeat with NumPy and copied into each framework) over the *same* data order
(one permutation per repeat, drawn from a seeded NumPy generator by each run). What is timed is
one epoch of the training loop only:

    perm = rng.permutation(n)                        # shuffle
    for each batch of 64 indices idx in perm:        # the last batch has n % 64 rows
        xb, yb = gather(idx)                          # batch gather
        loss = cross_entropy(model(xb), yb)          # forward (the loss is never .item()'d)
        zero_grad(); loss.backward(); step()         # backward and update

- matgrad-numpy: ``mg.nn.MLP(sizes)``, ``mg.functional.cross_entropy``, ``mg.optim.SGD``; the
  gather (``--gather wrap``, default) is ``Tensor2D.from_native(X[idx])`` on NumPy arrays, the same fancy indexing
  as the reference, so the difference measures matgrad itself; ``--gather index`` indexes a
  Tensor2D instead (``X_t[idx]``, what a user would write).
- matgrad-compiled: the same step wrapped in ``matgrad.compile`` (captured on its first calls,
  replayed after; the ``--gather wrap`` loop only).
- numpy-reference: ``benchmarks/reference_numpy.py`` (manual backward, buffers reused, in place).
- numpy-reference-fresh (on request): the same reference with ``fresh=True``, every result a new
  array and no gradient scaled in place (the reference of the performance issue's wording).
- torch: ``torch.nn.Sequential(Linear, ReLU, ..., Linear)``, ``F.cross_entropy``,
  ``torch.optim.SGD``; the gather is tensor indexing ``X_t[perm_t[lo:hi]]`` (no DataLoader).
- matgrad-torch (on request, ``--frameworks``): matgrad's torch backend on the CPU (the Array API
  kernels over PyTorch); the gather is the kernel-level ``take`` of a native index, as ``DataLoader``.
- matgrad-array-api-numpy (on request): the same Array API kernels serving NumPy
  (``ArrayApiBackend("numpy")``, through ``array_api_compat.numpy``), gathered as matgrad-numpy:
  what the hand-tuned numpy backend would cost if it were the generic code.
- matgrad-python: the pure-Python backend on a subset (``--python-samples``, default 5,000: the
  first rows of the permutation, gathered with ``X_t[list_of_rows]``), the epoch time scaled to
  ``--extrapolate-to`` (default 60,000) samples. Run ``--python-repeats`` times (default once).

Each run is a fresh subprocess (threads capped with OMP/MKL/OPENBLAS_NUM_THREADS before NumPy or
torch is imported, and ``torch.set_num_threads``), so each reports its own peak memory. Runs
alternate between frameworks (A B C A B C ...) for ``--repeats`` rounds; each run first warms up
for ``--warmup`` batches and then resets its weights. The first round runs ``--growth-epochs``
epochs (only the first is timed into the results) and records RSS after each, to show whether
memory grows from epoch to epoch. Medians, quartiles and the paired ratios (per round, then the
median) are printed as Markdown tables, for wall time and for the process CPU time of the
epoch (user + system, all threads: steadier than wall time when other jobs share the cores,
but it counts BLAS threads spinning while they wait); ``--json FILE`` writes everything. Test accuracy after
the epoch is computed with the same NumPy forward pass for every framework.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

FRAMEWORKS = ("matgrad-numpy", "matgrad-compiled", "numpy-reference", "torch")
EXTRA = ("matgrad-torch", "matgrad-array-api-numpy", "numpy-reference-fresh")  # run only when --frameworks names them
PYTHON = "matgrad-python"
DEFAULT_MODELS = "784-128-10,784-256-128-10"


# ---------------------------------------------------------------------------------------------
# the worker: one framework, one model, one fresh process
# ---------------------------------------------------------------------------------------------


def _matgrad_trainer(
    args: argparse.Namespace, backend: Any, x: Any, y: Any, compiled: bool = False
) -> dict[str, Callable[..., Any]]:
    import numpy as np

    import matgrad as mg
    from matgrad import Tensor2D

    if backend == "matgrad-array-api-numpy":
        from matgrad.backends.array_api import ArrayApiBackend

        backend = ArrayApiBackend("numpy")
    mg.set_backend(backend)
    be = mg.backends.get(backend)
    if be.name == "torch":
        import torch

        torch.set_num_threads(args.threads)
    F = mg.functional
    model = mg.nn.MLP(args.sizes)
    linears = [m for m in model if isinstance(m, mg.nn.Linear)]
    opt = mg.optim.SGD(model.parameters(), lr=args.lr)
    bs = args.batch_size

    def load(params: Any) -> None:
        with mg.no_grad():
            for lin, (w, b) in zip(linears, params):
                lin.weight.copy_(mg.Tensor2D(w, backend=be))
                lin.bias.copy_(mg.Tensor2D(b.reshape(1, -1), backend=be))

    def params() -> Any:
        return [(np.asarray(lin.weight.numpy()), np.asarray(lin.bias.numpy())) for lin in linears]

    if be.name == "torch":  # data on the backend once; each batch a kernel-level take of a native index
        x_n, y_n = be.from_array(x, "float32"), be.from_array(y.reshape(-1, 1), "int64")

        def epoch(perm: Any) -> None:
            order = be.indices(be.from_array(perm.reshape(1, -1), "int64"))
            for lo in range(0, len(perm), bs):
                idx = order[lo : min(lo + bs, len(perm))]
                xb = Tensor2D.from_native(be.take(x_n, idx, slice(None)), be)
                yb = Tensor2D.from_native(be.take(y_n, idx, slice(None)), be)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()

    elif backend == "python":
        # x, y are the subset already (rows in dataset order); `order` lists subset positions.
        x_t = mg.Tensor2D(x, backend="python")
        y_t = mg.Tensor2D(y.reshape(-1, 1), dtype="int64", backend="python")

        def epoch(order: Any) -> None:
            order = order.tolist()
            for lo in range(0, len(order), bs):
                rows = order[lo : lo + bs]
                xb, yb = x_t[rows], y_t[rows]
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()

    elif args.gather == "index":
        x_t, y_t = Tensor2D.from_native(x, be), Tensor2D.from_native(y.reshape(-1, 1), be)

        def epoch(perm: Any) -> None:
            for lo in range(0, len(perm), bs):
                idx = perm[lo : lo + bs]
                xb, yb = x_t[idx], y_t[idx]
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()

    else:
        y2 = y.reshape(-1, 1)

        def train_step(xb: Any, yb: Any) -> Any:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        step = mg.compile(train_step) if compiled else train_step

        def epoch(perm: Any) -> None:
            for lo in range(0, len(perm), bs):
                idx = perm[lo : lo + bs]
                step(Tensor2D.from_native(x[idx], be), Tensor2D.from_native(y2[idx], be))

    return {"load": load, "params": params, "epoch": epoch}


def _reference_trainer(args: argparse.Namespace, x: Any, y: Any, fresh: bool = False) -> dict[str, Callable[..., Any]]:
    import reference_numpy as ref

    model = ref.NumpyMLP(ref.init_params(args.sizes, 0), args.lr, args.batch_size, fresh=fresh)
    bs = args.batch_size

    def epoch(perm: Any) -> None:
        step = model.step
        for lo in range(0, len(perm), bs):
            idx = perm[lo : lo + bs]
            step(x[idx], y[idx])

    return {"load": model.load, "params": model.params, "epoch": epoch}


def _torch_trainer(args: argparse.Namespace, x: Any, y: Any) -> dict[str, Callable[..., Any]]:
    import torch

    torch.set_num_threads(args.threads)
    sizes = args.sizes
    layers: list[Any] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    cross_entropy = torch.nn.functional.cross_entropy
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    bs = args.batch_size

    def load(params: Any) -> None:
        with torch.no_grad():
            for lin, (w, b) in zip(linears, params):
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b.reshape(-1)))

    def params() -> Any:
        return [(lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()) for lin in linears]

    def epoch(perm: Any) -> None:
        perm_t = torch.from_numpy(perm)
        for lo in range(0, len(perm), bs):
            idx = perm_t[lo : lo + bs]
            xb, yb = x_t[idx], y_t[idx]
            loss = cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return {"load": load, "params": params, "epoch": epoch}


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.worker`` for ``args.epochs`` epochs and return times, memory and accuracy."""
    import gc

    import numpy as np
    import reference_numpy as ref

    fw = args.worker
    cache = args.cache
    x = np.load(os.path.join(cache, "x_train.npy"))
    y = np.load(os.path.join(cache, "y_train.npy"))
    x_test = np.load(os.path.join(cache, "x_test.npy"))
    y_test = np.load(os.path.join(cache, "y_test.npy"))
    n_total = len(x)
    init = ref.init_params(args.sizes, args.init_seed)

    python_order = None
    if fw == PYTHON:
        n_sub = min(args.python_samples, n_total)
        first = np.random.default_rng(args.seed).permutation(n_total)[:n_sub]
        subset = np.sort(first)
        python_order = np.searchsorted(subset, first)  # the permutation's order, as subset positions
        x, y = x[subset], y[subset]
        trainer = _matgrad_trainer(args, "python", x, y)
        n = n_sub
    elif fw in ("matgrad-numpy", "matgrad-compiled"):
        trainer = _matgrad_trainer(args, "numpy", x, y, compiled=fw == "matgrad-compiled")
        n = n_total
    elif fw == "matgrad-torch":
        trainer = _matgrad_trainer(args, "torch", x, y)
        n = n_total
    elif fw == "matgrad-array-api-numpy":
        trainer = _matgrad_trainer(args, fw, x, y)
        n = n_total
    elif fw in ("numpy-reference", "numpy-reference-fresh"):
        trainer = _reference_trainer(args, x, y, fresh=fw == "numpy-reference-fresh")
        n = n_total
    elif fw == "torch":
        trainer = _torch_trainer(args, x, y)
        n = n_total
    else:
        raise SystemExit(f"unknown framework {fw!r}")

    load, epoch = trainer["load"], trainer["epoch"]
    load(init)
    if args.warmup > 0:
        if python_order is not None:
            epoch(python_order[: args.warmup * args.batch_size])
        else:
            epoch(np.random.default_rng(args.seed + 10**6).permutation(n)[: args.warmup * args.batch_size])
        load(init)

    gc.collect()
    rss_before = _bench.rss_mib()
    peak_before = _bench.peak_rss_mib()
    can_reset = _bench.reset_peak_rss()
    rng = np.random.default_rng(args.seed)
    times, cpu_times, rss_after, loop_peak = [], [], [], None
    for e in range(args.epochs):
        if python_order is not None:
            order = python_order
            c0, t0 = time.process_time(), time.perf_counter()
            epoch(order)
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            epoch(rng.permutation(n))  # the shuffle is inside the timed region
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if e == 0:
            loop_peak = _bench.peak_rss_mib()
        rss_after.append(_bench.rss_mib())
    acc = ref.accuracy(trainer["params"](), x_test, y_test)
    return {
        "framework": fw,
        "model": "-".join(map(str, args.sizes)),
        "samples": n,
        "epoch_times": times,
        "epoch_cpu_times": cpu_times,
        "rss_before_mib": rss_before,
        "rss_after_epoch_mib": rss_after,
        "peak_rss_mib": max(peak_before, loop_peak or 0.0),
        "loop_peak_mib": loop_peak if can_reset else None,
        "test_accuracy": acc,
    }


# ---------------------------------------------------------------------------------------------
# the orchestrator: data cache, alternation, statistics, tables
# ---------------------------------------------------------------------------------------------


def _worker_command(args: argparse.Namespace, fw: str, sizes: list[int], seed: int, epochs: int) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--cache", args.cache]
    cmd += ["--models", "-".join(map(str, sizes)), "--seed", str(seed), "--init-seed", str(seed)]
    cmd += ["--epochs", str(epochs), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    cmd += ["--lr", str(args.lr), "--threads", str(args.threads), "--gather", args.gather]
    cmd += ["--python-samples", str(args.python_samples)]
    return cmd


def _spawn(args: argparse.Namespace, fw: str, sizes: list[int], seed: int, epochs: int) -> dict[str, Any]:
    cmd = _worker_command(args, fw, sizes, seed, epochs)
    load = _bench.loadavg()
    proc = subprocess.run(
        cmd, env=_bench.thread_env(args.threads), capture_output=True, text=True, timeout=args.timeout, check=False
    )
    result_line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or result_line is None:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"train_compare: the {fw} run of {'-'.join(map(str, sizes))} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(result_line[len("RESULT ") :])
    result["loadavg_before"] = load
    return result


def _prepare_cache(args: argparse.Namespace) -> int:
    """MNIST decoded once into .npy files the workers load (identical memory baseline for all)."""
    import numpy as np
    import reference_numpy as ref

    x, y, x_test, y_test = ref.load_arrays(args.data, args.limit)
    for name, arr in (("x_train", x), ("y_train", y), ("x_test", x_test), ("y_test", y_test)):
        np.save(os.path.join(args.cache, name + ".npy"), np.ascontiguousarray(arr))
    return len(x)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 100 else f"{seconds:.0f}"


def _tables(report: dict[str, Any]) -> str:
    rows = []
    for entry in report["results"]:
        t = entry["epoch_time"]
        extra = " (extrapolated)" if entry["framework"] == PYTHON else ""
        growth = entry.get("rss_growth_mib")
        loop = entry.get("loop_increment_mib")
        rows.append(
            [
                entry["model"],
                entry["framework"] + extra,
                _fmt_s(t["median"]),
                f"{_fmt_s(t['q1'])}-{_fmt_s(t['q3'])}",
                f"{_fmt_s(t['min'])}-{_fmt_s(t['max'])}",
                t["n"],
                _fmt_s(entry["epoch_cpu_time"]["median"]),
                f"{entry['peak_rss_mib']:.0f}",
                "n/a" if loop is None else f"{loop:.1f}",
                "n/a" if growth is None else f"{growth:+.1f}",
                f"{entry['test_accuracy']:.4f}",
            ]
        )
    header = [
        "model",
        "framework",
        "median epoch (s)",
        "IQR (s)",
        "min-max (s)",
        "runs",
        "median CPU (s)",
        "peak RSS (MiB)",
        "loop peak over start (MiB)",
        "RSS growth epoch 1 to last (MiB)",
        "test accuracy",
    ]
    out = [_bench.markdown_table(header, rows, "llrrrrrrrrr")]
    ratio_rows = []
    for model, ratios in report["ratios"].items():
        for name, r in ratios.items():
            values = ", ".join(f"{v:.2f}" for v in r["values"])
            ratio_rows.append(
                [
                    model,
                    name,
                    f"{r['median']:.2f}x",
                    f"{r['min']:.2f}-{r['max']:.2f}",
                    values,
                    f"{r['cpu_median']:.2f}x",
                    f"{r['cpu_min']:.2f}-{r['cpu_max']:.2f}",
                ]
            )
    if ratio_rows:
        out.append("")
        out.append(
            _bench.markdown_table(
                ["model", "paired ratio", "median", "min-max", "per round", "CPU-time median", "CPU min-max"],
                ratio_rows,
                "llrrlrr",
            )
        )
    return "\n".join(out)


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    frameworks = [f for f in args.frameworks if f != PYTHON]
    notes = []
    if "torch" in frameworks and importlib.util.find_spec("torch") is None:
        frameworks.remove("torch")
        notes.append("torch is not installed: PyTorch skipped (pip install torch==2.13.0)")
        print("note: " + notes[-1], file=sys.stderr)
    info = _bench.machine_info()
    # a SIGTERM (timeout, kill) unwinds through `finally`, so the decoded data cache is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="matgrad-bench-")
    args.cache = tmp
    runs: list[dict[str, Any]] = []
    try:
        n_train = _prepare_cache(args)
        for r in range(args.repeats):
            seed = args.seed + r
            epochs = max(1, args.growth_epochs) if r == 0 else 1
            for sizes in args.sizes_list:
                for fw in frameworks:
                    res = _spawn(args, fw, sizes, seed, epochs)
                    res["round"] = r
                    runs.append(res)
                    print(
                        f"[round {r + 1}/{args.repeats}] {res['model']:>16} {fw:16} "
                        f"{res['epoch_times'][0]:8.3f} s  acc {res['test_accuracy']:.4f}  "
                        f"peak {res['peak_rss_mib']:.0f} MiB  load {res['loadavg_before']}",
                        file=sys.stderr,
                        flush=True,
                    )
        if PYTHON in args.frameworks and args.python_samples > 0:
            py_models = args.sizes_list if args.python_all_models else args.sizes_list[:1]
            for r in range(args.python_repeats):
                for sizes in py_models:
                    res = _spawn(args, PYTHON, sizes, args.seed + r, 1)
                    res["round"] = r
                    runs.append(res)
                    scaled = res["epoch_times"][0] * args.extrapolate_to / res["samples"]
                    print(
                        f"[python {r + 1}/{args.python_repeats}] {res['model']:>16} {res['samples']} samples in "
                        f"{res['epoch_times'][0]:.1f} s -> {scaled:.0f} s per {args.extrapolate_to}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = _bench.loadavg()
    return _aggregate(args, runs, info, notes, n_train)


def _aggregate(
    args: argparse.Namespace, runs: list[dict[str, Any]], info: dict[str, Any], notes: list[str], n_train: int
) -> dict[str, Any]:
    import platform

    versions = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "matgrad"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    results = []
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        by_key.setdefault((run["model"], run["framework"]), []).append(run)
    for (model, fw), group in by_key.items():
        scale = args.extrapolate_to / group[0]["samples"] if fw == PYTHON else 1.0
        times = [g["epoch_times"][0] * scale for g in group]
        cpu = [g["epoch_cpu_times"][0] * scale for g in group]
        first = min(group, key=lambda g: g["round"])
        rss = first["rss_after_epoch_mib"]
        loops = [g["loop_peak_mib"] - g["rss_before_mib"] for g in group if g["loop_peak_mib"] is not None]
        results.append(
            {
                "model": model,
                "framework": fw,
                "samples_timed": group[0]["samples"],
                "extrapolation_factor": scale,
                "epoch_time": _bench.summary(times),
                "epoch_cpu_time": _bench.summary(cpu),
                "peak_rss_mib": max(g["peak_rss_mib"] for g in group),
                "loop_increment_mib": max(loops) if loops else None,
                "rss_after_epoch_mib": rss,
                "rss_growth_mib": rss[-1] - rss[0] if len(rss) > 1 else None,
                "test_accuracy": sorted(g["test_accuracy"] for g in group)[len(group) // 2],
                "runs": group,
            }
        )
    ratios: dict[str, dict[str, Any]] = {}
    pairs = [
        ("matgrad-numpy", "numpy-reference"),
        ("matgrad-compiled", "numpy-reference"),
        ("matgrad-numpy", "numpy-reference-fresh"),
        ("matgrad-compiled", "numpy-reference-fresh"),
        ("numpy-reference-fresh", "numpy-reference"),
        ("matgrad-numpy", "torch"),
        ("torch", "numpy-reference"),
        ("matgrad-array-api-numpy", "numpy-reference"),
        ("matgrad-array-api-numpy", "matgrad-numpy"),
        ("matgrad-torch", "numpy-reference"),
        ("matgrad-torch", "torch"),
    ]
    for sizes in args.sizes_list:
        model = "-".join(map(str, sizes))
        for a, b in pairs:
            ga = {g["round"]: g for g in by_key.get((model, a), [])}
            gb = {g["round"]: g for g in by_key.get((model, b), [])}
            common = sorted(set(ga) & set(gb))
            if common:
                entry: dict[str, Any] = {}
                for label, field in (("", "epoch_times"), ("cpu_", "epoch_cpu_times")):
                    vals = [ga[r][field][0] / gb[r][field][0] for r in common]
                    s = _bench.summary(vals)
                    entry.update({label + "values": vals, label + "median": s["median"]})
                    entry.update({label + "min": s["min"], label + "max": s["max"]})
                ratios.setdefault(model, {})[f"{a} / {b}"] = entry
    return {
        "benchmark": "train_compare",
        "machine": info,
        "versions": versions,
        "command": " ".join([os.path.relpath(sys.argv[0], _bench.REPO) if sys.argv else "", *sys.argv[1:]]),
        "settings": {
            "data": os.path.abspath(args.data),
            "train_samples": n_train,
            "models": ["-".join(map(str, s)) for s in args.sizes_list],
            "frameworks": args.frameworks,
            "repeats": args.repeats,
            "warmup_batches": args.warmup,
            "growth_epochs": args.growth_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "threads": args.threads,
            "gather": args.gather,
            "python_samples": args.python_samples,
            "python_repeats": args.python_repeats,
            "extrapolate_to": args.extrapolate_to,
            "seed": args.seed,
        },
        "notes": notes,
        "results": results,
        "ratios": ratios,
    }


def _sizes_list(text: str) -> list[list[int]]:
    import reference_numpy as ref

    return [ref.parse_sizes(part) for part in text.split(",") if part]


def _frameworks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in (*FRAMEWORKS, *EXTRA, PYTHON):
            known = ", ".join((*FRAMEWORKS, *EXTRA, PYTHON))
            raise argparse.ArgumentTypeError(f"unknown framework {name!r}; choose from {known}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=_bench.SAMPLE_DIR, help="MNIST folder with the IDX files (default: the sample)")
    p.add_argument("--limit", type=int, help="train on the first N training images only (smoke tests)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated layer sizes (default {DEFAULT_MODELS})")
    p.add_argument(
        "--frameworks",
        type=_frameworks,
        default=[*FRAMEWORKS, PYTHON],
        help="comma-separated list from " + ", ".join((*FRAMEWORKS, *EXTRA, PYTHON)),
    )
    p.add_argument("--repeats", type=int, default=5, help="alternated rounds (default 5)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up batches in each run before timing (default 50)")
    p.add_argument("--growth-epochs", type=int, default=3, help="epochs in the first round, for RSS growth (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--gather", choices=("wrap", "index"), default="wrap", help="matgrad batch gather (see above)")
    p.add_argument("--python-samples", type=int, default=5000, help="subset for the python backend (0: skip it)")
    p.add_argument("--python-repeats", type=int, default=1)
    p.add_argument("--python-all-models", action="store_true", help="python backend on every model, not the first")
    p.add_argument("--extrapolate-to", type=int, default=60000, help="samples the python time is scaled to")
    p.add_argument("--seed", type=int, default=0, help="round r uses seed + r for its weights and permutation")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    p.add_argument("--json", help="write all results (every run) to this JSON file")
    # internal: one run in a fresh process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--init-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes_list = _sizes_list(args.models)
    args.sizes = args.sizes_list[0]
    return args


def main() -> int:
    args = parse_args()
    _bench.set_threads(args.threads)  # before NumPy is imported, here and in the workers
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return 0
    if not os.path.isdir(args.data):
        print(f"train_compare: --data {args.data!r} is not a folder with the MNIST IDX files", file=sys.stderr)
        return 2
    report = orchestrate(args)
    print()
    machine = report["machine"]
    print(f"Measured {_bench.describe_machine(machine)}; load average at end {machine['loadavg_end']}")
    s = report["settings"]
    print(
        f"One epoch of {s['train_samples']} MNIST images, batch {s['batch_size']}, SGD lr {s['lr']}, float32, "
        f"{s['threads']} threads; {s['repeats']} alternated rounds, {s['warmup_batches']} warm-up batches per run; "
        f"numpy {report['versions']['numpy']}, torch {report['versions']['torch']}"
    )
    for note in report["notes"]:
        print("Note: " + note)
    print()
    print(_tables(report))
    if args.json:
        _bench.write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
