"""matgrad.compile: replays give the eager results to the last bit, and anything it cannot prove safe runs eagerly."""

from __future__ import annotations

from typing import Any, Callable

import pytest

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim


def _batches(backend: str, n: int, rows: int = 16, features: int = 12, classes: int = 5, seed: int = 0) -> list:
    mg.manual_seed(seed)
    out = []
    for i in range(n):
        x = mg.randn(rows, features, backend=backend)
        y = mg.Tensor2D([[(3 * i + 7 * r) % classes] for r in range(rows)], dtype="int64", backend=backend)
        out.append((x, y))
    return out


def _setup(backend: str, opt: str = "sgd", dropout: float = 0.0, seed: int = 1) -> tuple[Any, Any, Callable]:
    mg.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(12, 16, backend=backend), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, 5, backend=backend))
    model = nn.Sequential(*layers)
    if opt == "sgd":
        optimizer: optim.Optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    else:
        optimizer = optim.Adam(model.parameters(), lr=0.01)

    def train_step(xb: mg.Tensor2D, yb: mg.Tensor2D) -> mg.Tensor2D:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return model, optimizer, train_step


def _run(backend: str, compiled: bool, steps: int, **kw: Any) -> tuple[list[float], list[list[list[float]]], Any]:
    model, _, train_step = _setup(backend, **kw)
    step = mg.compile(train_step) if compiled else train_step
    batches = _batches(backend, 10)
    losses = [step(*batches[i % len(batches)]).item() for i in range(steps)]
    return losses, [p.tolist() for p in model.parameters()], step


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_100_steps_equal_eager_to_the_last_bit(backend: str, opt: str) -> None:
    steps = 100 if backend == "numpy" else 30
    eager_losses, eager_params, _ = _run(backend, False, steps, opt=opt)
    losses, params, step = _run(backend, True, steps, opt=opt)
    assert losses == eager_losses
    assert params == eager_params
    # SGD with momentum: the first capture also creates the momentum buffers, so it differs
    assert step.stats["captured"] == (3 if opt == "sgd" else 2)
    assert step.stats["replayed"] == steps - step.stats["captured"]


def test_dropout_draws_the_same_random_numbers(backend: str) -> None:
    eager_losses, eager_params, _ = _run(backend, False, 12, dropout=0.5)
    losses, params, step = _run(backend, True, 12, dropout=0.5)
    assert losses == eager_losses and params == eager_params
    assert step.stats["replayed"] == 12 - step.stats["captured"] >= 9


def test_gradients_are_left_on_the_parameters(backend: str) -> None:
    model, _, train_step = _setup(backend)
    step = mg.compile(train_step)
    batches = _batches(backend, 4)
    for xb, yb in batches:
        step(xb, yb)
    assert step.stats["replayed"] == 1
    grads = [p.grad.tolist() for p in model.parameters()]
    model2, _, eager = _setup(backend)
    for xb, yb in batches:
        eager(xb, yb)
    assert grads == [p.grad.tolist() for p in model2.parameters()]


def test_new_shapes_capture_a_new_plan(backend: str) -> None:
    _, _, train_step = _setup(backend)
    step = mg.compile(train_step)
    big, small = _batches(backend, 3, rows=16), _batches(backend, 3, rows=5)
    _, _, eager = _setup(backend)
    for b in (big, small, big, small):
        for xb, yb in b:
            assert step(xb, yb).item() == eager(xb, yb).item()
    assert step.stats["replayed"] >= 4


def test_eval_mode_and_grad_mode_are_part_of_the_plan(backend: str) -> None:
    model, _, _ = _setup(backend, dropout=0.5)

    def predict(xb: mg.Tensor2D) -> mg.Tensor2D:
        return model(xb).softmax()

    step = mg.compile(predict)
    ((xb, _),) = _batches(backend, 1)
    model.eval()
    with mg.no_grad():
        first = [step(xb).tolist() for _ in range(4)]
    assert step.stats["replayed"] == 2 and all(f == first[0] for f in first)
    model.train()  # dropout on again: the eval plan must not be replayed
    mg.manual_seed(5)
    with mg.no_grad():
        out = step(xb).tolist()
    mg.manual_seed(5)
    with mg.no_grad():
        want = model(xb).softmax().tolist()
    assert out == want and step.stats["fallbacks"] == 1


def test_replaced_parameters_are_not_replayed(backend: str) -> None:
    model, _, train_step = _setup(backend)
    step = mg.compile(train_step)
    batches = _batches(backend, 3)
    for xb, yb in batches:
        step(xb, yb)
    for xb, yb in batches:
        step(xb, yb)
    assert step.stats["replayed"] == 3
    model.double().float()  # new storage for every parameter
    xb, yb = batches[0]
    before = step.stats["fallbacks"]
    step(xb, yb)
    assert step.stats["fallbacks"] == before + 1


def test_a_branch_that_changes_every_call_runs_eagerly(backend: str) -> None:
    model, _, _ = _setup(backend)
    calls = []

    def alternating(xb: mg.Tensor2D) -> mg.Tensor2D:
        calls.append(1)
        out = model(xb)
        return out.relu() if len(calls) % 2 else out.tanh()

    step = mg.compile(alternating)
    ((xb, _),) = _batches(backend, 1)
    results = [step(xb).tolist() for _ in range(10)]
    expected = [(model(xb).relu() if (k + 1) % 2 else model(xb).tanh()).tolist() for k in range(10)]
    assert results == expected
    assert step.stats["replayed"] == 0 and "differed" in step.why_eager


def test_a_value_read_back_into_python_guards_the_replay(backend: str) -> None:
    """A branch on ``loss.item()``: a replay whose value differs falls back, never replays the wrong branch."""
    model, _, _ = _setup(backend)

    def clipped(xb: mg.Tensor2D, scale: float) -> mg.Tensor2D:
        out = model(xb * scale).sum()
        return out * 2.0 if out.item() > 0 else out * -3.0

    step = mg.compile(clipped)
    ((xb, _),) = _batches(backend, 1)
    for scale in (1.0, 1.0, 1.0, -1.0, 1.0, -1.0):
        out = model(xb * scale).sum()
        want = (out * 2.0 if out.item() > 0 else out * -3.0).item()
        assert step(xb, scale).item() == want
    assert step.stats["replayed"] >= 1


def test_the_value_guard_catches_a_data_dependent_branch(backend: str) -> None:
    model, _, _ = _setup(backend)

    def branchy(xb: mg.Tensor2D) -> mg.Tensor2D:
        total = model(xb).sum()
        return total * 2.0 if total.item() > 0 else total * -3.0

    step = mg.compile(branchy)
    ((xb, _),) = _batches(backend, 1)
    positive = xb if model(xb).sum().item() > 0 else -xb
    negative = -positive
    for batch in (positive, positive, positive, negative, positive):
        total = model(batch).sum()
        assert step(batch).item() == (total * 2.0 if total.item() > 0 else total * -3.0).item()
    assert step.stats["fallbacks"] >= 1


def _scheduled(backend: str) -> tuple[Any, Any]:
    model, optimizer, _ = _setup(backend)
    schedule = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train_step(xb: mg.Tensor2D, yb: mg.Tensor2D) -> mg.Tensor2D:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss

    return optimizer, train_step


def test_learning_rate_schedules_stay_live(backend: str) -> None:
    optimizer, train_step = _scheduled(backend)
    step = mg.compile(train_step)
    batches = _batches(backend, 8) * 2
    losses = [step(xb, yb).item() for xb, yb in batches]
    _, eager = _scheduled(backend)
    assert losses == [eager(xb, yb).item() for xb, yb in batches]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**8)
    # the learning rate changing every other call: SGD's kernels are captured, then its step is
    # called again instead once a replay sees the options change
    assert step.stats["fallbacks"] == 1 and step.stats["replayed"] >= 8


def test_a_learning_rate_changed_by_hand_is_never_replayed_stale(backend: str) -> None:
    _, optimizer, train_step = _setup(backend)
    step = mg.compile(train_step)
    _, opt2, eager = _setup(backend)
    for k, (xb, yb) in enumerate(_batches(backend, 10)):
        if k == 6:
            optimizer.param_groups[0]["lr"] = opt2.param_groups[0]["lr"] = 0.2
        assert step(xb, yb).item() == eager(xb, yb).item()
    assert step.stats["fallbacks"] == 1


class Cube(mg.Function):
    @staticmethod
    def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx: Any, grad: mg.Tensor2D) -> mg.Tensor2D:
        (x,) = ctx.saved_tensors
        return grad * x * x * 3.0


def test_user_functions_are_captured(backend: str) -> None:
    w = mg.Tensor2D([[0.5, -0.25, 1.0]], requires_grad=True, backend=backend)
    optimizer = optim.SGD([w], lr=0.1)

    def train_step(xb: mg.Tensor2D) -> mg.Tensor2D:
        loss = Cube.apply(xb * w).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    step = mg.compile(train_step)
    xs = [mg.Tensor2D([[1.0 + k, -0.5, 0.25 * k]], backend=backend) for k in range(6)]
    losses = [step(x).item() for x in xs]
    w2 = mg.Tensor2D([[0.5, -0.25, 1.0]], requires_grad=True, backend=backend)
    opt2 = optim.SGD([w2], lr=0.1)
    want = []
    for x in xs:
        loss = Cube.apply(x * w2).mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        want.append(loss.item())
    assert losses == want and w.tolist() == w2.tolist()
    assert step.stats["replayed"] == 4


def test_the_plan_prints_its_kernels_with_shapes() -> None:
    _, _, train_step = _setup("numpy")
    step = mg.compile(train_step)
    assert step.plan is None
    for xb, yb in _batches("numpy", 3):
        step(xb, yb)
    text = str(step.plan)
    assert text.startswith("plan of train_step(16x12 float32 numpy, 16x1 int64 numpy):")
    assert "= matmul(xb, 0.weight, False, True, 0.bias)" in text
    assert "v0: 16x16 float32" in text and "0.weight.grad = " in text
    assert "axpy(0.weight, " in text and "= mul(0.weight.momentum_buffer, 0.9)" in text  # SGD's update, replayed


def test_anomaly_and_debug_modes_run_eagerly() -> None:
    _, _, train_step = _setup("numpy")
    step = mg.compile(train_step)
    batches = _batches("numpy", 4)
    with mg.detect_anomaly():
        for xb, yb in batches:
            step(xb, yb)
    assert step.stats["eager"] == 4 and step.stats["replayed"] == 0


def test_unsupported_arguments_and_results_are_clear() -> None:
    step = mg.compile(lambda x: x)
    with pytest.raises(TypeError, match="compile: an argument of type list"):
        step([1.0])
    with pytest.raises(TypeError, match="expected a function"):
        mg.compile(3)  # type: ignore[arg-type]
    returns_float = mg.compile(lambda x: (x * 2.0).sum().item())
    x = mg.Tensor2D([[1.0, 2.0]])
    assert [returns_float(x) for _ in range(3)] == [6.0, 6.0, 6.0]
    assert "returned a float" in returns_float.why_eager


def test_arguments_sharing_storage_are_part_of_the_signature(backend: str) -> None:
    step = mg.compile(lambda a, b: a * 2.0 + b)
    x = mg.Tensor2D([[1.0, 2.0]], backend=backend)
    for _ in range(4):
        assert step(x, x).tolist() == [[3.0, 6.0]]
    y = mg.Tensor2D([[10.0, 20.0]], backend=backend)
    assert step(x, y).tolist() == [[12.0, 24.0]]  # a new signature: not the plan where b is a


def test_an_error_during_a_replay_is_the_eager_error(backend: str) -> None:
    _, _, train_step = _setup(backend)
    step = mg.compile(train_step)
    batches = _batches(backend, 3)
    for xb, yb in batches:
        step(xb, yb)
    xb, _ = batches[0]
    bad = mg.Tensor2D([[9]] * 16, dtype="int64", backend=backend)  # class 9 of 5
    with pytest.raises(mg.ArgumentError, match="target 9 is out of range for 5 classes"):
        step(xb, bad)


def test_other_threads_are_not_recorded_while_capturing() -> None:
    import threading

    _, _, train_step = _setup("numpy")
    step = mg.compile(train_step)
    stop = threading.Event()
    seen: list[float] = []

    def busy() -> None:
        a = mg.Tensor2D([[1.0, 2.0]], requires_grad=True)
        while not stop.is_set():
            out = (a * 3.0).sum()
            out.backward()
            seen.append(a.grad.item() if a.grad.shape == (1, 1) else a.grad.tolist()[0][0])
            a.grad = None

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        _, _, eager = _setup("numpy")
        for xb, yb in _batches("numpy", 6):
            assert step(xb, yb).item() == eager(xb, yb).item()
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) == {3.0}
    assert step.stats["replayed"] == 6 - step.stats["captured"] >= 3


def test_an_in_place_change_without_a_kernel_runs_eagerly(backend: str) -> None:
    """``set_`` swaps storage without a kernel: a replay could not redo it, so the step stays eager."""
    w = mg.Tensor2D([[1.0, 2.0]], backend=backend)
    fresh = [mg.Tensor2D([[float(k), 1.0]], backend=backend) for k in range(5)]
    calls = []

    def swap_and_scale(x: mg.Tensor2D) -> mg.Tensor2D:
        with mg.no_grad():
            w.set_(fresh[len(calls)])
        calls.append(1)
        return x * w

    step = mg.compile(swap_and_scale)
    x = mg.Tensor2D([[3.0, 3.0]], backend=backend)
    assert [step(x).tolist() for _ in range(5)] == [[[3.0 * k, 3.0]] for k in range(5)]
    assert step.stats["replayed"] == 0 and "without a kernel" in step.why_eager


def test_in_place_methods_are_replayed(backend: str) -> None:
    acc = mg.Tensor2D([[0.0, 0.0]], backend=backend)

    def accumulate(x: mg.Tensor2D) -> mg.Tensor2D:
        with mg.no_grad():
            acc.add_(x * 2.0)
        return acc.clone()

    step = mg.compile(accumulate)
    outs = [step(mg.Tensor2D([[1.0, float(k)]], backend=backend)).tolist() for k in range(5)]
    assert outs[-1] == [[10.0, 20.0]] and acc.tolist() == [[10.0, 20.0]]
    assert step.stats["replayed"] == 3 and acc._version == 5


# -- buffers the plan owns ------------------------------------------------------------------------


def _slots_read(item: Any) -> set[int]:
    from matgrad.compile import _refs

    return {r.index for r in _refs(item) if r.kind == "slot"}


def test_intermediates_are_written_into_reused_buffers() -> None:
    """Every result nothing outside can see gets a buffer; buffers are shared between results whose
    lifetimes do not overlap, and no kernel writes into a buffer it also reads."""
    from matgrad.compile import Kernel

    _, _, train_step = _setup("numpy", opt="sgd")
    step = mg.compile(train_step)
    for xb, yb in _batches("numpy", 4):
        step(xb, yb)
    plan = step.plan
    assert plan is not None and plan.run_buffered is not None
    assert "buffers reused by every call" in str(plan) and "[in b" in str(plan) and "[scratch b" in str(plan)
    items = plan.trace.items
    assert len(plan.buffer_of) > len(set(plan.buffer_of.values()))  # some buffer serves two results
    for pos, spec in plan.into.items():
        item = items[pos]
        assert isinstance(item, Kernel)
        name = spec.split("=")[1]
        # the buffer is not the memory of anything this kernel reads
        assert all(plan.buffer_of.get(k) != name for k in _slots_read(item)), str(plan)
        if spec.startswith("out="):
            (slot,) = item.outs
            # and no result still alive at this point lives in it
            for other, other_name in plan.buffer_of.items():
                if other != slot and other_name == name:
                    born = next(p for p, it in enumerate(items) if isinstance(it, Kernel) and other in (it.outs or ()))
                    assert plan.last_use.get(other, born) < pos or born > plan.last_use.get(slot, pos)


def test_buffered_and_plain_replays_agree_to_the_last_bit() -> None:
    losses = {}
    for buffered in (True, False):
        model, _, train_step = _setup("numpy")
        step = mg.compile(train_step)
        batches = _batches("numpy", 10)
        out = []
        for i in range(40):
            if step.plan is not None and not buffered:
                step.plan.run_buffered = None
            out.append(step(*batches[i % 10]).item())
        losses[buffered] = (out, [p.tolist() for p in model.parameters()])
        assert step.stats["replayed"] == 37
    assert losses[True] == losses[False]


def test_results_that_escape_never_share_a_buffer() -> None:
    """The return value, the gradients left on parameters and anything viewing an intermediate stay
    the caller's: a later call must not overwrite them."""
    w = mg.Tensor2D([[0.5, -1.0, 2.0]], requires_grad=True)

    def f(x: mg.Tensor2D) -> tuple[mg.Tensor2D, mg.Tensor2D]:
        h = (x * w).relu()  # maximum: a kernel that could write into a buffer
        flat = h.reshape(3, 1)  # a view of h, returned: h must not live in a reused buffer
        loss = (h * h).sum()
        w.grad = None
        loss.backward()
        return loss, flat

    step = mg.compile(f)
    xs = [mg.Tensor2D([[float(k), 1.0 + k, 2.0]]) for k in range(6)]
    results = [step(x) for x in xs]
    grads = []
    for x in xs:
        step(x)
        grads.append(w.grad)
    assert step.stats["replayed"] >= 8
    for x, (loss, flat), g in zip(xs, results, grads):
        h = [max(a * b, 0.0) for a, b in zip(x.tolist()[0], w.tolist()[0])]
        assert flat.tolist() == [[v] for v in h]
        assert loss.item() == pytest.approx(sum(v * v for v in h))
        assert g.tolist() == [[2 * v * a for v, a in zip(h, x.tolist()[0])]]


def test_a_replay_from_a_second_thread_does_not_share_the_buffers() -> None:
    """While one replay holds the plan's buffers, another (a second thread) runs the plain code."""
    _, _, train_step = _setup("numpy")
    _, _, eager = _setup("numpy")
    step = mg.compile(train_step)
    batches = _batches("numpy", 8)
    for xb, yb in batches[:3]:
        assert step(xb, yb).item() == eager(xb, yb).item()
    plan = step.plan
    assert plan is not None and plan.run_buffered is not None
    used = []
    original = plan.run
    plan.run = lambda *a: used.append(1) or original(*a)
    with plan.lock:  # as if another thread were replaying now
        for xb, yb in batches[3:5]:
            assert step(xb, yb).item() == eager(xb, yb).item()
    assert len(used) == 2
    for xb, yb in batches[5:]:
        assert step(xb, yb).item() == eager(xb, yb).item()
    assert len(used) == 2 and step.stats["replayed"] == 5


def test_every_buffered_numpy_kernel_gives_the_same_bits_into_a_buffer() -> None:
    np = pytest.importorskip("numpy")
    be = mg.backends.get("numpy")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((5, 7)).astype(np.float32)
    a[0, 0] = np.inf  # keep's other path
    mask = (b > 0).astype(np.float32)
    probs = np.abs(b) / np.abs(b).sum(axis=1, keepdims=True)
    targets = np.array([[1], [0], [6], [3], [3]])
    calls = {
        "add": ((a, b), ()),
        "sub": ((a, 2.5), ()),
        "mul": ((b, a[:1]), ()),
        "maximum": ((a, 0.0), ()),
        "compare": (("gt", b, 0.0), ()),
        "keep": ((a, mask), ()),
        "matmul": ((a[:, 1:], b[:, 1:], True, False, None), ()),
        "softmax_xent_grad": ((probs, targets, 0.2), ()),
        "sum": ((b, 0), ()),
    }
    assert set(be.buffered) == {*calls, "axpy"}
    for name, (args, _) in calls.items():
        want = getattr(be, name)(*args)
        buffer = np.full(want.shape, np.nan, want.dtype)
        got = getattr(be, name)(*args, out=buffer)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    for alpha in (-0.1, 1.0, -1.0, 3.0):
        fresh, reused = a.copy(), a.copy()
        be.axpy(fresh, b, alpha)
        be.axpy(reused, b, alpha, work=np.empty_like(b))
        assert fresh.tobytes() == reused.tobytes()


def test_a_gradient_buffer_is_reused_only_when_nothing_else_holds_last_steps_gradient() -> None:
    model, _, train_step = _setup("numpy", opt="sgd")
    step = mg.compile(train_step)
    batches = _batches("numpy", 10)
    for xb, yb in batches[:4]:
        step(xb, yb)
    plan = step.plan
    assert plan is not None and "when free]" in str(plan)
    w = model[0].weight

    def in_buffer() -> bool:  # is w.grad the plan's own buffer?
        assert w.grad is not None
        return any(w.grad.native is b for b in plan.buffers.values())

    step(*batches[4])
    assert in_buffer()  # steady state: last step's gradient was dropped by zero_grad, so reused
    held = w.grad
    kept = held.tolist()  # type: ignore[union-attr]
    step(*batches[5])  # the caller holds last step's gradient: this step gets a new matrix
    assert not in_buffer() and held.tolist() == kept  # type: ignore[union-attr]
    view = held.numpy()[:2]  # type: ignore[union-attr]
    del held
    step(*batches[6])  # step 5's gradient is dropped; step 4's memory is still seen through a view
    assert not in_buffer() and view.tolist() == kept[:2]
    del view
    step(*batches[7])
    assert in_buffer()  # nothing holds it any more
    # and the numbers are eager's throughout
    _, _, eager = _setup("numpy", opt="sgd")
    losses = [eager(*b).item() for b in batches[:9]]
    model2, _, train_step2 = _setup("numpy", opt="sgd")
    step2 = mg.compile(train_step2)
    got, held2 = [], []
    for i, b in enumerate(batches[:9]):
        got.append(step2(*b).item())
        if i in (4, 6):
            held2.append(model2[0].weight.grad)  # holding gradients changes no number
    assert got == losses
