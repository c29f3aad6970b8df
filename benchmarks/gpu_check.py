"""GPU check: the op table against NumPy, a float64 gradcheck per op, and an MNIST epoch, per GPU backend.

Run:  python benchmarks/gpu_check.py [--data /path/to/mnist] [--json out.json]
CPU:  python benchmarks/gpu_check.py --cpu --limit 1000     (no GPU: checks torch:cpu and array_api_strict)

The GPU backends it looks for are ``torch:cuda`` (PyTorch with CUDA) and ``cupy`` (CuPy with a
GPU); each one missing is printed as skipped, with the reason. ``--cpu`` adds the CPU backends
served by the same Array API code (``torch:cpu``, ``array_api_strict:device1``), so the script
checks something on a machine without a GPU. Needs the test extra (the op table in
``tests/op_table.py`` draws its domains with hypothesis).

For every backend found:

1. **Parity**: every row of the op table on deterministic inputs of two shapes (3x4 and 17x9),
   forward and the gradients of every input for one upstream gradient, in float64 and float32,
   against the numpy backend. Printed: the largest relative difference per dtype, over all ops,
   and the ops past the tolerance (1e-10 in float64, 1e-4 in float32), marked FAIL.
2. **gradcheck**: one ``matgrad.gradcheck`` per op (float64, central differences, every element).
3. **MNIST epoch**: an MLP 784-128-10, batch 64, SGD lr 0.1, float32, one epoch over the training
   images (``--data`` for the full MNIST, else the shipped 5,000-image sample; ``--limit`` caps
   it) after ``--warmup`` batches, the same initial weights and batch order as the numpy run it
   is printed next to; the time ends after the last loss is read back (the device synchronised).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import _bench  # noqa: E402


def find_targets(cpu: bool) -> tuple[list[str], list[str]]:
    """The backend specs to check, and a line per GPU backend skipped (with why)."""
    import matgrad as mg
    from matgrad import backends

    found, skipped = [], []
    available = mg.available_backends()
    if "torch" not in available:
        skipped.append("skipped torch:cuda: PyTorch (or array-api-compat) is not installed")
    else:
        import torch

        if torch.cuda.is_available():
            found.append("torch:cuda")
        else:
            skipped.append(f"skipped torch:cuda: torch.cuda.is_available() is False (torch {torch.__version__})")
    if "cupy" not in available:
        skipped.append("skipped cupy: CuPy (or array-api-compat) is not installed")
    elif not backends.devices("cupy"):
        skipped.append("skipped cupy: CuPy is installed but finds no CUDA device")
    else:
        found.append("cupy")
    if cpu:
        found += [
            s
            for s, name in (("torch:cpu", "torch"), ("array_api_strict:device1", "array_api_strict"))
            if name in available
        ]
    return found, skipped


def _inputs(case: Any, m: int, n: int) -> list[list[list[float]]]:
    """Deterministic, distinct values away from 0 (as the op-table meta-test draws them)."""
    out = []
    for k, (r, c) in enumerate(case.shapes(m, n)):
        rows = [[(-1) ** (i + j) * (0.25 + 0.125 * ((i * c + j) % 13) + 0.5 * k) for j in range(c)] for i in range(r)]
        domain = case.domains[min(k, len(case.domains) - 1)]
        if domain in ("positive", "probability"):
            rows = [[abs(v) / (1 + abs(v)) for v in row] for row in rows]
        elif domain == "distinct":
            rows = [[v + 1e-3 * (i * c + j) for j, v in enumerate(row)] for i, row in enumerate(rows)]
        out.append(rows)
    return out


def _rel(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan | (a == b), 0.0, np.abs(a - b) / np.maximum(np.abs(b), 1e-30 + 1e-6))
    return float(np.max(diff)) if diff.size else 0.0


def parity(spec: str, cases: list[Any]) -> dict[str, Any]:
    import matgrad as mg

    tol = {"float64": 1e-10, "float32": 1e-4}
    worst = {"float64": 0.0, "float32": 0.0}
    failures: list[str] = []
    for case in cases:
        for dtype in ("float64", "float32"):
            for m, n in ((3, 4), (17, 9)):
                try:
                    rows = _inputs(case, m, n)
                    outs, grads = [], []
                    for be in (spec, "numpy"):
                        mg.manual_seed(3)  # dropout: the same mask on every backend
                        xs = [mg.Tensor2D(r, dtype=dtype, backend=be, requires_grad=True) for r in rows]
                        out = case.fn(*xs)
                        up = [[0.5 + 0.25 * ((i + 2 * j) % 5) for j in range(out.ncols)] for i in range(out.nrows)]
                        out.backward(mg.Tensor2D(up, dtype=dtype, backend=out.kernels))
                        outs.append(out.numpy())
                        grads.append([x.grad.numpy() if x.grad is not None else None for x in xs])
                    err = _rel(outs[0], outs[1])
                    for g, h in zip(*grads):
                        if (g is None) != (h is None):
                            raise AssertionError("a gradient is missing on one backend")
                        if g is not None:
                            err = max(err, _rel(g, h))
                except Exception as exc:  # report and go on: the point is the whole table
                    failures.append(f"{case.name} {dtype} {m}x{n}: {type(exc).__name__}: {exc}")
                    continue
                worst[dtype] = max(worst[dtype], err)
                if err > tol[dtype]:
                    failures.append(f"{case.name} {dtype} {m}x{n}: relative difference {err:.2e} > {tol[dtype]:g}")
    return {"worst": worst, "failures": failures, "cases": len(cases)}


def gradchecks(spec: str, cases: list[Any]) -> dict[str, Any]:
    import matgrad as mg

    failures, t0 = [], time.perf_counter()
    for case in cases:
        try:
            mg.manual_seed(3)
            xs = [mg.Tensor2D(r, dtype="float64", backend=spec, requires_grad=True) for r in _inputs(case, 3, 4)]
            mg.gradcheck(case.fn, xs)
        except Exception as exc:
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return {"failures": failures, "cases": len(cases), "seconds": time.perf_counter() - t0}


def _sync(t: Any) -> None:
    t.item()  # reading a value back waits for the device's queue


def epoch(spec: str, data_dir: str | None, limit: int | None, warmup: int, seed: int = 0) -> dict[str, Any]:
    import matgrad as mg
    import matgrad.functional as F

    be = mg.backends.get(spec)
    data = mg.data.load_mnist(data_dir, backend=be) if data_dir else mg.data.load_mnist(sample=True, backend=be)
    x, y = data.x_train, data.y_train
    if limit is not None:
        x, y = x[: min(limit, x.nrows)], y[: min(limit, y.nrows)]
    mg.manual_seed(seed)
    model = mg.nn.MLP([784, 128, 10], backend=be)
    opt = mg.optim.SGD(model.parameters(), lr=0.1)

    def run(batches: int | None) -> mg.Tensor2D:
        loss = None
        for k, (xb, yb) in enumerate(mg.data.DataLoader(x, y, 64, shuffle=True, seed=seed)):
            if batches is not None and k >= batches:
                break
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss is not None
        return loss

    _sync(run(warmup))
    mg.manual_seed(seed)
    with mg.no_grad():
        for p, q in zip(model.parameters(), mg.nn.MLP([784, 128, 10], backend=be).parameters()):
            p.copy_(q)
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    t0 = time.perf_counter()
    last = run(None)
    _sync(last)
    seconds = time.perf_counter() - t0
    acc = mg.metrics.accuracy(mg.metrics.predict(model, data.x_test), data.y_test)
    return {"seconds": seconds, "images": x.nrows, "loss": last.item(), "test_accuracy": acc}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="also check torch:cpu and array_api_strict:device1")
    p.add_argument("--data", help="MNIST folder (default: the shipped 5,000-image sample)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--warmup", type=int, default=20, help="batches before the timed epoch (default 20)")
    p.add_argument("--cases", help="comma-separated op-table rows (default: all)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for NumPy and torch (default 2)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    _bench.set_threads(args.threads)

    from op_table import CASES

    import matgrad as mg

    cases = CASES if not args.cases else [c for c in CASES if c.name in args.cases.split(",")]
    targets, skipped = find_targets(args.cpu)
    print(f"matgrad {mg.__version__}; backends installed: {', '.join(mg.available_backends())}")
    print(f"Measured {_bench.describe_machine(_bench.machine_info())}")
    for line in skipped:
        print(line)
    if not targets:
        print("no GPU backend found: nothing checked (run with --cpu to check the CPU Array API backends)")
        return 0

    report: dict[str, Any] = {"skipped": skipped, "backends": {}}
    baseline = epoch("numpy", args.data, args.limit, args.warmup)
    print(
        f"\nnumpy baseline: one epoch of {baseline['images']} images in {baseline['seconds']:.2f} s, "
        f"test accuracy {baseline['test_accuracy']:.2%}"
    )
    rows, failed = [], False
    for spec in targets:
        try:
            par, gc, ep = parity(spec, cases), gradchecks(spec, cases), epoch(spec, args.data, args.limit, args.warmup)
        except Exception:
            traceback.print_exc()
            print(f"FAIL {spec}: the check stopped (traceback above)")
            failed = True
            continue
        report["backends"][spec] = {"parity": par, "gradcheck": gc, "epoch": ep}
        for line in par["failures"]:
            print(f"FAIL parity {spec}: {line}")
        for line in gc["failures"]:
            print(f"FAIL gradcheck {spec}: {line}")
        failed |= bool(par["failures"] or gc["failures"])
        rows.append(
            [
                spec,
                f"{par['cases'] - len({f.split()[0] for f in par['failures']})}/{par['cases']}",
                f"{par['worst']['float64']:.1e}",
                f"{par['worst']['float32']:.1e}",
                f"{gc['cases'] - len(gc['failures'])}/{gc['cases']}",
                f"{ep['seconds']:.2f}",
                f"{ep['images'] / ep['seconds']:,.0f}",
                f"{baseline['seconds'] / ep['seconds']:.2f}x",
                f"{ep['test_accuracy']:.2%}",
            ]
        )
    header = [
        "backend",
        "ops at parity",
        "max rel diff f64",
        "max rel diff f32",
        "gradcheck f64",
        "epoch s",
        "images/s",
        "speed vs numpy",
        "test acc",
    ]
    print()
    print(_bench.markdown_table(header, rows))
    if args.json:
        _bench.write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
