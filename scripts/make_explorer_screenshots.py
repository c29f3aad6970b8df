"""Photograph the explorer (matgrad.viz.explore) for docs/explorer.md, in headless Chromium.

Run from anywhere (needs Chromium with its chromedriver: apt-get install chromium chromium-driver,
and Selenium):

    python scripts/make_explorer_screenshots.py

Writes, into docs/images/:

* explorer-backward.png: a 784-128-10 MLP's loss on 64 images of the MNIST sample, stepped to the
  backward pass of the first layer, with its weight selected (value and gradient as 128 images);
* explorer-accumulate.png: ``(a + a).sum()`` at the step where ``a``'s two gradients add up;
* explorer-training.png: ``matgrad train --explore`` on 1,000 sample images, 3 epochs.

Every page is opened from the file system with the network cut off (tests/browser.py); the script
stops if a page logs an error or asks for anything but its own file (and the math font inside it).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402  (tests/browser.py: the test suite's headless Chromium)

import matgrad as mg  # noqa: E402
from matgrad import nn, viz  # noqa: E402
from matgrad.cli import main as cli  # noqa: E402
from matgrad.data import load_mnist  # noqa: E402
from matgrad.functional import cross_entropy  # noqa: E402

GO_TO = """
const r = document.getElementById('step');
const steps = window.matgradExplorer.data.steps, nodes = window.matgradExplorer.data.nodes;
const k = steps.findIndex(s => s.phase === arguments[0] && nodes[s.node].title === arguments[1]);
r.value = String(k); r.dispatchEvent(new Event('input'));
return k;
"""
CLICK = """
const g = [...document.querySelectorAll('[data-node]')].find(e => e.textContent.startsWith(arguments[0]));
g.dispatchEvent(new MouseEvent('click', {bubbles: true}));
"""


def shoot(browser: Browser, page: Path, out: Path, actions: list[tuple[str, tuple[str, ...]]]) -> None:
    browser.open(page)
    for script, args in actions:
        browser.run_js(script, *args)
    # the rules' math font is inside the page (a data: URL), loaded once maths first shows
    browser.driver.execute_async_script("document.fonts.ready.then(() => arguments[arguments.length - 1]())")
    problems = browser.console_errors() + browser.external()
    own = [u for u in browser.requests() if not u.startswith("data:font/woff;base64,")]
    if problems or own != [page.resolve().as_uri()]:
        sys.exit(f"{page.name}: not self-contained: {problems or own}")
    browser.screenshot(out)
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = load_mnist(sample=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mg.manual_seed(0)
        model = nn.MLP([784, 128, 10])
        x = data.x_train[:64].detach()
        x.name = "x"
        loss = cross_entropy(model(x), data.y_train[:64])
        loss.name = "loss"
        viz.explore(loss, folder / "mlp.html", params=model, title="MLP 784-128-10: loss on 64 MNIST images")

        a = mg.rand(3, 3, requires_grad=True)
        a.name = "a"
        b = a + a
        b.name = "b"
        viz.explore(b.sum(), folder / "aa.html", title="(a + a).sum(): a reused")

        with contextlib.redirect_stdout(io.StringIO()):  # the training's own report is not wanted here
            code = cli(["train", "--limit", "1000", "--epochs", "3", "--quiet", "--explore", str(folder / "run.html")])
        if code != 0:
            sys.exit("matgrad train --explore failed")

        with Browser(width=1360, height=820) as browser:
            shoot(
                browser,
                folder / "mlp.html",
                OUT / "explorer-backward.png",
                [(GO_TO, ("backward", "linear")), (GO_TO, ("backward", "relu")), (CLICK, ("0.weight",))],
            )
            shoot(
                browser,
                folder / "aa.html",
                OUT / "explorer-accumulate.png",
                [(GO_TO, ("backward", "a")), (CLICK, ("a",))],
            )
        with Browser(width=1360, height=980) as browser:
            shoot(
                browser,
                folder / "run.html",
                OUT / "explorer-training.png",
                [(GO_TO, ("backward", "0.weight")), (CLICK, ("0.weight",))],
            )


if __name__ == "__main__":
    main()
