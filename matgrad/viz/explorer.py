"""``explore``: the graph of a tensor as one self-contained HTML page, to watch backprop happen.

    >>> page = explore(loss, params=model)   # an Explorer; Jupyter shows it inline
    >>> page.save("graph.html")              # one file: no network, opens from file://

The page draws op and tensor nodes as ``draw_graph`` does (parameter names, shapes, module
clusters, a user's Functions under their class names). Clicking a node shows its shape,
min / mean / max and its value and gradient as heatmaps; a slider steps through the forward pass
in creation order, then the backward pass in the engine's order, showing each op's chain rule
with the shapes of that step and how a reused tensor accumulates its gradient.

The rules are maths: each op's docstring rule (``dA = G @ B.T``) is written as LaTeX by
``matgrad.viz.rules`` and drawn as MathML by ``matgrad._mathml.latex_to_mathml``, the renderer
of the documentation, with a cut-down Latin Modern Math inside the page (matgrad/viz/fonts/). A
rule that does not read (a user's free text), or a page made without latex2mathml, shows the
rule as code instead.

Gradients are computed here, at save time, by running each op's rule in the engine's order
(``engine._topological_order``) under ``no_grad``: the engine is not changed, ``.grad`` is not
touched, and the per-edge contributions the page shows are exactly what the engine adds up. A
graph already released by ``backward()`` shows the leaves' ``.grad`` instead, with no backward
steps (pass ``retain_graph=True`` to ``backward`` to keep them).

Matrices travel quantised to 8 bits (base64), larger ones block-averaged, so the page of a
784-128-10 MLP at batch 64 weighs about 0.64 MB (0.2 MB of it the font). The layout is computed here, in Python
(layers by longest path, ordered by barycentres), so no Graphviz program is needed.

``TrainingRecord`` keeps snapshots of a training run (weights, gradients, loss and accuracy
curves) for ``matgrad train --explore`` and ``--live``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import inspect
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from matgrad._errors import ArgumentError, ArgumentTypeError, GraphError
from matgrad._mathml import latex_to_mathml
from matgrad.autograd import engine as _engine
from matgrad.autograd.function import Function, FunctionOp
from matgrad.autograd.grad_mode import no_grad
from matgrad.autograd.graph import Op
from matgrad.creation import ones_like
from matgrad.tensor import Tensor2D
from matgrad.viz.graph import (
    _as_roots,
    _gc_paused,
    _is_module,
    _number,
    _params_once,
    _Plan,
    _plan,
    _write_atomic,
)
from matgrad.viz.rules import RuleSyntaxError, rule_to_latex, symbol_to_latex

__all__ = [
    "Explorer",
    "TrainingRecord",
    "encode_matrix",
    "explore",
    "graph_payload",
    "parse_rule",
    "render_page",
    "rule_of",
]

MAX_CELLS = 131_072  # matrices above this many elements are block-averaged (a 128x784 weight stays whole)
MAX_SIDE = 512  # ... and so are those wider or taller than this, unless shown as images
_FILE_SUFFIXES = (".html", ".htm")


# ---------------------------------------------------------------------------------------------
# matrices: statistics and a compact encoding
# ---------------------------------------------------------------------------------------------


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # the pure-Python path below does the same, more slowly
        return None
    return numpy


def _tile_side(ncols: int) -> int:
    """The side of the square images a row holds (28 for 784 columns), or 0."""
    side = math.isqrt(ncols)
    return side if side * side == ncols and side >= 8 else 0


def _stats(values: Sequence[float]) -> list[Any]:
    """``[min, mean, max, all finite]`` over the finite values (``None`` where there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [None, None, None, False]
    return [min(finite), math.fsum(finite) / len(finite), max(finite), len(finite) == len(values)]


def encode_matrix(t: Tensor2D, tile: bool = False, max_cells: int = MAX_CELLS) -> dict[str, Any]:
    """A matrix for the page: statistics, and its values quantised to bytes (0-254; 255 = NaN/Inf).

    ``tile``: each row is a square image (a 784-column row as 28x28); when too many cells, only
    the first rows are kept. Otherwise a matrix larger than ``max_cells`` or ``MAX_SIDE`` is
    block-averaged by ``(fr, fc)``, which the page shows.
    """
    rows, cols = t.shape
    np = _numpy()
    side = _tile_side(cols) if tile else 0
    if np is not None:
        a = np.asarray(t.numpy(), dtype=np.float64).reshape(rows, cols)
        finite = np.isfinite(a)
        good = a[finite]
        stats: list[Any]
        if good.size:
            stats = [float(good.min()), float(good.mean()), float(good.max()), bool(finite.all())]
        else:
            stats = [None, None, None, False]
    else:
        flat = [float(v) for row in t.tolist() for v in row]
        stats = _stats(flat)
    fr = fc = 1
    keep = rows
    if side:
        keep = max(1, min(rows, max_cells // cols))
    else:
        fr = max(1, math.ceil(rows / MAX_SIDE))
        fc = max(1, math.ceil(cols / MAX_SIDE))
        while math.ceil(rows / fr) * math.ceil(cols / fc) > max_cells:
            if math.ceil(rows / fr) >= math.ceil(cols / fc):
                fr += 1
            else:
                fc += 1
    sr, sc = math.ceil(keep / fr), math.ceil(cols / fc)
    lo, hi = stats[0], stats[2]
    if lo is None:
        lo = hi = 0.0
    span = (hi - lo) or 1.0
    if np is not None:
        a = a[:keep]
        if fr > 1 or fc > 1:  # block means, NaN-padded to whole blocks; a block with a NaN/Inf is marked
            bad = ~np.isfinite(a)
            padded = np.full((sr * fr, sc * fc), np.nan)
            padded[: a.shape[0], :cols] = np.where(bad, 0.0, a)
            valid = np.zeros((sr * fr, sc * fc), dtype=bool)
            valid[: a.shape[0], :cols] = True
            blocks = padded.reshape(sr, fr, sc, fc)
            counts = valid.reshape(sr, fr, sc, fc).sum(axis=(1, 3))
            means = np.nansum(blocks, axis=(1, 3)) / np.maximum(counts, 1)
            badb = np.zeros((sr * fr, sc * fc), dtype=bool)
            badb[: a.shape[0], :cols] = bad
            a = np.where(badb.reshape(sr, fr, sc, fc).any(axis=(1, 3)), np.nan, means)
        with np.errstate(invalid="ignore"):
            q = np.rint((np.clip(a, lo, hi) - lo) / span * 254.0)
        q = np.where(np.isfinite(a), q, 255).astype(np.uint8)
        data = q.tobytes()
    else:
        grid = [flat[r * cols : (r + 1) * cols] for r in range(keep)]
        out = bytearray()
        for br in range(sr):
            for bc in range(sc):
                cell = [v for row in grid[br * fr : (br + 1) * fr] for v in row[bc * fc : (bc + 1) * fc]]
                if all(math.isfinite(v) for v in cell):
                    mean = math.fsum(cell) / len(cell)
                    out.append(round((min(max(mean, lo), hi) - lo) / span * 254.0))
                else:
                    out.append(255)
        data = bytes(out)
    return {
        "r": rows,
        "c": cols,
        "sr": sr,
        "sc": sc,
        "fr": fr,
        "fc": fc,
        "tile": side,
        "lo": lo,
        "hi": hi,
        "stats": stats,
        "d": base64.b64encode(data).decode("ascii"),
    }


# ---------------------------------------------------------------------------------------------
# chain rules from the docstrings
# ---------------------------------------------------------------------------------------------

_MATMUL_RULES = {  # from MatMul.backward: C = op(A) @ op(B) for each pair of transpose flags
    (False, False): ("C = A @ B", ["dA = G @ B.T", "dB = A.T @ G"]),
    (True, False): ("C = A.T @ B", ["dA = B @ G.T", "dB = A @ G"]),
    (False, True): ("C = A @ B.T", ["dA = G @ B", "dB = G.T @ A"]),
    (True, True): ("C = A.T @ B.T", ["dA = B.T @ G.T", "dB = G.T @ A.T"]),
}
_D_NAME = re.compile(r"\s*d([A-Za-z]\w*)\s*=")
_SPLIT_RULES = re.compile(r",\s+(?=d[A-Za-z]\w*\s*=)")
_rule_cache: dict[Any, tuple[str, list[str]]] = {}


def _split_rules(text: str) -> list[str]:
    """``dA = ...,  dB = ...`` -> one rule each; a comma inside brackets does not split
    (``dA = G * sigmoid(beta A) (C = A, dA = G above the threshold)`` is one rule)."""
    parts, start = [], 0
    for m in _SPLIT_RULES.finditer(text):
        before = text[start : m.start()]
        if before.count("(") == before.count(")") and before.count("[") == before.count("]"):
            parts.append(before)
            start = m.end()
    return [*parts, text[start:]]


def parse_rule(doc: str | None) -> tuple[str, list[str]]:
    """``(forward, [backward rules])`` from a docstring such as ``C = A @ B;  dA = G @ B.T,  dB = A.T @ G``.

    The rule is the first paragraph's ``forward; backward``, or a later ``C = ...: dA = ...``.
    """
    if not doc:
        return "", []
    text = inspect.cleandoc(doc).replace("``", "")
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", text)]
    first = paragraphs[0].strip()
    if ";" in first and _D_NAME.search(first.split(";", 1)[1] or ""):
        forward, backward = first.split(";", 1)
    else:
        m = re.search(r"(\w[^:]*=[^:]*):\s+(d[A-Za-z]\w*\s*=.*?)\.(?:\s|$)", " ".join(paragraphs))
        if m is None:
            return first.rstrip("."), []
        forward, backward = m.group(1).split(".")[-1].replace("Plain ", ""), m.group(2)
    rules = [r.strip().rstrip(".").strip() for r in _split_rules(backward.strip())]
    return forward.strip().rstrip(".").strip(), [r for r in rules if r]


def _op_doc(op: Op) -> str | None:
    if isinstance(op, FunctionOp):
        fn = op.fn
        back = fn.__dict__.get("backward")
        doc = inspect.getdoc(back.__func__ if isinstance(back, staticmethod) else back) if back else None
        if doc and doc != inspect.getdoc(Function.backward):
            return doc
        own = fn.__doc__
        return own if own and own != Function.__doc__ else None
    for cls in type(op).__mro__:
        if cls in (Op, FunctionOp, object):
            return None
        if cls.__doc__:
            return cls.__doc__
    return None


def rule_of(op: Op) -> tuple[str, list[str]]:
    """An op's chain rule, ``(forward, [backward rules])``, read from its docstring."""
    if type(op).__name__ == "MatMul" and hasattr(op, "trans_a"):
        return _MATMUL_RULES[(bool(op.trans_a), bool(op.trans_b))]  # type: ignore[attr-defined]
    key: Any = op.fn if isinstance(op, FunctionOp) else type(op)
    found = _rule_cache.get(key)
    if found is None:
        found = _rule_cache[key] = parse_rule(_op_doc(op))
    return found


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}\u00d7{shape[1]}"


def _symbols(op: Op, forward: str, backward: list[str], out_shape: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Each symbol of the rule (output, inputs, ``G``, ``dA``...) with its shape at this step."""
    inputs = op.inputs
    names = [m.group(1) for m in (_D_NAME.match(r) for r in backward) if m]
    symbols: dict[str, tuple[int, int]] = {}
    out = re.match(r"\s*([A-Za-z]\w*)\s*(?:=|\[)", forward)
    if out:
        symbols[out.group(1)] = out_shape
    symbols["G"] = out_shape
    if len(names) == 1 and len(inputs) > 1:  # variadic (``dAi``): no single shape
        return symbols
    if len(names) < len(inputs):  # leading operands without a rule (where's condition)
        pairs = list(zip(names, inputs[len(inputs) - len(names) :]))
    else:
        pairs = list(zip(names, inputs))
    for name, inp in pairs:
        symbols.setdefault(name, inp.shape)
        symbols.setdefault("d" + name, inp.shape)
    return symbols


def _input_symbols(op: Op, backward: list[str]) -> list[str]:
    """The rule's name for each input of ``op`` (``""`` where it has none)."""
    names = [m.group(1) for m in (_D_NAME.match(r) for r in backward) if m]
    n = len(op.inputs)
    if len(names) == 1 and n > 1:
        return [f"{names[0][:-1] or names[0]}{k + 1}" for k in range(n)]
    if len(names) < n:
        return [""] * (n - len(names)) + names
    return names[:n]


def _with_shapes(rule: str, symbols: dict[str, tuple[int, int]]) -> str:
    """``rule`` as HTML, each symbol followed by its shape as a subscript."""
    text = html.escape(rule, quote=False)
    if not symbols:
        return text
    pattern = re.compile(
        r"(?<![\w.])(" + "|".join(re.escape(s) for s in sorted(symbols, key=len, reverse=True)) + r")(?!\w)"
    )
    return pattern.sub(
        lambda m: f'<span class="sym">{m.group(1)}<sub>{_shape_text(symbols[m.group(1)])}</sub></span>', text
    )


# ---------------------------------------------------------------------------------------------
# chain rules as maths (matgrad/viz/rules.py), drawn by the documentation's renderer
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2048)
def _mathml(tex: str) -> str | None:
    """``tex`` as MathML (``latex_to_mathml``, as the docs use), or ``None`` where it cannot be drawn."""
    try:
        return latex_to_mathml(tex)
    except (ValueError, ImportError):  # latex2mathml missing, or a formula it cannot draw: show code
        return None


class _Maths:
    """The page's formulas, each rendered once; steps refer to them by number (``data-m``) and
    the page puts them in place, so a rule shown at a thousand steps is in the page once."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def span(self, tex: str, text: str) -> str | None:
        """A placeholder for ``tex`` holding ``text`` (what it says, as plain text), or ``None``."""
        k = self._index.get(tex)
        if k is None:
            mathml = _mathml(tex)
            if mathml is None:
                return None
            k = self._index[tex] = len(self.items)
            self.items.append(mathml)
        return f'<span class="m" data-m="{k}">{html.escape(text, quote=False)}</span>'

    def symbol(self, name: str) -> str:
        """A name of the rules (``dA``, ``G``, ``A1``) as maths; as text where it is not one."""
        try:
            found = self.span(symbol_to_latex(name), name)
        except RuleSyntaxError:
            found = None
        return found or html.escape(name, quote=False)


def _rule_names(forward: str, backward: list[str], symbols: dict[str, tuple[int, int]]) -> set[str]:
    """The names an op's notes may mention: those of its rules and of its shapes, and ``G``."""
    names = {"G", *symbols}
    for rule in (forward, *backward):
        with contextlib.suppress(RuleSyntaxError):
            names.update(rule_to_latex(rule).symbols)
    return names


_NOTE_NAME = re.compile(r"(?<![\w'.\[-])(d?[A-Za-z][A-Za-z0-9_]*)(?![\w-])")
_NOTE_SYMBOL = re.compile(r"d?[A-Z](?:\d+|[a-z])?")  # A, A1, Ai, dA: symbols even in prose


def _note_html(note: str, names: set[str], maths: _Maths) -> str:
    """The prose after a formula, its symbols as maths (``read as A's shape``)."""

    def name(m: re.Match[str]) -> str:
        word = m.group(1)
        if (word in names and word != "a") or (_NOTE_SYMBOL.fullmatch(word) and word != "I"):
            return maths.symbol(word)
        return word

    return _NOTE_NAME.sub(name, html.escape(note, quote=False))


def _eq(side: str, rule: str, symbols: dict[str, tuple[int, int]], names: set[str], maths: _Maths) -> str:
    """One rule as maths (``<div class="eq fwd maths">``), or, where it cannot be read, as code
    with each symbol's shape (``<div class="eq fwd code">``): a user's free text never breaks the page."""
    try:
        found = rule_to_latex(rule)
    except RuleSyntaxError:
        found = None
    span = maths.span(found.tex, found.source) if found is not None else None
    if found is None or span is None:
        return f'<div class="eq {side} code">{_with_shapes(rule, symbols)}</div>'
    note = f' <span class="rnote">{_note_html(found.note, names, maths)}</span>' if found.note else ""
    return f'<div class="eq {side} maths">{span}{note}</div>'


def _shapes_html(forward: str, symbols: dict[str, tuple[int, int]], maths: _Maths, grad: bool) -> str:
    """This step's shapes, under its rules: each input, then the output (with ``grad``, as
    ``G = \\bar C``: the gradient that arrives has the output's shape)."""
    out = re.match(r"\s*([A-Za-z]\w*)", forward)
    output = out.group(1) if out and out.group(1) in symbols else None
    items = []
    for name, shape in symbols.items():
        if name in (output, "G") or (name.startswith("d") and name[1:] in symbols):
            continue
        items.append((maths.symbol(name), shape))
    if output is not None and not grad:
        items.append((maths.symbol(output), symbols[output]))
    elif grad and "G" in symbols:
        shown = None
        if output is not None:
            with contextlib.suppress(RuleSyntaxError):
                shown = maths.span(f"G = {symbol_to_latex('d' + output)}", f"G = d{output}")
        items.append((shown or maths.symbol("G"), symbols["G"]))
    cells = "".join(
        f'<span class="shape">{sym} <span class="dim">{_shape_text(shape)}</span></span>' for sym, shape in items
    )
    return f'<div class="shapes">{cells}</div>' if items else ""


# ---------------------------------------------------------------------------------------------
# the graph as nodes, edges and clusters
# ---------------------------------------------------------------------------------------------


@dataclass
class _Node:
    id: str
    kind: str  # "op", "tensor" or "param" (the page's data-kind)
    role: str  # "op", "input", "param", "const" or "root"
    title: str
    tensor: Tensor2D
    place: tuple[Any, ...]
    sub: str = ""  # the second line: shape (and value, dtype)
    inputs: list[int] = field(default_factory=list)  # node indices, in the op's input order
    layer: int = 0
    w: float = 0.0
    h: float = 0.0
    x: float = 0.0
    y: float = 0.0


def _nodes(plan: _Plan) -> tuple[list[_Node], dict[int, int], dict[int, int], list[tuple[int, int, str]]]:
    """Nodes as ``draw_graph`` draws them, edges ``(src, dst, label)``; maps from plan positions."""
    nodes: list[_Node] = []
    op_node: dict[int, int] = {}  # plan position of an op's output -> its op node
    leaf_node: dict[int, int] = {}  # plan position of a leaf or root -> its tensor node
    edges: list[tuple[int, int, str]] = []
    for i, t in enumerate(plan.order):
        op = t.op
        if op is not None:
            title = op.describe()
            if plan.label[i] and not plan.is_root(i):
                title = f"{plan.label[i]} = {title}"
            op_node[i] = len(nodes)
            nodes.append(_Node(f"op{i}", "op", "op", title, t, plan.place[i], _shape_text(t.shape)))
            for inp in t.inputs:
                j = plan.pos[id(inp)]
                src = op_node[j] if plan.kind[j] == "op" else leaf_node[j]
                nodes[op_node[i]].inputs.append(src)
                edges.append((src, op_node[i], _shape_text(inp.shape) if plan.kind[j] == "op" else ""))
        if plan.kind[i] == "op" and not plan.is_root(i):
            continue
        role = "root" if plan.is_root(i) else plan.kind[i]
        title = plan.root_names[i] if plan.is_root(i) else plan.label[i]
        place = plan.place[i] if plan.kind[i] in ("param", "const") else ()
        leaf_node[i] = len(nodes)
        sub = _shape_text(t.shape) + (f" = {_number(t.item())}" if t.shape == (1, 1) else "") + f" {t.dtype}"
        nodes.append(_Node(f"t{i}", "param" if role == "param" else "tensor", role, title, t, place, sub))
        if op is not None:
            nodes[leaf_node[i]].inputs.append(op_node[i])
            edges.append((op_node[i], leaf_node[i], _shape_text(t.shape)))
    return nodes, op_node, leaf_node, edges


_CHAR_W, _SUB_W, _NODE_H, _GAP_X, _GAP_Y = 6.6, 5.4, 34.0, 72.0, 18.0


def _layout(nodes: list[_Node], edges: list[tuple[int, int, str]]) -> list[list[list[float]]]:
    """Left to right: layers by longest path (leaves just before their first consumer), an edge
    across several layers routed through a small invisible node in each, rows ordered by
    barycentres, then pulled towards their neighbours without overlapping. Returns each edge's
    bend points."""
    n = len(nodes)
    consumers: list[list[int]] = [[] for _ in range(n)]
    for src, dst, _ in edges:
        consumers[src].append(dst)
    for node in nodes:  # nodes come inputs first: one pass sets the layers
        node.layer = 1 + max((nodes[j].layer for j in node.inputs), default=-1)
    for k in range(n - 1, -1, -1):
        node = nodes[k]
        if not node.inputs and consumers[k]:
            node.layer = min(nodes[j].layer for j in consumers[k]) - 1
    base = min((node.layer for node in nodes), default=0)
    for node in nodes:
        node.layer -= base
        node.w = max(56.0, len(node.title) * _CHAR_W + 20.0, len(node.sub) * _SUB_W + 16.0)
        node.h = _NODE_H if node.kind == "op" else _NODE_H + 8.0
    _separate_modules(nodes)

    # Items: the nodes, then one bend per layer crossed by a long edge: [layer, w, h, x, y].
    items = [[float(node.layer), node.w, node.h, 0.0, 0.0] for node in nodes]
    up: list[list[int]] = [list(node.inputs) for node in nodes]
    down: list[list[int]] = [[] for _ in range(n)]
    bends: list[list[int]] = []
    for src, dst, _ in edges:
        chain: list[int] = []
        prev = src
        for crossed in range(nodes[src].layer + 1, nodes[dst].layer):
            items.append([float(crossed), 8.0, 8.0, 0.0, 0.0])
            up.append([prev])
            down.append([])
            down[prev].append(len(items) - 1)
            chain.append(len(items) - 1)
            prev = len(items) - 1
        down[prev].append(dst)
        if chain:  # the consumer now hangs from the last bend instead of the source
            up[dst][up[dst].index(src)] = chain[-1]
        bends.append(chain)
    total = len(items)
    layers: list[list[int]] = [[] for _ in range(int(max((it[0] for it in items), default=0)) + 1)]
    for k, it in enumerate(items):
        layers[int(it[0])].append(k)
    rank = [0.0] * total

    def sweep(neighbours: list[list[int]], order: range) -> None:
        for li in order:
            layer = layers[li]
            for r, k in enumerate(layer):
                near = neighbours[k]
                rank[k] = sum(rank[j] for j in near) / len(near) if near else float(r)
            layer.sort(key=lambda k: rank[k])
            for r, k in enumerate(layer):
                rank[k] = float(r)

    for layer in layers:
        for r, k in enumerate(layer):
            rank[k] = float(r)
    for _ in range(4):
        sweep(up, range(1, len(layers)))
        sweep(down, range(len(layers) - 2, -1, -1))

    x = 0.0
    for layer in layers:
        width = max((items[k][1] for k in layer), default=0.0)
        for k in layer:
            items[k][3] = x + (width - items[k][1]) / 2
        x += width + _GAP_X
    for layer in layers:
        y = 0.0
        for k in layer:
            items[k][4] = y
            y += items[k][2] + _GAP_Y

    def centre(k: int) -> float:
        return items[k][4] + items[k][2] / 2

    for rnd in range(8):  # pull each row towards its neighbours' centres, then undo overlaps
        neighbours = up if rnd % 2 == 0 else down
        for layer in layers if rnd % 2 == 0 else reversed(layers):
            low = -math.inf
            for k in layer:
                near = neighbours[k] or up[k] or down[k]
                target = sum(centre(j) for j in near) / len(near) if near else centre(k)
                items[k][4] = max(target - items[k][2] / 2, low)
                low = items[k][4] + items[k][2] + (_GAP_Y if k < n else _GAP_Y / 2)
    top = min((it[4] for it in items), default=0.0)
    for k, node in enumerate(nodes):
        node.x, node.y = items[k][3], items[k][4] - top
    return [[[round(items[k][3] + 4.0, 1), round(items[k][4] - top + 4.0, 1)] for k in chain] for chain in bends]


def _separate_modules(nodes: list[_Node], limit: int = 300) -> None:
    """Give sibling module calls their own columns: when a module starts in a column the previous
    sibling still uses, move it (and everything computed after it) to the right, so that the
    boxes of ``0: Linear`` and ``1: ReLU`` never overlap. Moving a suffix of the forward order
    keeps every edge pointing right."""
    order = _forward_order(nodes)
    first: dict[tuple[int, ...], int] = {}  # module key -> position in ``order`` of its first node
    members: dict[tuple[int, ...], list[int]] = {}
    fed = {j for node in nodes if node.place for j in node.inputs}
    for at, k in enumerate(order):
        key: tuple[int, ...] = ()
        node = nodes[k]
        if not node.place and node.kind != "op" and k in fed:  # an input fed into a module: a column of its own
            first[(-k - 1,)] = at
            members[(-k - 1,)] = [k]
        for module in node.place:
            key = (*key, id(module))
            first.setdefault(key, at)
            members.setdefault(key, []).append(k)
    if len(first) > limit:  # a huge model: keep the plain layering
        return
    previous: dict[tuple[int, ...], tuple[int, ...]] = {}  # parent key -> its last child started
    for key in sorted(first, key=lambda k: (first[k], len(k))):
        parent = key[:-1]
        before = previous.get(parent)
        previous[parent] = key
        if before is None:
            continue
        end = max(nodes[k].layer for k in members[before])
        start = min(nodes[k].layer for k in members[key])
        if start <= end:
            for k in order[first[key] :]:
                nodes[k].layer += end - start + 1


def _clusters(nodes: list[_Node], plan: _Plan) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """One box per module call around the nodes drawn in it (nested modules inside their parent)."""
    keys: dict[tuple[int, ...], int] = {}
    boxes: list[dict[str, Any]] = []
    innermost: dict[int, int] = {}
    for k, node in enumerate(nodes):
        key: tuple[int, ...] = ()
        for depth, module in enumerate(node.place):
            key = (*key, id(module))
            c = keys.get(key)
            if c is None:
                c = keys[key] = len(boxes)
                boxes.append({"label": plan.module_label(module), "depth": depth, "members": []})
            boxes[c]["members"].append(k)
            innermost[k] = c
    deepest = max((b["depth"] for b in boxes), default=0)
    for box in boxes:
        pad = 10.0 + 8.0 * (deepest - box["depth"])
        members = [nodes[k] for k in box.pop("members")]
        box["x"] = min(m.x for m in members) - pad
        box["y"] = min(m.y for m in members) - pad - 14.0 - 14.0 * (deepest - box["depth"])  # room for the labels
        box["w"] = max(m.x + m.w for m in members) + pad - box["x"]
        box["h"] = max(m.y + m.h for m in members) + pad - box["y"]
    return boxes, innermost


# ---------------------------------------------------------------------------------------------
# steps: the forward pass in creation order, the backward pass in the engine's order
# ---------------------------------------------------------------------------------------------


@dataclass
class _Backward:
    """What the engine's pass did, replayed: gradients and who contributed to them."""

    grads: dict[int, Tensor2D]  # node index -> gradient of its tensor (an op node: of its output)
    order: list[int]  # node indices in the order the engine handles them
    contributions: dict[int, list[tuple[int, int]]]  # receiver -> [(sender node, input position)]
    seeds: list[int]
    note: str = ""


def _replay(
    nodes: list[_Node], roots: list[Tensor2D], op_node: dict[int, int], leaf_node: dict[int, int], plan: _Plan
) -> _Backward:
    """Run every rule in the engine's order (``_topological_order`` reversed), recording each gradient."""
    empty = _Backward({}, [], {}, [])
    outs = [r for r in roots if r.requires_grad and r.op is not None]
    if not outs:
        empty.note = "nothing in this graph requires grad, so there is no backward pass"
        return empty
    order = _engine._topological_order(outs)
    try:
        _engine._check_runnable(order)
    except GraphError as exc:
        grads = {
            leaf_node[i]: t.grad
            for i, t in enumerate(plan.order)
            if i in leaf_node and t.grad is not None and t.op is None
        }
        empty.grads = grads
        empty.note = (
            f"the backward pass cannot be replayed ({exc}); the leaves show their .grad. Call "
            "explore() before backward(), or backward(retain_graph=True), to step through it"
        )
        return empty
    node_of = {}  # id(tensor) -> the node that carries its gradient
    for i, t in enumerate(plan.order):
        node_of[id(t)] = op_node[i] if t.op is not None else leaf_node[i]
    pending: dict[int, Tensor2D] = {}
    result = _Backward({}, [], {}, [])
    with no_grad():
        for r in {id(r): r for r in outs}.values():
            seed = ones_like(r)
            k = node_of[id(r)]
            pending[k] = seed if k not in pending else pending[k] + seed
            root_node = leaf_node[plan.pos[id(r)]]  # the output's own node: its seed is step one
            result.seeds.append(root_node)
            result.order.append(root_node)
            result.grads[root_node] = seed
            result.contributions.setdefault(k, []).append((root_node, -1))
        for t in reversed(order):
            k = node_of[id(t)]
            g = pending.pop(k, None)
            if g is None:
                continue
            result.grads[k] = g
            result.order.append(k)
            op = t.op
            if op is None:
                continue
            in_grads = op.backward(g, *op.inputs)
            for pos, (inp, need, ig) in enumerate(zip(op.inputs, op.needs_input_grad, in_grads)):
                if not need or ig is None:
                    continue
                if ig.shape != inp.shape:
                    ig = _engine._sum_to(ig, inp.shape, op)
                j = node_of[id(inp)]
                pending[j] = ig if j not in pending else pending[j] + ig
                result.contributions.setdefault(j, []).append((k, pos))
    return result


def _forward_order(nodes: list[_Node]) -> list[int]:
    """Ops in creation order; each leaf just before its first consumer, each root just after its op."""
    ops = sorted((k for k, node in enumerate(nodes) if node.kind == "op"), key=lambda k: nodes[k].tensor.op.seq)  # type: ignore[union-attr]
    roots_of: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        if node.role == "root" and node.inputs:
            roots_of.setdefault(node.inputs[0], []).append(k)
    placed: set[int] = set()
    out: list[int] = []
    for k in ops:
        for j in nodes[k].inputs:
            if j not in placed and nodes[j].kind != "op":
                placed.add(j)
                out.append(j)
        out.append(k)
        placed.add(k)
        for r in roots_of.get(k, []):
            out.append(r)
            placed.add(r)
    out += [k for k in range(len(nodes)) if k not in placed]  # a root that is a leaf, with no op
    return out


def _who(node: _Node) -> str:
    return f"<b>{html.escape(node.title)}</b>"


def _stat_line(t: Tensor2D) -> str:
    if t.shape == (1, 1):
        return f"= {_number(t.item())}"
    return ""


def _steps(
    nodes: list[_Node], edges: list[tuple[int, int, str]], back: _Backward, maths: _Maths
) -> list[dict[str, Any]]:
    edge_index: dict[tuple[int, int], list[int]] = {}
    for e, (src, dst, _) in enumerate(edges):
        edge_index.setdefault((src, dst), []).append(e)
    steps: list[dict[str, Any]] = []
    fwd = _forward_order(nodes)
    for n_step, k in enumerate(fwd, 1):
        node = nodes[k]
        t = node.tensor
        head = f"forward {n_step}/{len(fwd)}"
        if node.kind == "op":
            op = t.op
            assert op is not None
            forward, backward = rule_of(op)
            symbols = _symbols(op, forward, backward, t.shape)
            if forward:
                mentioned = _rule_names(forward, backward, symbols)
                body = [_eq("fwd", forward, symbols, mentioned, maths), _shapes_html(forward, symbols, maths, False)]
            else:
                body = [f'<div class="eq fwd code">{html.escape(op.describe())}</div>']
            body.append(_bindings(op, backward, nodes, node, maths))
            body.append(f'<div class="note">{_who(node)} computes a {_shape_text(t.shape)} {t.dtype} result</div>')
            used = sorted({e for j in node.inputs for e in edge_index.get((j, k), [])})
        elif node.role == "root":
            body = [f'<div class="note">output {_who(node)}: {_shape_text(t.shape)} {t.dtype} {_stat_line(t)}</div>']
            used = sorted({e for j in node.inputs for e in edge_index.get((j, k), [])})
        else:
            word = {"param": "parameter", "input": "input", "const": "constant"}[node.role]
            name = _who(node) if node.title != word else ""
            extra = ", requires grad" if t.requires_grad else ""
            body = [f'<div class="note">{word} {name}: {_shape_text(t.shape)} {t.dtype}{extra}, given</div>']
            used = []
        steps.append({"phase": "forward", "node": k, "head": head, "html": "".join(body), "edges": used})
    received: dict[int, int] = {}
    for n_step, k in enumerate(back.order, 1):
        node = nodes[k]
        t = node.tensor
        head = f"backward {n_step}/{len(back.order)}"
        g = back.grads[k]
        sources = back.contributions.get(k, [])
        used = []
        if k in back.seeds and not sources:
            body = [
                f'<div class="note">seed: the gradient of {_who(node)} with respect to itself, '
                f"{'1' if t.shape == (1, 1) else 'ones'} ({_shape_text(t.shape)})</div>"
            ]
            used = [e for j in node.inputs for e in edge_index.get((j, k), [])]
        elif node.kind == "op":
            op = t.op
            assert op is not None
            forward, backward = rule_of(op)
            symbols = _symbols(op, forward, backward, t.shape)
            mentioned = _rule_names(forward, backward, symbols)
            arrived = _arrival(nodes, sources, "G", g, maths)
            lines = [_eq("bwd", rule, symbols, mentioned, maths) for rule in backward]
            lines = lines or ['<div class="eq bwd code">(no rule in the docstring)</div>']
            lines.append(_shapes_html(forward, symbols, maths, True))
            sends = []
            names = _input_symbols(op, backward)
            for pos, (j, need) in enumerate(zip(node.inputs, op.needs_input_grad)):
                target = nodes[j]
                sym = f"d{names[pos]}" if pos < len(names) and names[pos] else f"gradient #{pos}"
                if not need:
                    sends.append(f"<li>{maths.symbol(sym)}: not needed ({_who(target)} does not require grad)</li>")
                    continue
                before = received.get(j, 0)
                received[j] = before + 1
                total = len(back.contributions.get(j, []))
                text = f"<li>{maths.symbol(sym)} \u2192 {_who(target)} ({_shape_text(target.tensor.shape)})"
                if before:
                    text += (
                        f' <span class="acc">accumulated: added to the {before} earlier contribution'
                        f"{'s' if before > 1 else ''} ({before + 1} of {total})</span>"
                    )
                elif total > 1:
                    text += f' <span class="acc">first of {total} contributions, to be accumulated</span>'
                sends.append(text + "</li>")
                used += edge_index.get((j, k), [])
            body = [arrived, *lines, f'<ul class="sends">{"".join(sends)}</ul>']
        else:
            arrived = _arrival(nodes, sources, f"{node.title}.grad" if node.role != "root" else "G", g, maths)
            body = [arrived]
        body.append(_grad_note(g))
        steps.append({"phase": "backward", "node": k, "head": head, "html": "".join(body), "edges": sorted(set(used))})
    return steps


def _arrival(nodes: list[_Node], sources: list[tuple[int, int]], name: str, g: Tensor2D, maths: _Maths) -> str:
    shown = maths.symbol(name) if name == "G" else html.escape(name)
    if not sources:
        return f'<div class="note">{shown} ({_shape_text(g.shape)})</div>'
    parts = []
    for src, pos in sources:
        if pos < 0:
            parts.append(f"the seed of {_who(nodes[src])}")
            continue
        op = nodes[src].tensor.op
        names = _input_symbols(op, rule_of(op)[1]) if op is not None else []
        sym = f"d{names[pos]}" if pos < len(names) and names[pos] else f"gradient #{pos}"
        parts.append(f"{maths.symbol(sym)} from {_who(nodes[src])}")
    if len(parts) == 1:
        return f'<div class="note">{shown} ({_shape_text(g.shape)}) = {parts[0]}</div>'
    return (
        f'<div class="note">{shown} ({_shape_text(g.shape)}) = {" + ".join(parts)}'
        f' <span class="acc">{len(parts)} contributions accumulated</span></div>'
    )


def _grad_note(g: Tensor2D) -> str:
    if g.shape == (1, 1):
        return f'<div class="small">gradient = {_number(g.item())}</div>'
    return ""


def _bindings(op: Op, backward: list[str], nodes: list[_Node], node: _Node, maths: _Maths) -> str:
    names = _input_symbols(op, backward)
    items = []
    for pos, j in enumerate(node.inputs):
        sym = maths.symbol(names[pos]) if pos < len(names) and names[pos] else f"input #{pos}"
        t = nodes[j].tensor
        items.append(f"<li>{sym} = {_who(nodes[j])} ({_shape_text(t.shape)})</li>")
    return f'<ul class="binds">{"".join(items)}</ul>'


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("matgrad.viz").joinpath(name).read_text(encoding="utf-8")


def _script_json(payload: Any) -> str:
    """JSON safe inside ``<script>``: no ``</`` and no HTML comment openers."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


MATH_FONT = "matgrad Math"  # Latin Modern Math cut down (matgrad/viz/fonts/README.md)


@functools.lru_cache(maxsize=1)
def _font_face() -> str:
    """The math font as an ``@font-face`` rule with the font inside (no network, no file beside the page)."""
    data = resources.files("matgrad.viz").joinpath("fonts/matgrad-math.woff").read_bytes()
    return (
        f'@font-face {{ font-family: "{MATH_FONT}"; font-style: normal; font-weight: 400; font-display: block; '
        f'src: url("data:font/woff;base64,{base64.b64encode(data).decode("ascii")}") format("woff"); }}'
    )


def render_page(payload: dict[str, Any]) -> str:
    """The explorer's HTML with ``payload`` embedded (CSS, the math font and JavaScript inlined)."""
    page = _asset("explorer.html")
    title = html.escape(str(payload.get("title") or "matgrad explorer"))
    return (
        page.replace("/*__CSS__*/", _font_face() + "\n" + _asset("explorer.css"))
        .replace("__TITLE__", title)
        .replace("/*__JS__*/", _asset("explorer.js"))
        .replace("__DATA__", _script_json(payload))
    )


def _is_first_layer_image(node: _Node) -> bool:
    """Rows that are images: an input of square width, or a weight reading one (784 columns as 28x28)."""
    return node.kind != "op" and node.role != "root" and _tile_side(node.tensor.ncols) > 0


def graph_payload(root: Any, params: Any = None, title: str | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (``explore`` wraps it in the page)."""
    roots = _as_roots(root, "explore")
    params = _params_once(params, "explore")
    with _gc_paused():
        plan = _plan(roots, params)
        nodes, op_node, leaf_node, edges = _nodes(plan)
        back = _replay(nodes, roots, op_node, leaf_node, plan)
        routes = _layout(nodes, edges)
        clusters, innermost = _clusters(nodes, plan)
        maths = _Maths()
        steps = _steps(nodes, edges, back, maths)
    mats: list[dict[str, Any]] = []
    cache: dict[int, int] = {}

    def mat(t: Tensor2D, tile: bool) -> int:
        key = id(t)
        if key not in cache:
            cache[key] = len(mats)
            mats.append(encode_matrix(t, tile))
        return cache[key]

    first_fwd: dict[int, int] = {}
    first_bwd: dict[int, int] = {}
    for s, step in enumerate(steps):
        (first_fwd if step["phase"] == "forward" else first_bwd).setdefault(step["node"], s)
    out_nodes = []
    for k, node in enumerate(nodes):
        t = node.tensor
        tile = _is_first_layer_image(node)
        g = back.grads.get(k)
        entry: dict[str, Any] = {
            "id": node.id,
            "kind": node.kind,
            "role": node.role,
            "title": node.title,
            "name": node.title if node.kind != "op" else "",
            "shape": list(t.shape),
            "dtype": t.dtype,
            "sub": node.sub,
            "rg": bool(t.requires_grad),
            "module": innermost.get(k, -1),
            "x": round(node.x, 1),
            "y": round(node.y, 1),
            "w": round(node.w, 1),
            "h": round(node.h, 1),
            "v": mat(t, tile),
            "g": mat(g, tile) if g is not None else -1,
            "fwd": first_fwd.get(k, -1),
            "bwd": first_bwd.get(k, -1),
        }
        if node.kind == "op":
            op = t.op
            assert op is not None
            forward, backward = rule_of(op)
            symbols = _symbols(op, forward, backward, t.shape)
            mentioned = _rule_names(forward, backward, symbols)
            entry["rule"] = [_eq("fwd", forward, symbols, mentioned, maths)] if forward else []
            entry["rule"] += [_eq("bwd", r, symbols, mentioned, maths) for r in backward]
            entry["rule"].append(_shapes_html(forward, symbols, maths, False))
            scope = plan.place[plan.pos[id(t)]]
            entry["where"] = plan.module_label(scope[-1]) if scope else ""
        else:
            entry["where"] = plan.module_label(node.place[-1]) if node.place else ""
        out_nodes.append(entry)
    return {
        "version": 1,
        "title": title or _default_title(nodes),
        "nodes": out_nodes,
        "edges": [{"s": s, "t": d, "label": label, "via": via} for (s, d, label), via in zip(edges, routes)],
        "clusters": clusters,
        "mats": mats,
        "steps": steps,
        "maths": maths.items,
        "forward_steps": sum(1 for s in steps if s["phase"] == "forward"),
        "note": back.note,
        "train": None,
        "live": None,
    }


def _default_title(nodes: list[_Node]) -> str:
    roots = [n for n in nodes if n.role == "root"]
    name = roots[0].title if roots else "graph"
    ops = sum(1 for n in nodes if n.kind == "op")
    return f"{name}: {ops} op{'s' if ops != 1 else ''}, {len(nodes) - ops} tensors"


class Explorer:
    """The explorer page of a graph: ``.html`` (its text), ``.save(path)``, inline in Jupyter."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self._html: str | None = None

    @property
    def html(self) -> str:
        """The page: one self-contained HTML document."""
        if self._html is None:
            self._html = render_page(self.payload)
        return self._html

    @property
    def node_count(self) -> int:
        """Op and tensor nodes drawn (as ``draw_graph`` draws them)."""
        return len(self.payload["nodes"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (an ``.html`` file, written atomically); returns the path."""
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise ArgumentTypeError(
                f"explore: path must be a file name such as 'graph.html' (a str or pathlib.Path), "
                f"got {type(path).__name__} {path!r:.40}"
            )
        target = Path(path)
        if target.suffix.lower() not in _FILE_SUFFIXES:
            raise ArgumentError(f"explore: cannot write {target.name!r}; name an .html file such as graph.html")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"explore: the folder {target.parent} does not exist")
        _write_atomic(target, self.html.encode("utf-8"))
        return target

    def _repr_html_(self) -> str:
        doc = html.escape(self.html, quote=True)
        return (
            f'<iframe srcdoc="{doc}" style="width:100%;height:720px;border:1px solid #cbd5e1;border-radius:6px" '
            'title="matgrad explorer"></iframe>'
        )

    def __repr__(self) -> str:
        steps = self.payload["steps"]
        fwd = self.payload["forward_steps"]
        return f"<Explorer: {self.node_count} nodes, {fwd} forward and {len(steps) - fwd} backward steps>"


def explore(
    root: Any, path: str | os.PathLike[str] | None = None, *, params: Any = None, title: str | None = None
) -> Explorer:
    """An interactive page of the graph behind ``root`` (a tensor or a list of them).

    ``params``: a Module, a dict or ``(name, tensor)`` pairs naming parameters (by default, the
    parameters of the modules the ops ran in). With ``path``, the page is also saved there.
    The backward pass is replayed from ``root`` (a non-1x1 root is seeded with ones) without
    touching ``.grad``; see the module docstring.
    """
    page = Explorer(graph_payload(root, params, title))
    if path is not None:
        page.save(path)
    return page


# ---------------------------------------------------------------------------------------------
# a training run
# ---------------------------------------------------------------------------------------------


class TrainingRecord:
    """Loss and accuracy per step, accuracies per epoch, and snapshots of every parameter.

    ``snapshot`` keeps the weights and gradients every ``every`` steps; past ``max_snapshots``
    every other one is dropped and the interval doubles, so a long run keeps a bounded record.
    Thread-safe: a live server reads it while training writes.
    """

    def __init__(self, model: Any, every: int = 1, max_snapshots: int = 60) -> None:
        if not _is_module(model):
            raise ArgumentTypeError(f"TrainingRecord: model must be a Module, got {type(model).__name__}")
        if every < 1 or max_snapshots < 2:
            raise ArgumentError("TrainingRecord: every must be >= 1 and max_snapshots >= 2")
        self.model = model
        self.every = every
        self.max_snapshots = max_snapshots
        self.loss: list[float | None] = []
        self.acc: list[float | None] = []
        self.epochs: list[dict[str, float | None]] = []
        self.snaps: list[dict[str, Any]] = []
        self.done = False
        self.total_steps = 0
        self._next_id = 0
        self._lock = threading.Lock()

    def step(self, loss: float, acc: float | None, epoch: int) -> None:
        """Record one optimiser step (after ``opt.step()``, with the gradients it used still in ``.grad``)."""
        with self._lock:
            self.loss.append(float(loss) if math.isfinite(loss) else None)
            self.acc.append(None if acc is None else float(acc))
            n = len(self.loss)
        if n == 1 or n % self.every == 0:
            self.snapshot(epoch)

    def snapshot(self, epoch: int) -> None:
        """Keep the parameters and their gradients now."""
        params = {}
        for name, p in self.model.named_parameters():
            tile = _tile_side(p.ncols) > 0
            params[str(name)] = [
                encode_matrix(p.detach(), tile),
                encode_matrix(p.grad, tile) if p.grad is not None else None,
            ]
        with self._lock:
            step = len(self.loss)
            snap = {
                "id": self._next_id,
                "step": step,
                "epoch": epoch,
                "loss": self.loss[-1] if self.loss else None,
                "p": params,
            }
            self._next_id += 1
            self.snaps.append(snap)
            if len(self.snaps) > self.max_snapshots:  # keep the first and the latest, thin the rest
                self.snaps = [self.snaps[0], *self.snaps[1:-1][1::2], self.snaps[-1]]
                self.every *= 2

    def end_epoch(self, epoch: int, loss: float, train_acc: float, test_acc: float) -> None:
        """Record an epoch's mean training loss and its accuracies."""

        def finite(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        with self._lock:
            self.epochs.append(
                {
                    "epoch": epoch,
                    "step": len(self.loss),
                    "loss": finite(loss),
                    "train_acc": finite(train_acc),
                    "test_acc": finite(test_acc),
                }
            )

    def finish(self) -> None:
        with self._lock:
            self.done = True

    def to_json(self, since: int = -1) -> dict[str, Any]:
        """The record; with ``since``, only snapshots whose id is larger (the live page's poll)."""
        with self._lock:
            return {
                "loss": list(self.loss),
                "acc": list(self.acc),
                "epochs": list(self.epochs),
                "snaps": [s for s in self.snaps if s["id"] > since],
                "every": self.every,
                "total_steps": self.total_steps,
                "done": self.done,
            }
