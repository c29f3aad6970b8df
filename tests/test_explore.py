"""The explorer page (matgrad.viz.explore, matgrad/viz/explorer.py): its data checked in Python, and the page
itself driven in headless Chromium with the network cut off (tests/browser.py).

In the browser: the page loads from file:// with no console error and no request but its own
file; it draws one element per node of the graph; clicking a parameter shows its value and
gradient as non-blank canvases; walking #step to the end marks each node active once in the
forward pass and once in the backward pass (those that get a gradient); ``a + a`` shows the
accumulation; ``matgrad train --explore`` adds #train-step and the curves; and ``--live`` serves
a page whose loss curve grows while a training runs, stopped by Ctrl-C.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from browser import Browser

import matgrad as mg
from matgrad import functional as F
from matgrad import nn, viz
from matgrad._errors import ArgumentError
from matgrad.cli import main
from matgrad.data import load_mnist
from matgrad.viz import explorer
from matgrad.viz.explorer import MAX_CELLS, TrainingRecord, encode_matrix, parse_rule, rule_of
from matgrad.viz.graph import _plan

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def mnist_mlp(batch: int = 64, hidden: int = 128) -> tuple[nn.Module, mg.Tensor2D]:
    data = load_mnist(sample=True)
    mg.manual_seed(0)
    model = nn.MLP([784, hidden, 10])
    x = data.x_train[:batch].detach()
    x.name = "x"
    loss = F.cross_entropy(model(x), data.y_train[:batch])
    loss.name = "loss"
    return model, loss


def decoded(m: dict[str, Any]) -> list[float]:
    """The values a quantised matrix stands for (NaN for the non-finite marker)."""
    raw = base64.b64decode(m["d"])
    lo, hi = m["lo"], m["hi"]
    return [float("nan") if q == 255 else lo + q / 254 * (hi - lo) for q in raw]


def steps_of(page: viz.Explorer, phase: str) -> list[str]:
    nodes = page.payload["nodes"]
    return [nodes[s["node"]]["id"] for s in page.payload["steps"] if s["phase"] == phase]


# ---------------------------------------------------------------------------------------------
# rules from the docstrings
# ---------------------------------------------------------------------------------------------


def test_rules_are_read_from_the_op_docstrings() -> None:
    a, b = mg.rand(2, 3, requires_grad=True), mg.rand(3, 4, requires_grad=True)
    assert rule_of((a @ b).op) == ("C = A @ B", ["dA = G @ B.T", "dB = A.T @ G"])
    assert rule_of((a + 1.0).op) == ("C = A + B", ["dA = G", "dB = G"])
    w, bias = mg.rand(5, 3, requires_grad=True), mg.rand(1, 5, requires_grad=True)
    assert rule_of(F.linear(a, w, bias).op) == ("Y = X @ W.T + b", ["dX = G @ W", "dW = G.T @ X", "db = sum_rows(G)"])
    fwd, bwd = rule_of(mg.where(a > 0.5, a, 0.0).op)
    assert fwd == "C = where(cond, A, B)" and bwd[0] == "dA = where(cond, G, 0)"
    # Max's rule keeps its side condition with it (", M = ..." is not a new rule)
    assert rule_of(a.max().op)[1] == ["dA = where(M, G / count(M), 0), M = [A == C]"]


def test_parse_rule_handles_plain_text_and_no_rule() -> None:
    assert parse_rule("``C = exp(A)``;  ``dA = G * C``.") == ("C = exp(A)", ["dA = G * C"])
    assert parse_rule("Something without a rule.") == ("Something without a rule", [])
    assert parse_rule(None) == ("", [])


class Cube(mg.Function):
    """A user's op: ``C = A ** 3``."""

    @staticmethod
    def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx: Any, grad: mg.Tensor2D) -> mg.Tensor2D:
        """``C = A ** 3``;  ``dA = 3 G A ** 2``."""
        (x,) = ctx.saved_tensors
        return grad * 3.0 * x * x


def test_a_users_function_is_drawn_under_its_class_name_with_its_rule() -> None:
    x = mg.rand(2, 2, requires_grad=True)
    page = viz.explore(Cube.apply(x).sum())
    ops = [n for n in page.payload["nodes"] if n["kind"] == "op"]
    cube = next(n for n in ops if n["title"] == "Cube")
    rule = cube["rule"][1]
    assert re.sub(r"<[^>]+>", "", rule) == "dA = 3 G A ** 2"  # the backward docstring's rule...
    m = re.search(r'<div class="eq bwd maths"><span class="m" data-m="(\d+)">', rule)
    assert m is not None  # ... as maths: the page puts the MathML of its number in place
    assert r"\bar A = 3 G \odot A^{2}</annotation>" in page.payload["maths"][int(m.group(1))]
    assert re.sub(r"<[^>]+>", "", cube["rule"][-1]) == "A 2\u00d72C 2\u00d72"  # with the shapes of this graph


# ---------------------------------------------------------------------------------------------
# the data of the page
# ---------------------------------------------------------------------------------------------


def test_nodes_match_draw_graph_and_carry_names_shapes_and_modules() -> None:
    model, loss = mnist_mlp(batch=8)
    page = viz.explore(loss, params=model)
    plan = _plan([loss], model)
    assert page.node_count == plan.node_count() == 10
    dot_nodes = re.findall(r"^\s*(?:op|t)\d+ \[", viz.draw_graph(loss, params=model, legend=False).source, re.M)
    assert page.node_count == len(dot_nodes)
    nodes = {n["title"]: n for n in page.payload["nodes"]}
    assert nodes["0.weight"]["kind"] == "param" and nodes["0.weight"]["shape"] == [128, 784]
    assert nodes["x"]["kind"] == "tensor" and nodes["loss"]["role"] == "root"
    labels = [c["label"] for c in page.payload["clusters"]]
    assert labels == ["MLP", "0: Linear(784 -> 128)", "1: ReLU", "2: Linear(128 -> 10)"]
    assert {n["kind"] for n in page.payload["nodes"]} == {"op", "tensor", "param"}
    assert len({n["id"] for n in page.payload["nodes"]}) == page.node_count


def test_gradients_are_the_engines_and_grad_is_left_alone(backend: str) -> None:
    mg.manual_seed(1)
    model = nn.MLP([6, 5, 3])
    x = mg.randn(4, 6)
    loss = F.cross_entropy(model(x), [0, 1, 2, 1])
    page = viz.explore(loss, params=model)
    assert all(p.grad is None for p in model.parameters())  # explore replays; it stores nothing
    loss.backward()
    nodes = {n["title"]: n for n in page.payload["nodes"]}
    for name, p in model.named_parameters():
        g = page.payload["mats"][nodes[name]["g"]]
        want = [v for row in p.grad.tolist() for v in row]
        assert g["stats"][0] == pytest.approx(min(want), rel=1e-5, abs=1e-7)
        assert g["stats"][2] == pytest.approx(max(want), rel=1e-5, abs=1e-7)
        got = decoded(g)
        step = (g["hi"] - g["lo"]) / 254
        assert max(abs(a - b) for a, b in zip(got, want)) <= step / 2 + 1e-6


def test_steps_follow_creation_order_then_the_engines_order() -> None:
    model, loss = mnist_mlp(batch=4)
    page = viz.explore(loss, params=model)
    forward = steps_of(page, "forward")
    backward = steps_of(page, "backward")
    nodes = page.payload["nodes"]
    assert sorted(forward) == sorted(n["id"] for n in nodes)  # every node once
    assert forward.index("t0") < forward.index("op3")  # a leaf just before its first consumer
    ops = [i for i in forward if i.startswith("op")]
    assert ops == sorted(ops, key=lambda i: int(i[2:]))  # ops in creation order
    assert backward[0] == next(n["id"] for n in nodes if n["role"] == "root")  # the seed first
    bops = [i for i in backward if i.startswith("op")]
    assert bops == ops[::-1]  # the engine: reverse creation order
    assert len(backward) == len(set(backward)) == len(nodes) - 1  # all but x, which needs no grad
    assert "t0" not in backward


def test_reuse_is_shown_as_accumulation() -> None:
    a = mg.rand(2, 2, requires_grad=True)
    a.name = "a"
    page = viz.explore((a + a).sum())
    last = page.payload["steps"][-1]
    assert page.payload["nodes"][last["node"]]["title"] == "a"
    # dA and dB are maths (placeholders that the page fills with MathML, holding the plain name)
    text = re.sub(r'<span class="m" data-m="\d+">(.*?)</span>', r"\1", last["html"])
    assert "a.grad (2\u00d72) = dA from <b>add</b> + dB from <b>add</b>" in text
    assert "2 contributions accumulated" in last["html"]
    add_step = next(s for s in page.payload["steps"] if s["phase"] == "backward" and "dB" in s["html"])
    assert "first of 2 contributions" in add_step["html"] and "accumulated: added to the 1 earlier" in add_step["html"]
    g = page.payload["mats"][page.payload["nodes"][last["node"]]["g"]]
    assert g["stats"][:3] == [2.0, 2.0, 2.0]


def test_a_released_graph_shows_the_leaves_grad_and_says_why() -> None:
    a = mg.rand(3, 3, requires_grad=True)
    loss = (a * a).sum()
    loss.backward()
    page = viz.explore(loss)
    assert steps_of(page, "backward") == []
    assert "retain_graph=True" in page.payload["note"]
    leaf = next(n for n in page.payload["nodes"] if n["kind"] == "tensor" and n["role"] != "root")
    assert leaf["g"] >= 0


def test_matrices_are_quantised_and_large_ones_downsampled() -> None:
    small = mg.Tensor2D([[1.0, float("nan")], [-3.0, 4.0]])
    m = encode_matrix(small)
    assert (m["fr"], m["fc"], m["sr"], m["sc"]) == (1, 1, 2, 2)
    assert m["stats"] == [-3.0, pytest.approx(2 / 3), 4.0, False]
    raw = base64.b64decode(m["d"])
    assert raw[1] == 255 and raw[2] == 0 and raw[3] == 254
    big = encode_matrix(mg.rand(1000, 1000))
    assert big["fr"] > 1 and big["fc"] > 1 and big["sr"] * big["sc"] <= MAX_CELLS
    assert len(base64.b64decode(big["d"])) == big["sr"] * big["sc"]
    wide = encode_matrix(mg.rand(1, 100_000))
    assert wide["sc"] <= 512 and wide["fc"] > 1
    tiles = encode_matrix(mg.rand(300, 784), tile=True)  # rows as 28x28 images: whole rows, fewer of them
    assert tiles["tile"] == 28 and tiles["fc"] == 1 and tiles["sr"] == MAX_CELLS // 784


@pytest.mark.parametrize(("shape", "tile"), [((5, 7), False), ((700, 600), False), ((3, 784), True)])
def test_the_pure_python_encoding_matches_numpys(
    shape: tuple[int, int], tile: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    mg.manual_seed(3)
    rows = mg.randn(*shape).tolist()
    rows[0][0] = float("inf")
    t = mg.Tensor2D(rows)
    fast = encode_matrix(t, tile)
    monkeypatch.setattr(explorer, "_numpy", lambda: None)  # as on a machine without NumPy
    slow = encode_matrix(t, tile)
    assert {k: v for k, v in slow.items() if k not in ("d", "stats")} == {
        k: v for k, v in fast.items() if k not in ("d", "stats")
    }
    assert slow["stats"][3] is fast["stats"][3] is False
    assert slow["stats"][:3] == pytest.approx(fast["stats"][:3], rel=1e-9)
    a, b = base64.b64decode(slow["d"]), base64.b64decode(fast["d"])
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1 and a[0] == b[0] == 255


def test_the_size_benchmark_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "explorer_size.py"), "--loads", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| file size | 0." in proc.stdout and "budget 3 MB" in proc.stdout


def test_the_mnist_mlp_page_stays_small_and_self_contained(tmp_path: Path) -> None:
    model, loss = mnist_mlp(batch=64)
    path = viz.explore(loss, tmp_path / "mlp.html", params=model)
    size = (tmp_path / "mlp.html").stat().st_size
    assert size < 3_000_000, size
    text = path.html
    # nothing that would make the page ask another host for anything
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "@import" not in text and "url(http" not in text
    w = next(n for n in path.payload["nodes"] if n["title"] == "0.weight")
    assert path.payload["mats"][w["v"]]["tile"] == 28  # the first layer reads as 128 images of 28x28


def test_save_checks_the_path(tmp_path: Path) -> None:
    page = viz.explore((mg.rand(2, 2, requires_grad=True) * 2.0).sum())
    with pytest.raises(ArgumentError, match="html"):
        page.save(tmp_path / "graph.svg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        page.save(tmp_path / "missing" / "graph.html")
    assert page.save(tmp_path / "g.html").read_text(encoding="utf-8") == page.html
    frame = page._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;svg" in frame


def test_training_record_thins_its_snapshots() -> None:
    model = nn.MLP([4, 3, 2])
    record = TrainingRecord(model, every=1, max_snapshots=6)
    for step in range(40):
        record.step(1.0 / (step + 1), 0.5, 1)
    snaps = record.to_json()["snaps"]
    assert 2 <= len(snaps) <= 6 and record.every > 1
    assert snaps[0]["step"] == 1 and snaps[-1]["step"] == max(s["step"] for s in snaps)
    assert [s["id"] for s in record.to_json(since=snaps[-2]["id"])["snaps"]] == [snaps[-1]["id"]]


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------

SMALL = ["--limit", "128", "--epochs", "2", "--batch-size", "32", "--hidden", "16", "--quiet"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    previous = mg.get_backend()
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        mg.set_backend(previous)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_explore_writes_the_default_mlps_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["explore", "-o", str(tmp_path / "graph.html"), "--batch-size", "8"], capsys)
    assert code == 0, err
    assert "10 nodes, 10 forward and 9 backward steps" in out
    assert 'id="step"' in (tmp_path / "graph.html").read_text(encoding="utf-8")
    code, _, err = run(["explore", "-o", str(tmp_path / "graph.svg")], capsys)
    assert code == 1 and "name a .html or .htm file" in err


def test_cli_train_explore_and_its_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    code, out, err = run(["train", *SMALL, "--explore", str(page), "--explore-every", "2"], capsys)
    assert code == 0, err
    assert f"to {page}" in out
    text = page.read_text(encoding="utf-8")
    assert 'id="train-step"' in text and '"snaps":[{' in text
    code, _, err = run(["train", *SMALL, "--explore", str(page), "--save", str(page)], capsys)
    assert code == 1 and "are the same file" in err and err.count("\n") == 1
    code, _, err = run(["train", *SMALL, "--explore-every", "3"], capsys)
    assert code == 1 and "--explore-every needs --explore" in err
    code, _, err = run(["train", *SMALL, "--explore", str(tmp_path / "no" / "run.html")], capsys)
    assert code == 1 and "does not exist" in err


def test_cli_live_server_stops_with_the_training(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["train", *SMALL, "--live"], capsys)
    assert code == 0, err
    url = re.search(r"live explorer at (http://127\.0\.0\.1:(\d+)/)", out)
    assert url is not None and "stopped the live explorer" in out
    assert not any(t.name == "matgrad-live" for t in threading.enumerate())
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", int(url.group(2))), timeout=2).close()


def test_cli_live_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run(["train", *SMALL, "--live", str(busy.getsockname()[1])], capsys)
    assert code == 1 and "cannot serve on 127.0.0.1" in err


# ---------------------------------------------------------------------------------------------
# in the browser
# ---------------------------------------------------------------------------------------------

_NON_BLANK = """
const out = [];
for (const c of document.querySelectorAll(arguments[0])) {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let coloured = 0;
  for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) coloured++;
  out.push(coloured);
}
return out;
"""

_PARAM_NODE = """
const nodes = [...document.querySelectorAll('[data-kind=param]')];
return nodes.find(e => e.textContent.startsWith(arguments[0])).dataset.node;
"""

_WALK = """
const r = document.getElementById('step');
const seen = {forward: {}, backward: {}};
for (let k = 0; k <= Number(r.max); k++) {
  r.value = String(k);
  r.dispatchEvent(new Event('input'));
  const phase = document.getElementById('rule').textContent.startsWith('forward') ? 'forward' : 'backward';
  for (const e of document.querySelectorAll('.active')) {
    const id = e.getAttribute('data-node');
    seen[phase][id] = (seen[phase][id] || 0) + 1;
  }
}
return seen;
"""


def own_requests(browser: Browser) -> list[str]:
    """What the page asked for, less the math font inside it (a data: URL, loaded once maths shows)."""
    return [u for u in browser.requests() if not u.startswith("data:font/woff;base64,")]


def open_page(browser: Browser, path: Path) -> None:
    browser.open(path)
    assert browser.console_errors() == []
    assert browser.external() == []
    assert own_requests(browser) == [path.resolve().as_uri()]


def test_the_page_loads_offline_and_draws_every_node(tmp_path: Path, browser: Browser) -> None:
    model, loss = mnist_mlp(batch=64)
    page = viz.explore(loss, tmp_path / "mlp.html", params=model)
    open_page(browser, tmp_path / "mlp.html")
    count = browser.run_js("return document.querySelectorAll('[data-node]').length")
    assert count == page.node_count == _plan([loss], model).node_count()
    kinds = browser.run_js("return [...document.querySelectorAll('[data-node]')].map(e => e.dataset.kind)")
    assert sorted(kinds) == sorted(n["kind"] for n in page.payload["nodes"])
    ready = browser.run_js("return window.matgradExplorer.ready")
    print(f"interactive {ready:.0f} ms after navigation start")  # a figure, not an assertion


def test_clicking_a_parameter_shows_value_and_gradient(tmp_path: Path, browser: Browser) -> None:
    model, loss = mnist_mlp(batch=16)
    viz.explore(loss, tmp_path / "mlp.html", params=model)
    open_page(browser, tmp_path / "mlp.html")
    assert browser.run_js("return document.querySelectorAll('#inspector canvas').length") == 0
    node = browser.run_js(_PARAM_NODE, "2.weight")
    browser.click(f'[data-node="{node}"]')
    text = browser.run_js("return document.getElementById('inspector').textContent")
    assert "2.weight" in text and "10\u00d7128" in text and "gradient" in text
    assert all(n > 50 for n in browser.run_js(_NON_BLANK, "#inspector canvas.value"))
    assert all(n > 50 for n in browser.run_js(_NON_BLANK, "#inspector canvas.grad"))
    # the first layer's weight reads as 128 images of 28x28
    node = browser.run_js(_PARAM_NODE, "0.weight")
    browser.click(f'[data-node="{node}"]')
    assert "each row as a 28\u00d728 image" in browser.run_js("return document.getElementById('inspector').textContent")
    assert browser.run_js("return document.querySelector('#inspector canvas.grad').width") == 16 * 29 - 1


def test_walking_the_steps_marks_each_node_once_per_pass(tmp_path: Path, browser: Browser) -> None:
    model, loss = mnist_mlp(batch=8)
    page = viz.explore(loss, tmp_path / "mlp.html", params=model)
    open_page(browser, tmp_path / "mlp.html")
    seen = browser.run_js(_WALK)
    ids = [n["id"] for n in page.payload["nodes"]]
    assert seen["forward"] == {i: 1 for i in ids}
    with_grad = browser.run_js("return [...document.querySelectorAll('[data-grad=\"1\"]')].map(e => e.dataset.node)")
    assert seen["backward"] == {i: 1 for i in with_grad}
    x = next(n["id"] for n in page.payload["nodes"] if n["title"] == "x")
    assert set(with_grad) == set(ids) - {x}  # everything but the input gets a gradient
    rule = browser.run_js(
        "const r = document.getElementById('step'); r.value = r.max; r.dispatchEvent(new Event('input'));"
        "return document.getElementById('rule').textContent"
    )
    assert rule.startswith("backward") and ".grad" in rule
    assert browser.console_errors() == []


_RULES_WALK = """
const r = document.getElementById('step');
const out = [];
for (let k = Number(arguments[0]); k <= Number(r.max); k++) {
  r.value = String(k);
  r.dispatchEvent(new Event('input'));
  const rule = document.getElementById('rule');
  const maths = [...rule.querySelectorAll('.eq.maths math')];
  out.push({
    eqs: rule.querySelectorAll('.eq').length,
    maths: maths.length,
    code: rule.querySelectorAll('.eq.code').length,
    waiting: rule.querySelectorAll('.m:not(.drawn)').length,
    empty: maths.filter(m => { const b = m.getBoundingClientRect(); return !(b.width > 0 && b.height > 0); }).length,
  });
}
return out;
"""
_FONT = """
const m = document.querySelector(arguments[0] + ' math');
return {
  font: m ? getComputedStyle(m).fontFamily : '',
  faces: [...document.fonts].filter(f => f.family.replace(/"/g, '') === arguments[1]).map(f => f.status),
  check: document.fonts.check('16px "' + arguments[1] + '"'),
};
"""


def test_the_rules_are_maths_drawn_in_the_pages_own_font(tmp_path: Path, browser: Browser) -> None:
    model, loss = mnist_mlp(batch=8)
    page = viz.explore(loss, tmp_path / "mlp.html", params=model)
    open_page(browser, tmp_path / "mlp.html")
    walk = browser.run_js(_RULES_WALK, page.payload["forward_steps"])  # the backward pass
    ops = [s for s in walk if s["eqs"]]
    assert len(ops) == sum(1 for n in page.payload["nodes"] if n["kind"] == "op")
    for step in ops:  # every rule of every op is MathML, drawn, none left as a placeholder or code
        assert step["maths"] >= step["eqs"] and step["code"] == step["waiting"] == step["empty"] == 0, step
    browser.driver.execute_async_script("document.fonts.ready.then(() => arguments[arguments.length - 1]())")
    font = browser.run_js(_FONT, "#rule", explorer.MATH_FONT)
    assert explorer.MATH_FONT in font["font"] and font["faces"] == ["loaded"] and font["check"], font
    # the inspector of an op shows its rules the same way
    node = next(n["id"] for n in page.payload["nodes"] if n["title"] == "linear")
    browser.click(f'[data-node="{node}"]')
    assert browser.run_js("return document.querySelectorAll('#inspector .eq.maths math').length") == 4
    assert browser.run_js("return document.querySelectorAll('#inspector .m:not(.drawn)').length") == 0
    # the font came from inside the page: nothing else was asked for, nothing broke
    assert browser.console_errors() == [] and browser.external() == []
    assert own_requests(browser) == [(tmp_path / "mlp.html").resolve().as_uri()]
    fonts = [u for u in browser.requests() if u not in own_requests(browser)]
    assert len(fonts) == 1 and len(fonts[0]) > 100_000  # the embedded font, once


def test_a_plus_a_accumulates_in_the_page(tmp_path: Path, browser: Browser) -> None:
    a = mg.rand(3, 3, requires_grad=True)
    a.name = "a"
    viz.explore((a + a).sum(), tmp_path / "aa.html")
    open_page(browser, tmp_path / "aa.html")
    rule = browser.run_js(
        "const r = document.getElementById('step'); r.value = r.max; r.dispatchEvent(new Event('input'));"
        "return [document.getElementById('rule').textContent, document.querySelector('.active').textContent]"
    )
    assert "2 contributions accumulated" in rule[0] and rule[1].startswith("a")
    edges = browser.run_js(
        "const r = document.getElementById('step'); r.value = Number(r.max) - 1; r.dispatchEvent(new Event('input'));"
        "return [document.querySelectorAll('.edge.flow').length, document.getElementById('rule').textContent]"
    )
    assert edges[0] == 2 and "accumulated" in edges[1]  # both edges from a carry a gradient back


def test_the_training_page_has_snapshots_and_curves(
    tmp_path: Path, browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "run.html"
    code, _, err = run(["train", *SMALL, "--explore", str(page), "--explore-every", "1"], capsys)
    assert code == 0, err
    open_page(browser, page)
    assert browser.run_js("return document.getElementById('training').hidden") is False
    points = browser.run_js("return Number(document.getElementById('loss-curve').dataset.points)")
    assert points == 8  # 2 epochs of 4 steps
    assert browser.run_js("return document.querySelectorAll('#acc-curve polyline').length") >= 2
    node = browser.run_js("return document.querySelector('[data-kind=param]').dataset.node")
    browser.click(f'[data-node="{node}"]')

    def stats() -> str:
        return str(browser.run_js("return document.querySelector('#inspector table').textContent"))

    last = stats()
    browser.run_js("const r = document.getElementById('train-step'); r.value = 0; r.dispatchEvent(new Event('input'))")
    assert stats() != last and "snapshot at step 1" in browser.run_js(
        "return document.getElementById('inspector').textContent"
    )


def test_the_live_page_updates_while_training_runs(browser: Browser) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    args = ["--limit", "64", "--batch-size", "32", "--hidden", "16", "--epochs", "100000", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "matgrad", "train", *args, "--live", "--explore-every", "5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/)", line)
        assert m is not None, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        browser.open(m.group(1))
        assert browser.external() == []
        first = browser.run_js("return Number(document.getElementById('loss-curve').dataset.points)")
        deadline = time.monotonic() + 30
        grown = first
        while grown <= first + 2 and time.monotonic() < deadline:
            time.sleep(0.25)
            grown = browser.run_js("return Number(document.getElementById('loss-curve').dataset.points)")
        assert grown > first + 2, "the loss curve did not grow"
        assert browser.run_js("return document.getElementById('live-status').textContent").startswith("live")
        assert browser.console_errors() == []
        requested = {u.split("?")[0] for u in own_requests(browser)}
        assert requested == {m.group(1), m.group(1) + "state.json"}  # its own origin only
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "interrupted" in err
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(m.group(2))), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
