"""LaTeX to MathML at build time, so that maths reads the same everywhere with no JavaScript or network.

The documentation (through the MkDocs hook in scripts/mkdocs_hooks.py) and any page that matgrad
writes call :func:`latex_to_mathml`. Browsers draw MathML natively (Chromium 109+, Firefox,
Safari); with a math font that has an OpenType MATH table (the docs ship Latin Modern Math) sums,
fractions and accents come out as in TeX.

latex2mathml does the parsing. What it emits is repaired where Chromium (MathML Core) would
draw it unlike TeX, each repair seen in a screenshot and pinned by tests/test_mathml.py:

* function names (``\\max``, ``\\operatorname{softmax}``) come out as operators, spaced like
  ``softmax (A)``: they become names, with TeX's thin space before an operand that is not a bracket;
* ``mathvariant`` (``\\mathbf 1``) is ignored on letters and digits: they become Unicode's
  mathematical alphanumerics (U+1D7CF, a bold 1);
* ``\\bar X`` vanished (Latin Modern Math has no U+00AF accent): accents become ``accent="true"``
  with the characters math fonts draw as accents (U+02C9);
* spacing as in TeX: ``∂L/∂T`` (not ``∂ L / ∂ T``), ``= -G`` (unary minus), ``e^{-|x|}``,
  ``\\mathrel{+}=`` as one relation; ``\\left(`` keeps its normal size around a flat row, as
  TeX's delimiter shortfall does; ``\\sum_i`` takes its limits below in display maths;
* named and negative ``mspace`` widths, unknown to MathML Core, become ems or go;
  ``\\text{in\\_features}`` loses the backslash.

What it cannot draw raises ``ValueError`` naming the formula, instead of showing raw LaTeX: an
unknown command (latex2mathml passes ``\\foo`` through as text), ``&`` alignment and ``\\\\`` line
breaks (MathML Core has no line breaking), maths inside ``\\text``.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

__all__ = ["MATHML_NAMESPACE", "latex_to_mathml"]

MATHML_NAMESPACE = "http://www.w3.org/1998/Math/MathML"

_TOKENS = {"mi", "mn", "mo", "mtext", "ms"}
_THIN_SPACE = "0.1667em"  # TeX's \, : the space between a function name and its operand
_FUNCTION_APPLICATION = "\u2061"  # invisible: tells a screen reader that "log A" is log applied to A
_NAMED_SPACES = {
    "veryverythinmathspace": "0.0556em",
    "verythinmathspace": "0.1111em",
    "thinmathspace": "0.1667em",
    "mediummathspace": "0.2222em",
    "thickmathspace": "0.2778em",
    "verythickmathspace": "0.3333em",
    "veryverythickmathspace": "0.3889em",
}
_FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_'*]+")
_TEXT_ESCAPE = re.compile(r"\\([_%$&#{}])")
# Accents as latex2mathml writes them -> the spacing characters that math fonts draw as accents
# (Latin Modern Math has no accent for U+00AF, so \bar would vanish). KaTeX makes the same choice.
_ACCENTS = {
    "\u00af": "\u02c9",  # \bar
    "\u02d9": "\u02d9",  # \dot
    "\u00a8": "\u00a8",  # \ddot
    "\u02c7": "\u02c7",  # \check
    "\u02d8": "\u02d8",  # \breve
    "\u00b4": "\u02ca",  # \acute
    "`": "\u02cb",  # \grave
    "\u2192": "\u2192",  # \vec
}
_NARROW_ACCENTS = {"^": "\u02c6", "~": "\u02dc"}  # \hat, \tilde
_WIDE_ACCENTS = {"^": "\u0302", "~": "\u0303", "\u2015": "\u2015"}  # \widehat, \widetilde, \overline: stretched
_ORDINARY = {"\u2202", "\u2207", "\u221e"}  # \partial, \nabla, \infty: symbols in TeX, operators in latex2mathml
# \left( stretches its bracket to the height of what it encloses. MathML stretches symmetrically
# about the maths axis, so even (G - H) gets the next, larger bracket, where TeX (its delimiter
# shortfall) keeps the normal one; only these make a row tall enough to need a bigger bracket.
_TALL = {"mfrac", "mtable", "msqrt", "mroot", "munder", "munderover"}
_BIG_OPERATORS = {"\u2211", "\u220f", "\u2210", "\u22c3", "\u22c2", "\u2a01", "\u2a02", "\u2a00", "\u22c1", "\u22c0"}
_INTEGRALS = {"\u222b", "\u222c", "\u222d", "\u222e"}
_LIMITS = {"msub": "munder", "msup": "mover", "msubsup": "munderover"}
_SIGNS = {"\u2212", "+", "\u00b1", "\u2213"}
# After these a sign is unary (TeX: a Bin after a Rel, an Open or a Punct becomes an Ord): = -G, (-x, a, -b
_BEFORE_UNARY = {"=", "<", ">", "\u2264", "\u2265", "\u2260", "\u2248", "\u2261", "\u2192", "\u21a6", "\u2208", "+="}
_BEFORE_UNARY |= {"(", "[", "{", "\u27e8", ",", ":", ";"}
_BARS = {"|", "\u2016", "\u2225"}  # |x|, \lVert x \rVert: brackets, not relations
_TEXT_STYLES = {
    "bold": "font-weight: bold",
    "italic": "font-style: italic",
    "bold-italic": "font-weight: bold; font-style: italic",
    "monospace": "font-family: monospace",
    "sans-serif": "font-family: sans-serif",
}


def _alphabet(upper: int, lower: int | None, digits: int | None, holes: dict[str, str]) -> dict[str, str]:
    table = {chr(ord("A") + i): chr(upper + i) for i in range(26)}
    if lower is not None:
        table.update({chr(ord("a") + i): chr(lower + i) for i in range(26)})
    if digits is not None:
        table.update({str(i): chr(digits + i) for i in range(10)})
    table.update(holes)  # letters that Unicode had encoded before the block (U+211D, U+210E, ...)
    return table


# Unicode's Mathematical Alphanumeric Symbols (U+1D400-U+1D7FF), by MathML mathvariant.
_VARIANTS: dict[str, dict[str, str]] = {
    "bold": _alphabet(0x1D400, 0x1D41A, 0x1D7CE, {}),
    "italic": _alphabet(0x1D434, 0x1D44E, None, {"h": "\u210e"}),
    "bold-italic": _alphabet(0x1D468, 0x1D482, None, {}),
    "double-struck": _alphabet(
        0x1D538,
        0x1D552,
        0x1D7D8,
        {"C": "\u2102", "H": "\u210d", "N": "\u2115", "P": "\u2119", "Q": "\u211a", "R": "\u211d", "Z": "\u2124"},
    ),
    "script": _alphabet(
        0x1D49C,
        0x1D4B6,
        None,
        {
            **{"B": "\u212c", "E": "\u2130", "F": "\u2131", "H": "\u210b", "I": "\u2110", "L": "\u2112"},
            **{"M": "\u2133", "R": "\u211b", "e": "\u212f", "g": "\u210a", "o": "\u2134"},
        },
    ),
    "fraktur": _alphabet(
        0x1D504, 0x1D51E, None, {"C": "\u212d", "H": "\u210c", "I": "\u2111", "R": "\u211c", "Z": "\u2128"}
    ),
    "sans-serif": _alphabet(0x1D5A0, 0x1D5BA, 0x1D7E2, {}),
    "bold-sans-serif": _alphabet(0x1D5D4, 0x1D5EE, 0x1D7EC, {}),
    "monospace": _alphabet(0x1D670, 0x1D68A, 0x1D7F6, {}),
}


def latex_to_mathml(tex: str, display: bool = False) -> str:
    """One LaTeX formula (without ``$`` or ``\\(``) as a ``<math>`` element: ``x^2`` -> ``<math ...>``.

    ``display=True`` typesets it as a block (``$$...$$``): large operators, limits above and
    below. The TeX source rides along as an ``application/x-tex`` annotation, which browsers do
    not show. Raises ``ValueError`` naming the formula when it cannot be rendered faithfully.
    """
    try:
        from latex2mathml.converter import convert_to_element
    except ImportError as exc:  # an optional dependency: only pages with maths need it
        raise ImportError(
            'rendering maths needs latex2mathml: pip install latex2mathml (or pip install -e ".[test]")'
        ) from exc
    source = tex.strip()
    if not source:
        raise ValueError("an empty formula")
    try:
        root = convert_to_element(source, display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises its own exception types, and IndexError on some typos
        raise ValueError(f"cannot render the formula {source!r}: {type(exc).__name__} {exc}".rstrip()) from exc
    problems = _decode(root)
    if problems:
        raise ValueError(f"cannot render the formula {source!r}: {'; '.join(dict.fromkeys(problems))}")
    _repair(root)
    _annotate(root, source)
    return ET.tostring(root, encoding="unicode")


def _decode(root: ET.Element) -> list[str]:
    """Turn latex2mathml's entity strings (``&#x0003D;``) into characters; list what cannot be drawn."""
    problems = []
    for element in root.iter():
        if element.tag == "mspace" and element.get("linebreak") is not None:
            problems.append("line breaks (\\\\) are not supported: write one formula per line")
        if element.text is None:
            continue
        raw = element.text
        if element.tag == "mtext":
            if re.search(r"(?<!\\)\$", raw):
                problems.append("maths inside \\text{...} is not supported: close the text first")
            raw = _TEXT_ESCAPE.sub(r"\1", raw)
        elif element.tag in ("mi", "mo") and raw == "&":
            problems.append("alignment (& in aligned or matrix environments) is not supported")
        if element.tag in _TOKENS and "\\" in raw:  # a command latex2mathml does not know, passed through
            problems += [f"unknown command {word}" for word in re.findall(r"\\[A-Za-z]+|\\.", raw) or [raw]]
        element.text = html.unescape(raw)
    return problems


def _repair(root: ET.Element) -> None:
    for parent in list(root.iter()):
        _repair_children(parent)
    for element in root.iter():
        _restyle(element)
    for parent in list(root.iter()):
        _space_function_names(parent)


def _repair_children(parent: ET.Element) -> None:
    children = list(parent)
    out: list[ET.Element] = []
    i = 0
    while i < len(children):
        child = children[i]
        following = children[i + 1] if i + 1 < len(children) else None
        if child.tag == "mo" and len(child):
            # \mathrel{+}: an operator wrapped around a row; in MathML a token holds text only.
            child.text = "".join(child.itertext())
            for grandchild in list(child):
                child.remove(grandchild)
            if following is not None and following.tag == "mo" and following.text == "=":
                child.text += "="  # \mathrel{+}= is the single relation "+=" (no gap between the two)
                i += 1
        elif child.tag == "mo" and not child.text and not child.attrib and following is not None:
            # \operatorname{log\_softmax}: an empty operator, then the name spelt as a row of letters.
            if following.tag == "mrow" and all(g.tag in _TOKENS and not len(g) for g in following):
                child = ET.Element("mi")
                child.text = "".join(following.itertext())
                i += 1
        elif child.tag == "mspace" and child.get("width") is not None:
            width = child.get("width", "")
            if width.lstrip().startswith("-") or width.startswith("negative"):
                i += 1  # \! : negative spaces are invalid in MathML Core; the gap it removes is not there
                continue
            child.set("width", _NAMED_SPACES.get(width, width))
        elif child.tag in ("mover", "munder") and len(child) == 2 and child[1].tag == "mo":
            _repair_accent(child)
        elif child.tag == "mo" and child.text == "/" and not child.attrib:
            child.set("lspace", "0em")  # TeX's / is an ordinary symbol: G/B, not G / B
            child.set("rspace", "0em")
        elif child.tag in _LIMITS and len(child) and child[0].tag == "mo" and child[0].text in _BIG_OPERATORS:
            # \sum_i comes out as msub, \sum_{ij} as munder: limits go below in display maths,
            # beside in inline maths (movablelimits), as in TeX.
            child.tag = _LIMITS[child.tag]
        elif child.tag == "mo" and child.text in _BARS and not child.get("fence"):
            child.set("lspace", "0em")  # a | between others would get a relation's spacing: e^{-|x|}
            child.set("rspace", "0em")
            child.set("stretchy", "false")  # \lvert is one size; \left| is the one that grows
        elif child.tag == "mo" and child.text in _SIGNS and not child.attrib:
            before = out[-1] if out else None
            if before is None or (before.tag == "mo" and before.text in _BEFORE_UNARY):
                child.set("form", "prefix")  # = -G: a unary minus, no binary-operator spacing
        elif child.tag == "mo" and child.text in _ORDINARY:
            child.tag = "mi"  # no operator spacing: dL = ∂L/∂T, not d L = ∂ L / ∂ T
            child.attrib = {"mathvariant": "normal"}
        elif (
            child.tag == "mo"
            and child.get("fence") == "true"
            and child.get("stretchy") == "true"
            and not _is_tall(parent)
        ):
            child.set("stretchy", "false")
        if (
            child.tag == "mo"
            and parent.tag in ("mrow", "math", "mstyle", "mpadded", "mtd")
            and child.text
            and _FUNCTION_NAME.fullmatch(child.text)
            and child.text != "mod"  # \bmod is a binary operator and keeps its spacing
            and "movablelimits" not in child.attrib
        ):
            child.tag = "mi"  # \max, \operatorname{name}: a function name, upright, no operator spacing
            child.attrib.clear()
        out.append(child)
        i += 1
    if out != children:
        for old in children:
            parent.remove(old)
        parent.extend(out)


def _repair_accent(script: ET.Element) -> None:
    """``\\bar X``: an accent sits on the letter (an over-script would float above it)."""
    base, mark = script[0], script[1]
    text = mark.text or ""
    single = base.tag in _TOKENS or (base.tag == "mrow" and len(base) == 1 and base[0].tag in _TOKENS)
    mark.attrib.pop("accent", None)  # latex2mathml puts it on the <mo>; it belongs on <mover>/<munder>
    if script.tag == "munder":
        if text == "\u2015":  # \underline
            script.set("accentunder", "true")
            mark.set("stretchy", "true")
        return
    if text in _ACCENTS or (single and text in _NARROW_ACCENTS):
        script.set("accent", "true")
        mark.text = _ACCENTS.get(text) or _NARROW_ACCENTS[text]
        mark.set("stretchy", "false")
    elif text in _WIDE_ACCENTS:
        script.set("accent", "true")
        mark.text = _WIDE_ACCENTS[text]
        mark.set("stretchy", "true")


def _is_tall(row: ET.Element) -> bool:
    return any(
        e.tag in _TALL or (e.tag == "mo" and (e.text in _BIG_OPERATORS or e.text in _INTEGRALS)) for e in row.iter()
    )


def _restyle(element: ET.Element) -> None:
    """Chromium ignores ``mathvariant`` other than ``normal`` on tokens: spell the style out."""
    variant = element.get("mathvariant")
    if variant is None or variant == "normal" or element.text is None:
        return
    if element.tag == "mtext":
        if variant in _TEXT_STYLES:
            element.set("style", _TEXT_STYLES[variant])
            del element.attrib["mathvariant"]
        return
    if element.tag in ("mi", "mn") and variant == "italic" and len(element.text) == 1:
        del element.attrib["mathvariant"]  # a one-letter mi is italic already
        return
    table = _VARIANTS.get(variant)
    if element.tag in ("mi", "mn") and table is not None and all(c in table for c in element.text):
        element.text = "".join(table[c] for c in element.text)
        if element.tag == "mi" and len(element.text) > 1:
            element.set("mathvariant", "normal")  # several characters would otherwise be upright anyway
        else:
            del element.attrib["mathvariant"]


def _is_function_name(element: ET.Element) -> bool:
    return element.tag == "mi" and element.text is not None and _FUNCTION_NAME.fullmatch(element.text) is not None


_OPENING = {"(", "[", "{", "\u27e8", "\u230a", "\u2308", "|", "\u2016"}


def _leftmost(element: ET.Element) -> ET.Element:
    while element.tag == "mrow" and len(element):
        element = element[0]
    return element


def _space_function_names(parent: ET.Element) -> None:
    """``\\log A`` -> log, function application, thin space, A; ``\\log(A)``: no space; ``offset mod n``: none."""
    children = list(parent)
    out: list[ET.Element] = []
    for i, child in enumerate(children):
        out.append(child)
        following = children[i + 1] if i + 1 < len(children) else None
        if following is None or not _is_function_name(child):
            continue
        first = _leftmost(following)
        if first.tag == "mo" and first.text not in _OPENING:
            continue  # an operator follows (mod, /, =): it brings its own spacing
        apply = ET.Element("mo")
        apply.text = _FUNCTION_APPLICATION
        out.append(apply)
        if first.tag != "mo":
            out.append(ET.Element("mspace", width=_THIN_SPACE))
    if len(out) != len(children):
        for old in children:
            parent.remove(old)
        parent.extend(out)


def _annotate(root: ET.Element, source: str) -> None:
    """Keep the TeX source in the page (copy, search, screen readers) without showing it."""
    children = list(root)
    for child in children:
        root.remove(child)
    semantics = ET.SubElement(root, "semantics")
    if len(children) == 1 and children[0].tag == "mrow":
        semantics.append(children[0])
    else:
        ET.SubElement(semantics, "mrow").extend(children)
    annotation = ET.SubElement(semantics, "annotation", encoding="application/x-tex")
    annotation.text = source
