"""matgrad._mathml.latex_to_mathml: LaTeX to MathML that Chromium draws as TeX would, or a ValueError.

Each row is a repair of latex2mathml's output that a page would show wrongly without it (seen in
headless Chromium with Latin Modern Math: tests/test_docs_offline.py and scripts/make_maths_screenshot.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from matgrad._mathml import MATHML_NAMESPACE, latex_to_mathml


def _tree(tex: str, display: bool = False) -> ET.Element:
    """The output parsed as XML, namespaces dropped (it must be well-formed)."""
    root = ET.fromstring(latex_to_mathml(tex, display=display))
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def _row(tex: str) -> str:
    """The MathML of the formula, as written, between <semantics> and the annotation."""
    mathml = latex_to_mathml(tex)
    return mathml[mathml.index("<semantics>") + len("<semantics>") : mathml.index("<annotation")]


def test_a_math_element_with_the_source_as_annotation() -> None:
    inline, block = _tree("a < b"), _tree(r"\frac{a}{b}", display=True)
    assert latex_to_mathml("x").startswith(f'<math xmlns="{MATHML_NAMESPACE}" display="inline">')
    assert inline.tag == "math" and inline.get("display") == "inline"
    assert block.get("display") == "block"
    semantics = inline[0]
    assert semantics.tag == "semantics" and [c.tag for c in semantics] == ["mrow", "annotation"]
    assert semantics[1].get("encoding") == "application/x-tex" and semantics[1].text == "a < b"
    assert "a &lt; b" in latex_to_mathml("a < b")  # escaped for HTML, not raw


@pytest.mark.parametrize(
    ("tex", "present", "absent"),
    [
        # function names: upright, no operator spacing; a thin space before an operand, none before (
        (r"\max(A, 0)", ["<mi>max</mi><mo>\u2061</mo><mo"], ["<mo>max</mo>", "mspace"]),
        (r"\log A", ['<mi>log</mi><mo>\u2061</mo><mspace width="0.1667em" /><mi>A</mi>'], []),
        (r"\operatorname{softmax}(A)", ["<mi>softmax</mi>"], ["<mo>softmax</mo>"]),
        (r"\operatorname{log\_softmax}(A)", ["<mi>log_softmax</mi>"], ["<mo />", "<mi>l</mi>"]),
        (r"j = i \bmod n", ["<mo>mod</mo>"], []),
        (r"\operatorname{offset} \bmod n", ["<mi>offset</mi><mo>mod</mo>"], ["mspace"]),
        # styles as Unicode mathematical alphanumerics, which Chromium draws (it ignores mathvariant)
        (r"\mathbf 1_m", ["<mn>\U0001d7cf</mn>"], ["mathvariant"]),
        (r"\mathbf{W} \boldsymbol{x}", ["<mi>\U0001d416</mi>", "<mi>\U0001d499</mi>"], ["mathvariant"]),
        (r"\mathbb{R}", ["<mi>\u211d</mi>"], []),
        (r"\texttt{mean}", ['<mtext style="font-family: monospace">mean</mtext>'], ["mathvariant"]),
        # accents on the letter, in characters that Latin Modern Math has
        (r"\bar X", ['<mover accent="true"><mi>X</mi><mo stretchy="false">\u02c9</mo></mover>'], ["\u00af"]),
        (r"\hat b", ['<mo stretchy="false">\u02c6</mo>'], []),
        (r"\overline{AB}", ['<mover accent="true">', '<mo stretchy="true">\u2015</mo>'], []),
        # spacing as in TeX
        (r"\partial L / \partial T", ['<mi mathvariant="normal">\u2202</mi>', 'lspace="0em" rspace="0em">/'], []),
        (r"\bar B = -G", ['<mo form="prefix">\u2212</mo>'], []),
        (r"a - b", ["<mo>\u2212</mo>"], ["prefix"]),
        (r"e^{-|x|}", ['<mo stretchy="false" lspace="0em" rspace="0em">|</mo>'], []),
        (r"\bar X_i \mathrel{+}= G", ["<mo>+=</mo>"], ["<mrow><mo>+</mo></mrow>"]),
        (r"\log\!\left(1 + x\right)", ['<mo stretchy="false" fence="true" form="prefix">(</mo>'], ["mspace"]),
        (r"\left(\frac{a}{b}\right)", ['<mo stretchy="true" fence="true" form="prefix">(</mo>'], []),
        (r"\text{in\_features}", ["<mtext>in_features</mtext>"], ["\\_"]),
        (r"\frac1n \sum_i x_i", ["<munder><mo>\u2211</mo><mi>i</mi></munder>"], ["<msub><mo>"]),
        (r"a\,b\quad c", ['<mspace width="0.167em" />'], ["mathspace"]),
    ],
)
def test_repairs(tex: str, present: list[str], absent: list[str]) -> None:
    row = _row(tex)
    for text in present:
        assert text in row, f"{tex}: expected {text!r} in {row}"
    for text in absent:
        assert text not in row, f"{tex}: did not expect {text!r} in {row}"


@pytest.mark.parametrize(
    ("tex", "message"),
    [
        (r"\foo x", r"unknown command \foo"),
        (r"\text{a \textbf{b}}", r"unknown command \textbf"),
        ("x^", "MissingSuperScriptOrSubscriptError"),
        (r"\begin{aligned} a &= b \\ c &= d \end{aligned}", "alignment"),
        (r"a \\ b", "line breaks"),
        (r"\text{where $x > 0$}", r"maths inside \text"),
        ("  ", "empty"),
    ],
)
def test_refuses_what_it_cannot_draw(tex: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"cannot render|empty") as info:
        latex_to_mathml(tex)
    assert message in str(info.value)
    if tex.strip():
        assert repr(tex.strip()) in str(info.value)  # the formula is named
