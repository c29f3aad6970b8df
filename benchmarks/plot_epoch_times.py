"""Bar chart of epoch times from train_compare.py's JSON, as an SVG for docs/performance.md.

Run:  python benchmarks/plot_epoch_times.py results.json [--out docs/images/epoch_times.svg]

Needs matplotlib (``pip install matplotlib``, or ``pip install -e ".[plot]"``). Left: the
median epoch time of each framework for each model, with the interquartile range as error bars
and matgrad's paired ratio to the NumPy reference above its bar. Right (when the JSON has a
python-backend run): the first model on a log scale, with the pure-Python backend's extrapolated
epoch next to the fast frameworks. The SVG is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

DEFAULT_OUT = os.path.join(_bench.REPO, "docs", "images", "epoch_times.svg")
ORDER = ("numpy-reference", "matgrad-numpy", "torch")
COLOURS = {
    "numpy-reference": "#8c8c8c",
    "matgrad-numpy": "#2b6cb0",
    "torch": "#dd6b20",
    "matgrad-python": "#38a169",
}
LABELS = {
    "numpy-reference": "hand-written NumPy",
    "matgrad-numpy": "matgrad (numpy backend)",
    "torch": "PyTorch CPU",
    "matgrad-python": "matgrad (python backend, extrapolated)",
}


def render(report: dict[str, Any]) -> str:
    """The chart as SVG text."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def figure(report: dict[str, Any]) -> Any:
    """The matplotlib figure (also handy for a PNG preview: ``figure(r).savefig("x.png")``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "matgrad-epoch-times"  # stable element ids: diffs stay small
    results = report["results"]
    models = report["settings"]["models"]
    by = {(r["model"], r["framework"]): r for r in results}
    frameworks = [f for f in ORDER if any((m, f) in by for m in models)]
    python_runs = [r for r in results if r["framework"] == "matgrad-python"]

    ncols = 2 if python_runs else 1
    fig, axes = plt.subplots(
        1, ncols, figsize=(10.5 if ncols == 2 else 7, 4.2), gridspec_kw={"width_ratios": [3, 2]} if ncols == 2 else None
    )
    ax = axes[0] if ncols == 2 else axes
    width = 0.8 / max(1, len(frameworks))
    top = 0.0
    for i, fw in enumerate(frameworks):
        xs, heights, lo, hi = [], [], [], []
        for j, model in enumerate(models):
            r = by.get((model, fw))
            if r is None:
                continue
            t = r["epoch_time"]
            xs.append(j + (i - (len(frameworks) - 1) / 2) * width)
            heights.append(t["median"])
            lo.append(t["median"] - t["q1"])
            hi.append(t["q3"] - t["median"])
            top = max(top, t["q3"])
        ax.bar(xs, heights, width * 0.92, yerr=[lo, hi], capsize=3, color=COLOURS[fw], label=LABELS[fw])
        for x, h, up in zip(xs, heights, hi):
            ax.annotate(f"{h:.2f}", (x, h + up), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    for j, model in enumerate(models):
        ratio = report.get("ratios", {}).get(model, {}).get("matgrad-numpy / numpy-reference")
        if ratio and "matgrad-numpy" in frameworks:
            i = frameworks.index("matgrad-numpy")
            x = j + (i - (len(frameworks) - 1) / 2) * width
            h = by[(model, "matgrad-numpy")]["epoch_time"]["q3"]
            ax.annotate(
                f"{ratio['median']:.2f}x ref",
                (x, h),
                xytext=(0, 13),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=COLOURS["matgrad-numpy"],
            )
    ax.set_xticks(range(len(models)), models)
    ax.set_ylim(0, top * 1.3 if top else 1)
    ax.set_ylabel("seconds per epoch (median, IQR bars)")
    settings = report["settings"]
    ax.set_title(
        f"One MNIST epoch ({settings['train_samples']} images, batch {settings['batch_size']}, "
        f"{settings['threads']} thread{'s' if settings['threads'] != 1 else ''})",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)

    if python_runs:
        ax2 = axes[1]
        model = python_runs[0]["model"]
        names, values, colours = [], [], []
        for fw in (*frameworks, "matgrad-python"):
            r = by.get((model, fw))
            if r is not None:
                label = LABELS[fw].replace(" (", "\n(")
                if fw == "matgrad-python":
                    label = f"matgrad (python backend,\n{r['samples_timed']} images, scaled)"
                names.append(label)
                values.append(r["epoch_time"]["median"])
                colours.append(COLOURS[fw])
        ax2.barh(range(len(values)), values, color=colours)
        for k, v in enumerate(values):
            text = f"{v:.2f} s" if v < 100 else f"{v / 60:.1f} min"
            ax2.annotate(text, (v, k), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax2.set_yticks(range(len(values)), names, fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xscale("log")
        ax2.set_xlim(min(values) / 2, max(values) * 8)
        ax2.set_xlabel("seconds per epoch (log scale)")
        ax2.set_title(f"{model}, median epoch, log scale", fontsize=10)
        ax2.grid(axis="x", alpha=0.3)

    machine = report["machine"]
    fig.text(
        0.01,
        0.01,
        f"{machine['date']}, commit {machine['commit']}, {machine['cpu']} ({machine['cpus']} CPUs), "
        f"load average {machine.get('loadavg')}; numpy {report['versions'].get('numpy')}, "
        f"torch {report['versions'].get('torch')}",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", help="the file written by train_compare.py --json")
    p.add_argument("--out", default=DEFAULT_OUT, help="SVG to write (default docs/images/epoch_times.svg)")
    args = p.parse_args()
    if not args.out.lower().endswith(".svg"):
        p.error(f"--out {args.out!r}: the chart is written as SVG, so the file name must end in .svg")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "plot_epoch_times: matplotlib is not installed; install it with `pip install matplotlib` "
            '(or `pip install -e ".[plot]"`) and run this again',
            file=sys.stderr,
        )
        return 2
    try:
        with open(args.json, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"plot_epoch_times: cannot read {args.json}: {exc}", file=sys.stderr)
        return 2
    if report.get("benchmark") != "train_compare":
        print(f"plot_epoch_times: {args.json} is not a train_compare.py result", file=sys.stderr)
        return 2
    _bench.write_atomic(args.out, render(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
