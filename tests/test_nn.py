"""matgrad.nn: registration, naming, checkpoints, repr, modes, layers, init and the scope contract.

Where PyTorch defines the behaviour (names, repr, state-dict keys, init formulas, losses), the
tests build the same thing in torch and compare.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

import matgrad as mg
from matgrad import functional, nn
from matgrad._errors import ArgumentError, CheckpointError, DTypeError
from matgrad.nn import init
from matgrad.testing import assert_close
from matgrad.viz.scope import current_scope


def _torch() -> Any:
    return pytest.importorskip("torch")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.ReLU()

    def forward(self, x: mg.Tensor2D) -> mg.Tensor2D:
        return self.act(self.fc(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(mg.ones(1, 1))
        self.encoder = nn.Sequential(nn.Linear(2, 3), Block())
        self.head = nn.Linear(4, 1, bias=False)

    def forward(self, x: mg.Tensor2D) -> mg.Tensor2D:
        return self.head(self.encoder(x)) * self.scale


# ---------------------------------------------------------------------------------------------
# registration and naming
# ---------------------------------------------------------------------------------------------


def test_nested_names_follow_registration_order(backend: str) -> None:
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale",
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.fc.weight",
        "encoder.1.fc.bias",
        "head.weight",
    ]
    assert [n for n, _ in net.named_modules()] == [
        "",
        "encoder",
        "encoder.0",
        "encoder.1",
        "encoder.1.fc",
        "encoder.1.act",
        "head",
    ]
    assert [n for n, _ in net.named_children()] == ["encoder", "head"]
    assert list(net.children()) == [net.encoder, net.head]
    assert [type(m).__name__ for m in net.modules()] == [
        "Net",
        "Sequential",
        "Linear",
        "Block",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert net.head.bias is None
    params = list(net.parameters())
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf for p in params)
    assert [p.shape for p in params] == [(1, 1), (3, 2), (1, 3), (4, 3), (1, 4), (1, 4)]
    assert net(mg.randn(5, 2)).shape == (5, 1)


def test_names_match_torch_for_the_same_structure() -> None:
    torch = _torch()
    tnn = torch.nn

    class TBlock(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = tnn.Linear(3, 4)
            self.act = tnn.ReLU()

    class TNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tnn.Parameter(torch.ones(1, 1))
            self.encoder = tnn.Sequential(tnn.Linear(2, 3), TBlock())
            self.head = tnn.Linear(4, 1, bias=False)

    ours, theirs = Net(), TNet()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_shared_parameters_come_once_but_state_dict_names_both() -> None:
    torch = _torch()
    tied = nn.Linear(3, 3)
    model = nn.Sequential(tied, nn.ReLU(), tied)
    assert len(list(model.parameters())) == 2
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert [n for n, _ in model.named_modules()] == ["", "0", "1"]
    ttied = torch.nn.Linear(3, 3)
    tmodel = torch.nn.Sequential(ttied, torch.nn.ReLU(), ttied)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    assert list(model.state_dict()) == list(tmodel.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # a parameter assigned to two attributes of one module is also yielded once
    m = nn.Module()
    m.a = m.b = nn.Parameter(mg.zeros(2, 2))
    assert [n for n, _ in m.named_parameters()] == ["a"]


def test_assignment_registers_replaces_and_deletes() -> None:
    m = nn.Module()
    m.w = nn.Parameter(mg.zeros(2, 2))
    m.sub = nn.Linear(2, 2)
    m.note = "plain attribute"
    assert list(m._parameters) == ["w"] and list(m._modules) == ["sub"] and m.note == "plain attribute"
    m.w = None  # an absent parameter, as a Linear without bias
    assert m.w is None and list(m.named_parameters()) == [("sub.weight", m.sub.weight), ("sub.bias", m.sub.bias)]
    with pytest.raises(TypeError, match="Parameter or None expected"):
        m.w = mg.zeros(2, 2)  # a plain tensor cannot replace a parameter
    with pytest.raises(TypeError, match="Module or None expected"):
        m.sub = 3
    m.sub = nn.ReLU()
    assert isinstance(m.sub, nn.ReLU)
    del m.sub
    assert "sub" not in m._modules
    with pytest.raises(AttributeError, match="'Module' object has no attribute 'sub'"):
        _ = m.sub
    m.register_parameter("extra", nn.Parameter(mg.ones(1, 3)))
    m.register_module("child", nn.Tanh())
    m.add_module("other", None)
    assert list(m._parameters) == ["w", "extra"] and list(m._modules) == ["child", "other"]
    with pytest.raises(KeyError):
        m.register_parameter("a.b", None)
    with pytest.raises(KeyError, match="already exists"):
        m.register_parameter("note", None)
    with pytest.raises(TypeError):
        m.register_parameter("t", mg.zeros(1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.add_module("x", "not a module")  # type: ignore[arg-type]


def test_assigning_before_init_is_an_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(mg.zeros(1, 1))

    with pytest.raises(AttributeError, match=r"before Module\.__init__"):
        Broken()


def test_parameter_shares_storage_with_its_tensor(backend: str) -> None:
    t = mg.Tensor2D([[1.0, 2.0]])
    p = nn.Parameter(t)
    assert p.requires_grad and p.is_leaf and not t.requires_grad
    with mg.no_grad():
        p.add_(mg.Tensor2D([[10.0, 10.0]]))
    assert t.tolist() == [[11.0, 12.0]]
    assert nn.Parameter([[1.0]], requires_grad=False).requires_grad is False
    assert repr(p).startswith("Parameter containing:\nTensor2D(")
    with pytest.raises(DTypeError):
        nn.Parameter(mg.Tensor2D([[1]], dtype="int64"))


def test_forward_is_required() -> None:
    with pytest.raises(NotImplementedError, match=r"Module \[Module\] is missing the required \"forward\""):
        nn.Module()(mg.zeros(1, 1))


def test_apply_visits_children_then_self(backend: str) -> None:
    model = nn.MLP([3, 4, 2])
    seen: list[str] = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Linear", "MLP"]

    def zero_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            init.zeros_(m.weight)

    model.apply(zero_linear)
    assert all(v == 0.0 for row in model[2].weight.tolist() for v in row)


# ---------------------------------------------------------------------------------------------
# state_dict and load_state_dict
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "kwargs"),
    [
        ([784, 128, 10], {}),
        ([5, 4, 3, 2], {"activation": "tanh"}),
        ([5, 4, 3, 2], {"dropout": 0.25}),
        ([6, 3, 2], {"bias": False, "activation": "sigmoid"}),
    ],
)
def test_mlp_state_dict_keys_match_torch_sequential(sizes: list[int], kwargs: dict[str, Any]) -> None:
    torch = _torch()
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[kwargs.get("activation", "relu")]
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b, bias=kwargs.get("bias", True)))
        if i < len(sizes) - 2:
            layers.append(act())
            if kwargs.get("dropout", 0.0) > 0:
                layers.append(torch.nn.Dropout(kwargs["dropout"]))
    theirs = torch.nn.Sequential(*layers)
    ours = nn.MLP(sizes, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, p), (tname, tp) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert name == tname
        assert p.shape == (tuple(tp.shape) if tp.dim() == 2 else (1, tp.shape[0]))


def test_state_dict_shares_storage_and_is_detached(backend: str) -> None:
    model = nn.Linear(3, 2)
    sd = model.state_dict()
    assert isinstance(sd, OrderedDict) and list(sd) == ["weight", "bias"]
    assert not sd["weight"].requires_grad and sd["weight"].is_leaf
    with mg.no_grad():
        model.weight.zero_()
    assert sd["weight"].tolist() == [[0.0] * 3] * 2
    assert model.state_dict(keep_vars=True)["weight"] is model.weight


def test_load_state_dict_round_trip(backend: str) -> None:
    mg.manual_seed(1)
    a = nn.MLP([4, 5, 3])
    mg.manual_seed(2)
    b = nn.MLP([4, 5, 3])
    assert a[0].weight.tolist() != b[0].weight.tolist()
    params_before = list(b.parameters())
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert repr(result) == "<All keys matched successfully>"
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and pa.tolist() == pb.tolist()
    assert all(x is y for x, y in zip(b.parameters(), params_before))
    # copied, not aliased: changing a leaves b alone
    with mg.no_grad():
        a[0].weight.zero_()
    assert b[0].weight.tolist() != a[0].weight.tolist()


def test_load_state_dict_converts_dtype_backend_and_1d_biases(backend: str) -> None:
    other = "python" if backend == "numpy" else "numpy"
    src = nn.Linear(3, 2, dtype="float64", backend=other)
    dst = nn.Linear(3, 2)
    dst.load_state_dict(src.state_dict())
    assert dst.weight.dtype == "float32" and dst.weight.backend == backend
    assert_close(dst.weight, src.weight.to("float32", backend), rtol=0, atol=0)
    # numpy arrays, with PyTorch's 1-D bias
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    dst.load_state_dict({"weight": w, "bias": np.array([0.5, -0.5])})
    assert dst.weight.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert dst.bias.tolist() == [[0.5, -0.5]]


def test_mlp_loads_a_torch_state_dict_and_predicts_the_same(backend: str) -> None:
    torch = _torch()
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ours = nn.MLP([6, 5, 3])
    ours.load_state_dict(theirs.state_dict())  # torch tensors, biases 1-D
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    expected = theirs(torch.from_numpy(x)).detach().numpy()
    assert_close(ours(mg.Tensor2D(x)), expected, rtol=1e-5, atol=1e-6)
    # and back: our state dict loads into torch once biases are flattened as torch stores them
    sd = {
        k: torch.from_numpy(np.array(v.numpy()).reshape(tuple(theirs.state_dict()[k].shape)))
        for k, v in ours.state_dict().items()
    }
    theirs.load_state_dict(sd)


def test_load_state_dict_reports_every_missing_unexpected_and_misshaped_key(backend: str) -> None:
    model = nn.MLP([4, 3, 2])
    before = {k: v.tolist() for k, v in model.state_dict().items()}
    good = {k: v.numpy().copy() for k, v in nn.MLP([4, 3, 2]).state_dict().items()}
    bad = dict(good)
    del bad["2.bias"]
    bad["extra.weight"] = np.zeros((3, 3))
    bad["0.weight"] = np.zeros((4, 4))
    bad["0.bias"] = np.zeros((1, 2))
    with pytest.raises(CheckpointError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    assert "MLP" in message
    assert "missing keys: 2.bias (1x2)" in message
    assert "unexpected keys: extra.weight (3x3)" in message
    assert "0.weight: the checkpoint has 4x4, the model has 3x4" in message
    assert "0.bias: the checkpoint has 1x2, the model has 1x3" in message
    assert isinstance(info.value, ValueError)
    # nothing was loaded
    assert {k: v.tolist() for k, v in model.state_dict().items()} == before


@pytest.mark.parametrize("which", ["missing", "unexpected", "misshaped"])
def test_load_state_dict_each_error_alone(which: str) -> None:
    model = nn.Linear(3, 2)
    sd: dict[str, Any] = {"weight": np.ones((2, 3)), "bias": np.ones((1, 2))}
    expected = {
        "missing": "missing keys: bias (1x2)",
        "unexpected": "unexpected keys: scale (1x1)",
        "misshaped": "weight: the checkpoint has 3x2, the model has 2x3",
    }[which]
    if which == "missing":
        del sd["bias"]
    elif which == "unexpected":
        sd["scale"] = np.ones((1, 1))
    else:
        sd["weight"] = np.ones((3, 2))
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        model.load_state_dict(sd)


def test_load_state_dict_not_strict(backend: str) -> None:
    model = nn.MLP([4, 3, 2])
    sd = {k: v.numpy().copy() for k, v in nn.MLP([4, 3, 2]).state_dict().items()}
    del sd["2.weight"]
    sd["head.weight"] = np.zeros((2, 2))
    result = model.load_state_dict(sd, strict=False)
    assert result == nn.IncompatibleKeys(["2.weight"], ["head.weight"])
    assert result.missing_keys == ["2.weight"] and result.unexpected_keys == ["head.weight"]
    assert_close(model[0].weight, sd["0.weight"], rtol=0, atol=0)
    # a wrong shape is an error even when not strict, as in PyTorch
    sd["0.weight"] = np.zeros((2, 2))
    with pytest.raises(CheckpointError, match=r"0\.weight: the checkpoint has 2x2, the model has 3x4"):
        model.load_state_dict(sd, strict=False)


def test_load_state_dict_rejects_non_mappings_and_non_arrays() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="dict-like"):
        model.load_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="entry 'weight' is a str"):
        model.load_state_dict({"weight": "nope", "bias": np.zeros((1, 2))})


def test_deepcopy_and_pickle_copy_values_and_keep_sharing(backend: str) -> None:
    tied = nn.Linear(2, 2)
    model = nn.Sequential(tied, nn.Tanh(), tied, nn.Linear(2, 1))
    model(mg.randn(3, 2)).sum().backward()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert list(clone.state_dict()) == list(model.state_dict())
        for (_, a), (_, b) in zip(clone.named_parameters(), model.named_parameters()):
            assert a is not b and type(a) is nn.Parameter and a.requires_grad and a.grad is None
            assert a.tolist() == b.tolist() and a.backend == b.backend and a.dtype == b.dtype
        assert clone[0] is clone[2] and clone[0].weight is clone[2].weight
        with mg.no_grad():
            clone[3].weight.zero_()
        assert model[3].weight.tolist() != clone[3].weight.tolist()


def test_get_submodule() -> None:
    net = Net()
    assert net.get_submodule("") is net
    assert net.get_submodule("encoder.1.fc") is net.encoder[1].fc
    with pytest.raises(AttributeError, match="has no submodule 'fc'"):
        net.get_submodule("encoder.0.fc")


# ---------------------------------------------------------------------------------------------
# repr
# ---------------------------------------------------------------------------------------------


def test_repr_equals_torch_for_the_same_structure() -> None:
    torch = _torch()
    t = torch.nn
    ours = nn.Sequential(
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Sequential(nn.Linear(128, 64, bias=False), nn.LeakyReLU(0.2), nn.Sigmoid()),
        nn.Tanh(),
        nn.Identity(),
        nn.LeakyReLU(),
        nn.Linear(64, 10),
    )
    theirs = t.Sequential(
        t.Linear(784, 128),
        t.ReLU(),
        t.Sequential(t.Linear(128, 64, bias=False), t.LeakyReLU(0.2), t.Sigmoid()),
        t.Tanh(),
        t.Identity(),
        t.LeakyReLU(),
        t.Linear(64, 10),
    )
    assert repr(ours) == repr(theirs)
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    tnamed = t.Sequential(OrderedDict([("fc", t.Linear(2, 3)), ("act", t.ReLU())]))
    assert repr(named) == repr(tnamed)
    assert repr(nn.CrossEntropyLoss()) == repr(t.CrossEntropyLoss())
    assert repr(nn.MSELoss()) == repr(t.MSELoss())
    mlp = nn.MLP([784, 128, 10])
    assert repr(mlp).replace("MLP(", "Sequential(", 1) == repr(
        t.Sequential(t.Linear(784, 128), t.ReLU(), t.Linear(128, 10))
    )


def test_repr_of_custom_module_with_multiline_extra_repr() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(1, 1)

        def extra_repr(self) -> str:
            return "alpha=1\nbeta=2"

    assert repr(Custom()) == (
        "Custom(\n  alpha=1\n  beta=2\n  (inner): Linear(in_features=1, out_features=1, bias=True)\n)"
    )
    assert repr(nn.Dropout(0.3)) == "Dropout(p=0.3)"
    assert repr(nn.Softmax(axis=0)) == "Softmax(axis=0)"
    assert nn.Linear(784, 128)._get_name() == "Linear"


# ---------------------------------------------------------------------------------------------
# modes, zero_grad, conversion
# ---------------------------------------------------------------------------------------------


def test_train_and_eval_propagate() -> None:
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.encoder.train()
    assert not net.training and all(m.training for m in net.encoder.modules()) and not net.head.training
    assert net.train() is net and all(m.training for m in net.modules())
    with pytest.raises(ValueError, match="bool"):
        net.train("no")  # type: ignore[arg-type]


def test_zero_grad(backend: str) -> None:
    model = nn.Linear(3, 2)
    model(mg.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert [p.grad.tolist() for p in model.parameters() if p.grad is not None] == [[[0.0] * 3] * 2, [[0.0] * 2]]
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_converts_parameters_in_place(backend: str) -> None:
    other = "python" if backend == "numpy" else "numpy"
    model = nn.MLP([3, 4, 2])
    x = mg.randn(2, 3)
    expected = model(x).tolist()
    model(x).sum().backward()
    params = list(model.parameters())
    assert model.to("float64", other) is model
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert all(p.dtype == "float64" and p.backend == other and p.requires_grad for p in model.parameters())
    assert all(p.grad is not None and p.grad.dtype == "float64" and p.grad.backend == other for p in model.parameters())
    assert_close(model(x.to("float64", other)), expected, rtol=1e-6, atol=1e-7)
    assert model.float() is model and model[0].weight.dtype == "float32"
    with pytest.raises(DTypeError):
        model.to("int64")


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------


def test_linear_forward_equals_the_hand_computation(backend: str) -> None:
    layer = nn.Linear(2, 3)
    layer.load_state_dict(
        {"weight": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "bias": np.array([[0.5, -1.0, 2.0]])}
    )
    x = mg.Tensor2D([[1.0, -1.0], [2.0, 0.5]])
    # x @ W.T + b:  [1-2, 3-4, 5-6] + b  and  [2+1, 6+2, 10+3] + b
    assert layer(x).tolist() == [[-0.5, -2.0, 1.0], [3.5, 7.0, 15.0]]
    no_bias = nn.Linear(2, 3, bias=False)
    no_bias.load_state_dict({"weight": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])})
    assert no_bias(x).tolist() == [[-1.0, -1.0, -1.0], [3.0, 8.0, 13.0]]
    assert list(no_bias.state_dict()) == ["weight"] and no_bias.bias is None
    assert layer(x).op is not None and layer(x).op.name == "linear"


def test_linear_gradients_by_hand(backend: str) -> None:
    layer = nn.Linear(2, 1)
    layer.load_state_dict({"weight": np.array([[2.0, -1.0]]), "bias": np.array([[0.5]])})
    x = mg.Tensor2D([[1.0, 3.0], [-2.0, 4.0]])
    layer(x).sum().backward()
    # d/dW sum(x W^T + b) = column sums of x;  d/db = number of rows
    assert layer.weight.grad is not None and layer.weight.grad.tolist() == [[-1.0, 7.0]]
    assert layer.bias is not None and layer.bias.grad is not None and layer.bias.grad.tolist() == [[2.0]]


def test_linear_options_and_validation(backend: str) -> None:
    layer = nn.Linear(3, 2, dtype="float64", backend="python")
    assert layer.weight.dtype == "float64" and layer.weight.backend == "python" and layer.weight.shape == (2, 3)
    assert layer.bias is not None and layer.bias.shape == (1, 2)
    assert layer.extra_repr() == "in_features=3, out_features=2, bias=True"
    with pytest.raises(ArgumentError, match="in_features must be at least 1, got 0"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="out_features must be an int"):
        nn.Linear(3, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        nn.Linear(True, 2)
    with pytest.raises(ValueError, match="input is 4x2 but weight is 2x3"):
        nn.Linear(3, 2)(mg.zeros(4, 2))


def test_activation_modules_match_functional(backend: str) -> None:
    x = mg.Tensor2D([[-2.0, -0.5, 0.0, 1.5], [3.0, -1.0, 0.25, -4.0]])
    assert nn.ReLU()(x).tolist() == [[0.0, 0.0, 0.0, 1.5], [3.0, 0.0, 0.25, 0.0]]
    assert nn.LeakyReLU(0.5)(x).tolist() == [[-1.0, -0.25, 0.0, 1.5], [3.0, -0.5, 0.25, -2.0]]
    assert nn.Identity(54, unused="ignored")(x) is x
    assert_close(nn.Sigmoid()(x), functional.sigmoid(x), rtol=0, atol=0)
    assert_close(nn.Tanh()(x), functional.tanh(x), rtol=0, atol=0)
    assert_close(nn.Softmax()(x), functional.softmax(x, 1), rtol=0, atol=0)
    assert_close(nn.Softmax(dim=0)(x), functional.softmax(x, 0), rtol=0, atol=0)
    assert_close(nn.LogSoftmax(axis=0)(x), functional.log_softmax(x, 0), rtol=0, atol=0)
    assert nn.LeakyReLU().extra_repr() == "negative_slope=0.01"
    with pytest.raises(ArgumentError, match="axis must be 0 or 1"):
        nn.Softmax(axis=2)


def test_losses_match_torch(backend: str) -> None:
    torch = _torch()
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    labels = [0, 3, 1, 1, 2]
    y = rng.standard_normal((5, 4)).astype(np.float32)
    p = rng.random((5, 4)).astype(np.float32)
    x, tx = mg.Tensor2D(logits), torch.from_numpy(logits)
    for reduction in ("mean", "sum"):
        ce = nn.CrossEntropyLoss(reduction=reduction)(x, labels).item()
        assert ce == pytest.approx(
            torch.nn.CrossEntropyLoss(reduction=reduction)(tx, torch.tensor(labels)).item(), rel=1e-5
        )
        mse = nn.MSELoss(reduction=reduction)(x, mg.Tensor2D(y)).item()
        assert mse == pytest.approx(torch.nn.MSELoss(reduction=reduction)(tx, torch.from_numpy(y)).item(), rel=1e-5)
        bce = nn.BCEWithLogitsLoss(reduction=reduction)(x, mg.Tensor2D(p)).item()
        assert bce == pytest.approx(
            torch.nn.BCEWithLogitsLoss(reduction=reduction)(tx, torch.from_numpy(p)).item(), rel=1e-5
        )
    assert nn.CrossEntropyLoss(reduction="none")(x, labels).shape == (5, 1)
    with pytest.raises(ArgumentError, match="CrossEntropyLoss: reduction must be"):
        nn.CrossEntropyLoss(reduction="avg")


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def test_dropout_is_the_identity_in_eval_mode(backend: str) -> None:
    drop = nn.Dropout(0.5).eval()
    x = mg.randn(6, 7)
    assert drop(x).tolist() == x.tolist()
    assert nn.Dropout(0.0)(x).tolist() == x.tolist()  # p = 0 is the identity in training too


def test_dropout_in_training_zeroes_about_p_and_scales_the_rest(backend: str) -> None:
    p = 0.3
    drop = nn.Dropout(p)
    out = drop(mg.ones(200, 100)).numpy()
    zero_fraction = float((out == 0).mean())
    assert abs(zero_fraction - p) < 0.015  # 20,000 draws: the standard error is 0.003
    kept = out[out != 0]
    np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6)
    # reproducible from the seed
    mg.manual_seed(5)
    a = nn.Dropout(0.5)(mg.ones(4, 5)).tolist()
    mg.manual_seed(5)
    assert nn.Dropout(0.5)(mg.ones(4, 5)).tolist() == a


def test_dropout_gradient_flows_only_through_kept_units(backend: str) -> None:
    p = 0.4
    x = mg.randn(8, 9, requires_grad=True)
    upstream = mg.uniform(8, 9, 0.5, 1.5)
    y = nn.Dropout(p)(x)
    (y * upstream).sum().backward()
    assert x.grad is not None
    kept = y.numpy() != 0
    assert 0 < kept.sum() < kept.size
    expected = np.where(kept, upstream.numpy() / (1 - p), 0.0)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


def test_dropout_validation() -> None:
    for bad in (-0.1, 1.5):  # a wrong value
        with pytest.raises(ArgumentError, match="Dropout: p must be a probability in"):
            nn.Dropout(bad)
    for bad in (True, "0.5"):  # a wrong type
        with pytest.raises(TypeError, match="Dropout: p must be a probability in"):
            nn.Dropout(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Sequential and MLP
# ---------------------------------------------------------------------------------------------


def test_sequential_container_protocol(backend: str) -> None:
    torch = _torch()
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c]
    assert seq[0] is a and seq[-1] is c and seq[1] is b
    head = seq[1:]
    assert isinstance(head, nn.Sequential) and list(head) == [b, c]
    tseq = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert list(head.state_dict()) == list(tseq[1:].state_dict()) == ["2.weight", "2.bias"]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    with pytest.raises(IndexError):
        seq[-4]
    x = mg.randn(4, 2)
    assert_close(seq(x), c(b(a(x))), rtol=0, atol=0)
    d = nn.Tanh()
    assert seq.append(d) is seq and seq[3] is d and list(seq._modules) == ["0", "1", "2", "3"]
    e = nn.Sigmoid()
    seq[1] = e
    assert seq[1] is e
    del seq[1]
    assert list(seq._modules) == ["0", "1", "2"] and list(seq) == [a, c, d]
    with pytest.raises(TypeError, match="argument 1 is a int"):
        nn.Sequential(a, 3)  # type: ignore[arg-type]


def test_mlp_layers_and_validation(backend: str) -> None:
    mlp = nn.MLP([4, 8, 6, 2], activation="tanh", dropout=0.1)
    assert [type(m).__name__ for m in mlp] == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)] == [(4, 8), (8, 6), (6, 2)]
    assert [type(m).__name__ for m in nn.MLP([3, 2])] == ["Linear"]
    assert [type(m).__name__ for m in nn.MLP([3, 5, 2], activation=nn.Sigmoid)] == ["Linear", "Sigmoid", "Linear"]
    assert [type(m).__name__ for m in nn.MLP([3, 5, 2], activation="leaky_relu")][1] == "LeakyReLU"
    assert [type(m).__name__ for m in nn.MLP([3, 5, 2], activation="identity")][1] == "Identity"
    f64 = nn.MLP([3, 2], dtype="float64", backend="python", bias=False)
    assert f64[0].weight.dtype == "float64" and f64[0].weight.backend == "python" and f64[0].bias is None
    assert nn.MLP([784, 128, 10])(mg.zeros(2, 784)).shape == (2, 10)
    with pytest.raises(ArgumentError, match="at least an input and an output size"):
        nn.MLP([784])
    with pytest.raises(ArgumentError, match=r"sizes\[1\] must be at least 1, got 0"):
        nn.MLP([784, 0, 10])
    with pytest.raises(TypeError, match=r"sizes\[1\] must be an int"):
        nn.MLP([784, 12.5, 10])  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match="unknown activation 'gelu'"):
        nn.MLP([4, 2], activation="gelu")
    with pytest.raises(TypeError, match=re.escape("not nn.ReLU()")):
        nn.MLP([4, 2], activation=nn.ReLU())  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="dropout must be a probability"):
        nn.MLP([4, 3, 2], dropout=1.0)


def test_mlp_cross_entropy_gradcheck(backend: str) -> None:
    model = nn.MLP([3, 4, 3], activation="tanh", dtype="float64")
    names = [n for n, _ in model.named_parameters()]
    x = mg.randn(5, 3, dtype="float64")
    targets = [0, 2, 1, 1, 0]

    def loss(*params: mg.Tensor2D) -> mg.Tensor2D:
        owners = [
            (model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model, n.rsplit(".", 1)[-1]) for n in names
        ]
        saved = [owner._parameters[attr] for owner, attr in owners]
        try:  # run the model's own forward on the tensors gradcheck perturbs
            for (owner, attr), t in zip(owners, params):
                owner._parameters[attr] = t  # type: ignore[assignment]
            return nn.CrossEntropyLoss()(model(x), targets)
        finally:
            for (owner, attr), p in zip(owners, saved):
                owner._parameters[attr] = p

    assert mg.gradcheck(loss, list(model.parameters()))
    # and the model's own backward agrees with the gradients gradcheck checked
    nn.CrossEntropyLoss()(model(x), targets).backward()
    analytical = mg.grad(loss(*model.parameters()), list(model.parameters()))
    for p, g in zip(model.parameters(), analytical):
        assert p.grad is not None and g is not None
        assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the scope contract (diagrams group ops by module)
# ---------------------------------------------------------------------------------------------


def test_ops_record_the_stack_of_modules(backend: str) -> None:
    inner = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))
    model = nn.Sequential(nn.Linear(3, 4), inner)
    assert current_scope() == ()
    out = model(mg.randn(5, 3))
    assert current_scope() == ()
    last = out.op
    assert last is not None and last.scope == (model, inner, inner[1])
    relu = out.inputs[0].op
    assert relu is not None and relu.scope == (model, inner, inner[0])
    first = out.inputs[0].inputs[0].op
    assert first is not None and first.scope == (model, model[0])
    outside = out.sum()
    assert outside.op is not None and outside.op.scope == ()


def test_scope_is_restored_when_forward_raises(backend: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError):
        model(mg.zeros(2, 5))
    assert current_scope() == ()


# ---------------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------------


def test_linear_default_init_is_uniform_with_torch_bound(backend: str) -> None:
    layer = nn.Linear(784, 128)
    bound = 1 / math.sqrt(784)  # = 1/28: kaiming_uniform(a=sqrt(5)) gives gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    w = layer.weight.numpy()
    assert np.abs(w).max() <= np.float32(bound)
    assert np.abs(w).max() > 0.999 * bound  # 100,352 draws reach the edge
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert abs(w.mean()) < 0.01 * bound
    assert layer.bias is not None and np.abs(layer.bias.numpy()).max() <= np.float32(bound)


@pytest.mark.parametrize(
    ("fn", "kwargs", "shape", "expected_bound"),
    [
        (init.kaiming_uniform_, {"nonlinearity": "relu"}, (300, 400), math.sqrt(6 / 400)),
        (init.kaiming_uniform_, {"mode": "fan_out", "nonlinearity": "relu"}, (300, 400), math.sqrt(6 / 300)),
        (init.kaiming_uniform_, {"a": 0.2}, (300, 400), math.sqrt(2 / 1.04) * math.sqrt(3 / 400)),
        (init.xavier_uniform_, {}, (300, 400), math.sqrt(6 / 700)),
        (init.xavier_uniform_, {"gain": 2.0}, (300, 400), 2 * math.sqrt(6 / 700)),
        (init.uniform_, {"a": -0.5, "b": 0.5}, (300, 400), 0.5),
    ],
)
def test_uniform_initialisers_bound_and_spread(
    backend: str, fn: Any, kwargs: dict[str, Any], shape: tuple[int, int], expected_bound: float
) -> None:
    w = mg.zeros(*shape)
    assert fn(w, **kwargs) is w
    values = w.numpy()
    assert np.abs(values).max() <= np.float32(expected_bound) * (1 + 1e-7)
    assert np.abs(values).max() > 0.999 * expected_bound
    assert abs(values.std() / (expected_bound / math.sqrt(3)) - 1) < 0.01


@pytest.mark.parametrize(
    ("fn", "kwargs", "expected_std"),
    [
        (init.kaiming_normal_, {"nonlinearity": "relu"}, math.sqrt(2 / 400)),
        (init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "tanh"}, (5 / 3) / math.sqrt(300)),
        (init.xavier_normal_, {}, math.sqrt(2 / 700)),
        (init.normal_, {"mean": 0.0, "std": 0.3}, 0.3),
    ],
)
def test_normal_initialisers_std(backend: str, fn: Any, kwargs: dict[str, Any], expected_std: float) -> None:
    w = mg.zeros(300, 400)
    fn(w, **kwargs)
    values = w.numpy()
    assert abs(values.std() / expected_std - 1) < 0.01  # 120,000 draws: the relative standard error is 0.2%
    assert abs(values.mean()) < 0.01 * expected_std * 10


def test_init_formulas_match_torch() -> None:
    torch = _torch()
    for name in ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"):
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-15)
    assert init.calculate_gain("identity") == 1.0  # matgrad's name for MLP(activation="identity")
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    # torch's own draws reach the same bound (its largest draw is within 0.1% of it)
    tw = torch.empty(300, 400)
    torch.manual_seed(0)
    torch.nn.init.kaiming_uniform_(tw, a=math.sqrt(5))
    w = init.kaiming_uniform_(mg.zeros(300, 400), a=math.sqrt(5))
    assert float(tw.abs().max()) == pytest.approx(float(np.abs(w.numpy()).max()), rel=2e-3)


def test_constant_initialisers_in_place_on_parameters(backend: str) -> None:
    layer = nn.Linear(3, 2)
    view = layer.state_dict()["weight"]
    init.ones_(layer.weight)  # under grad mode: init uses no_grad itself
    assert view.tolist() == [[1.0] * 3] * 2
    init.constant_(layer.weight, 0.25)
    assert layer.weight.tolist() == [[0.25] * 3] * 2
    assert layer.bias is not None
    init.zeros_(layer.bias)
    assert layer.bias.tolist() == [[0.0, 0.0]]
    assert layer.weight.is_leaf and layer.weight.requires_grad


def test_init_is_reproducible_from_the_seed(backend: str) -> None:
    mg.manual_seed(7)
    a = nn.MLP([5, 4, 3]).state_dict()
    mg.manual_seed(7)
    b = nn.MLP([5, 4, 3]).state_dict()
    assert all(a[k].tolist() == b[k].tolist() for k in a)
    mg.manual_seed(8)
    assert nn.MLP([5, 4, 3]).state_dict()["0.weight"].tolist() != a["0.weight"].tolist()


def test_init_validation() -> None:
    w = mg.zeros(3, 3)
    with pytest.raises(ArgumentError, match="mode 'fan_avg' not supported"):
        init.kaiming_uniform_(w, mode="fan_avg")
    with pytest.raises(ArgumentError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ArgumentError, match="needs a <= b"):
        init.uniform_(w, 1.0, 0.0)
    with pytest.raises(DTypeError):
        init.normal_(mg.zeros(2, 2, dtype="int64"))
    with pytest.raises(TypeError, match="expected a Tensor2D"):
        init.xavier_uniform_(np.zeros((2, 2)))  # type: ignore[arg-type]
