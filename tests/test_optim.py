"""matgrad.optim against torch.optim step by step, checkpoints, validation and schedules."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

import matgrad as mg
from matgrad import nn, optim
from matgrad._errors import CheckpointError, ShapeError
from matgrad.optim.lr_scheduler import CosineAnnealingLR, StepLR


def _torch() -> Any:
    return pytest.importorskip("torch")


SHAPES = [(3, 4), (1, 4)]


def _initial(seed: int, dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _gradients(seed: int, steps: int, dtype: str = "float32") -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed + 100)
    return [[(rng.standard_normal(s) * rng.uniform(0.1, 3.0)).astype(dtype) for s in SHAPES] for _ in range(steps)]


CASES: list[tuple[str, dict[str, Any]]] = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True, "maximize": True}),
    ("SGD", {"lr": 0.1, "maximize": True, "dampening": 0.3, "momentum": 0.5}),
    ("Adam", {}),
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "amsgrad": True}),
    ("Adam", {"lr": 0.05, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.05, "maximize": True}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True, "weight_decay": 0.05}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 0.05, "maximize": True, "betas": (0.5, 0.9)}),
]


def _run_pair(backend: str, name: str, kwargs: dict[str, Any], dtype: str = "float32", steps: int = 7) -> None:
    """Same start, same gradients: matgrad's and torch's parameters agree after every step."""
    torch = _torch()
    init = _initial(0, dtype)
    ours = [nn.Parameter(mg.Tensor2D(v, dtype=dtype, backend=backend)) for v in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in init]
    opt = getattr(optim, name)(ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    tol = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}[dtype]
    for k, grads in enumerate(_gradients(0, steps, dtype)):
        for p, tp, g in zip(ours, theirs, grads):
            p.grad = mg.Tensor2D(g, dtype=dtype, backend=backend)
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            assert p.dtype == dtype and p.is_leaf and p.op is None
            np.testing.assert_allclose(
                p.numpy(), tp.detach().numpy(), rtol=tol[0], atol=tol[1], err_msg=f"{name}{kwargs} step {k + 1}"
            )


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{'-'.join(map(str, k.items()))}" for n, k in CASES])
def test_matches_torch_step_by_step(backend: str, name: str, kwargs: dict[str, Any]) -> None:
    _run_pair(backend, name, kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
        ("Adam", {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}),
    ],
)
def test_matches_torch_in_float64(backend: str, name: str, kwargs: dict[str, Any]) -> None:
    _run_pair(backend, name, kwargs, dtype="float64")


def test_param_groups_with_their_own_options_match_torch(backend: str) -> None:
    torch = _torch()
    init = _initial(1)
    ours = [nn.Parameter(mg.Tensor2D(v)) for v in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in init]
    opt = optim.SGD([{"params": [ours[0]], "lr": 0.3, "nesterov": True}, {"params": ours[1]}], lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(
        [{"params": [theirs[0]], "lr": 0.3, "nesterov": True}, {"params": theirs[1]}], lr=0.05, momentum=0.9
    )
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.05]
    for grads in _gradients(1, 5):
        for p, tp, g in zip(ours, theirs, grads):
            p.grad, tp.grad = mg.Tensor2D(g), torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), [("SGD", {"lr": 0.1, "momentum": 0.9}), ("Adam", {"lr": 0.01})])
def test_training_an_mlp_matches_torch(backend: str, name: str, kwargs: dict[str, Any]) -> None:
    """The whole loop: forward, cross-entropy, backward, step, from the same initial weights."""
    torch = _torch()
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    model = nn.MLP([6, 5, 3], activation="tanh")
    model.load_state_dict(tmodel.state_dict())
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    topt = getattr(torch.optim, name)(tmodel.parameters(), **kwargs)
    rng = np.random.default_rng(2)
    for _ in range(6):
        x = rng.standard_normal((8, 6)).astype(np.float32)
        y = rng.integers(0, 3, size=8)
        opt.zero_grad()
        topt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(mg.Tensor2D(x)), y.tolist())
        tloss = torch.nn.CrossEntropyLoss()(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    for (k, p), (tk, tp) in zip(model.state_dict().items(), tmodel.state_dict().items()):
        assert k == tk
        np.testing.assert_allclose(p.numpy().reshape(tuple(tp.shape)), tp.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# what step() touches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_step_builds_no_graph_and_keeps_dtype(backend: str, name: str) -> None:
    model = nn.MLP([3, 4, 2])
    opt = getattr(optim, name)(model.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(mg.randn(5, 3)).sum().backward()
        opt.step()  # grad mode is on here: step must switch it off itself
    assert mg.is_grad_enabled()
    for p in model.parameters():
        assert p.is_leaf and p.op is None and p.requires_grad and p.dtype == "float32"
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, mg.Tensor2D):
                assert v.is_leaf and not v.requires_grad and v.dtype == "float32"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("SGD", {"momentum": 0.9, "weight_decay": 0.5}), ("Adam", {"weight_decay": 0.5}), ("AdamW", {})],
)
def test_parameters_without_grad_are_untouched(backend: str, name: str, kwargs: dict[str, Any]) -> None:
    a = nn.Parameter(mg.randn(2, 3))
    b = nn.Parameter(mg.randn(2, 3))
    before_a, before_b = a.tolist(), b.tolist()
    opt = getattr(optim, name)([a, b], lr=0.1, **kwargs)
    a.grad = mg.ones(2, 3)
    opt.step()
    opt.step()
    assert a.tolist() != before_a
    assert b.tolist() == before_b
    assert b not in opt.state


def test_step_with_a_closure_returns_the_loss(backend: str) -> None:
    w = nn.Parameter(mg.Tensor2D([[2.0]]))
    opt = optim.SGD([w], lr=0.25)

    def closure() -> mg.Tensor2D:
        opt.zero_grad()
        loss = (w * w).sum()  # d/dw = 2w
        loss.backward()
        return loss

    with mg.no_grad():  # the closure still records its graph
        loss = opt.step(closure)
    assert loss.item() == 4.0
    assert w.tolist() == [[1.0]]  # 2 - 0.25 * 4


def test_zero_grad(backend: str) -> None:
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(mg.randn(4, 3)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert model.weight.grad is not None and model.weight.grad.tolist() == [[0.0] * 3] * 2
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_gradient_of_the_wrong_shape_is_an_error(backend: str) -> None:
    p = nn.Parameter(mg.zeros(2, 3))
    p.grad = mg.ones(1, 3)
    with pytest.raises(ShapeError, match=r"a 2x3 float32 parameter .* has a \.grad of 1x3 float32"):
        optim.SGD([p], lr=0.1).step()


def test_sgd_by_hand(backend: str) -> None:
    """Momentum 0.5, dampening 0: b1 = g1, b2 = 0.5 b1 + g2, p -= lr b."""
    p = nn.Parameter(mg.Tensor2D([[1.0, -2.0]]))
    opt = optim.SGD([p], lr=0.5, momentum=0.5)
    p.grad = mg.Tensor2D([[2.0, 4.0]])
    opt.step()
    assert p.tolist() == [[0.0, -4.0]]
    p.grad = mg.Tensor2D([[1.0, -2.0]])
    opt.step()  # b = [1 + 1, 2 - 2] = [2, 0]
    assert p.tolist() == [[-1.0, -4.0]]


def test_adam_first_step_by_hand(backend: str) -> None:
    """At t = 1 the bias corrections cancel: p -= lr * g / (|g| + eps), i.e. lr * sign(g)."""
    p = nn.Parameter(mg.Tensor2D([[1.0, 1.0]], dtype="float64"))
    opt = optim.Adam([p], lr=0.1, eps=0.0)
    p.grad = mg.Tensor2D([[3.0, -0.5]], dtype="float64")
    opt.step()
    assert p.tolist()[0] == pytest.approx([0.9, 1.1], abs=1e-15)


# ---------------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------------


def _train(model: nn.Module, opt: optim.Optimizer, batches: list[tuple[np.ndarray, list[int]]]) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(mg.Tensor2D(x)), y).backward()
        opt.step()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        ("Adam", {"lr": 0.01, "amsgrad": True}),
        ("AdamW", {"lr": 0.01}),
    ],
)
def test_state_dict_round_trip_resumes_bit_identically(backend: str, name: str, kwargs: dict[str, Any]) -> None:
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((6, 4)).astype(np.float32), rng.integers(0, 3, 6).tolist()) for _ in range(6)]
    mg.manual_seed(0)
    model = nn.MLP([4, 5, 3])
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    _train(model, opt, batches[:3])
    model_sd, opt_sd = model.state_dict(), opt.state_dict()
    saved = {k: v.tolist() for k, v in model_sd.items()}
    model_sd = {k: mg.Tensor2D(v) for k, v in model_sd.items()}  # a copy: the model keeps training below
    _train(model, opt, batches[3:])

    mg.manual_seed(1)
    resumed = nn.MLP([4, 5, 3])
    ropt = getattr(optim, name)(resumed.parameters(), **kwargs)
    resumed.load_state_dict(model_sd)
    assert {k: v.tolist() for k, v in resumed.state_dict().items()} == saved
    ropt.load_state_dict(opt_sd)
    _train(resumed, ropt, batches[3:])
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert a.tolist() == b.tolist(), k


def test_state_dict_layout_matches_torch(backend: str) -> None:
    torch = _torch()
    init = _initial(2)
    ours = [nn.Parameter(mg.Tensor2D(v)) for v in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in init]
    opt = optim.Adam([{"params": [ours[0]]}, {"params": [ours[1]], "lr": 0.5}], amsgrad=True)
    topt = torch.optim.Adam([{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.5}], amsgrad=True)
    ours[1].grad, theirs[1].grad = mg.ones(1, 4), torch.ones(1, 4)  # only the second parameter steps
    opt.step()
    topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert list(sd) == list(tsd) == ["state", "param_groups"]
    assert list(sd["state"]) == list(tsd["state"]) == [1]
    assert set(sd["state"][1]) == set(tsd["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][1]["step"] == int(tsd["state"][1]["step"]) == 1
    np.testing.assert_allclose(sd["state"][1]["exp_avg"].numpy(), tsd["state"][1]["exp_avg"].numpy(), rtol=1e-6)
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in tsd["param_groups"]] == [[0], [1]]
    for g, tg in zip(sd["param_groups"], tsd["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert g[key] == tg[key]
    # state tensors are copies: stepping on does not change the saved dict
    saved = sd["state"][1]["exp_avg"].tolist()
    opt.step()
    assert sd["state"][1]["exp_avg"].tolist() == saved
    assert opt.state[ours[1]]["exp_avg"].tolist() != saved


def test_load_state_dict_restores_options_and_converts_state(backend: str) -> None:
    other = "python" if backend == "numpy" else "numpy"
    p64 = nn.Parameter(mg.Tensor2D([[1.0, 2.0]], dtype="float64", backend=other))
    src = optim.SGD([p64], lr=0.5, momentum=0.9)
    p64.grad = mg.Tensor2D([[1.0, 1.0]], dtype="float64", backend=other)
    src.step()
    p = nn.Parameter(mg.Tensor2D([[1.0, 2.0]]))
    dst = optim.SGD([p], lr=0.01, momentum=0.9)
    dst.load_state_dict(src.state_dict())
    assert dst.param_groups[0]["lr"] == 0.5 and dst.param_groups[0]["params"][0] is p
    buf = dst.state[p]["momentum_buffer"]
    assert buf.dtype == "float32" and buf.backend == backend and buf.tolist() == [[1.0, 1.0]]


def test_load_state_dict_errors(backend: str) -> None:
    a, b = nn.Parameter(mg.zeros(2, 2)), nn.Parameter(mg.zeros(1, 2))
    opt = optim.Adam([a, b])
    with pytest.raises(CheckpointError, match="2 parameter groups, this optimiser has 1"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0]}, {"params": [1]}]})
    with pytest.raises(CheckpointError, match="group 0 has 1 parameters in the state dict but 2 here"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0], **optim.Adam([a]).defaults}]})
    other = optim.Adam([nn.Parameter(mg.zeros(2, 2)), nn.Parameter(mg.zeros(1, 3))])
    for p in other.param_groups[0]["params"]:
        p.grad = mg.ones(*p.shape)
    other.step()
    with pytest.raises(CheckpointError, match=r"state 1.exp_avg is 1x3 but its parameter is 1x2"):
        opt.load_state_dict(other.state_dict())
    assert opt.state == {}  # nothing was loaded
    with pytest.raises(CheckpointError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"params": []})


def test_add_param_group_takes_defaults(backend: str) -> None:
    opt = optim.SGD([nn.Parameter(mg.zeros(1, 1))], lr=0.1, momentum=0.5)
    extra = nn.Parameter(mg.zeros(2, 2))
    opt.add_param_group({"params": extra, "lr": 0.01})
    assert len(opt.param_groups[1]["params"]) == 1 and opt.param_groups[1]["params"][0] is extra
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["momentum"] == 0.5
    assert "SGD (" in repr(opt) and "Parameter Group 1" in repr(opt)


# ---------------------------------------------------------------------------------------------
# bad hyper-parameters
# ---------------------------------------------------------------------------------------------


BAD = [
    ("SGD", {"lr": -0.1}, "SGD: lr must be >= 0, got -0.1"),
    ("SGD", {"lr": math.nan}, "SGD: lr must be >= 0, got nan"),
    ("SGD", {"momentum": -0.5}, "SGD: momentum must be >= 0, got -0.5"),
    ("SGD", {"weight_decay": -1e-4}, "SGD: weight_decay must be >= 0, got -0.0001"),
    ("SGD", {"nesterov": True}, "SGD: nesterov=True needs momentum > 0 and dampening = 0, got momentum=0"),
    (
        "SGD",
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        "needs momentum > 0 and dampening = 0, got momentum=0.9, dampening=0.1",
    ),
    ("Adam", {"lr": -1.0}, "Adam: lr must be >= 0, got -1.0"),
    ("Adam", {"eps": -1e-8}, "Adam: eps must be >= 0, got -1e-08"),
    ("Adam", {"weight_decay": -0.1}, "Adam: weight_decay must be >= 0, got -0.1"),
    ("Adam", {"betas": (1.0, 0.999)}, "Adam: betas[0] must be in [0, 1), got 1.0"),
    ("Adam", {"betas": (0.9, -0.1)}, "Adam: betas[1] must be in [0, 1), got -0.1"),
    ("Adam", {"betas": (0.9,)}, "Adam: betas must be a pair (beta1, beta2)"),
    ("AdamW", {"lr": -0.5}, "AdamW: lr must be >= 0, got -0.5"),
    ("AdamW", {"betas": (0.9, 1.5)}, "AdamW: betas[1] must be in [0, 1), got 1.5"),
]


@pytest.mark.parametrize(("name", "kwargs", "message"), BAD, ids=[f"{n}-{m[:40]}" for n, _, m in BAD])
def test_bad_hyper_parameters_raise_value_error(name: str, kwargs: dict[str, Any], message: str) -> None:
    p = nn.Parameter(mg.zeros(1, 1))
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(optim, name)([p], **kwargs)
    # a parameter group's own options are checked too
    with pytest.raises(ValueError):
        getattr(optim, name)([{"params": [p], **kwargs}])


def test_bad_parameter_lists() -> None:
    p = nn.Parameter(mg.zeros(2, 2))
    q = nn.Parameter(mg.zeros(2, 2))
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Adam: a 2x2 parameter is listed twice"):
        optim.Adam([p, q, p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [q, p]}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="wrap the single tensor"):
        optim.SGD(p, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass model\.parameters"):
        optim.SGD(nn.MLP([2, 2]), lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a set"):
        optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(TypeError, match="lr must be a number"):
        optim.SGD([p], lr="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="can only optimise Tensor2D"):
        optim.SGD([np.zeros((2, 2))], lr=0.1)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def _lr_sequences(make: Any, tmake: Any, epochs: int) -> tuple[list[list[float]], list[list[float]]]:
    torch = _torch()
    p = nn.Parameter(mg.zeros(1, 1))
    q = nn.Parameter(mg.zeros(1, 1))
    tp, tq = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([{"params": [tp]}, {"params": [tq], "lr": 0.3}], lr=0.1, momentum=0.9)
    sched, tsched = make(opt), tmake(topt)
    ours, theirs = [sched.get_last_lr()], [tsched.get_last_lr()]
    for _ in range(epochs):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
        ours.append(sched.get_last_lr())
        theirs.append(tsched.get_last_lr())
    return ours, theirs


def test_step_lr_matches_torch() -> None:
    torch = _torch()
    ours, theirs = _lr_sequences(
        lambda o: StepLR(o, step_size=3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), 12
    )
    assert ours[:4] == [[0.1, 0.3]] * 3 + [[0.05, 0.15]]
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-12)


def test_cosine_annealing_matches_torch_beyond_t_max() -> None:
    torch = _torch()
    ours, theirs = _lr_sequences(
        lambda o: CosineAnnealingLR(o, T_max=5, eta_min=0.01),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.01),
        17,
    )
    assert ours[5] == pytest.approx([0.01, 0.01], rel=1e-12)  # the minimum at T_max
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15)


def test_scheduler_state_dict_resumes() -> None:
    def run(split: int | None) -> list[float]:
        opt = optim.SGD([nn.Parameter(mg.zeros(1, 1))], lr=1.0)
        sched = CosineAnnealingLR(opt, T_max=10)
        seen = []
        for epoch in range(8):
            if split is not None and epoch == split:
                opt_sd, sched_sd = opt.state_dict(), sched.state_dict()
                opt = optim.SGD([nn.Parameter(mg.zeros(1, 1))], lr=1.0)
                sched = CosineAnnealingLR(opt, T_max=10)
                opt.load_state_dict(opt_sd)
                sched.load_state_dict(sched_sd)
            sched.step()
            seen.append(opt.param_groups[0]["lr"])
        return seen

    assert run(4) == run(None)


def test_scheduler_validation() -> None:
    opt = optim.SGD([nn.Parameter(mg.zeros(1, 1))], lr=0.1)
    with pytest.raises(ValueError, match="StepLR: step_size must be at least 1, got 0"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="CosineAnnealingLR: T_max must be at least 1, got 0"):
        CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError, match="expected an Optimizer"):
        StepLR(object(), step_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs 'initial_lr'"):
        StepLR(opt, step_size=2, last_epoch=3)
