"""Numerically extreme inputs, anomaly detection and scale (issue 6).

- logits of +-1e4 and -inf through softmax, log_softmax, logsumexp and the losses give finite,
  correct values and gradients, compared with exact float64 values computed here with ``math``;
- sigmoid and tanh at +-1e3 neither overflow nor warn (every test here turns warnings into errors);
- log of 0 is -inf, and under ``detect_anomaly()`` an ``AnomalyError`` names ``log`` and the line
  of this file that called it; a NaN made in backward is reported as "backward of sqrt";
- ``detect_anomaly`` works as a decorator; ``set_debug`` and ``MATGRAD_DEBUG=1`` record call sites;
- a 100,000-op chain and a 1,000-way fan-in run backward under the default recursion limit, with
  memory (tracemalloc) proportional to the graph, released by backward and freed afterwards.
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from typing import Any, Callable

import pytest

import matgrad as mg
import matgrad.functional as F
from matgrad import nn

pytestmark = pytest.mark.filterwarnings("error")

INF = math.inf
HERE = os.path.basename(__file__)
TOL = {"float32": (2e-6, 1e-6), "float64": (1e-12, 1e-12)}  # (rtol, atol)

# Rows with +-1e4 and -inf; each row has a finite maximum (a masked row, not an empty one).
LOGITS = [
    [1e4, -1e4, 0.0, 3.0],
    [0.0, -INF, 1.0, -INF],
    [-1e4, -1e4, -1e4, -1e4],
    [1e4, 1e4, -INF, 9999.0],
    [-INF, -INF, -INF, -1e4],
]
TARGETS = [0, 2, 3, 1, 3]  # never on a -inf logit: every loss is finite
# logsumexp and log_softmax read the softmax back from their output, exp(A - C), as PyTorch's rules
# do: a float32 output near 1e4 is rounded by up to half an ulp (5e-4), and that error reaches the
# gradient. Their float32 gradients are held to 1e-6 * 1e3 absolute; everything else to 1e-6.
ROUNDED_OUTPUT_SCALE = 1e3
UPSTREAM = [
    [0.7, -1.3, 0.4, 1.1],
    [-0.2, 0.9, -1.4, 0.6],
    [1.2, -0.5, 0.3, -0.8],
    [0.5, 1.5, -0.6, -1.1],
    [-0.9, 0.2, 1.3, 0.8],
]


def line_after() -> int:
    """The line number of the caller's next line."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1


def close(got: float, want: float, dtype: str, scale: float = 1.0) -> bool:
    if math.isinf(want):
        return got == want
    rtol, atol = TOL[dtype]
    return math.isfinite(got) and abs(got - want) <= atol * scale + rtol * abs(want)


def assert_close(got: list[list[float]], want: list[list[float]], dtype: str, what: str, scale: float = 1.0) -> None:
    bad = [
        (i, j, g, w)
        for i, (rg, rw) in enumerate(zip(got, want))
        for j, (g, w) in enumerate(zip(rg, rw))
        if not close(g, w, dtype, scale)
    ]
    assert not bad, f"{what}: (row, col, got, exact) {bad[:6]}"


def assert_finite(rows: list[list[float]], what: str) -> None:
    bad = [(i, j, v) for i, r in enumerate(rows) for j, v in enumerate(r) if not math.isfinite(v)]
    assert not bad, f"{what} is not finite at {bad[:6]}"


# -- exact references, in float64 with math --------------------------------------------------------


def lse(row: list[float]) -> float:
    m = max(row)
    return m + math.log(math.fsum(math.exp(v - m) for v in row))


def softmax_row(row: list[float]) -> list[float]:
    s = lse(row)
    return [math.exp(v - s) for v in row]


def log_softmax_row(row: list[float]) -> list[float]:
    s = lse(row)
    return [v - s for v in row]


def tensor(rows: list[list[float]], dtype: str, grad: bool = True) -> mg.Tensor2D:
    return mg.Tensor2D(rows, dtype=dtype, requires_grad=grad)


def as_stored(t: mg.Tensor2D) -> list[list[float]]:
    """The values as the tensor holds them (float32 rounding included): the reference's inputs."""
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# softmax family and losses at +-1e4 and -inf
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_at_extremes(backend: str, dtype: str) -> None:
    x = tensor(LOGITS, dtype)
    rows = as_stored(x)
    out = mg.logsumexp(x, 1)
    assert_close(out.tolist(), [[lse(r)] for r in rows], dtype, "logsumexp", 1e4)
    g = [[u[0]] for u in UPSTREAM]
    out.backward(mg.Tensor2D(g, dtype=dtype))
    want = [[gi[0] * p for p in softmax_row(r)] for gi, r in zip(g, rows)]
    assert_finite(x.grad.tolist(), "d logsumexp")
    assert_close(x.grad.tolist(), want, dtype, "d logsumexp", ROUNDED_OUTPUT_SCALE)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_at_extremes(backend: str, dtype: str) -> None:
    x = tensor(LOGITS, dtype)
    rows = as_stored(x)
    out = mg.softmax(x, 1)
    probs = [softmax_row(r) for r in rows]
    assert_close(out.tolist(), probs, dtype, "softmax")
    out.backward(mg.Tensor2D(UPSTREAM, dtype=dtype))
    want = [
        [p * (gj - math.fsum(gk * pk for gk, pk in zip(g, ps))) for p, gj in zip(ps, g)]
        for ps, g in zip(probs, UPSTREAM)
    ]
    assert_finite(x.grad.tolist(), "d softmax")
    assert_close(x.grad.tolist(), want, dtype, "d softmax")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_at_extremes(backend: str, dtype: str) -> None:
    x = tensor(LOGITS, dtype)
    rows = as_stored(x)
    out = mg.log_softmax(x, 1)
    assert_close(out.tolist(), [log_softmax_row(r) for r in rows], dtype, "log_softmax", 1e4)
    out.backward(mg.Tensor2D(UPSTREAM, dtype=dtype))
    want = [[gj - p * math.fsum(g) for gj, p in zip(g, softmax_row(r))] for g, r in zip(UPSTREAM, rows)]
    assert_finite(x.grad.tolist(), "d log_softmax")
    assert_close(x.grad.tolist(), want, dtype, "d log_softmax", ROUNDED_OUTPUT_SCALE)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_axis_0_at_extremes(backend: str, fn: str) -> None:
    """The same columns-wise: the transpose of the row-wise results."""
    rows = [list(c) for c in zip(*LOGITS)]
    x = tensor(rows, "float64")
    out = getattr(mg, fn)(x, 0)
    ref = getattr(mg, fn)(tensor(LOGITS, "float64", grad=False), 1)
    assert_close(out.T.tolist(), ref.tolist(), "float64", f"{fn}(axis=0)", 1e4)
    out.sum().backward()
    assert_finite(x.grad.tolist(), f"d {fn}(axis=0)")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_at_extremes(backend: str, dtype: str, reduction: str) -> None:
    x = tensor(LOGITS, dtype)
    rows = as_stored(x)
    n = len(rows)
    losses = [lse(r) - r[t] for r, t in zip(rows, TARGETS)]
    out = F.cross_entropy(x, TARGETS, reduction=reduction)
    want = {"mean": [[math.fsum(losses) / n]], "sum": [[math.fsum(losses)]], "none": [[v] for v in losses]}[reduction]
    assert_finite(out.tolist(), "cross_entropy")
    assert_close(out.tolist(), want, dtype, f"cross_entropy({reduction})", 1e4)
    seed = [[0.5 + 0.25 * i] for i in range(n)] if reduction == "none" else [[0.75]]
    out.backward(mg.Tensor2D(seed, dtype=dtype))
    scale = [s[0] for s in seed] if reduction == "none" else [seed[0][0] / (n if reduction == "mean" else 1)] * n
    want_grad = [
        [c * (p - (1.0 if j == t else 0.0)) for j, p in enumerate(softmax_row(r))]
        for r, t, c in zip(rows, TARGETS, scale)
    ]
    assert_finite(x.grad.tolist(), "d cross_entropy")
    assert_close(x.grad.tolist(), want_grad, dtype, "d cross_entropy")


def test_cross_entropy_module_and_nll_loss_agree_at_extremes(backend: str) -> None:
    x = tensor(LOGITS, "float64")
    rows = as_stored(x)
    want = math.fsum(lse(r) - r[t] for r, t in zip(rows, TARGETS)) / len(rows)
    assert close(nn.CrossEntropyLoss()(x, TARGETS).item(), want, "float64", 1e4)
    assert close(F.nll_loss(mg.log_softmax(x, 1), TARGETS).item(), want, "float64", 1e4)
    F.nll_loss(mg.log_softmax(x, 1), TARGETS).backward()
    assert_finite(x.grad.tolist(), "d nll_loss(log_softmax)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_with_probability_targets_at_extremes(backend: str, dtype: str) -> None:
    """Soft targets with zero probability on the -inf logits: 0 * log 0 counts as 0, as in the maths."""
    x = tensor(LOGITS, dtype)
    rows = as_stored(x)
    probs = [[0.0] * 4 for _ in rows]
    for i, t in enumerate(TARGETS):
        probs[i][t] = 0.75
        probs[i][(t + 2) % 4 if math.isfinite(rows[i][(t + 2) % 4]) else t] += 0.25
    p = mg.Tensor2D(probs, dtype=dtype)
    out = F.cross_entropy(x, p)
    losses = [-math.fsum(q * ls for q, ls in zip(qs, log_softmax_row(r)) if q) for qs, r in zip(probs, rows)]
    assert_finite(out.tolist(), "cross_entropy(probabilities)")
    assert_close(out.tolist(), [[math.fsum(losses) / len(rows)]], dtype, "cross_entropy(probabilities)", 1e4)
    out.backward()
    want = [[(s - q) / len(rows) for s, q in zip(softmax_row(r), qs)] for r, qs in zip(rows, probs)]
    assert_finite(x.grad.tolist(), "d cross_entropy(probabilities)")
    assert_close(x.grad.tolist(), want, dtype, "d cross_entropy(probabilities)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_with_logits_at_extremes(backend: str, dtype: str) -> None:
    xs = [[1e4, -1e4, 1e4, -1e4, 0.0, 1e3, -1e3]]
    ys = [[0.0, 1.0, 1.0, 0.0, 1.0, 0.25, 0.75]]
    x, y = tensor(xs, dtype), mg.Tensor2D(ys, dtype=dtype)
    out = F.binary_cross_entropy_with_logits(x, y, reduction="none")

    def loss(v: float, t: float) -> float:
        return max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v)))

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))

    assert_close(out.tolist(), [[loss(v, t) for v, t in zip(xs[0], ys[0])]], dtype, "bce", 1e4)
    out.sum().backward()
    assert_close(x.grad.tolist(), [[sig(v) - t for v, t in zip(xs[0], ys[0])]], dtype, "d bce")


# ---------------------------------------------------------------------------------------------
# sigmoid, tanh, exp and log at the edges
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_at_1e3_are_exact(backend: str, dtype: str) -> None:
    x = tensor([[1e3, -1e3, 1e4, -1e4]], dtype)
    s = mg.sigmoid(x)
    assert s.tolist() == [[1.0, 0.0, 1.0, 0.0]]  # e^-1000 is below the smallest float
    s.sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    z = tensor([[1e3, -1e3, 1e4, -1e4]], dtype)
    t = mg.tanh(z)
    assert t.tolist() == [[1.0, -1.0, 1.0, -1.0]]
    t.sum().backward()
    assert z.grad.tolist() == [[0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_in_their_tails(backend: str, dtype: str) -> None:
    vals = [[-50.0, -20.0, -5.0, 0.0, 5.0, 20.0]]
    x = tensor(vals, dtype)
    s = mg.sigmoid(x)
    want = [[math.exp(v) / (1 + math.exp(v)) if v < 0 else 1 / (1 + math.exp(-v)) for v in vals[0]]]
    assert_close(s.tolist(), want, dtype, "sigmoid")
    s.sum().backward()
    assert_close(x.grad.tolist(), [[w * (1 - w) for w in want[0]]], dtype, "d sigmoid")
    z = tensor(vals, dtype)
    t = mg.tanh(z)
    assert_close(t.tolist(), [[math.tanh(v) for v in vals[0]]], dtype, "tanh")
    t.sum().backward()
    assert_close(z.grad.tolist(), [[1 - math.tanh(v) ** 2 for v in vals[0]]], dtype, "d tanh")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_log_sqrt_edges_give_ieee_values_quietly(backend: str, dtype: str) -> None:
    assert mg.exp(mg.Tensor2D([[1e3, -1e3, 89.0]], dtype=dtype)).tolist()[0][:2] == [INF, 0.0]
    assert mg.log(mg.Tensor2D([[0.0, 1.0]], dtype=dtype)).tolist() == [[-INF, 0.0]]
    assert math.isnan(mg.log(mg.Tensor2D([[-1.0]], dtype=dtype)).item())
    assert math.isnan(mg.sqrt(mg.Tensor2D([[-1.0]], dtype=dtype)).item())
    x = tensor([[0.0, 1.0]], dtype)
    mg.log(x).sum().backward()  # 1/0: an infinite gradient, no exception without detect_anomaly
    assert x.grad.tolist() == [[INF, 1.0]]


# ---------------------------------------------------------------------------------------------
# anomaly detection and call sites
# ---------------------------------------------------------------------------------------------


def test_log_of_zero_is_reported_with_the_op_and_the_users_line(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 0.0, 2.0]], requires_grad=True)
    y = x * 2.0
    with mg.detect_anomaly(), pytest.raises(mg.AnomalyError) as info:
        line = line_after()
        mg.log(y)
    message = str(info.value)
    assert "log" in message and "1x3" in message
    assert f"{HERE}:{line}" in message, message
    assert not mg.is_anomaly_enabled()


def test_anomaly_blames_the_first_op_not_the_ones_after(backend: str) -> None:
    x = mg.Tensor2D([[0.0, 1.0]], requires_grad=True)
    y = mg.log(x)  # -inf, made while detection is off
    with mg.detect_anomaly():
        z = (y * 2.0 + 1.0).sum()  # the inputs were already infinite: nothing new to report
        assert z.item() == -INF
        with pytest.raises(mg.AnomalyError, match="log"):
            mg.log(mg.exp(x) - 1.0)  # exp and sub are finite; log(0) is the first infinity


def test_overflow_gives_inf_and_is_detected(backend: str) -> None:
    """float32 overflow gives inf like any IEEE op; detection names the op.

    NumPy's own RuntimeWarning for overflow in plain arithmetic (mul, matmul) is left on: silencing
    it costs about 2 us per op on the hot path. The domain edges of exp, log, sqrt, div and pow
    are quiet (tested elsewhere), because they are ordinary in practice (log 0 = -inf).
    """
    w = mg.Tensor2D([[1e30, 1.0]], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert (w * 1e30).tolist()[0][0] == INF
        assert (w @ mg.Tensor2D([[1e30], [0.0]])).item() == INF
        with mg.detect_anomaly(), pytest.raises(mg.AnomalyError, match="mul"):
            w * 1e30


def test_nan_made_in_backward_is_reported_as_backward_of_sqrt(backend: str) -> None:
    x = mg.Tensor2D([[0.0, 4.0]], requires_grad=True)
    with mg.detect_anomaly():
        line = line_after()
        r = mg.sqrt(x)  # finite forward: sqrt(0) = 0
        y = (r * 0.0).sum()  # upstream 0, so backward of sqrt computes 0 / 0
        with pytest.raises(mg.AnomalyError) as info:
            y.backward()
    message = str(info.value)
    assert "backward of sqrt" in message, message
    assert f"{HERE}:{line}" in message, message
    assert "1x2" in message


def test_backward_anomaly_without_a_recorded_site_says_how_to_get_one(backend: str) -> None:
    x = mg.Tensor2D([[0.0, 4.0]], requires_grad=True)
    y = mg.sqrt(x).sum()  # recorded outside detect_anomaly: no call site kept
    with mg.detect_anomaly(), pytest.raises(mg.AnomalyError, match="backward of sqrt") as info:
        y.backward()
    assert "set_debug" in str(info.value)


def test_without_detection_a_nan_in_backward_is_silent(backend: str) -> None:
    x = mg.Tensor2D([[0.0, 4.0]], requires_grad=True)
    (mg.sqrt(x) * 0.0).sum().backward()
    g = x.grad.tolist()[0]
    assert math.isnan(g[0]) and g[1] == 0.0


@pytest.mark.parametrize("order", ["other-branch-first", "other-branch-last", "other-branch-made-later"])
def test_an_anomaly_in_backward_leaves_every_grad_as_it_was(backend: str, order: str) -> None:
    """A failed backward must not leave gradients half-accumulated, in leaves or retained tensors."""
    x = mg.Tensor2D([[0.0, 4.0]], requires_grad=True)
    w = mg.Tensor2D([[1.0, 2.0]], requires_grad=True)
    w.grad = mg.Tensor2D([[10.0, 20.0]])
    if order == "other-branch-made-later":
        bad = (mg.sqrt(x) * 0.0).sum()
        h = w * 3.0  # made after the failing branch: backward reaches it first
    else:
        h = w * 3.0
        bad = (mg.sqrt(x) * 0.0).sum()
    h.retain_grad()
    y = bad + h.sum() if order != "other-branch-first" else h.sum() + bad
    with mg.detect_anomaly(), pytest.raises(mg.AnomalyError, match="backward of sqrt"):
        y.backward()
    assert x.grad is None
    assert w.grad.tolist() == [[10.0, 20.0]], "w.grad was changed by a backward that failed"
    assert h.grad is None, "a retained tensor got a .grad from a backward that failed"


def test_detect_anomaly_as_a_decorator(backend: str) -> None:
    @mg.detect_anomaly()
    def step(t: mg.Tensor2D) -> mg.Tensor2D:
        assert mg.is_anomaly_enabled()
        return mg.log(t)

    assert not mg.is_anomaly_enabled()
    assert step(mg.Tensor2D([[1.0]])).item() == 0.0
    with pytest.raises(mg.AnomalyError, match="log"):
        step(mg.Tensor2D([[0.0]]))
    assert not mg.is_anomaly_enabled()
    with mg.detect_anomaly():
        with pytest.raises(mg.AnomalyError):
            step(mg.Tensor2D([[0.0]]))
        assert mg.is_anomaly_enabled()  # the decorator restores the enclosing state, not "off"
    assert not mg.is_anomaly_enabled()


def test_detection_off_costs_nothing_and_records_no_site(backend: str) -> None:
    previous = mg.autograd.is_debug_enabled()
    mg.set_debug(False)
    try:
        y = mg.Tensor2D([[1.0]], requires_grad=True) * 2.0
        assert getattr(y.op, "site", None) in (None, "")
    finally:
        mg.set_debug(previous)


def test_set_debug_records_the_call_site(backend: str) -> None:
    previous = mg.autograd.is_debug_enabled()
    x = mg.Tensor2D([[0.0, 1.0]], requires_grad=True)
    try:
        mg.set_debug(True)
        line = line_after()
        y = mg.sqrt(x)
        assert y.op.site.endswith(f"{HERE}:{line}"), y.op.site
        out = (y * 0.0).sum()
    finally:
        mg.set_debug(previous)
    with mg.detect_anomaly(), pytest.raises(mg.AnomalyError) as info:
        out.backward()  # only backward is checked, yet the error points at the forward line
    assert f"{HERE}:{line}" in str(info.value)


def test_matgrad_debug_environment_variable(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import matgrad as mg
        y = mg.Tensor2D([[1.0]], requires_grad=True) * 2.0
        print(y.op.site)
        """
    )
    (tmp_path / "user_code.py").write_text(script)
    env = {**os.environ, "MATGRAD_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "user_code.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("user_code.py:3"), proc.stdout


# ---------------------------------------------------------------------------------------------
# scale: long chains, wide fan-in, memory
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def default_recursion_limit() -> Any:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # CPython's default: a recursive walk of these graphs would fail
    yield
    sys.setrecursionlimit(previous)


def chain(x: mg.Tensor2D, n_ops: int) -> mg.Tensor2D:
    """``n_ops`` ops in a line: ``y = y * 1 + 0.5``, so dy/dx = 1 exactly."""
    y = x
    for _ in range(n_ops // 2):
        y = y * 1.0 + 0.5
    return y


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_backward_through_a_100000_op_chain(backend: str, default_recursion_limit: Any) -> None:
    x = mg.Tensor2D([[1.0, -2.0]], requires_grad=True, dtype="float64")
    before = rss_bytes()
    y = chain(x, 100_000).sum()
    assert y.item() == -1.0 + 2 * 0.5 * 50_000
    y.backward()
    assert x.grad.tolist() == [[1.0, 1.0]]
    grown = rss_bytes() - before
    del y
    gc.collect()
    assert grown < 200 * 2**20, f"the 100,000-op chain took {grown / 2**20:.0f} MB of RSS"


Mark = Callable[..., None]


def traced(fn: Callable[[Mark], Any]) -> dict[str, int]:
    """Run ``fn`` under tracemalloc: bytes over the start at the marks ``fn`` reports, peak, residue."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        marks: dict[str, int] = {}

        def mark(name: str, reset: bool = False) -> None:
            marks[name] = tracemalloc.get_traced_memory()[0] - base
            if reset:
                tracemalloc.reset_peak()

        fn(mark)
        marks["peak"] = tracemalloc.get_traced_memory()[1] - base
        gc.collect()
        marks["residue"] = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return marks


def chain_memory(n_ops: int) -> dict[str, int]:
    def run(mark: Mark) -> None:
        x = mg.Tensor2D([[1.0, -2.0]], requires_grad=True)
        y = chain(x, n_ops).sum()
        mark("graph", reset=True)
        y.backward()
        mark("after_backward")
        assert x.grad.tolist() == [[1.0, 1.0]]

    return traced(run)


def test_chain_memory_is_proportional_released_and_freed(backend: str, default_recursion_limit: Any) -> None:
    small, big = chain_memory(3_000), chain_memory(12_000)
    per_op = big["graph"] / 12_000
    report = f"3,000 ops: {small}; 12,000 ops: {big}; {per_op:.0f} bytes per op"
    assert per_op < 1536, report  # a 100,000-op chain in under 150 MB
    assert 3.0 < big["graph"] / small["graph"] < 5.0, report  # linear in the length
    # backward works in place of the graph it releases: little on top of it, nothing left over
    assert big["peak"] - big["graph"] < 0.5 * big["graph"], report
    assert big["after_backward"] <= 1.05 * big["graph"], report
    assert big["residue"] < 64 * 1024, report  # all of it freed once the tensors go


def test_fan_in_of_1000(backend: str, default_recursion_limit: Any) -> None:
    def run(mark: Mark) -> None:
        x = mg.Tensor2D([[1.0, 2.0]], requires_grad=True)
        parts = [x * float(i) for i in range(1000)]  # x feeds 1000 ops
        mg.cat(parts).sum().backward(retain_graph=True)  # one op with 1000 inputs
        assert x.grad.tolist() == [[499500.0, 499500.0]]
        x.grad = None
        total = parts[0]
        for p in parts[1:]:  # 999 adds in a line, 1000 deep
            total = total + p
        total.sum().backward()
        assert x.grad.tolist() == [[499500.0, 499500.0]]
        leaves = [mg.Tensor2D([[float(i)]], requires_grad=True) for i in range(1000)]
        weights = mg.Tensor2D([[float(i % 7) for i in range(1000)]])
        (mg.cat(leaves, axis=1) * weights).sum().backward()
        assert [t.grad.item() for t in leaves] == [float(i % 7) for i in range(1000)]
        mark("done")

    marks = traced(run)
    assert marks["peak"] < 8 * 2**20, marks
    assert marks["residue"] < 64 * 1024, marks


# ---------------------------------------------------------------------------------------------
# issue 11: the four numeric classes, by the cases reported (tests/test_edge_values.py audits
# every op for them against PyTorch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_pow_0_and_1_have_exact_gradients_at_zero(backend: str, dtype: str, create_graph: bool) -> None:
    """0 * inf at an edge: x ** 0 gave NaN at x = 0 (0 * 0 ** -1), also for an infinite upstream."""
    for upstream in ([[1.5, -2.0, 0.5]], [[INF, -INF, INF]]):
        x = tensor([[0.0, 2.0, -3.0]], dtype)
        (x**0).backward(mg.Tensor2D(upstream, dtype=dtype), create_graph=create_graph)
        assert x.grad.tolist() == [[0.0, 0.0, 0.0]]
        x = tensor([[0.0, 2.0, -3.0]], dtype)
        (x**1).backward(mg.Tensor2D(upstream, dtype=dtype), create_graph=create_graph)
        assert x.grad.tolist() == upstream


def _torch_soft_ce(logits: list[list[float]], targets: list[list[float]]) -> tuple[Any, Any, Any]:
    torch = pytest.importorskip("torch")
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(targets, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x, t)
    gx, gt = torch.autograd.grad(loss, [x, t], create_graph=True)
    return x, t, (loss, gx, gt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_cross_entropy_target_gradient_where_a_target_is_0(backend: str, dtype: str) -> None:
    """A guard that cut a path: dL/dt was 0 where t = 0; the truth is -log_softmax(x) / n."""
    logits = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    targets = [[0.0, 1.0, 0.0], [0.3, 0.0, 0.7]]
    x, t = tensor(logits, dtype), tensor(targets, dtype)
    F.cross_entropy(x, t).backward()
    want = [[-v / 2 for v in log_softmax_row(row)] for row in logits]
    assert_close(t.grad.tolist(), want, dtype, "dL/dt")
    assert t.grad.tolist()[0][0] != 0.0 and t.grad.tolist()[1][1] != 0.0


def test_soft_cross_entropy_second_derivatives_through_targets_match_pytorch(backend: str) -> None:
    logits = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    targets = [[0.0, 1.0, 0.0], [0.3, 0.0, 0.7]]
    tx, tt, (_, tgx, tgt) = _torch_soft_ce(logits, targets)
    v = [[0.7, -1.3, 0.4], [-0.2, 0.9, 1.1]]
    torch = pytest.importorskip("torch")
    tv = torch.tensor(v, dtype=torch.float64)
    want = torch.autograd.grad((tgt * tv).sum() + (tgx * tv).sum(), [tx, tt])
    x, t = tensor(logits, "float64"), tensor(targets, "float64")
    gx, gt = mg.grad(F.cross_entropy(x, t), [x, t], create_graph=True)
    mv = mg.Tensor2D(v, dtype="float64")
    got = mg.grad((gt * mv).sum() + (gx * mv).sum(), [x, t], allow_unused=True)
    for g, w, what in zip(got, want, ("d2L/dx..", "d2L/dt..")):
        assert_close(g.tolist() if g is not None else [[0.0] * 3] * 2, w.tolist(), "float64", what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_keeps_its_digits_for_huge_logits(backend: str, dtype: str) -> None:
    """Cancellation: A - (max + log sum) lost 4e-4 at 1e4 in float32, all of it at 1e13."""
    for big in (1e4, 1e13, -1e13, 3e30):
        x = tensor([[big, big, big]], dtype, grad=False)
        assert_close(x.log_softmax().tolist(), [[-math.log(3.0)] * 3], dtype, f"log_softmax at {big}")
    x = tensor([[1e13, 1e13 + 2048, 1e13 - 4096]], "float64", grad=False)
    exact = log_softmax_row([0.0, 2048.0, -4096.0])
    assert_close(x.log_softmax().tolist(), [exact], "float64", "log_softmax at 1e13, float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_division_gradient_for_huge_and_tiny_divisors(backend: str, dtype: str) -> None:
    """An intermediate out of range: -G a / (b b) overflowed at b = 3e19 (float32) though the
    gradient, -(a / b) / b, is representable; likewise b * b underflowed for tiny b."""
    if dtype == "float32":  # b * b overflows to inf (gradient 0), or underflows to a subnormal (1.6% off)
        cases = [(1e11, 3e19), (1e-30, 1e-20), (-2.0, 1e19)]
    else:
        cases = [(1e11, 1e160), (1e-300, 1e-160)]
    for a_val, b_val in cases:
        a = tensor([[a_val]], dtype)
        b = tensor([[b_val]], dtype)
        (a / b).sum().backward()
        av, bv = a.tolist()[0][0], b.tolist()[0][0]  # the stored (rounded) values
        want = -(av / bv) / bv
        assert math.isfinite(want) and want != 0.0
        assert_close(b.grad.tolist(), [[want]], dtype, f"d(a/b)/db at a={a_val}, b={b_val}")
        assert_close(a.grad.tolist(), [[1.0 / bv]], dtype, "d(a/b)/da")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_then_sqrt_has_no_nan_gradient(backend: str, dtype: str) -> None:
    """relu's rule multiplied by a 0/1 mask: inf * 0 = NaN where sqrt'(0) = inf meets relu'(0) = 0."""
    x = tensor([[-1.0, 0.0, 4.0]], dtype)
    x.relu().sqrt().sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 0.25]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_selection_through_a_matmul_gives_no_nan(backend: str, dtype: str) -> None:
    w = tensor([[1.0, -1.0], [0.5, 1.0]], dtype)
    x = tensor([[1.0, 1.0], [0.0, 3.0]], dtype, grad=False)
    h = (x @ w).relu()  # h[0, 1] = 1 - 1 = 0 exactly: relu's kink, where sqrt's gradient is inf
    h.sqrt().sum().backward()
    g = w.grad.tolist()
    assert all(math.isfinite(v) for row in g for v in row), g
    # dL/dh = [[1/(2 sqrt 1.5), 0], [1/(2 sqrt 1.5), 1/(2 sqrt 3)]];  dW = x.T @ dL/dh
    assert_close([[g[0][1]], [g[1][1]]], [[0.0], [3 / (2 * math.sqrt(3.0))]], dtype, "dW column 1")


@pytest.mark.parametrize("op", ["abs", "relu", "max", "where", "dropout"])
def test_rules_that_zero_entries_select_even_for_an_infinite_upstream(backend: str, op: str) -> None:
    x = tensor([[0.0, -2.0, 3.0]], "float64")
    fns: dict[str, Callable[[mg.Tensor2D], mg.Tensor2D]] = {
        "abs": lambda t: t.abs(),
        "max": lambda t: t.max(axis=1),
        "relu": lambda t: t.relu(),
        "where": lambda t: mg.where(mg.Tensor2D([[0.0, 1.0, 0.0]], dtype="float64"), t, 0.0),
        "dropout": lambda t: F.dropout(t, 0.5),
    }
    out = fns[op](x)
    out.backward(mg.Tensor2D([[INF] * out.ncols] * out.nrows, dtype="float64"))
    g = x.grad.tolist()[0]
    assert not any(math.isnan(v) for v in g), g
    assert 0.0 in g  # at least one entry was selected away, and it is exactly 0
