"""Size and speed of the explorer page of a 784-128-10 MLP's loss at batch 64 (issue 15's budget:
under 3 MB, interactive in under 2 s).

    python benchmarks/explorer_size.py                   # the budget's case
    python benchmarks/explorer_size.py --hidden 512,256 --batch 256 --loads 3

Prints the file size, the time Python takes to build the page, and, where headless Chromium is
installed (apt-get install chromium chromium-driver), the time from navigation start to the
page's ready mark (``window.matgradExplorer.ready``, performance.now() at the end of its script)
over several cold loads from file://. Figures, not assertions: the machine may be busy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matgrad as mg
from matgrad import nn, viz
from matgrad.data import load_mnist
from matgrad.functional import cross_entropy

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="128", help="hidden sizes, comma-separated (default 128)")
    parser.add_argument("--batch", type=int, default=64, help="rows in the batch (default 64)")
    parser.add_argument("--loads", type=int, default=5, help="cold loads in Chromium (default 5; 0: none)")
    args = parser.parse_args()

    data = load_mnist(sample=True)
    mg.manual_seed(0)
    sizes = [784, *[int(s) for s in args.hidden.split(",") if s], 10]
    model = nn.MLP(sizes)
    x = data.x_train[: args.batch].detach()
    x.name = "x"
    loss = cross_entropy(model(x), data.y_train[: args.batch])
    t0 = time.perf_counter()
    page = viz.explore(loss, params=model)
    text = page.html
    build = time.perf_counter() - t0
    rows = [
        ("model", f"MLP {'-'.join(map(str, sizes))}, batch {args.batch}, backend {mg.get_backend()}"),
        ("nodes / steps", f"{page.node_count} / {len(page.payload['steps'])}"),
        ("file size", f"{len(text.encode('utf-8')) / 1e6:.2f} MB (budget 3 MB)"),
        ("built in Python", f"{build * 1000:.0f} ms"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = page.save(Path(tmp) / "explorer.html")
        if args.loads > 0:
            sys.path.insert(0, str(ROOT / "tests"))
            from browser import Browser, BrowserUnavailable  # tests/browser.py: the suite's headless Chromium

            try:
                with Browser() as browser:
                    ready = []
                    for _ in range(args.loads):
                        browser.driver.get("about:blank")
                        browser.open(path)
                        ready.append(float(browser.run_js("return window.matgradExplorer.ready")))
                    errors = browser.console_errors()
                rows.append(
                    (
                        "interactive after",
                        f"median {statistics.median(ready):.0f} ms, max {max(ready):.0f} ms over {args.loads} loads "
                        "(budget 2000 ms)",
                    )
                )
                rows.append(("console errors", str(len(errors))))
            except BrowserUnavailable as exc:
                rows.append(("interactive after", f"not measured: {exc}"))
    print("| measure | value |")
    print("|:--|:--|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
