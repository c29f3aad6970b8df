"""Threads: grad mode and anomaly mode are per thread; shared state is safe to use from many.

Real threads, with the interpreter's switch interval shortened so they interleave every few
bytecodes; barriers force the interleavings that matter (one thread inside ``no_grad`` while
another records). Every gradient is compared exactly with the same computation run alone.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterator

import pytest

import matgrad as mg
import matgrad.functional as F
from matgrad import backends as _backends
from matgrad.autograd import engine as _engine

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    """Switch threads every 10 microseconds (default 5 ms), so races show within a short test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def run_threads(*targets: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Run each target in its own thread; re-raise the first exception; return their results."""
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def wrap(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]
    return results


# -- modes are per thread ---------------------------------------------------------------------


def test_a_new_thread_starts_with_grad_on_and_anomaly_off(backend: str) -> None:
    seen: dict[str, bool] = {}

    def probe() -> None:
        seen["grad"] = mg.is_grad_enabled()
        seen["anomaly"] = mg.is_anomaly_enabled()
        x = mg.Tensor2D([[1.0]], requires_grad=True)
        seen["records"] = (x * 2.0).requires_grad

    with mg.no_grad(), mg.detect_anomaly():
        run_threads(probe)
        assert not mg.is_grad_enabled() and mg.is_anomaly_enabled()  # this thread's own modes stand
    assert seen == {"grad": True, "anomaly": False, "records": True}


def test_set_grad_enabled_in_a_thread_changes_only_that_thread(backend: str) -> None:
    inside = threading.Event()
    release = threading.Event()

    def switch_off() -> bool:
        mg.set_grad_enabled(False)  # the plain-call form, never restored in that thread
        inside.set()
        release.wait(10)
        return mg.is_grad_enabled()

    def record() -> bool:
        inside.wait(10)
        x = mg.Tensor2D([[2.0]], requires_grad=True)
        y = x * x
        release.set()
        return y.requires_grad and mg.is_grad_enabled()

    off_stayed_off, recorded = run_threads(switch_off, record)
    assert off_stayed_off is False and recorded is True
    assert mg.is_grad_enabled()


def test_anomaly_mode_is_per_thread(backend: str) -> None:
    inside = threading.Event()
    done = threading.Event()

    def detecting() -> None:
        with mg.detect_anomaly():
            inside.set()
            done.wait(10)

    def not_detecting() -> bool:
        inside.wait(10)
        x = mg.Tensor2D([[0.0]], requires_grad=True)
        y = x.log()  # -inf: an anomaly only where detection is on
        y.sum().backward()
        done.set()
        return mg.is_anomaly_enabled()

    _, flag = run_threads(detecting, not_detecting)
    assert flag is False


def _data(backend: str) -> tuple[mg.Tensor2D, mg.Tensor2D]:
    x = mg.Tensor2D([[(i * 7 + j * 3) % 11 / 11 - 0.5 for j in range(6)] for i in range(16)], backend=backend)
    y = mg.Tensor2D([[i % 3] for i in range(16)], dtype="int64", backend=backend)
    return x, y


def _model(backend: str, seed: int) -> mg.nn.Module:
    mg.manual_seed(seed)
    model = mg.nn.Sequential(mg.nn.Linear(6, 8), mg.nn.ReLU(), mg.nn.Linear(8, 3))
    return model.to(backend=backend)


def _train(model: mg.nn.Module, x: mg.Tensor2D, y: mg.Tensor2D, steps: int) -> list[float]:
    opt = mg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _snapshot(model: mg.nn.Module) -> list[list[list[float]]]:
    return [p.tolist() for p in model.parameters()]


def test_two_threads_train_separate_models_while_a_third_evaluates(backend: str) -> None:
    """Each thread's training is bit for bit the same as the same training run alone."""
    x, y = _data(backend)
    steps = 15
    alone = [_train(_model(backend, s), x, y, steps) for s in (1, 2)]
    finals_alone = []
    for s in (1, 2):
        m = _model(backend, s)
        _train(m, x, y, steps)
        finals_alone.append(_snapshot(m))

    models = [_model(backend, 1), _model(backend, 2)]
    frozen = _model(backend, 3)
    frozen_before = _snapshot(frozen)
    stop = threading.Event()

    def evaluate() -> int:
        n = 0
        while not stop.is_set() or n < 5:
            with mg.no_grad():
                out = frozen(x)
                assert not out.requires_grad and out.op is None
            n += 1
        return n

    def trainer(i: int) -> Callable[[], list[float]]:
        def go() -> list[float]:
            try:
                return _train(models[i], x, y, steps)
            finally:
                if i == 1:
                    stop.set()

        return go

    losses_a, losses_b, evaluations = run_threads(trainer(0), trainer(1), evaluate)
    assert [losses_a, losses_b] == alone
    assert [_snapshot(m) for m in models] == finals_alone
    assert _snapshot(frozen) == frozen_before and all(p.grad is None for p in frozen.parameters())
    assert evaluations >= 5


def test_forward_and_backward_while_another_thread_toggles_no_grad(backend: str) -> None:
    stop = threading.Event()

    def toggler() -> int:
        flips = 0
        while not stop.is_set():
            with mg.no_grad():
                flips += 1
            mg.set_grad_enabled(False)
            mg.set_grad_enabled(True)
        return flips

    w = mg.Tensor2D([[1.0, -2.0], [0.5, 3.0]], dtype="float64", requires_grad=True)
    x = mg.Tensor2D([[2.0, 1.0], [-1.0, 4.0]], dtype="float64")

    def step() -> list[list[float]]:
        w.grad = None
        loss = ((x @ w).tanh() * (x @ w)).sum()
        assert loss.requires_grad and mg.is_grad_enabled()
        loss.backward()
        return w.grad.tolist()

    want = step()

    def worker() -> None:
        try:
            for _ in range(200):
                assert step() == want
        finally:
            stop.set()

    flips, _ = run_threads(toggler, worker)
    assert flips > 0


def test_two_threads_backward_through_one_shared_graph(backend: str) -> None:
    w = mg.Tensor2D([[0.5, -1.5, 2.0]], dtype="float64", requires_grad=True)
    h = (w * w).exp() * w
    loss = h.sum()
    (want,) = mg.grad(loss, [w], retain_graph=True)

    def worker() -> list[list[list[float]]]:
        return [mg.grad(loss, [w], retain_graph=True)[0].tolist() for _ in range(100)]

    for results in run_threads(worker, worker, worker):
        assert results == [want.tolist()] * 100


def test_two_threads_accumulate_into_one_leaf(backend: str) -> None:
    """Backward from two threads into the same parameter: no accumulation is lost."""
    w = mg.Tensor2D([[1.0, 2.0]], dtype="float64", requires_grad=True)
    n = 400

    def worker() -> None:
        for _ in range(n):
            (w * 3.0).sum().backward()

    run_threads(worker, worker)
    assert w.grad.tolist() == [[3.0 * 2 * n, 3.0 * 2 * n]]


def test_version_checks_hold_across_threads(backend: str) -> None:
    """An in-place change made by another thread is seen by this thread's backward."""
    w = mg.Tensor2D([[1.0, 2.0]], requires_grad=True)
    x = mg.Tensor2D([[3.0, 4.0]])
    loss = (w * x).sum()
    run_threads(lambda: x.mul_(10.0))
    with pytest.raises(mg.GraphError, match="modified by mul_"):
        loss.backward()


def test_module_scopes_are_per_thread(backend: str) -> None:
    """The diagrams' module clusters: an op recorded in one thread never lands in another's module."""
    from matgrad.viz.scope import current_scope

    inside = threading.Event()
    release = threading.Event()

    class Waits(mg.nn.Module):
        def forward(self, x: mg.Tensor2D) -> mg.Tensor2D:
            inside.set()
            release.wait(10)
            return x * 2.0

    def in_module() -> None:
        Waits()(mg.Tensor2D([[1.0]], requires_grad=True))

    def outside() -> tuple[Any, ...]:
        inside.wait(10)
        y = mg.Tensor2D([[1.0]], requires_grad=True) + 1.0
        release.set()
        return (current_scope(), y.op.scope)

    _, (scope_now, op_scope) = run_threads(in_module, outside)
    assert scope_now == () and op_scope == ()


# -- process-wide state: created once, whoever asks first -------------------------------------


def test_backend_creation_race_gives_one_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backends, "_instances", {})
    create = _backends._create
    barrier = threading.Barrier(6)

    def slow_create(name: str) -> _backends.Backend:
        made = create(name)
        threading.Event().wait(0.01)  # widen the window between "not there yet" and "stored"
        return made

    monkeypatch.setattr(_backends, "_create", slow_create)

    def ask() -> _backends.Backend:
        barrier.wait(10)
        return _backends.get("python")

    got = run_threads(*[ask] * 6)
    assert all(b is got[0] for b in got)


def test_function_node_class_is_made_once_under_threads() -> None:
    from matgrad.autograd import function as _function

    class Twice(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
            return x * 2.0

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> mg.Tensor2D:
            return g * 2.0

    barrier = threading.Barrier(4)

    def apply() -> type:
        barrier.wait(10)
        return type(Twice.apply(mg.Tensor2D([[1.0]], requires_grad=True)).op)

    classes = run_threads(*[apply] * 4)
    assert len(set(classes)) == 1 and _function._op_classes[Twice] is classes[0]


def test_removing_a_hook_from_two_threads_at_once() -> None:
    handle = mg.autograd.register_record_hook(lambda op: None)
    barrier = threading.Barrier(4)

    def remove() -> None:
        barrier.wait(10)
        handle.remove()

    run_threads(*[remove] * 4)


def test_the_engine_lock_is_reentrant(backend: str) -> None:
    """A Function whose backward itself calls grad() (inside a backward pass) does not deadlock."""

    class InnerGrad(mg.Function):
        @staticmethod
        def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx: Any, g: mg.Tensor2D) -> mg.Tensor2D:
            (x,) = ctx.saved_tensors
            with mg.enable_grad():
                x2 = x.detach().requires_grad_()
                (dx,) = mg.grad((x2 * x2).sum(), [x2])
            return g * dx

    x = mg.Tensor2D([[3.0]], dtype="float64", requires_grad=True)
    InnerGrad.apply(x).sum().backward()
    assert x.grad.tolist() == [[6.0]]
    assert not _engine._lock._is_owned()  # type: ignore[attr-defined]
