"""The documentation works offline: maths is MathML made at build time, and no page asks the network.

* Every formula in docs/**/*.md renders with ``matgrad._mathml.latex_to_mathml`` (no errors, no
  unknown commands), and each built page holds one ``<math>`` element per formula of its source.
* No built page points a script, stylesheet, image or font at another host.
* In headless Chromium with the network cut off (tests/browser.py), the chain-rule page of the
  tutorial and "Backpropagation, derived", opened from the file system and from a local server,
  show every formula as drawn maths in the shipped math font, no raw LaTeX, no console error, and
  request nothing but the site's own files. A page that does use a CDN fails the same checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import Browser, is_local, serve

from matgrad._mathml import latex_to_mathml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BROWSER_PAGES = ["tutorial/3-chain-rule.md", "backprop.md"]
MATH_FONT = "Latin Modern Math"

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
# pymdownx.arithmatex's inline $...$ (smart_dollar): no space just inside either dollar.
_INLINE = re.compile(r"(?<!\\)\$(?!\s)((?:\\.|[^\\$])+?)(?<!\s)\$")
_REMOTE_ASSET = re.compile(
    r"<(?:script|link|img|iframe|source|audio|video|embed|object|track)\b[^>]*?"
    r"\b(?:src|href|srcset|data)\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)",
    re.I,
)


def formulas(markdown: str) -> list[tuple[str, bool]]:
    """The formulas of a Markdown page, in order of kind: ``[(tex, display), ...]``.

    Fenced code blocks and code spans are skipped, as arithmatex skips them."""
    lines, fence = [], ""
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m[1]) :]:
                fence = ""
            lines.append("")
        elif m:
            fence = m.group(1)
            lines.append("")
        else:
            lines.append(line)
    text = _CODE_SPAN.sub(" ", "\n".join(lines))
    found = [(m.group(1), True) for m in _DISPLAY.finditer(text)]
    for paragraph in re.split(r"\n[ \t]*\n", _DISPLAY.sub(" ", text)):  # inline maths never spans paragraphs
        found += [(m.group(1), False) for m in _INLINE.finditer(paragraph)]
    return found


def built_page(site: Path, page: Path) -> Path:
    """Where ``mkdocs build`` puts ``page`` (use_directory_urls: a.md -> a/index.html)."""
    relative = page.relative_to(DOCS).with_suffix("")
    if relative.name == "index":
        return site / relative.parent / "index.html"
    return site / relative / "index.html"


def article(page_html: str) -> str:
    m = re.search(r"<article\b.*?</article>", page_html, re.S)
    assert m is not None, "no <article> in the page"
    return m.group(0)


def _id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


# -- the source and the build ---------------------------------------------------------------------


def test_formula_finder() -> None:
    page = "A $x$ and $$\n\\bar A = G\n$$ cost $5 and $6; `$code$`\n\n```python\nprint('$y$')\n```\n$\\alpha$\n"
    assert formulas(page) == [("\n\\bar A = G\n", True), ("x", False), ("\\alpha", False)]


def test_every_formula_in_the_docs_renders() -> None:
    failures, total = [], 0
    for page in PAGES:
        for tex, display in formulas(page.read_text(encoding="utf-8")):
            total += 1
            try:
                mathml = latex_to_mathml(tex, display=display)
            except ValueError as exc:
                failures.append(f"{_id(page)}: {exc}")
                continue
            assert mathml.startswith("<math") and mathml.endswith("</math>"), mathml
    assert not failures, "\n".join(failures)
    assert total > 300, f"only {total} formulas found in docs/: is the formula finder broken?"


def test_every_built_page_has_one_math_element_per_formula(built_site: Path) -> None:
    mismatched = []
    for page in PAGES:
        content = article(built_page(built_site, page).read_text(encoding="utf-8"))
        expected = len(formulas(page.read_text(encoding="utf-8")))
        rendered = len(re.findall(r"<math\b", content))
        left_raw = re.findall(r'class="arithmatex">\\[(\[]', content)
        if rendered != expected or left_raw:
            mismatched.append(f"{_id(page)}: {expected} formulas in the source, {rendered} <math> in the page")
    assert not mismatched, "\n".join(mismatched)


def test_no_built_page_loads_assets_from_another_host(built_site: Path) -> None:
    remote = {}
    for path in sorted(built_site.rglob("*.html")):
        for url in _REMOTE_ASSET.findall(path.read_text(encoding="utf-8")):
            remote.setdefault(url, path.relative_to(built_site).as_posix())
    for path in sorted((DOCS / "stylesheets").glob("*.css")):
        for url in re.findall(r"url\(\s*[\"']?((?:https?:)?//[^\"')]+)", path.read_text(encoding="utf-8")):
            remote.setdefault(url, path.relative_to(ROOT).as_posix())
    assert not remote, f"assets from the network (first page that uses each): {remote}"
    assert (built_site / "assets" / "fonts" / "latinmodern-math.otf").is_file()


# -- in the browser, offline ----------------------------------------------------------------------

_VISIBLE_PROSE = """
const style = document.createElement('style');
style.textContent = 'pre, code, .highlight { display: none !important; }';
document.head.append(style);
const text = document.querySelector('article').innerText;
style.remove();
return text;
"""

_MATHS = """
const maths = [...document.querySelectorAll('article math')];
return {
  count: maths.length,
  blocks: maths.filter(m => m.getAttribute('display') === 'block').length,
  errors: document.querySelectorAll('article merror').length,
  empty: maths.filter(m => { const r = m.getBoundingClientRect(); return !(r.width > 0 && r.height > 0); }).length,
  font: getComputedStyle(maths[0] || document.body).fontFamily,
  faces: [...document.fonts].filter(f => f.family.replace(/"/g, '') === arguments[0]).map(f => f.status),
};
"""


def check_offline_maths(browser: Browser, url: str, page: Path) -> None:
    browser.open(url)
    source = formulas(page.read_text(encoding="utf-8"))
    maths = browser.run_js(_MATHS, MATH_FONT)
    assert maths["count"] == len(source), f"{len(source)} formulas in {_id(page)}, {maths['count']} drawn"
    assert maths["blocks"] == sum(display for _, display in source)
    assert maths["errors"] == 0 and maths["empty"] == 0, maths
    assert MATH_FONT in maths["font"] and maths["faces"] == ["loaded"], maths

    prose = browser.run_js(_VISIBLE_PROSE)
    raw = re.findall(r"\\[()[\]]|\$|\\[A-Za-z]+", prose)
    assert not raw, f"raw LaTeX visible on the page: {sorted(set(raw))}"

    requests = browser.requests()
    assert any(u.endswith("/assets/fonts/latinmodern-math.otf") and is_local(u) for u in requests), requests
    assert browser.external() == [], "requests that left the machine"
    assert browser.console_errors() == []


@pytest.mark.parametrize("name", BROWSER_PAGES)
def test_maths_renders_offline_from_the_file_system(built_site: Path, browser: Browser, name: str) -> None:
    page = DOCS / name
    check_offline_maths(browser, built_page(built_site, page).as_uri(), page)


@pytest.mark.parametrize("name", BROWSER_PAGES)
def test_maths_renders_offline_from_a_local_server(built_site: Path, browser: Browser, name: str) -> None:
    # As `mkdocs serve` on a train: search's web worker and its index load too.
    page = DOCS / name
    with serve(built_site) as base:
        url = base + built_page(built_site, page).relative_to(built_site).parent.as_posix() + "/"
        check_offline_maths(browser, url, page)
        browser.run_js("return new Promise(r => setTimeout(r, 300))")  # give the search worker its start
        assert browser.external() == [] and browser.console_errors() == []


def test_the_offline_check_catches_a_cdn(tmp_path: Path, browser: Browser) -> None:
    # The page of before: MathJax and Google Fonts from CDNs, and a worker that fetches.
    page = tmp_path / "cdn.html"
    page.write_text(
        "<!doctype html><html><head>"
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script></head>'
        "<body><article><p>\\(\\bar T = \\partial L / \\partial T\\)</p></article><script>"
        "new Worker(URL.createObjectURL(new Blob([\"fetch('https://cdn.example.org/x.js')\"])));"
        "</script></body></html>",
        encoding="utf-8",
    )
    browser.open(page)
    browser.run_js("return new Promise(r => setTimeout(r, 300))")
    external = browser.external()
    assert "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js" in external
    assert any("fonts.googleapis.com" in u for u in external)
    assert "https://cdn.example.org:443" in external  # from the worker: only the proxy sees it
    assert browser.console_errors()
    assert browser.run_js("return document.querySelectorAll('math').length") == 0
    assert "\\bar" in browser.run_js(_VISIBLE_PROSE)
