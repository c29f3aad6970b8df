"""Diagrams of the graph: ``draw_graph`` (Graphviz DOT), ``render_graph`` (SVG, PNG, PDF) and ``text_graph``.

Reads the graph and never changes it. Op nodes say what ran; tensor nodes are drawn for leaves
(inputs, parameters, constants) and roots, while an intermediate tensor is the edge leaving its
op, labelled with its shape. Node ids come from the traversal order (``t3``, ``op7``), so the
same graph always gives the same DOT text. The walk is iterative: any depth draws.

    >>> dot = draw_graph(loss, params=model, show_grad=True)
    >>> dot.save("graph.dot")                 # DOT text: no Graphviz program needed
    >>> render_graph(loss, "graph.svg", params=model)   # needs Graphviz's dot
    >>> print(text_graph(loss))
"""

from __future__ import annotations

import contextlib
import gc
import math
import numbers
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import graphviz

from matgrad._errors import ArgumentError, ArgumentTypeError, GraphError, MatgradError
from matgrad._files import atomic_write
from matgrad.autograd import engine as _engine
from matgrad.autograd.grad_mode import enable_grad
from matgrad.creation import ones_like
from matgrad.functional import cross_entropy
from matgrad.tensor import Tensor2D

__all__ = ["draw_graph", "draw_model_graph", "render_graph", "text_graph"]

Roots = Union[Tensor2D, Sequence[Tensor2D]]

_RANKDIRS = ("LR", "TB", "RL", "BT")
_RENDER_FORMATS = ("svg", "png", "pdf")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# One look per kind of node; "bad" is laid over any of them when a value or gradient is not finite.
_FONT = "Helvetica"
_STYLES: dict[str, dict[str, str]] = {
    "input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbeafe", "color": "#2563eb"},
    "param": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fef3c7", "color": "#d97706"},
    "const": {"shape": "box", "style": "filled", "fillcolor": "#f3f4f6", "color": "#9ca3af", "fontsize": "8"},
    "op": {"shape": "ellipse", "style": "filled", "fillcolor": "#ffffff", "color": "#4b5563"},
    "fwd": {"shape": "ellipse", "style": "dashed,filled", "fillcolor": "#f9fafb", "color": "#9ca3af"},
    "root": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dcfce7", "color": "#16a34a", "penwidth": "2"},
    "module": {"shape": "box3d", "style": "filled", "fillcolor": "#ede9fe", "color": "#7c3aed"},
    "ops": {"shape": "ellipse", "style": "filled", "fillcolor": "#ffffff", "color": "#4b5563", "peripheries": "2"},
}
_BAD = {"fillcolor": "#fee2e2", "color": "#dc2626", "fontcolor": "#b91c1c", "penwidth": "2.5"}
_LEGEND = {
    "input": "input",
    "param": "parameter",
    "const": "constant",
    "op": "op",
    "fwd": "forward op",
    "module": "module",
    "ops": "ops by name",
    "root": "output",
}
_GREY = "#475569"


# ---------------------------------------------------------------------------------------------
# reading the graph
# ---------------------------------------------------------------------------------------------


def _walk(roots: Sequence[Tensor2D]) -> list[Tensor2D]:
    """Every tensor reachable from ``roots``, inputs before outputs (iterative post-order DFS)."""
    order: list[Tensor2D] = []
    seen: set[int] = set()  # id() only tells tensors apart here; it never reaches the output
    stack: list[tuple[Tensor2D, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for inp in reversed(node.inputs):
            if id(inp) not in seen:
                stack.append((inp, False))
    return order


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC, which rescans every tensor of a large graph (1.3x on a 100,000-op chain)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _as_roots(root: Any, where: str) -> list[Tensor2D]:
    roots = [root] if isinstance(root, Tensor2D) else list(root) if isinstance(root, (list, tuple)) else None
    if not roots or not all(isinstance(r, Tensor2D) for r in roots):
        raise ArgumentTypeError(
            f"{where}: root must be a Tensor2D or a non-empty list of them, got {type(root).__name__}"
        )
    return roots


def _is_module(obj: Any) -> bool:
    return callable(getattr(obj, "named_parameters", None)) and callable(getattr(obj, "named_modules", None))


def _param_names(params: Any, where: str = "draw_graph") -> list[tuple[str, Tensor2D]]:
    """``params`` (a Module, a mapping or an iterable of pairs) as ``(name, tensor)`` pairs."""
    expected = "a Module, a dict of name -> Tensor2D or pairs such as model.named_parameters()"
    if params is None:
        return []
    if _is_module(params):
        pairs = list(params.named_parameters())
    elif isinstance(params, Mapping):
        pairs = list(params.items())
    elif isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise ArgumentTypeError(f"{where}: params must be {expected}; got {type(params).__name__} {params!r:.60}")
    else:
        pairs = list(params)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Tensor2D)):
            raise ArgumentTypeError(f"{where}: params must be {expected}; found {pair!r:.60}")
    return [(str(n), t) for n, t in pairs]


def _params_once(params: Any, where: str) -> Any:
    """A Module as it is; anything else as a list of pairs, so an iterator can be read twice."""
    return params if params is None or _is_module(params) else _param_names(params, where)


def _check_limit(where: str, name: str, value: Any) -> None:
    """``value`` must be None or a positive int (a TypeError for other types, an ArgumentError for < 1)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{where}: {name} must be a positive int or None, got {type(value).__name__} {value!r:.40}"
        )
    if value < 1:
        raise ArgumentError(f"{where}: {name} must be a positive int or None, got {value!r}")


def _scope(t: Tensor2D) -> tuple[Any, ...]:
    op = t._op
    scope = getattr(op, "scope", ()) if op is not None else ()
    return tuple(scope) if scope else ()


def _common_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    n = 0
    for x, y in zip(a, b):
        if x is not y:
            break
        n += 1
    return a[:n]


def _module_label(module: Any, name: str) -> str:
    """``0: Linear(784 -> 128)``; the root module is its class name alone."""
    get_name = getattr(module, "_get_name", None)
    cls = str(get_name()) if callable(get_name) else type(module).__name__
    fan_in, fan_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    image, output_shape = getattr(module, "image_shape", None), getattr(module, "output_shape", None)
    if isinstance(fan_in, int) and isinstance(fan_out, int):
        extra = f"{fan_in} -> {fan_out}" + ("" if getattr(module, "bias", True) is not None else ", no bias")
    elif isinstance(image, tuple) and callable(output_shape):  # an image layer: C x H x W in and out
        extra = f"{_image(image)} -> {_image(output_shape())}"
    else:
        extra_repr = getattr(module, "extra_repr", None)
        extra = str(extra_repr()) if callable(extra_repr) else ""
        if "\n" in extra or len(extra) > 48:
            extra = extra.split("\n")[0][:45] + "..."
    body = f"{cls}({extra})" if extra else cls
    return f"{name}: {body}" if name else body


@dataclass
class _Plan:
    """The graph read once: tensors in order and what each is to the drawing."""

    order: list[Tensor2D]
    pos: dict[int, int]  # id(tensor) -> position in ``order``
    roots: list[int]  # positions in ``order``, distinct, in the order given
    root_names: dict[int, str]
    kind: list[str]  # "op" for a tensor an op made, else "input", "param" or "const"
    label: list[str]  # display name of leaves
    place: list[tuple[Any, ...]]  # module scope a node is drawn in
    first_consumer: list[int]
    module_names: dict[int, str]
    forward_ops: set[int] = field(default_factory=set)  # backward=True: ops of the forward graph

    def module_label(self, module: Any) -> str:
        return _module_label(module, self.module_names.get(id(module), type(module).__name__))

    def is_root(self, i: int) -> bool:
        return i in self.root_names

    def node_count(self) -> int:
        ops = sum(1 for k in self.kind if k == "op")
        leaves = len(self.kind) - ops
        return ops + leaves + sum(1 for i in self.roots if self.kind[i] == "op")


def _plan(
    roots: list[Tensor2D],
    params: Any,
    root_names: list[str] | None = None,
    forward_leaves: set[int] | None = None,
) -> _Plan:
    order = _walk(roots)
    pos = {id(t): i for i, t in enumerate(order)}
    n = len(order)
    place: list[tuple[Any, ...] | None] = [None] * n
    first_consumer = [-1] * n
    outermost: dict[int, Any] = {}
    for i, t in enumerate(order):
        if t._op is None:
            continue
        scope = _scope(t)
        place[i] = scope
        if scope:
            outermost.setdefault(id(scope[0]), scope[0])
        for inp in t.inputs:
            j = pos[id(inp)]
            if first_consumer[j] < 0:
                first_consumer[j] = i
            if order[j]._op is None:
                prev = place[j]
                place[j] = scope if prev is None else _common_prefix(prev, scope)

    # Names: modules and parameters from ``params`` first, then from the modules the ops ran in.
    module_names: dict[int, str] = {}
    named = _param_names(params)
    sources = ([params] if _is_module(params) else []) + list(outermost.values())
    for src in sources:
        if _is_module(src):
            for name, m in src.named_modules():
                module_names.setdefault(id(m), str(name))
            if params is None:
                named.extend((str(k), v) for k, v in src.named_parameters())
    param_names: dict[int, str] = {}
    for name, t in named:
        param_names.setdefault(id(t), name)
    nn = sys.modules.get("matgrad.nn")
    param_type = getattr(nn, "Parameter", None)

    kind: list[str] = []
    label: list[str] = []
    for t in order:
        if t._op is not None:
            kind.append("op")
            label.append(t.name or "")
        elif id(t) in param_names or (isinstance(param_type, type) and isinstance(t, param_type)):
            kind.append("param")
            label.append(param_names.get(id(t)) or t.name or "parameter")
        elif t.name:
            kind.append("input")
            label.append(t.name)
        elif (t.shape == (1, 1) and not t.requires_grad) or (
            forward_leaves is not None and id(t) not in forward_leaves and not t.requires_grad
        ):
            kind.append("const")
            label.append(_number(t.item()) if t.shape == (1, 1) else "constant")
        else:
            kind.append("input")
            label.append("input")

    root_pos: list[int] = []
    names: dict[int, str] = {}
    for k, r in enumerate(roots):
        i = pos[id(r)]
        if root_names is not None:
            names[i] = f"{names[i]}, {root_names[k]}" if i in names else root_names[k]
        elif i not in names:
            names[i] = r.name or (label[i] if r._op is None and label[i] != "input" else "output")
        if i not in root_pos:
            root_pos.append(i)
    if root_names is None and len(root_pos) > 1:
        for k, i in enumerate(root_pos):
            if names[i] == "output":
                names[i] = f"output {k}"
    return _Plan(order, pos, root_pos, names, kind, label, [p or () for p in place], first_consumer, module_names)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _shape(t: Tensor2D) -> str:
    return f"{t.nrows} x {t.ncols}"


def _image(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# Ops whose output holds its same-shaped input's images, value by value (for edge labels).
_ELEMENTWISE = frozenset(
    {"relu", "leaky_relu", "sigmoid", "tanh", "neg", "exp", "log", "sqrt", "abs", "pow", "dropout", "clone", "alias"}
)


def _image_shape(t: Tensor2D) -> tuple[int, int, int] | None:
    """``(C, H, W)`` when ``t``'s rows are images: made by an image op (convolution, pooling),
    perhaps through element-wise ops (the ReLU after a convolution)."""
    for _ in range(64):
        op = t._op
        if op is None:
            return None
        image = getattr(op, "output_image", None)
        if image is not None:
            return image if math.prod(image) == t.ncols else None
        if not (op.broadcast or op.name in _ELEMENTWISE):
            return None
        same = [x for x in getattr(op, "inputs", ()) if x.shape == t.shape]
        if not same:
            return None
        t = same[-1]  # where(cond, a, b): the values, not the condition
    return None


def _edge_shape(t: Tensor2D) -> str:
    """``64 x 784``, or ``64 x (16x12x12)`` for a batch of image rows."""
    image = _image_shape(t)
    return f"{t.nrows} x ({_image(image)})" if image else _shape(t)


def _leaf_image(t: Tensor2D, consumer: Tensor2D | None) -> str | None:
    """``1x28x28 images`` for a leaf whose rows an image op reads as images."""
    window = getattr(consumer._op, "window", None) if consumer is not None else None
    size = getattr(window, "image_size", None)
    if size == t.ncols and consumer is not None and t in getattr(consumer._op, "inputs", ()):
        return f"rows: {window.channels}x{window.height}x{window.width} images"  # type: ignore[union-attr]
    return None


def _stats(t: Tensor2D) -> tuple[float, float, float]:
    """``(min, mean, max)`` of the values, from backend kernels (no graph recorded)."""
    be, d = t.kernels, t.native
    lo = be.tolist(be.min(d, None))[0][0]
    hi = be.tolist(be.max(d, None))[0][0]
    total = be.tolist(be.sum(d, None))[0][0]
    return float(lo), float(total) / (t.nrows * t.ncols), float(hi)


def _norm(g: Tensor2D) -> float:
    """The Frobenius norm, scaled by the largest magnitude first so float32 does not overflow."""
    be, d = g.kernels, g.native
    big = float(be.tolist(be.max(be.unary("abs", d), None))[0][0])
    if big == 0.0 or not math.isfinite(big):
        return big
    total = float(be.tolist(be.sum(be.pow(be.div(d, big), 2.0), None))[0][0])
    return big * math.sqrt(total)


def _finite(t: Tensor2D) -> bool:
    return bool(t.kernels.all_finite(t.native))


def _details(t: Tensor2D, show_values: bool, show_grad: bool, grad_expected: bool) -> tuple[list[str], bool]:
    """Lines of values and gradient norm, and whether a value or gradient is NaN or Inf."""
    lines: list[str] = []
    bad = False
    if (show_values or show_grad) and not _finite(t):
        bad = True
        lines.append("NaN/Inf in value")
    if show_values and t.shape == (1, 1):
        lines.append(f"= {_number(t.item())}")
    elif show_values:
        lo, mu, hi = _stats(t)
        lines.append(f"min {_number(lo)} / mean {_number(mu)} / max {_number(hi)}")
    if show_grad:
        g = t.grad
        if g is not None:
            lines.append(f"grad norm {_number(_norm(g))}")
            if not _finite(g):
                bad = True
                lines.append("NaN/Inf in grad")
        elif grad_expected:
            lines.append("grad: none")
    return lines, bad


_CONTROL = {c: " " for c in range(32)}


def _esc(text: str) -> str:
    """Text made safe inside a Graphviz HTML-like label (and the SVG written from it)."""
    text = text.translate(_CONTROL).encode("utf-8", "replace").decode("utf-8")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _html(title: str, lines: Sequence[str] = (), small: Sequence[str] = ()) -> str:
    """An HTML-like label: a bold title, plain lines, then small grey lines."""
    parts = [f"<B>{_esc(title)}</B>", *(_esc(s) for s in lines)]
    parts += [f'<FONT POINT-SIZE="8" COLOR="{_GREY}">{_esc(s)}</FONT>' for s in small]
    return "<" + "<BR/>".join(parts) + ">"


def _style(kind: str, bad: bool) -> dict[str, str]:
    attrs = dict(_STYLES[kind])
    if bad:
        attrs.update(_BAD)
    return attrs


# ---------------------------------------------------------------------------------------------
# emitting DOT
# ---------------------------------------------------------------------------------------------


@dataclass
class _Node:
    id: str
    label: str
    attrs: dict[str, str]
    place: tuple[Any, ...]  # the modules whose clusters hold the node, outermost first


def _emit(
    dot: graphviz.Digraph,
    nodes: list[_Node],
    edges: list[tuple[str, str, str]],
    cluster_label: Callable[[Any], str],
) -> None:
    """Nodes inside nested module clusters (numbered by first appearance), then every edge."""
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {(): []}
    members: dict[tuple[int, ...], list[_Node]] = {(): []}
    modules: dict[tuple[int, ...], Any] = {}
    for node in nodes:
        key: tuple[int, ...] = ()
        for module in node.place:
            parent, key = key, (*key, id(module))
            if key not in members:
                members[key] = []
                children[key] = []
                children[parent].append(key)
                modules[key] = module
        members[key].append(node)

    counter = iter(range(len(members)))

    def fill(graph: graphviz.Digraph, key: tuple[int, ...]) -> None:
        for node in members[key]:
            graph.node(node.id, node.label, **node.attrs)
        for child in children[key]:
            with graph.subgraph(name=f"cluster_{next(counter)}") as sub:
                shade = "#f8fafc" if len(child) % 2 else "#eef2f7"
                sub.attr(label=_html(cluster_label(modules[child])), style="rounded,filled", fillcolor=shade)
                sub.attr(color="#94a3b8", labeljust="l", fontsize="10", fontcolor="#334155")
                fill(sub, child)  # recursion only as deep as the modules nest

    fill(dot, ())
    for tail, head, label in edges:
        dot.edge(tail, head, label=label or None)


def _new_digraph(rankdir: str, note: str | None) -> graphviz.Digraph:
    graph_attr = {"rankdir": rankdir, "fontname": _FONT, "nodesep": "0.25", "ranksep": "0.35"}
    if note:
        graph_attr.update(label="<" + _esc(note) + ">", labelloc="t", fontsize="11", fontcolor="#b45309")
    return graphviz.Digraph(
        "matgrad",
        graph_attr=graph_attr,
        node_attr={"fontname": _FONT, "fontsize": "10", "margin": "0.08,0.04", "height": "0.3"},
        edge_attr={"fontname": _FONT, "fontsize": "8", "color": "#64748b", "fontcolor": _GREY, "arrowsize": "0.6"},
    )


def _legend(dot: graphviz.Digraph, kinds: set[str]) -> None:
    """One small table node listing the kinds of node the drawing uses."""
    cells = []
    for kind, text in _LEGEND.items():
        if kind in kinds:
            style = _STYLES[kind]
            cells.append(f'<TD BGCOLOR="{style["fillcolor"]}" COLOR="{style["color"]}">{text}</TD>')
    if "bad" in kinds:
        cells.append(f'<TD BGCOLOR="{_BAD["fillcolor"]}" COLOR="{_BAD["color"]}">NaN / Inf</TD>')
    table = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="2" CELLPADDING="2">'
    dot.node("legend", f"<{table}<TR>{''.join(cells)}</TR></TABLE>>", shape="plaintext", fontsize="8")


def _draw_full(plan: _Plan, dot: graphviz.Digraph, show_values: bool, show_grad: bool, group: bool) -> set[str]:
    """Every op and every leaf and root tensor; returns the kinds of node used (for the legend)."""
    nodes: list[_Node] = []
    edges: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for i, t in enumerate(plan.order):
        kind, op, is_root = plan.kind[i], t._op, plan.is_root(i)
        if op is not None:
            style = "fwd" if id(op) in plan.forward_ops else "op"
            title = op.describe()
            if plan.label[i] and not is_root:
                title = f"{plan.label[i]} = {title}"
            small, bad = ([], False) if is_root else _details(t, show_values, show_grad, False)
            nodes.append(_Node(f"op{i}", _html(title, small=small), _style(style, bad), plan.place[i] if group else ()))
            used.update((style, "bad") if bad else (style,))
            for inp in t.inputs:
                j = plan.pos[id(inp)]
                if plan.kind[j] == "op":  # an intermediate tensor: the edge carries its shape
                    edges.append((f"op{j}", f"op{i}", _edge_shape(inp)))
                else:
                    edges.append((f"t{j}", f"op{i}", ""))
        if kind == "op" and not is_root:
            continue
        lines: list[str] = []
        if kind != "const":
            lines.append(f"{_shape(t)}, {t.dtype}")
            if kind == "input" and plan.first_consumer[i] >= 0:
                image = _leaf_image(t, plan.order[plan.first_consumer[i]])
                if image:
                    lines.append(image)
            if is_root and t.shape == (1, 1):
                lines.append(f"= {_number(t.item())}")
            if kind == "input" and t.requires_grad:
                lines.append("requires grad")
            values = show_values and not (is_root and t.shape == (1, 1))  # its value is already there
            small, bad = _details(t, values, show_grad, t.requires_grad and kind != "op")
        else:
            lines, small, bad = ([] if t.shape == (1, 1) else [_shape(t)]), [], False
        node_kind = "root" if is_root else kind
        title = plan.root_names[i] if is_root else plan.label[i]
        place = plan.place[i] if group and kind in ("param", "const") else ()
        nodes.append(_Node(f"t{i}", _html(title, lines, small), _style(node_kind, bad), place))
        used.update(("bad", node_kind) if bad else (node_kind,))
        if op is not None:
            edges.append((f"op{i}", f"t{i}", _edge_shape(t)))
    _emit(dot, nodes, edges, plan.module_label)
    return used


def _has_bad(t: Tensor2D) -> bool:
    return not _finite(t) or (t.grad is not None and not _finite(t.grad))


def _draw_collapsed(
    plan: _Plan, dot: graphviz.Digraph, check: bool, group: bool, max_nodes: int
) -> tuple[set[str], int]:
    """One node per module (as deep as ``max_nodes`` allows), ops outside modules by name.

    Parameters and constants join the group of their first consumer; inputs share one node;
    roots keep their own. Returns the kinds of node used and the module depth drawn.
    """
    order, kind = plan.order, plan.kind
    scopes: dict[tuple[int, ...], tuple[Any, ...]] = {}
    outside: set[str] = set()
    for i, t in enumerate(order):
        if kind[i] == "op":
            if plan.place[i]:
                scopes.setdefault(tuple(map(id, plan.place[i])), plan.place[i])
            else:
                outside.add(t._op.name)  # type: ignore[union-attr]
    fixed = len(outside) + len(plan.roots) + 1
    depth = max((len(s) for s in scopes), default=0)
    while depth > 1 and len({k[:depth] for k in scopes}) + fixed > max_nodes:
        depth -= 1

    @dataclass
    class Group:
        kind: str
        title: str
        place: tuple[Any, ...] = ()
        ops: Counter[str] = field(default_factory=Counter)
        params: int = 0
        values: int = 0
        members: list[str] = field(default_factory=list)
        bad: bool = False

    groups: dict[str, Group] = {}
    keys: dict[tuple[Any, ...], str] = {}
    group_of = [""] * len(order)
    for i, t in enumerate(order):  # ops, inputs and roots first: a leaf precedes its consumer
        op = t._op
        if op is not None:
            scope = plan.place[i][:depth]
            key: tuple[Any, ...] = ("m", *map(id, scope)) if scope else ("o", op.name)
            gid = keys.get(key, "")
            if not gid:
                gid = keys[key] = f"m{len(keys)}" if scope else f"o{len(keys)}"
                if scope:
                    groups[gid] = Group("module", plan.module_label(scope[-1]), scope[:-1] if group else ())
                else:
                    groups[gid] = Group("ops", op.name)
            groups[gid].ops[op.name] += 1
            group_of[i] = gid
        elif plan.is_root(i):
            group_of[i] = f"t{i}"
        elif kind[i] == "input" or plan.first_consumer[i] < 0:
            group_of[i] = "inputs"
            groups.setdefault("inputs", Group("input", "inputs")).members.append(f"{plan.label[i]}  {_shape(t)}")
    for i, t in enumerate(order):  # parameters and constants join their first consumer's group
        if not group_of[i]:
            gid = group_of[i] = group_of[plan.first_consumer[i]]
            if kind[i] == "param":
                groups[gid].params += 1
                groups[gid].values += t.nrows * t.ncols
        if check and group_of[i] in groups and _has_bad(t):
            groups[group_of[i]].bad = True

    nodes: list[_Node] = []
    used: set[str] = set()
    for gid, g in groups.items():
        if g.kind == "module":
            total = sum(g.ops.values())
            top = ", ".join(name if n == 1 else f"{n:,} {name}" for name, n in g.ops.most_common(3))
            lines = [f"{total:,} op{'s' if total != 1 else ''}: {top}" + (", ..." if len(g.ops) > 3 else "")]
            if g.params:
                lines.append(f"{g.params} parameter{'s' if g.params != 1 else ''} ({g.values:,} values)")
        elif g.kind == "ops":
            total = sum(g.ops.values())
            lines = [f"{total:,} op{'s' if total != 1 else ''} outside modules"]
        else:
            lines = g.members[:4] + ([f"and {len(g.members) - 4:,} more"] if len(g.members) > 4 else [])
        nodes.append(_Node(gid, _html(g.title, lines), _style(g.kind, g.bad), g.place))
        used.update((g.kind, "bad") if g.bad else (g.kind,))
    for i in plan.roots:
        t = order[i]
        bad = check and _has_bad(t)
        lines = [f"{_shape(t)}, {t.dtype}"] + ([f"= {_number(t.item())}"] if t.shape == (1, 1) else [])
        nodes.append(_Node(f"t{i}", _html(plan.root_names[i], lines), _style("root", bad), ()))
        used.update(("root", "bad") if bad else ("root",))

    links: dict[tuple[str, str], list[Any]] = {}
    for i, t in enumerate(order):
        if t._op is None:
            continue
        pairs = [(group_of[plan.pos[id(inp)]], inp) for inp in t.inputs]
        if plan.is_root(i):
            pairs.append((group_of[i], t))
        for src, tensor in pairs:
            dst = f"t{i}" if tensor is t else group_of[i]
            if src == dst:
                continue
            link = links.setdefault((src, dst), [0, []])
            link[0] += 1
            if _edge_shape(tensor) not in link[1]:
                link[1].append(_edge_shape(tensor))
    edges = []
    for (src, dst), (count, shapes) in links.items():
        label = shapes[0] if len(shapes) == 1 else f"{len(shapes)} shapes"
        edges.append((src, dst, label + (f" ({count:,} edges)" if count > 1 else "")))
    _emit(dot, nodes, edges, plan.module_label)
    return used, depth


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _stacklevel() -> int:
    """``warnings.warn`` stacklevel of the first frame outside matgrad (from the caller's view)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _gradient_plan(roots: list[Tensor2D], params: Any) -> _Plan:
    """The plan of the gradient graph: d(roots)/d(leaves) built with ``create_graph=True``."""
    forward = _walk(roots)
    if any(t._op is not None and t._op.released for t in forward):
        raise GraphError(
            "draw_graph(backward=True): a backward pass already released this graph; draw it "
            "before calling backward(), or call backward(retain_graph=True)"
        )
    outs = [r for r in roots if r.requires_grad]
    leaves = [t for t in forward if t._op is None and t.requires_grad]
    if not outs or not leaves:
        raise GraphError(
            "draw_graph(backward=True): nothing in this graph requires grad, so there is no "
            "gradient graph; create the leaves with requires_grad=True"
        )
    seeds: list[Tensor2D | None] = [None if r.shape == (1, 1) else ones_like(r) for r in outs]
    grads = _engine.grad(outs, leaves, grad_outputs=seeds, retain_graph=True, create_graph=True, allow_unused=True)
    names = _plan(roots, params)
    new_roots, root_names = [], []
    for leaf, g in zip(leaves, grads):
        if g is not None:
            new_roots.append(g)
            root_names.append(f"grad {names.label[names.pos[id(leaf)]]}")
    plan = _plan(new_roots, params, root_names, {id(t) for t in forward if t._op is None})
    plan.forward_ops = {id(t._op) for t in forward if t._op is not None}
    return plan


def draw_graph(
    root: Roots,
    *,
    show_grad: bool = False,
    show_values: bool = False,
    params: Any = None,
    group_modules: bool = True,
    rankdir: str = "LR",
    max_nodes: int | None = 500,
    backward: bool = False,
    legend: bool = True,
) -> graphviz.Digraph:
    """The graph that produced ``root`` (a tensor or a list of them) as a ``graphviz.Digraph``.

    ``params``: a Module, a dict or ``(name, tensor)`` pairs naming parameters (by default, the
    parameters of the modules the ops ran in). ``show_values``: min / mean / max of each tensor;
    ``show_grad``: gradient norms, with NaN or Inf in a value or gradient marked red.
    ``group_modules``: ops drawn inside a cluster per module call. ``backward``: draw the
    gradient graph of ``root`` with respect to its leaves (non-1x1 roots seeded with ones),
    leaving ``.grad`` untouched. Above ``max_nodes`` nodes (``None``: no limit), a warning and a
    collapsed drawing with one node per module. Needs no Graphviz program: ``.source``,
    ``.save()``; ``render_graph`` or ``.pipe()`` call ``dot``; Jupyter shows it inline.
    """
    if rankdir not in _RANKDIRS:
        raise ArgumentError(f"draw_graph: rankdir must be one of {', '.join(_RANKDIRS)}, got {rankdir!r}")
    _check_limit("draw_graph", "max_nodes", max_nodes)
    roots = _as_roots(root, "draw_graph")
    params = _params_once(params, "draw_graph")
    with _gc_paused():
        plan = _gradient_plan(roots, params) if backward else _plan(roots, params)
        count = plan.node_count()
        collapse = max_nodes is not None and count > max_nodes
        note = None
        if collapse:
            warnings.warn(
                f"draw_graph: the graph has {count:,} nodes, more than max_nodes={max_nodes}; drawing "
                "a collapsed view with one node per module instead (pass a larger max_nodes, or "
                "max_nodes=None, to draw every node)",
                stacklevel=_stacklevel(),
            )
            note = (
                f"Collapsed view: {count:,} nodes exceed max_nodes={max_nodes}. One node per module; "
                "ops outside modules are summarised by name."
            )
        dot = _new_digraph(rankdir, note)
        if collapse:
            used, _ = _draw_collapsed(plan, dot, show_values or show_grad, group_modules, max_nodes or 0)
        else:
            used = _draw_full(plan, dot, show_values, show_grad, group_modules)
    if legend:
        _legend(dot, used)
    return dot


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (see
    ``matgrad._files.atomic_write``: the mode is kept, errors name ``path``)."""
    with atomic_write(os.fspath(path), "render_graph") as f:
        f.write(data)


def render_graph(root: Roots | graphviz.Digraph, path: str | os.PathLike[str], **draw_kwargs: Any) -> Path:
    """Draw ``root`` (or render a ``Digraph`` from ``draw_graph``) to ``path``; returns the path.

    The format follows the suffix: ``.svg``, ``.png`` and ``.pdf`` run Graphviz's ``dot``;
    ``.dot`` / ``.gv`` write the DOT text. The file is written atomically. When ``dot`` is
    missing, the DOT text is written to ``<path stem>.dot`` and a ``MatgradError`` says how to
    install Graphviz.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ArgumentTypeError(
            f"render_graph: path must be a file name such as 'graph.svg' (a str or pathlib.Path), "
            f"got {type(path).__name__} {path!r:.40}"
        )
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in (*_RENDER_FORMATS, "dot", "gv"):
        raise ArgumentError(f"render_graph: cannot render {target.name!r}; name a .svg, .png, .pdf or .dot file")
    if isinstance(root, graphviz.Digraph):
        if draw_kwargs:
            raise ArgumentTypeError(
                f"render_graph: drawing options ({', '.join(draw_kwargs)}) need a tensor, not a Digraph"
            )
        dot = root
    else:
        dot = draw_graph(root, **draw_kwargs)
    if fmt in ("dot", "gv"):
        _write_atomic(target, dot.source.encode("utf-8"))
        return target
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        fallback = target.with_suffix(".dot")
        _write_atomic(fallback, dot.source.encode("utf-8"))
        raise MatgradError(
            "render_graph: Graphviz's dot program was not found; install it with "
            "`apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`; "
            f"the DOT source was written to {fallback}"
        ) from exc
    except graphviz.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else str(exc.stderr)
        raise MatgradError(f"render_graph: Graphviz's dot failed to draw {target.name}: {stderr}") from exc
    _write_atomic(target, data)
    return target


def draw_model_graph(model: Any, x: Tensor2D, y: Any, *, grad: bool = True, **draw_kwargs: Any) -> graphviz.Digraph:
    """Draw ``loss = cross_entropy(model(x), y)`` for one batch.

    With ``grad=True`` the loss is backpropagated first and gradient norms are shown; the
    parameters' previous ``.grad`` are restored afterwards, so a trained model is left as it was.
    Other keyword arguments go to ``draw_graph`` (``params`` defaults to ``model``).
    """
    if not callable(model) or not _is_module(model):
        raise ArgumentTypeError(
            f"draw_model_graph: model must be a Module (callable, with named_parameters), got {type(model).__name__}"
        )
    if not isinstance(x, Tensor2D):
        raise ArgumentTypeError(f"draw_model_graph: x must be a Tensor2D batch, got {type(x).__name__}")
    if not x.requires_grad:
        name = x.name or "x"
        x = x.detach()  # a new leaf we may name, sharing the data
        x.name = name
    with enable_grad():
        loss = cross_entropy(model(x), y)
    loss.name = "loss"
    draw_kwargs.setdefault("params", model)
    draw_kwargs.setdefault("show_grad", grad)
    if not grad:
        return draw_graph(loss, **draw_kwargs)
    saved = [(p, p.grad) for _, p in model.named_parameters()]
    try:
        for p, _ in saved:
            p.grad = None
        loss.backward(retain_graph=True)  # retained: backward=True can still build the gradient graph
        return draw_graph(loss, **draw_kwargs)
    finally:
        for p, g in saved:
            p.grad = g


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------

_MAX_INDENT = 24  # deeper levels are drawn at this indent, with their depth written out


def _text_line(plan: _Plan, i: int, show_values: bool, show_grad: bool) -> str:
    t = plan.order[i]
    kind, op = plan.kind[i], t._op
    if kind == "const":
        return f"const {plan.label[i]}" if t.shape == (1, 1) else f"constant  {_shape(t)}  {t.dtype}"
    if op is not None:
        head = op.describe()
        name = plan.root_names.get(i) or plan.label[i]
        parts = [f"{name} = {head}" if name else head, _shape(t), t.dtype]
    else:
        head = plan.root_names.get(i, plan.label[i])
        parts = [head, _shape(t), t.dtype]
        word = {"param": "parameter", "input": "input"}[kind]
        if word != head:
            parts.append(word)
        if kind == "input" and t.requires_grad:
            parts.append("requires grad")
    if plan.is_root(i) and t.shape == (1, 1):
        parts.append(f"= {_number(t.item())}")
    if op is not None and plan.place[i]:
        parts.append(f"[{plan.module_label(plan.place[i][-1])}]")
    values = show_values and not (plan.is_root(i) and t.shape == (1, 1))
    small, bad = _details(t, values, show_grad, op is None and t.requires_grad)
    parts += small
    if bad:
        parts.append("<-- NaN/Inf")
    return "  ".join(parts)


def text_graph(
    root: Roots,
    *,
    params: Any = None,
    show_values: bool = False,
    show_grad: bool = False,
    max_lines: int | None = 1000,
) -> str:
    """An indented tree of the graph for terminals and logs: the output first, inputs below.

    A subtree used more than once is printed once with a mark ``[#k]`` and later referred to
    as ``[see #k]``. Stops after ``max_lines`` lines (``None``: no limit).
    """
    roots = _as_roots(root, "text_graph")
    _check_limit("text_graph", "max_lines", max_lines)
    with _gc_paused():
        plan = _plan(roots, _params_once(params, "text_graph"))
    uses = [0] * len(plan.order)
    for t in plan.order:
        for inp in t.inputs:
            uses[plan.pos[id(inp)]] += 1
    for i in plan.roots:
        uses[i] += 1
    refs: dict[int, int] = {}
    lines: list[str] = []
    # Stack items: (position, depth, is_last, indent chain); a chain is (segment, parent chain).
    Chain = Union[tuple[str, Any], None]
    stack: list[tuple[int, int, bool, Chain]] = [(i, 0, True, None) for i in reversed(plan.roots)]
    while stack:
        if max_lines is not None and len(lines) >= max_lines:
            lines.append(f"... (stopped at max_lines={max_lines})")
            break
        i, depth, last, chain = stack.pop()
        segments: list[str] = []
        link = chain
        while link is not None and len(segments) < _MAX_INDENT:
            segments.append(link[0])
            link = link[1]
        indent = "".join(reversed(segments))
        if depth > _MAX_INDENT:
            indent = f"[depth {depth}] {indent}"
        branch = "" if depth == 0 else ("`-- " if last else "|-- ")
        t = plan.order[i]
        expand = t._op is not None
        if expand and i in refs:
            name = plan.root_names.get(i) or plan.label[i]
            text = f"{name} = {t._op.describe()}" if name else t._op.describe()  # type: ignore[union-attr]
            text += f"  [see #{refs[i]}]"
            expand = False
        else:
            text = _text_line(plan, i, show_values, show_grad)
            if expand and uses[i] > 1:
                refs[i] = len(refs) + 1
                text += f"  [#{refs[i]}]"
        lines.append(indent + branch + text)
        if expand:
            child_chain: Chain = chain if depth == 0 else ("    " if last else "|   ", chain)
            inputs = t.inputs
            for k in range(len(inputs) - 1, -1, -1):
                stack.append((plan.pos[id(inputs[k])], depth + 1, k == len(inputs) - 1, child_chain))
    return "\n".join(lines)
