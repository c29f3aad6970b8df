"""Diagrams: DOT text checked as text and after layout by the real Graphviz ``dot``.

Tests that run ``dot`` skip when it is missing on a developer's machine, but fail in CI
(``CI`` set), where ``.ci/run`` installs Debian's graphviz package.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest

import matgrad as mg
from matgrad import functional as F
from matgrad import nn, viz

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None and not os.environ.get("CI"),
    reason="Graphviz's dot is not installed (apt-get install graphviz)",
)

SVG = "{http://www.w3.org/2000/svg}"
RED = "#dc2626"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def mlp_loss(sizes: tuple[int, ...] = (784, 128, 64, 10), batch: int = 32) -> tuple[nn.Module, mg.Tensor2D]:
    model = nn.MLP(list(sizes))
    x = mg.randn(batch, sizes[0])
    y = [i % sizes[-1] for i in range(batch)]
    return model, F.cross_entropy(model(x), y)


def svg_of(dot: graphviz.Digraph) -> ET.Element:
    """Lay the DOT text out with the real ``dot`` and parse the SVG (valid XML or an error)."""
    return ET.fromstring(dot.pipe(format="svg"))


def texts(svg: ET.Element) -> list[str]:
    return ["".join(el.itertext()) for el in svg.iter(f"{SVG}text")]


def groups(svg: ET.Element, cls: str) -> list[tuple[str, ET.Element]]:
    """The ``<g class=cls>`` elements with their ``<title>`` (the DOT node id or cluster name)."""
    out = []
    for g in svg.iter(f"{SVG}g"):
        if g.get("class") == cls:
            title = g.find(f"{SVG}title")
            assert title is not None
            out.append((title.text or "", g))
    return out


def graph_counts(root: mg.Tensor2D) -> tuple[int, int]:
    """Nodes and edges the drawing should have: one per op, leaf and root; an edge per op input."""
    seen: dict[int, mg.Tensor2D] = {}
    stack = [root]
    while stack:
        t = stack.pop()
        if id(t) not in seen:
            seen[id(t)] = t
            stack.extend(t.inputs)
    ops = sum(1 for t in seen.values() if t.op is not None)
    leaves = len(seen) - ops
    has_op = int(root.op is not None)
    return ops + leaves + has_op, sum(len(t.inputs) for t in seen.values()) + has_op


def dot_counts(source: str) -> tuple[int, int]:
    nodes = len(re.findall(r"^\s+(?:t|op)\d+ \[", source, flags=re.M))
    edges = len(re.findall(r"^\s+\S+ -> \S+", source, flags=re.M))
    return nodes, edges


# ---------------------------------------------------------------------------------------------
# the drawing, laid out by dot
# ---------------------------------------------------------------------------------------------


@needs_dot
def test_mlp_svg_holds_ops_parameters_and_shapes() -> None:
    model, loss = mlp_loss()
    loss.backward()
    svg = svg_of(viz.draw_graph(loss, params=model, show_grad=True))
    words = texts(svg)
    joined = "\n".join(words)
    for op in ("linear", "relu", "cross_entropy"):
        assert op in words
    for name in ("0.weight", "0.bias", "2.weight", "4.bias"):
        assert name in words
    for shape in ("128 x 784, float32", "1 x 10, float32", "32 x 784, float32"):
        assert shape in words
    for edge_shape in ("32 x 128", "32 x 64", "32 x 10"):  # intermediate tensors label their edges
        assert edge_shape in words
    assert "0: Linear(784 -> 128)" in words and "4: Linear(64 -> 10)" in words and "1: ReLU" in words
    assert "grad norm" in joined
    assert "parameter" in words and "output" in words  # the legend


@needs_dot
@pytest.mark.parametrize("kind", ["mlp", "shared"])
def test_node_and_edge_counts_equal_the_graph(backend: str, kind: str) -> None:
    if kind == "mlp":
        _, root = mlp_loss((6, 5, 3), batch=4)
    else:  # reuse (x*x), scalars as constants, one tensor feeding several ops
        x = mg.randn(3, 2, requires_grad=True, dtype="float64")
        h = (x * x + 1.0).tanh()
        root = (h.sum(axis=0) * h.mean() - h.max()).sum()
    dot = viz.draw_graph(root)
    expected = graph_counts(root)
    assert dot_counts(dot.source) == expected
    svg = svg_of(dot)
    nodes = [k for k, _ in groups(svg, "node") if k != "legend"]
    assert (len(nodes), len(groups(svg, "edge"))) == expected


def test_same_graph_gives_the_same_bytes() -> None:
    mg.manual_seed(1)
    _, loss_a = mlp_loss((20, 8, 4), batch=5)
    mg.manual_seed(1)
    _, loss_b = mlp_loss((20, 8, 4), batch=5)
    first = viz.draw_graph(loss_a, show_values=True, show_grad=True).source
    assert first == viz.draw_graph(loss_a, show_values=True, show_grad=True).source  # the same graph twice
    assert first == viz.draw_graph(loss_b, show_values=True, show_grad=True).source  # built anew
    ids = re.findall(r"^\t(\w+) \[", first, flags=re.M)
    assert ids[:3] == ["graph", "node", "edge"]
    assert all(re.fullmatch(r"t\d+|op\d+|legend", i) for i in ids[3:])


def test_dot_text_needs_no_graphviz_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on PATH
    _, loss = mlp_loss((6, 5, 3), batch=2)
    dot = viz.draw_graph(loss)
    assert dot.source.startswith("digraph matgrad {")
    dot.save(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == dot.source
    assert viz.text_graph(loss).startswith("output = cross_entropy  1 x 1  float32")


class Encoder(nn.Module):
    """Nested modules: Encoder > Sequential > Linear / ReLU, and a head outside the Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x: mg.Tensor2D) -> mg.Tensor2D:
        out: mg.Tensor2D = self.head(self.body(x))
        return out


@needs_dot
def test_one_cluster_per_module_call_nested_as_the_modules() -> None:
    model = Encoder()
    loss = F.cross_entropy(model(mg.randn(4, 6)), [0, 1, 2, 0])
    dot = viz.draw_graph(loss)  # names come from the modules the ops ran in
    svg = svg_of(dot)
    clusters = groups(svg, "cluster")
    assert len(clusters) == len(list(model.named_modules()))  # Encoder, body, body.0, body.1, head
    labels = {"".join(t.itertext()) for _, g in clusters for t in g.iter(f"{SVG}text")}
    assert labels == {
        "Encoder",
        "body: Sequential",
        "body.0: Linear(6 -> 5)",
        "body.1: ReLU",
        "head: Linear(5 -> 3, no bias)",
    }
    depth = {}  # tabs before each cluster's label line in the DOT text: nesting
    for line in dot.source.splitlines():
        for m in labels:
            if f"<B>{m.replace('>', '&gt;')}</B>" in line:
                depth[m] = len(line) - len(line.lstrip("\t"))
    assert depth["Encoder"] < depth["body: Sequential"] < depth["body.0: Linear(6 -> 5)"]
    assert depth["head: Linear(5 -> 3, no bias)"] == depth["body: Sequential"]
    assert "body.0.weight" in texts(svg) and "head.weight" in texts(svg)
    assert "subgraph" not in viz.draw_graph(loss, group_modules=False).source


def test_params_as_module_pairs_or_dict_name_the_same_tensors() -> None:
    model, loss = mlp_loss((6, 5, 3), batch=2)
    named = dict(model.named_parameters())
    sources = {viz.draw_graph(loss, params=p).source for p in (model, model.named_parameters(), named, None)}
    assert len(sources) == 1
    renamed = viz.draw_graph(loss, params={"W_in": named["0.weight"]}).source
    assert "<B>W_in</B>" in renamed and "0.weight" not in renamed


@needs_dot
def test_nan_and_inf_are_marked_red(backend: str) -> None:
    w = mg.Tensor2D([[1.0, float("nan")], [0.5, 2.0]], requires_grad=True, name="w")
    b = mg.Tensor2D([[0.0, 1.0]], requires_grad=True, name="b")
    x = mg.Tensor2D([[1.0, 2.0]], name="x")
    loss = (F.linear(x, w, b) * 2.0).log().sum() + (b * b).sum()
    loss.backward()
    assert w.grad is not None and b.grad is not None
    plain = groups(svg_of(viz.draw_graph(loss)), "node")
    assert not any(RED in ET.tostring(g, encoding="unicode") for _, g in plain)
    svg = svg_of(viz.draw_graph(loss, show_grad=True))
    red = {  # the label lines of the nodes drawn in red
        tuple(t for t in (s.strip() for s in g.itertext()) if t)[1:]
        for k, g in groups(svg, "node")
        if k != "legend" and RED in ET.tostring(g, encoding="unicode")
    }
    assert ("w", "2 x 2, float32", "requires grad", "NaN/Inf in value", "grad norm nan", "NaN/Inf in grad") in red
    assert ("b", "1 x 2, float32", "requires grad", "grad norm nan", "NaN/Inf in grad") in red  # NaN grad only
    assert ("linear", "NaN/Inf in value") in red and ("mul",) not in red  # b * b stays finite
    assert "NaN / Inf" in texts(svg)  # legend entry
    assert "<-- NaN/Inf" in viz.text_graph(loss, show_grad=True)


def test_show_values_gives_min_mean_max(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0], [3.0, 6.0]], requires_grad=True, name="x")
    source = viz.draw_graph((x * x).sum(), show_values=True).source
    assert "min 1 / mean 3 / max 6" in source
    assert "min 1 / mean 12.5 / max 36" in source  # x * x


# ---------------------------------------------------------------------------------------------
# rendering to files
# ---------------------------------------------------------------------------------------------


@needs_dot
@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_render_graph_writes_each_format(tmp_path: Path, suffix: str, magic: bytes) -> None:
    _, loss = mlp_loss((6, 5, 3), batch=2)
    path = viz.render_graph(loss, tmp_path / f"g{suffix}", show_values=True)
    assert path.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"g{suffix}"]  # no temporary file left


def test_render_graph_dot_suffix_and_bad_suffix(tmp_path: Path) -> None:
    _, loss = mlp_loss((6, 5, 3), batch=2)
    viz.render_graph(loss, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == viz.draw_graph(loss).source
    with pytest.raises(mg.ArgumentError, match=r"\.svg, \.png, \.pdf or \.dot"):
        viz.render_graph(loss, tmp_path / "g.jpeg")
    with pytest.raises(TypeError, match="need a tensor"):
        viz.render_graph(viz.draw_graph(loss), tmp_path / "g.svg", show_grad=True)


def test_missing_dot_writes_the_dot_file_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, loss = mlp_loss((6, 5, 3), batch=2)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # the dot program cannot be found
    with pytest.raises(mg.MatgradError) as info:
        viz.render_graph(loss, tmp_path / "graph.svg")
    message = str(info.value)
    assert "Graphviz's dot program was not found" in message
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert hint in message
    assert str(tmp_path / "graph.dot") in message
    assert isinstance(info.value.__cause__, graphviz.ExecutableNotFound)
    assert (tmp_path / "graph.dot").read_text() == viz.draw_graph(loss).source
    assert not (tmp_path / "graph.svg").exists()


def test_missing_dot_raised_by_the_graphviz_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pipe(*args: object, **kwargs: object) -> bytes:
        raise graphviz.ExecutableNotFound(["dot", "-Tpng"])

    monkeypatch.setattr(graphviz.Digraph, "pipe", pipe)
    _, loss = mlp_loss((6, 5, 3), batch=2)
    with pytest.raises(mg.MatgradError, match="install it with"):
        viz.render_graph(viz.draw_graph(loss), tmp_path / "mlp.png")
    assert (tmp_path / "mlp.dot").exists() and not (tmp_path / "mlp.png").exists()


@needs_dot
def test_jupyter_displays_inline_svg() -> None:
    _, loss = mlp_loss((6, 5, 3), batch=2)
    bundle = viz.draw_graph(loss)._repr_mimebundle_()
    ET.fromstring(bundle["image/svg+xml"])


# ---------------------------------------------------------------------------------------------
# gradient graph, models, large graphs, text
# ---------------------------------------------------------------------------------------------


@needs_dot
def test_backward_draws_the_gradient_graph_and_leaves_grad_alone() -> None:
    model, loss = mlp_loss((6, 5, 4, 3), batch=4)
    dot = viz.draw_graph(loss, backward=True)
    assert all(p.grad is None for p in model.parameters())
    words = texts(svg_of(dot))
    for name in ("grad 0.weight", "grad 0.bias", "grad 4.weight"):
        assert name in words
    assert "softmax" in words and "matmul(A.T @ B)" in words and "forward op" in words
    assert 'style="dashed,filled"' in dot.source  # forward ops the gradient reads, drawn dimmed
    renamed = viz.draw_graph(loss, backward=True, params=((f"p{i}", p) for i, p in enumerate(model.parameters())))
    assert "<B>grad p0</B>" in renamed.source and "<B>p0</B>" in renamed.source  # an iterator, read twice
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(mg.GraphError, match="retain_graph=True"):
        viz.draw_graph(loss, backward=True)
    with pytest.raises(mg.GraphError, match="nothing in this graph requires grad"):
        viz.draw_graph(mg.ones(2, 2) * 3.0, backward=True)


def test_draw_model_graph_draws_one_batch_and_restores_gradients() -> None:
    model = nn.MLP([6, 5, 3])
    x, y = mg.randn(4, 6), [0, 2, 1, 0]
    before = [p.grad for p in model.parameters()]
    source = viz.draw_model_graph(model, x, y).source
    assert [p.grad for p in model.parameters()] == before
    assert "<B>loss</B>" in source and "<B>x</B>" in source and "grad norm" in source
    assert x.name is None  # the caller's tensor is not renamed
    untrained = viz.draw_model_graph(model, x, y, grad=False).source
    assert "grad norm" not in untrained and "0: Linear(6 -&gt; 5)" in untrained


@needs_dot
def test_above_max_nodes_a_warning_and_one_node_per_module() -> None:
    _, loss = mlp_loss((6, 5, 4, 3), batch=4)
    count = graph_counts(loss)[0]
    with pytest.warns(UserWarning, match=rf"{count} nodes, more than max_nodes=8") as caught:
        dot = viz.draw_graph(loss, max_nodes=8)
    assert caught[0].filename == __file__  # the warning points at the caller
    svg = svg_of(dot)
    nodes = groups(svg, "node")
    words = texts(svg)
    assert len(nodes) == 5 + 4  # five modules; inputs, cross_entropy, loss and the legend
    assert "0: Linear(6 -> 5)" in words and "3: ReLU" in words
    assert any(w.startswith("Collapsed view:") for w in words)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.draw_graph(loss, max_nodes=None)
        viz.draw_graph(loss, max_nodes=count)


@needs_dot
def test_a_100000_op_chain_draws_collapsed() -> None:
    x = mg.Tensor2D([[0.5]], requires_grad=True, name="x")
    y = x
    for _ in range(50_000):
        y = y * 0.5 + 0.25
    with pytest.warns(UserWarning, match=r"200,002 nodes, more than max_nodes=500"):
        dot = viz.draw_graph(y, show_grad=True)
    assert len(dot.source.splitlines()) < 20
    words = texts(svg_of(dot))
    assert "mul" in words and "add" in words and "50,000 ops outside modules" in words
    text = viz.text_graph(y, max_lines=50)
    assert len(text.splitlines()) == 51 and "stopped at max_lines=50" in text


def test_text_graph_prints_a_tree_with_shared_subtrees_once() -> None:
    model = nn.MLP([6, 5, 3])
    x = mg.randn(4, 6)
    x.name = "x"
    h = model(x)
    loss = F.cross_entropy(h, [0, 1, 2, 0]) + (h * h).mean()
    text = viz.text_graph(loss, params=model)
    lines = text.splitlines()
    assert lines[0] == f"output = add  1 x 1  float32  = {loss.item():.4g}"
    assert "`-- linear  4 x 3  float32  [2: Linear(5 -> 3)]  [#1]" in text
    assert "linear  [see #1]" in text and text.count("[2: Linear(5 -> 3)]") == 1
    assert "|       |       |-- x  4 x 6  float32  input" in text
    assert "0.weight  5 x 6  float32  parameter" in text
    assert "const" not in text  # x * x has no scalar; mean divides inside its op


def test_labels_are_escaped() -> None:
    nasty = 'a<b>&"c"\\n\x01'
    x = mg.Tensor2D([[1.0]], requires_grad=True, name=nasty)
    source = viz.draw_graph(x * 2.0).source
    assert "<B>a&lt;b&gt;&amp;&quot;c&quot;\\n </B>" in source
    if shutil.which("dot") or os.environ.get("CI"):
        assert nasty.replace("\x01", " ") in texts(svg_of(viz.draw_graph(x * 2.0)))


def test_bad_arguments() -> None:
    x = mg.ones(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="rankdir"):
        viz.draw_graph(x, rankdir="XY")
    with pytest.raises(ValueError, match="max_nodes"):
        viz.draw_graph(x, max_nodes=0)
    with pytest.raises(TypeError, match="root must be a Tensor2D"):
        viz.draw_graph([])
    with pytest.raises(TypeError, match="params must be"):
        viz.draw_graph(x, params=[x])
    assert "rankdir=TB" in viz.draw_graph(x, rankdir="TB").source
