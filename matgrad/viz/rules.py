r"""Chain rules as maths: an op's docstring rule (`dA = G @ B.T`) in LaTeX (`\bar A = G B^\top`).

Every op states its rule in its docstring in a plain, Python-like notation
(`C = A @ B;  dA = G @ B.T,  dB = A.T @ G`). The explorer shows each rule as maths drawn by the
renderer of the documentation (`matgrad._mathml.latex_to_mathml`), so `rule_to_latex` reads that
notation and writes it the way docs/backprop.md does:

| docstring | LaTeX |
| --- | --- |
| `A @ B`, `A.T` | `A B`, `A^\top`: a matrix product is juxtaposition |
| `A * B`, `x y` | `A \odot B`, `x \odot y`: element-wise |
| `G * p * A ** (p - 1)` | `p\, G \odot A^{p - 1}`: a number or a constant (`p`, `N`, `beta`) in front |
| `A / B`, `A ** p`, `C^2` | `A / B`, `A^{p}`, `C^{2}` |
| `dA`, `dAi`, `G` | `\bar A`, `\bar A_i`, `G` (the upstream gradient `G = \bar C`) |
| `exp(A)`, `log(A)`, `sqrt(A)` | `e^{A}`, `\log A`, `\sqrt{A}` |
| `sigmoid(A)`, `softmax(A)` | `\sigma(A)`, `\operatorname{softmax}(A)` (and so any other name) |
| `sum(A)`, `sum(A, axis)` | `\sum A`, `\sum_{\text{axis}} A` |
| `sum_rows(G)`, `sum_j T_ij` | `\sum_{\text{rows}} G`, `\sum_j T_{ij}` |
| `where(A > 0, G, 0)` | `G \odot [A > 0]` (an Iverson bracket) |
| `where(M, G, 0)`, `where(c, 0, G)` | `G \odot M`, `G \odot (1 - c)` |
| `where(c, X, Y)`, `X if c else Y` | `X \;\text{where}\; c,\; \text{else}\; Y` |
| `[A == C]`, `X_i[t_i]`, `C[i]` | `[A = C]`, `X_{i, t_i}`, `C_{i}` |

and `|A|` is `\lvert A \rvert`, the blocks `[A1 | A2 | ...]` are `[\, A_1 \mid A_2 \mid \cdots \,]`.

A rule may end in prose, which stays prose: `C = sum(A) over all / axis 0 / axis 1` is the
formula `C = \sum A` and the note `over all / axis 0 / axis 1`; `C = the row-major elements of A
read as (p, q)` is `C =` and its note. A word where the formula goes on ends the formula; a rule
that cannot be read to the end of its formula raises `RuleSyntaxError` (the explorer then shows
the rule as code).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, TypeVar, Union

__all__ = ["RuleLatex", "RuleSyntaxError", "rule_to_latex", "symbol_to_latex"]


class RuleSyntaxError(ValueError):
    """A rule that this notation does not cover (a user's free-text docstring, say)."""


@dataclass(frozen=True)
class RuleLatex:
    """One rule: its formula in LaTeX, the prose after it, and the docstring symbols it uses."""

    tex: str
    note: str = ""
    symbols: tuple[str, ...] = ()
    source: str = ""  # the rule's text up to the note


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------

_GREEK_NAMES = "alpha beta gamma delta epsilon zeta eta theta kappa lambda mu nu xi pi rho sigma tau phi chi psi omega"
_GREEK = {*_GREEK_NAMES.split(), *["Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"]}
_GREEK_ALIASES = {"eps": "epsilon", "lam": "lambda"}
# Constants that multiply plainly (p A, not p ⊙ A): the rules' exponents, slopes, counts, temperatures.
_SCALARS = {"p", "s", "N", "n", "k", "q"} | _GREEK | set(_GREEK_ALIASES)
# Multi-letter names the rules use as values (upright text, as docs/backprop.md writes \text{cond}).
_WORDS = {"cond", "mask", "rows", "cols", "axis", "shape", "target", "targets", "weight", "bias"}
_BARE_OPERATORS = {"max": r"\max", "min": r"\min"}  # ``A - max``: the row maximum

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SYMBOL = re.compile(r"(?P<base>[A-Za-z])(?:(?P<digits>\d+)|(?P<lower>(?<=[A-Z])[a-z]{1,2})|_(?P<sub>[A-Za-z0-9]+))?")
_GRADIENT = re.compile(r"d(?P<name>[A-Za-z](?:\d+|(?<=[A-Z])[a-z]{1,2}|_[A-Za-z0-9]+)?)")


def _subscript(sub: str) -> str:
    """``i``, ``ij``, ``12`` in italics and digits; a word as text (``\\text{rows}``)."""
    if sub.isdigit() or (sub.isalpha() and len(sub) <= 3):
        return sub if len(sub) == 1 else "{" + sub + "}"
    return r"{\text{" + sub.replace("_", r"\_") + "}}"


def _is_symbol(name: str) -> bool:
    return _SYMBOL.fullmatch(name) is not None or _GRADIENT.fullmatch(name) is not None


@functools.lru_cache(maxsize=512)
def symbol_to_latex(name: str) -> str:
    """One name of the docstring notation in LaTeX: ``dA`` -> ``\\bar A``, ``A1`` -> ``A_1``,
    ``T_ij`` -> ``T_{ij}``, ``beta`` -> ``\\beta``, ``cond`` -> ``\\text{cond}``."""
    grad = _GRADIENT.fullmatch(name)
    if grad is not None:
        inner = symbol_to_latex(grad["name"])
        base, _, rest = inner.partition("_")
        return rf"\bar {base}" + (f"_{rest}" if rest else "")
    m = _SYMBOL.fullmatch(name)
    if m is not None:
        sub = m["digits"] or m["lower"] or m["sub"]
        return m["base"] + (f"_{_subscript(sub)}" if sub else "")
    if name in _GREEK or name in _GREEK_ALIASES:
        return "\\" + _GREEK_ALIASES.get(name, name)
    if name in _BARE_OPERATORS:
        return _BARE_OPERATORS[name]
    if _IDENT.fullmatch(name):
        return r"\text{" + name.replace("_", r"\_") + "}"
    raise RuleSyntaxError(f"{name!r} is not a name")


# ---------------------------------------------------------------------------------------------
# the expression tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    """``kind`` with its operands; ``text``: an operator, a function name or a subscript."""

    kind: str
    args: tuple[_Tree, ...] = ()
    text: str = ""


_Tree = Union[_Node, str]  # a str: a name or a number, as written
_T = TypeVar("_T")


def _n(kind: str, *args: _Tree, text: str = "") -> _Node:
    return _Node(kind, args, text)


class _Stop(Exception):
    """This alternative does not read here: the caller backtracks."""


_FUNCTIONS = {  # name -> its LaTeX; exp, sqrt, abs, sum and where are written otherwise (_Writer.w_call)
    "log": r"\log",
    "tanh": r"\tanh",
    "sin": r"\sin",
    "cos": r"\cos",
    "max": r"\max",
    "min": r"\min",
    "sigmoid": r"\sigma",
}
_TIGHT = {"log", "tanh", "sin", "cos"}  # \log A: no brackets around one symbol, as in TeX
_KEYWORDS = {"if", "else", "for", "and", "or", "not", "in", "is"}
_COMPARISONS = {"==": "=", "!=": r"\ne", ">=": r"\ge", "<=": r"\le", ">": ">", "<": "<"}
_NEGATED = {"==": "!=", "!=": "==", ">=": "<", "<=": ">", ">": "<=", "<": ">="}
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<ident>[A-Za-z][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|==|!=|>=|<=|\.\.\.|\.T\b|[-+*/@^<>()\[\],|:=]))"
)
_SUBSCRIPT = re.compile(r"_([A-Za-z0-9]+)\b")


class _Parser:
    """Recursive descent over the rule's text, with Python's precedence (``**`` > unary ``-`` >
    ``* / @`` and juxtaposition > ``+ -`` > comparisons > ``if else``). It stops, without
    failing, where prose begins; ``pos`` is then where the note starts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.names: list[str] = []  # the symbols read, for the notes and the legend

    # -- tokens --------------------------------------------------------------------------------

    def peek(self) -> tuple[str, str, bool]:
        """``(kind, text, spaced)``: the next token (kind ``""`` at the end or at anything else)."""
        m = _TOKEN.match(self.text, self.pos)
        if m is None or m.lastgroup is None:
            return "", "", False
        return m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) > self.pos

    def take(self) -> str:
        m = _TOKEN.match(self.text, self.pos)
        assert m is not None and m.lastgroup is not None
        self.pos = m.end()
        return m.group(m.lastgroup)

    def at_op(self, *ops: str) -> bool:
        kind, text, _ = self.peek()
        return kind == "op" and text in ops

    def accept(self, op: str) -> bool:
        if self.at_op(op):
            self.take()
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise _Stop

    def attempt(self, parse: Callable[[], _T]) -> _T | None:
        """``parse()``, or ``None`` with the position put back where it does not read."""
        start, names = self.pos, len(self.names)
        try:
            return parse()
        except _Stop:
            self.pos = start
            del self.names[names:]
            return None

    # -- grammar -------------------------------------------------------------------------------

    def conditional(self) -> _Tree:
        """``X if c else Y``, or a comparison."""
        value = self.comparison()
        if self.peek()[:2] != ("ident", "if"):
            return value
        self.take()
        cond = self.comparison()
        if self.peek()[:2] != ("ident", "else"):
            raise _Stop
        self.take()
        return _n("choose", cond, value, self.conditional())

    def comparison(self) -> _Tree:
        left = self.arith()
        kind, text, _ = self.peek()
        if kind == "op" and text in _COMPARISONS:
            self.take()
            return _n("cmp", left, self.arith(), text=text)
        return left

    def arith(self) -> _Tree:
        left = self.term()
        while self.at_op("+", "-"):
            start = self.pos
            op = self.take()
            right = self.attempt(self.term)
            if right is None:
                self.pos = start
                break
            left = _n("add" if op == "+" else "minus", left, right)
        return left

    def term(self) -> _Tree:
        left = self.unary()
        while True:
            kind, text, _ = self.peek()
            if kind == "op" and text in ("*", "/", "@"):
                start = self.pos
                self.take()
                right = self.attempt(self.unary)
                if right is None:
                    self.pos = start
                    return left
                left = _n({"*": "mul", "/": "div", "@": "matmul"}[text], left, right)
            elif kind in ("ident", "num") or (kind == "op" and text == "("):  # x y, 2 C, G (1 - C)
                right = self.attempt(lambda: self.unary(juxtaposed=True))
                if right is None:
                    return left
                left = _n("mul", left, right)
            else:
                return left

    def unary(self, juxtaposed: bool = False) -> _Tree:
        if not juxtaposed and self.accept("-"):
            return _n("neg", self.unary())
        kind, text, _ = self.peek()
        if kind == "ident" and text.startswith("sum_") and not self.call_follows():
            self.take()  # sum_j T_ij ...: a big operator over the product after it
            return _n("bigsum", self.term(), text=text[4:])
        base = self.postfix(juxtaposed)
        if self.at_op("**", "^"):
            self.take()
            return _n("pow", base, self.unary())
        return base

    def postfix(self, juxtaposed: bool) -> _Tree:
        node = self.primary(juxtaposed)
        while True:
            kind, text, spaced = self.peek()
            sub = _SUBSCRIPT.match(self.text, self.pos)
            if kind == "op" and text == ".T":
                self.take()
                node = _n("T", node)
            elif kind == "op" and text == "[" and not spaced:  # A[i]; A [i] would be a product
                self.take()
                node = _n("index", node, *self.indices())
            elif sub is not None:  # log_softmax(X)_ij
                self.pos = sub.end()
                node = _n("subscript", node, text=sub.group(1))
            else:
                return node

    def indices(self) -> tuple[_Tree, ...]:
        items: list[_Tree] = []
        while True:
            items.append(_n("slice") if self.accept(":") else self.arith())
            if self.accept("]"):
                return tuple(items)
            self.expect(",")

    def call_follows(self) -> bool:
        """The next name is followed by ``(`` at once: a call."""
        m = _TOKEN.match(self.text, self.pos)
        return m is not None and m.lastgroup == "ident" and self.text.startswith("(", m.end())

    def primary(self, juxtaposed: bool) -> _Tree:
        kind, text, _ = self.peek()
        if kind == "num":
            self.take()
            return text
        if kind == "ident":
            return self.name(juxtaposed)
        if kind != "op":
            raise _Stop
        if text == "(":
            self.take()
            items = [self.conditional()]
            while self.accept(","):
                items.append(self.conditional())
            self.expect(")")
            return _n("group", *items)
        if text == "|" and not juxtaposed:
            self.take()
            inner = self.arith()
            self.expect("|")
            return _n("abs", inner)
        if text == "[" and not juxtaposed:
            self.take()
            blocks = self.attempt(self.blocks)
            if blocks is not None:
                return blocks
            inner = self.comparison()
            self.expect("]")
            return _n("iverson", inner)
        if text == "...":
            self.take()
            return _n("dots")
        raise _Stop

    def blocks(self) -> _Tree:
        """``[A1 | A2 | ...]``: matrices side by side."""
        items: list[_Tree] = []
        while True:
            items.append(_n("dots") if self.accept("...") else self.name(False))
            if self.accept("]"):
                break
            self.expect("|")
        if len(items) < 2:
            raise _Stop
        return _n("blocks", *items)

    def name(self, juxtaposed: bool) -> _Tree:
        kind, text, _ = self.peek()
        if kind != "ident" or text in _KEYWORDS:
            raise _Stop
        start = self.pos
        self.take()
        if self.text.startswith("(", self.pos) and (len(text) > 1 or text.islower()):
            self.take()  # f(x), softmax(A): a call; A(x) is a product
            args = [self.conditional()]
            while self.accept(","):
                args.append(self.conditional())
            self.expect(")")
            return _n("call", *args, text=text)
        known = _is_symbol(text) or text in _SCALARS or text in _WORDS or text in _BARE_OPERATORS
        # Another word is a value only where an operand must be (``G * scale``); side by side
        # with the formula, or followed by a word or a hyphen, it starts the prose (``G read as
        # A's shape``, ``(element-wise)``).
        hyphenated = re.match(r"-[A-Za-z]", self.text[self.pos :]) is not None  # element-wise, row-major
        if not known and (juxtaposed or hyphenated or self.peek()[0] in ("ident", "num")):
            self.pos = start
            raise _Stop
        self.names.append(text)
        return text


# ---------------------------------------------------------------------------------------------
# LaTeX
# ---------------------------------------------------------------------------------------------

# How tightly what a node writes holds together: a condition 0, sums 1, products 2, a matrix
# product 2.2, a big operator 2.5 (it takes the product after it), a sign 3, powers 4, names,
# calls and brackets 5. An operand that holds less tightly than its place needs is bracketed.
_LEVEL = {"choose": 0.0, "cmp": 0.0, "add": 1.0, "minus": 1.0, "mul": 2.0, "div": 2.0, "matmul": 2.2}
_LEVEL |= {"bigsum": 2.5, "neg": 3.0, "pow": 4.0, "T": 4.0}


def _level(node: _Tree) -> float:
    if isinstance(node, str):
        return 5.0
    if node.kind == "call":
        if node.text == "exp":
            return 4.0  # e^{A}
        if node.text == "sum" or node.text.startswith("sum_"):
            return 2.5
        if node.text == "where" and len(node.args) == 3:
            return 2.0 if _zero(node.args[1]) or _zero(node.args[2]) else 0.0
    return _LEVEL.get(node.kind, 5.0)


def _zero(node: _Tree) -> bool:
    return node == "0"


def _is_scalar(node: _Tree) -> bool:
    """A number, a constant (``p``, ``beta``) or an entry (``T_ij``): it multiplies without ⊙."""
    if isinstance(node, str):
        return node[0].isdigit() or node in _SCALARS or re.fullmatch(r"[A-Za-z]_[a-z]{1,3}", node) is not None
    if node.kind == "subscript":
        return True
    if node.kind == "pow":
        return _is_scalar(node.args[0]) and _is_scalar(node.args[1])
    return False


def _factors(node: _Tree) -> list[_Tree]:
    if isinstance(node, _Node) and node.kind == "mul":
        return _factors(node.args[0]) + _factors(node.args[1])
    return [node]


def _unwrap(node: _Tree) -> _Tree:
    """The inside of a bracket written in the rule, where the LaTeX brackets it anyway."""
    while isinstance(node, _Node) and node.kind == "group" and len(node.args) == 1:
        node = node.args[0]
    return node


class _Writer:
    def at(self, node: _Tree, level: float) -> str:
        """``node`` in LaTeX, bracketed when it holds together less tightly than ``level``."""
        tex = self.write(node)
        return f"({tex})" if _level(node) < level else tex

    def write(self, node: _Tree) -> str:
        if isinstance(node, str):
            return node if node[0].isdigit() else symbol_to_latex(node)
        method = getattr(self, "w_" + node.kind)
        return method(node, *node.args)  # type: ignore[no-any-return]

    def w_group(self, node: _Node, *items: _Tree) -> str:
        return "(" + ", ".join(self.write(i) for i in items) + ")"

    def w_add(self, node: _Node, a: _Tree, b: _Tree) -> str:
        return f"{self.at(a, 1)} + {self.at(b, 1)}"

    def w_minus(self, node: _Node, a: _Tree, b: _Tree) -> str:
        return f"{self.at(a, 1)} - {self.at(b, 1.5)}"

    def w_neg(self, node: _Node, a: _Tree) -> str:
        return "-" + self.at(a, 2)

    def w_mul(self, node: _Node, *_: _Tree) -> str:
        return self.product(_factors(node))

    def product(self, factors: list[_Tree]) -> str:
        """Constants first, multiplying plainly (``p\\, G``, ``2C``); the matrices after them joined by ⊙."""
        first = factors[0]
        if isinstance(first, _Node) and first.kind == "neg":  # -G * x: -(G ⊙ x)
            return "-" + self.product(_factors(first.args[0]) + factors[1:])
        scalars = [f for f in factors if _is_scalar(f)]
        ordered = scalars + [f for f in factors if not _is_scalar(f)]
        out = ""
        for i, f in enumerate(ordered):
            part = self.at(f, 2.5 if i == len(ordered) - 1 else 3)
            if i and isinstance(f, _Node) and f.kind == "neg":
                part = f"({part})"  # G ⊙ (-A)
            if i == 0:
                out = part
            elif i >= len(scalars) + 1:
                out += r" \odot " + part
            else:
                before = ordered[i - 1]
                after_number = isinstance(before, str) and before[0].isdigit()
                if after_number and part[:1].isdigit():
                    out += r" \cdot " + part  # 2 \cdot 3, not 23
                elif after_number or part.startswith("(") or i < len(scalars):
                    out += " " + part  # 2C, T_{ij} x_{ij}; a constant before a matrix: p\, G
                else:
                    out += r"\, " + part
        return out

    def w_div(self, node: _Node, a: _Tree, b: _Tree) -> str:
        return f"{self.at(a, 2)} / {self.at(b, 2.5)}"

    def w_matmul(self, node: _Node, a: _Tree, b: _Tree) -> str:
        return f"{self.at(a, 2.2)} {self.at(b, 3.5)}"

    def w_pow(self, node: _Node, base: _Tree, exponent: _Tree) -> str:
        return f"{self.at(base, 5)}^{{{self.write(_unwrap(exponent))}}}"

    def w_T(self, node: _Node, a: _Tree) -> str:
        return self.at(a, 5) + r"^\top"

    def w_subscript(self, node: _Node, a: _Tree) -> str:
        return "{" + self.write(a) + "}_" + _subscript(node.text)

    def w_abs(self, node: _Node, a: _Tree) -> str:
        return rf"\lvert {self.write(a)} \rvert"

    def w_iverson(self, node: _Node, a: _Tree) -> str:
        return f"[{self.write(a)}]"

    def w_blocks(self, node: _Node, *items: _Tree) -> str:
        return r"[\, " + r" \mid ".join(self.write(i) for i in items) + r" \,]"

    def w_dots(self, node: _Node) -> str:
        return r"\cdots"

    def w_slice(self, node: _Node) -> str:
        return ":"

    def w_cmp(self, node: _Node, a: _Tree, b: _Tree) -> str:
        return f"{self.at(a, 1)} {_COMPARISONS[node.text]} {self.at(b, 1)}"

    def w_choose(self, node: _Node, cond: _Tree, yes: _Tree, no: _Tree) -> str:
        return rf"{self.at(yes, 1)} \;\text{{where}}\; {self.write(cond)},\; \text{{else}}\; {self.at(no, 1)}"

    def w_bigsum(self, node: _Node, a: _Tree) -> str:
        return rf"\sum_{_subscript(node.text)} {self.at(a, 2)}"

    def w_index(self, node: _Node, base: _Tree, *items: _Tree) -> str:
        """``C[i]`` -> ``C_i``, ``X_i[t_i]`` -> ``X_{i, t_i}``; slices stay as written: ``A[:, j]``."""
        written = ", ".join(self.write(i) for i in items)
        simple = not any(isinstance(i, _Node) and i.kind == "slice" for i in items)
        m = _SYMBOL.fullmatch(base) if isinstance(base, str) else None
        if simple and m is not None:
            sub = m["digits"] or m["lower"] or m["sub"]
            return m["base"] + "_{" + (f"{sub}, " if sub else "") + written + "}"
        if simple and isinstance(base, str):
            return symbol_to_latex(base) + "_{" + written + "}"
        return self.at(base, 5) + "[" + written + "]"

    def w_call(self, node: _Node, *args: _Tree) -> str:
        name = node.text
        if name == "where" and len(args) == 3:
            return self.where(*args)
        if name == "exp" and len(args) == 1:
            return "e^{" + self.write(_unwrap(args[0])) + "}"
        if name == "sqrt" and len(args) == 1:
            return r"\sqrt{" + self.write(_unwrap(args[0])) + "}"
        if name == "abs" and len(args) == 1:
            return self.w_abs(node, _unwrap(args[0]))
        if name == "sum" or name.startswith("sum_"):
            return self.sum(name[4:], args)
        if name in _TIGHT and len(args) == 1:
            inner = _unwrap(args[0])
            if isinstance(inner, str) or _level(inner) == 2.5:  # \log A, \log \sum_j e^{a_j}
                return f"{_FUNCTIONS[name]} {self.write(inner)}"
        head = _FUNCTIONS.get(name)
        if head is None:
            head = name if len(name) == 1 else r"\operatorname{" + name.replace("_", r"\_") + "}"
        return head + "(" + ", ".join(self.write(_unwrap(a)) for a in args) + ")"

    def sum(self, sub: str, args: tuple[_Tree, ...]) -> str:
        """``sum(A)`` -> ``\\sum A``; ``sum(A, axis)`` -> ``\\sum_{\\text{axis}} A``; ``sum_rows(G)``."""
        if len(args) == 2 and not sub and isinstance(args[1], str):
            sub = args[1]
        elif len(args) != 1:
            raise RuleSyntaxError("sum takes a matrix and, optionally, the name of an axis")
        head = r"\sum" + (f"_{_subscript(sub)}" if sub else "")
        return f"{head} {self.at(_unwrap(args[0]), 4)}"

    def where(self, cond: _Tree, yes: _Tree, no: _Tree) -> str:
        """``where(c, X, 0)`` -> ``X \\odot [c]``; ``where(c, 0, X)`` -> ``X \\odot [not c]``."""
        if not (_zero(yes) or _zero(no)):
            return self.w_choose(_n("choose"), cond, yes, no)
        kept = _unwrap(no if _zero(yes) else yes)
        negate = _zero(yes)
        mask: _Tree
        if isinstance(cond, _Node) and cond.kind == "cmp":
            mask = _n("iverson", _n("cmp", *cond.args, text=_NEGATED[cond.text] if negate else cond.text))
        else:
            mask = _n("group", _n("minus", "1", cond)) if negate else cond
        if isinstance(kept, _Node) and kept.kind == "div":  # G / n where M: G ⊙ M / n
            return f"{self.product([kept.args[0], mask])} / {self.at(kept.args[1], 2.5)}"
        return self.product([*_factors(kept), mask])


# ---------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------

_NOTE_START = re.compile(r"\s*(?:$|[A-Za-z(,:;])")


def _equation(parser: _Parser) -> tuple[_Tree, _Tree | None]:
    """``lhs = rhs``; ``rhs`` is ``None`` where prose follows the ``=`` (``C = the elements of A``)."""
    lhs = parser.postfix(False)
    parser.expect("=")
    rhs = parser.attempt(parser.conditional)
    if rhs is None and not re.match(r"\s*[A-Za-z]", parser.text[parser.pos :]):
        raise _Stop
    return lhs, rhs


@functools.lru_cache(maxsize=1024)
def rule_to_latex(rule: str) -> RuleLatex:
    """One rule of a docstring (``dA = G @ B.T``) in LaTeX (``\\bar A = G B^\\top``), and its note.

    A side definition stays in the formula (``dA = where(M, G / count(M), 0), M = [A == C]``);
    prose after the formula is the note (``C = A * B (element-wise)``: ``C = A \\odot B`` and
    ``(element-wise)``). Raises :class:`RuleSyntaxError` where the rule is not in this notation.
    """
    text = " ".join(rule.replace("``", "").split())
    if not text:
        raise RuleSyntaxError("an empty rule")
    parser = _Parser(text)
    writer = _Writer()
    parts: list[str] = []
    try:
        lhs, rhs = _equation(parser)
        while True:
            parts.append(writer.write(lhs) + " =" + ("" if rhs is None else " " + writer.write(rhs)))
            if rhs is None:
                break
            start = parser.pos
            if not parser.accept(","):
                break
            more = parser.attempt(lambda: _equation(parser))
            if more is None or more[1] is None:
                parser.pos = start
                break
            lhs, rhs = more
    except _Stop:
        raise RuleSyntaxError(f"cannot read the rule {rule!r} at {text[parser.pos :][:24]!r}") from None
    except RuleSyntaxError as exc:
        raise RuleSyntaxError(f"cannot read the rule {rule!r}: {exc}") from None
    except RecursionError:
        raise RuleSyntaxError(f"cannot read the rule {rule!r}: brackets nested too deeply") from None
    rest = text[parser.pos :]
    if not _NOTE_START.match(rest):
        raise RuleSyntaxError(f"cannot read the rule {rule!r} at {rest.strip()[:24]!r}")
    note = rest.strip()
    if note[:1] in (",", ";", ":"):
        note = note[1:].strip()
    names = tuple(dict.fromkeys(n for n in parser.names if n not in _BARE_OPERATORS))
    return RuleLatex(r",\quad ".join(parts), note, names, text[: parser.pos].strip())
