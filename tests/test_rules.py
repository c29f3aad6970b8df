"""Chain rules as maths (matgrad/viz/rules.py): the docstring notation to LaTeX, every op's rule
through the docs' renderer (matgrad._mathml), and the explorer's font covering what they draw.

The explorer (tests/test_explore.py) shows these; a rule that does not read falls back to code.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_table import all_op_classes

import matgrad as mg
from matgrad import viz
from matgrad._mathml import MATHML_NAMESPACE, latex_to_mathml
from matgrad.autograd.function import FunctionOp
from matgrad.autograd.graph import Op
from matgrad.viz import explorer
from matgrad.viz.explorer import _MATMUL_RULES, parse_rule
from matgrad.viz.rules import RuleSyntaxError, rule_to_latex, symbol_to_latex

ROOT = Path(__file__).resolve().parent.parent

# docstring rule -> (LaTeX, note): the notation, one feature a row, as docs/backprop.md writes it
TABLE = [
    ("dA = G @ B.T", r"\bar A = G B^\top", ""),
    ("dB = A.T @ G", r"\bar B = A^\top G", ""),
    ("Y = X @ W.T + b", r"Y = X W^\top + b", ""),
    ("C = A @ B @ C", "C = A B C", ""),
    ("dA = (G @ B).T", r"\bar A = (G B)^\top", ""),
    ("C = A * B (element-wise)", r"C = A \odot B", "(element-wise)"),
    ("dx = G (sigmoid(x) - y)", r"\bar x = G \odot (\sigma(x) - y)", ""),  # juxtaposition is ⊙ too
    ("dy = -G x", r"\bar y = -G \odot x", ""),
    ("dA = G * -A", r"\bar A = G \odot (-A)", ""),
    # numbers and constants multiply plainly, in front
    ("dA = G * p * A ** (p - 1)", r"\bar A = p\, G \odot A^{p - 1}", ""),
    ("dA = 3 G A ** 2", r"\bar A = 3 G \odot A^{2}", ""),
    ("dA = G / (2 C)", r"\bar A = G / (2 C)", ""),
    ("C = 2 * 3 * A", r"C = 2 \cdot 3 A", ""),
    ("C = log(1 + exp(beta A)) / beta", r"C = \log(1 + e^{\beta\, A}) / \beta", ""),
    ("dB = -G * (A / B) / B", r"\bar B = -G \odot (A / B) / B", ""),
    ("dA = G * (1 - C^2)", r"\bar A = G \odot (1 - C^{2})", ""),
    ("C = 1 / (1 + exp(-A))", r"C = 1 / (1 + e^{-A})", ""),
    ("C = sqrt(A)", r"C = \sqrt{A}", ""),
    ("C = log(A)", r"C = \log A", ""),
    ("C = tanh(A)", r"C = \tanh A", ""),
    ("C = |A|", r"C = \lvert A \rvert", ""),
    ("L = max(x, 0) - x y + log(1 + exp(-|x|))", r"L = \max(x, 0) - x \odot y + \log(1 + e^{-\lvert x \rvert})", ""),
    ("dA = G * sign(A)", r"\bar A = G \odot \operatorname{sign}(A)", ""),
    ("dT = -G * log_softmax(X)", r"\bar T = -G \odot \operatorname{log\_softmax}(X)", ""),
    ("dG = Take(dC)", r"\bar G = \operatorname{Take}(\bar C)", ""),
    # sums
    ("C = sum(A) / N over all", r"C = \sum A / N", "over all"),
    ("C = exp(A) / sum(exp(A), axis)", r"C = e^{A} / \sum_{\text{axis}} e^{A}", ""),
    ("dA = C * (G - sum(G * C, axis))", r"\bar A = C \odot (G - \sum_{\text{axis}} (G \odot C))", ""),
    ("C = log(sum(exp(A), axis))", r"C = \log \sum_{\text{axis}} e^{A}", ""),
    ("db = sum_rows(G)", r"\bar b = \sum_{\text{rows}} G", ""),
    ("L_i = -sum_j T_ij log_softmax(X)_ij", r"L_i = -\sum_j T_{ij} {\operatorname{log\_softmax}(X)}_{ij}", ""),
    ("C = (A - max) - log(x)", r"C = (A - \max) - \log x", ""),
    # where, conditions, Iverson brackets
    ("dA = where(A > 0, G, 0) (0 at A = 0)", r"\bar A = G \odot [A > 0]", "(0 at A = 0)"),
    ("dA = where(A > 0, 0, G)", r"\bar A = G \odot [A \le 0]", ""),
    ("dA = where(cond, G, 0)", r"\bar A = G \odot \text{cond}", ""),
    ("dB = where(cond, 0, G)", r"\bar B = G \odot (1 - \text{cond})", ""),
    (
        "dA = where(M, G / count(M), 0), M = [A == C]",
        r"\bar A = G \odot M / \operatorname{count}(M),\quad M = [A = C]",
        "",
    ),
    ("C = where(cond, A, B)", r"C = A \;\text{where}\; \text{cond},\; \text{else}\; B", ""),
    ("C = A if A > 0 else s * A", r"C = A \;\text{where}\; A > 0,\; \text{else}\; s\, A", ""),
    ("C = A >= B", r"C = A \ge B", ""),
    # names, indices, blocks
    ("dAi = the slice of G where Ai sits", r"\bar A_i =", "the slice of G where Ai sits"),
    ("C = [A1 | A2 | ...] along an axis", r"C = [\, A_1 \mid A_2 \mid \cdots \,]", "along an axis"),
    ("L_i = logsumexp(X_i) - X_i[t_i]", r"L_i = \operatorname{logsumexp}(X_i) - X_{i, t_i}", ""),
    ("C[i] = A[rows[i], cols[i]]", r"C_{i} = A_{\text{rows}_{i}, \text{cols}_{i}}", ""),
    ("C = A[rows][:, cols]", r"C = A_{\text{rows}}[:, \text{cols}]", ""),
    ("dA = G / (A + eps)", r"\bar A = G / (A + \epsilon)", ""),
    ("dA = G * scale", r"\bar A = G \odot \text{scale}", ""),  # a word where an operand must be
    # prose after the formula is the note; a leading comma or colon goes
    ("C = A broadcast to (m, n)", "C = A", "broadcast to (m, n)"),
    ("dA = G read as A's shape", r"\bar A = G", "read as A's shape"),
    ("C = the row-major elements of A", "C =", "the row-major elements of A"),
    ("dA = G * sign(A), selected: 0 at A = 0", r"\bar A = G \odot \operatorname{sign}(A)", "selected: 0 at A = 0"),
    ("P = unfold(X): the patches", r"P = \operatorname{unfold}(X)", "the patches"),
    ("``C = exp(A)``", "C = e^{A}", ""),
]


@pytest.mark.parametrize(("rule", "tex", "note"), TABLE, ids=[row[0] for row in TABLE])
def test_rules_read_as_the_docs_write_them(rule: str, tex: str, note: str) -> None:
    found = rule_to_latex(rule)
    assert (found.tex, found.note) == (tex, note)
    latex_to_mathml(found.tex)  # and the docs' renderer draws it


@pytest.mark.parametrize(
    "rule",
    [
        "Something without a rule",  # no formula
        "dA = G * foo(bar baz)",  # prose where an operand must be
        "dx = f'(x) G",  # a prime
        "dA = G +",  # an operator with nothing after it
        "C: the elements of A",  # no "="
        "",
        "dA = (G",
    ],
)
def test_what_is_not_a_rule_says_so(rule: str) -> None:
    with pytest.raises(RuleSyntaxError):
        rule_to_latex(rule)


_PIECES = ["A", "dA", "G", "=", "@", ".T", "*", "/", "**", "(", ")", "[", "]", "|", ",", ":", "-", "+", "0", "2"]
_PIECES += ["exp(", "sum(", "sum_j", "where(", "if", "else", "the", "beta", "axis", "==", ">", "...", "_ij", "A1"]
_PIECES += ["T_ij", "'", "cond", "max", "f(", "Take(", " "]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_any_text_is_a_formula_or_says_it_is_not(pieces: list[str]) -> None:
    """What a user's docstring may hold never breaks the page: a rule, or RuleSyntaxError."""
    for text in ("dA = " + " ".join(pieces), "".join(pieces)):
        try:
            found = rule_to_latex(text)
        except RuleSyntaxError:
            continue
        with contextlib.suppress(ValueError):  # the explorer shows code for what cannot be drawn
            latex_to_mathml(found.tex)
    with pytest.raises(RuleSyntaxError):
        rule_to_latex("dA = " + "(" * 5000 + "G" + ")" * 5000)


def test_symbols() -> None:
    assert [symbol_to_latex(s) for s in ("dA", "dAi", "A1", "dA2", "T_ij", "dx", "G", "beta", "cond", "max")] == [
        r"\bar A",
        r"\bar A_i",
        "A_1",
        r"\bar A_2",
        "T_{ij}",
        r"\bar x",
        "G",
        r"\beta",
        r"\text{cond}",
        r"\max",
    ]
    assert rule_to_latex("dA = where(M, G / count(M), 0), M = [A == C]").symbols == ("dA", "M", "G", "A", "C")
    assert rule_to_latex("C = A broadcast to (m, n)").source == "C = A"


def _doc(cls: type[Op]) -> str | None:
    return next((c.__doc__ for c in cls.__mro__ if c.__doc__ and c not in (Op, object)), None)


def every_rule() -> list[tuple[str, str]]:
    """(op, rule) for every rule of every op in matgrad: its docstring's, and MatMul's four."""
    rules = []
    for cls in sorted(all_op_classes() - {FunctionOp}, key=lambda c: c.__name__):
        forward, backward = parse_rule(_doc(cls))
        assert backward, f"{cls.__name__}: no rule in its docstring ({forward!r})"
        rules += [(cls.__name__, r) for r in (forward, *backward)]
    for forward, backward in _MATMUL_RULES.values():
        rules += [("MatMul", r) for r in (forward, *backward)]
    return rules


def test_every_ops_rule_renders_to_mathml() -> None:
    rules = every_rule()
    assert len(rules) > 90
    for op, rule in rules:
        found = rule_to_latex(rule)  # raises for a rule that does not read
        assert found.tex and "=" in found.tex, (op, rule)
        assert latex_to_mathml(found.tex).startswith("<math"), (op, rule)


def _italic(c: str) -> str:
    """What a one-letter <mi> is drawn as (MathML's automatic italics)."""
    if "A" <= c <= "Z":
        return chr(0x1D434 + ord(c) - ord("A"))
    if c == "h":
        return "\u210e"
    if "a" <= c <= "z":
        return chr(0x1D44E + ord(c) - ord("a"))
    if "\u03b1" <= c <= "\u03c9":
        return chr(0x1D6FC + ord(c) - 0x3B1)
    if "\u0391" <= c <= "\u03a9":
        return chr(0x1D6E2 + ord(c) - 0x391)
    return c


def _drawn(mathml: str) -> set[str]:
    """The characters a browser draws for ``mathml`` (not the TeX annotation)."""
    chars: set[str] = set()
    for e in ET.fromstring(mathml).iter():
        tag = e.tag.replace(f"{{{MATHML_NAMESPACE}}}", "")
        if tag == "annotation" or not e.text:
            continue
        one_letter = tag == "mi" and len(e.text) == 1 and e.get("mathvariant") is None
        chars.update(_italic(e.text) if one_letter else e.text)
    return chars


def test_the_explorers_font_draws_every_rule() -> None:
    from fontTools.ttLib import TTFont

    font = TTFont(ROOT / "matgrad" / "viz" / "fonts" / "matgrad-math.woff")
    assert "MATH" in font and font["name"].getDebugName(1) == "matgrad Math"
    ours = set(font.getBestCmap())
    theirs = set(TTFont(ROOT / "docs" / "assets" / "fonts" / "latinmodern-math.otf").getBestCmap())
    drawn: set[str] = set()
    for _, rule in every_rule():
        drawn |= _drawn(latex_to_mathml(rule_to_latex(rule).tex))
    for name in ("G", "dA", "dAi", "A1", "beta", "cond", "T_ij", "dx"):
        drawn |= _drawn(latex_to_mathml(symbol_to_latex(name)))
    missing = {c for c in drawn if ord(c) not in ours}
    # U+02C9, the \bar accent that matgrad._mathml writes, is not in Latin Modern Math itself:
    # the browser takes it from another font, in the docs as in the explorer.
    assert missing == {c for c in drawn if ord(c) not in theirs} == {"\u02c9"}, sorted(map(hex, map(ord, missing)))
    assert {"\U0001d434", "\u2299", "\u22a4", "\u2211"} <= drawn  # italic A, odot, top, sum: checked, not skipped


# ---------------------------------------------------------------------------------------------
# in the explorer's data
# ---------------------------------------------------------------------------------------------


def _maths_and_code(page: viz.Explorer) -> tuple[int, list[str]]:
    blobs = [s["html"] for s in page.payload["steps"]] + [r for n in page.payload["nodes"] for r in n.get("rule", [])]
    text = "".join(blobs)
    return text.count('class="eq fwd maths"') + text.count('class="eq bwd maths"'), re.findall(
        r'<div class="eq (?:fwd|bwd) code">(.*?)</div>', text
    )


def test_the_explorer_shows_every_rule_of_a_graph_as_maths() -> None:
    mg.manual_seed(0)
    a = mg.rand(3, 4, requires_grad=True)
    b = mg.rand(4, 2, requires_grad=True)
    h = (a @ b).relu() + (a.T.sigmoid() * 2.0).sum(axis=0).T.mean()
    y = mg.where(h > 0.5, h.exp(), h.tanh()).log_softmax(axis=1) ** 2
    page = viz.explore(y.sum() / (b.abs().max() + 1.0))
    maths, code = _maths_and_code(page)
    assert maths > 20 and code == []
    # each formula is in the page once; the steps point at it
    refs = {int(k) for s in page.payload["steps"] for k in re.findall(r'data-m="(\d+)"', s["html"])}
    assert refs <= set(range(len(page.payload["maths"]))) and len(page.payload["maths"]) == len(
        set(page.payload["maths"])
    )
    assert all(m.startswith("<math") for m in page.payload["maths"])


class Free(mg.Function):
    """Triples its input, in words only."""

    @staticmethod
    def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
        return x * 3.0

    @staticmethod
    def backward(ctx: Any, grad: mg.Tensor2D) -> mg.Tensor2D:
        """The output is three times x;  dA = G * (three, by hand)."""
        return grad * 3.0


def test_a_rule_that_does_not_read_is_shown_as_code(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mg.rand(2, 2, requires_grad=True)
    page = viz.explore(Free.apply(x).sum())
    _, code = _maths_and_code(page)
    assert any("by hand" in c for c in code)  # the user's words, with shapes, as before
    assert "dA<sub>2\u00d72</sub>" in "".join(code)

    # and without latex2mathml (or with a formula it cannot draw) every rule is code, nothing breaks
    def missing(tex: str, display: bool = False) -> str:
        raise ImportError("rendering maths needs latex2mathml")

    explorer._mathml.cache_clear()
    monkeypatch.setattr(explorer, "latex_to_mathml", missing)
    try:
        a = mg.rand(2, 3, requires_grad=True)
        page = viz.explore((a @ a.T).sum())
    finally:
        explorer._mathml.cache_clear()
    maths, code = _maths_and_code(page)
    assert maths == 0 and page.payload["maths"] == []
    assert "dA = G @ B.T" in [re.sub(r"<sub>.*?</sub>|<[^>]+>", "", c) for c in code]


def test_parse_rule_does_not_split_inside_brackets() -> None:
    doc = inspect.getdoc(mg.functional.Softplus)
    assert parse_rule(doc)[1] == ["dA = G * sigmoid(beta A) (C = A, dA = G above the threshold)"]
