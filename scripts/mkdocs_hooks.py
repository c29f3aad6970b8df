"""MkDocs hooks (mkdocs.yml, ``hooks:``): the maths of every page rendered to MathML at build time.

pymdownx.arithmatex (generic mode) finds the formulas, ``$...$`` and ``$$...$$``, and wraps them
as ``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``.
Here each becomes a ``<math>`` element, made by ``matgrad._mathml.latex_to_mathml``, the same
function that pages written by matgrad use, so the browser draws the maths itself: no
JavaScript, no CDN, and the site works offline. A formula that cannot be rendered fails the
build with the page and the formula named.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

# The checkout's matgrad, whichever one is installed (as mkdocstrings reads the checkout too).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matgrad._mathml import latex_to_mathml

_INLINE = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(?P<tex>.*?)\\\]</div>', re.S)


def render_maths(page_html: str, where: str = "") -> str:
    """``page_html`` with arithmatex's formulas replaced by MathML; ``ValueError`` names a bad one."""

    def render(match: re.Match[str], display: bool) -> str:
        tex = html.unescape(match["tex"])  # arithmatex escaped <, > and & for HTML
        try:
            mathml = latex_to_mathml(tex, display=display)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from exc
        tag = "div" if display else "span"
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    page_html = _BLOCK.sub(lambda m: render(m, True), page_html)
    return _INLINE.sub(lambda m: render(m, False), page_html)


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    try:
        return render_maths(html, page.file.src_uri)
    except ValueError as exc:
        raise PluginError(str(exc)) from exc
