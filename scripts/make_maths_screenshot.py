"""Photograph the chain rule as the built documentation shows it with the network cut off.

Run from anywhere (needs MkDocs, Selenium, and Chromium with its chromedriver:
apt-get install chromium chromium-driver):

    python scripts/make_maths_screenshot.py

Builds the site into a temporary folder, opens the tutorial's chain-rule page from the file system
in headless Chromium that can reach nothing but this machine (tests/browser.py), checks that every
formula was drawn and that nothing was requested from the network, and writes the section "One op
at a time" to docs/images/maths-offline.png (shown on docs/index.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "maths-offline.png"
PAGE = Path("tutorial") / "3-chain-rule" / "index.html"  # built from docs/tutorial/3-chain-rule.md
FIRST, LAST = "#one-op-at-a-time", "#one-op-at-a-time ~ ol"  # the section shown: heading to its list
WIDTH, SCALE = 1000, 2  # window width in CSS pixels; device pixels per CSS pixel (sharp text)

sys.path.insert(0, str(ROOT / "tests"))
from browser import Browser  # noqa: E402  (tests/browser.py: the test suite's headless Chromium)

REGION = """
const first = document.querySelector(arguments[0]).getBoundingClientRect();
const last = document.querySelector(arguments[1]).getBoundingClientRect();
const article = document.querySelector('article').getBoundingClientRect();
const pad = 12;
return [article.left - pad, first.top + window.scrollY - pad, article.width + 2 * pad,
        last.bottom - first.top + 2 * pad];
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
            cwd=ROOT,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
            check=True,
        )
        with Browser(width=WIDTH, height=1200, scale=SCALE) as browser:
            browser.open(site / PAGE)
            drawn = browser.run_js("return document.querySelectorAll('article math').length")
            external = browser.external()
            if external or not drawn:
                sys.exit(f"not offline: {drawn} formulas drawn, requests to the network: {external}")
            x, y, width, height = browser.run_js(REGION, FIRST, LAST)
            browser.screenshot(OUT, clip=(x, y, width, height))
    print(f"{OUT.relative_to(ROOT)}: {drawn} formulas drawn on the page, no request left the machine")


if __name__ == "__main__":
    main()
