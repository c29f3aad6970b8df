"""Activations and losses, as PyTorch's ``torch.nn.functional`` names them.

``linear``, ``cross_entropy`` and ``binary_cross_entropy_with_logits`` are single fused ops:
one node in the graph, fewer passes over memory, and a backward rule that stays stable where
the composition of smaller ops would not.
"""

from __future__ import annotations

import numbers
from typing import Any

from matgrad import autograd as _autograd
from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ShapeError, at_user_site
from matgrad.autograd import Op, record
from matgrad.backends.base import Backend, Data
from matgrad.ops import (
    Pick,
    _binary,
    _fmt,
    _need_float,
    _same_storage,
    _tensor,
    gemm,
    leaky_relu,
    log_softmax,
    logsumexp,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from matgrad.tensor import Tensor2D, _wrap, dtype_name

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "dropout",
    "leaky_relu",
    "linear",
    "log_softmax",
    "logsumexp",
    "mse_loss",
    "nll_loss",
    "one_hot",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(name: str, reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ArgumentError(at_user_site(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"))
    return str(reduction)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------


class Linear(Op):
    """``Y = X @ W.T + b``;  ``dX = G @ W``,  ``dW = G.T @ X``,  ``db = sum_rows(G)``.

    ``W`` is ``(out_features, in_features)`` as in PyTorch; ``b`` is ``(1, out_features)`` and
    the engine sums its broadcast gradient over the batch.
    """

    __slots__ = ()
    name = "linear"

    def forward(self, be: Backend, x: Data, w: Data, b: Data | None = None) -> Data:
        return be.matmul(x, w, False, True, b)

    def backward(self, grad: Tensor2D, *inputs: Tensor2D) -> tuple[Tensor2D | None, ...]:
        x, w = inputs[0], inputs[1]
        need = self.needs_input_grad
        gx = gemm(grad, w) if need[0] else None
        gw = gemm(grad, x, True, False) if need[1] else None
        return (gx, gw, grad) if len(inputs) == 3 else (gx, gw)


def linear(x: Tensor2D, weight: Tensor2D, bias: Tensor2D | None = None) -> Tensor2D:
    """``x @ weight.T + bias`` as one op: ``x`` (m, in), ``weight`` (out, in), ``bias`` (1, out)."""
    x = _tensor("linear", x)
    weight = _tensor("linear", weight)
    if x._backend is not weight._backend or x._data.dtype != weight._data.dtype:
        _same_storage("linear", x, weight)
    (m, k), (n, k2) = x._data.shape, weight._data.shape
    if k != k2:
        raise ShapeError(
            at_user_site(
                f"linear: input is {m}x{k} but weight is {n}x{k2} (out_features x in_features); "
                f"the input's {k} columns must equal in_features {k2}"
            )
        )
    _need_float("linear", x)
    be = x._backend
    if bias is None:
        return record(Linear(), be.matmul(x._data, weight._data, False, True), be, (x, weight))
    bias = _tensor("linear", bias)
    if bias._backend is not be or bias._data.dtype != x._data.dtype:
        _same_storage("linear", x, bias)
    if bias._data.shape != (1, n):
        raise ShapeError(at_user_site(f"linear: bias is {_fmt(bias.shape)} but must be 1x{n} (1 x out_features)"))
    op = Linear()
    return record(op, op.forward(be, x._data, weight._data, bias._data), be, (x, weight, bias))


# ---------------------------------------------------------------------------------------------
# cross-entropy from logits
# ---------------------------------------------------------------------------------------------


def _class_targets(name: str, targets: Any, logits: Tensor2D) -> Any:
    """Class indices as the backend's flat index, checked for length and range."""
    n, c = logits.shape
    be = logits._backend
    if isinstance(targets, Tensor2D):
        if targets._data.dtype in targets._backend.float_types:
            raise ArgumentError(
                at_user_site(
                    f"{name}: targets are {targets.dtype}; class indices must be int64 (use .long()), "
                    f"or pass class probabilities shaped like the logits ({n}x{c})"
                )
            )
        if targets._backend is not be:
            _same_storage(name, logits, targets.to(logits.dtype))
        if targets.shape not in ((n, 1), (1, n)):
            raise ShapeError(
                at_user_site(
                    f"{name}: {n} rows of logits need {n} targets (an {n}x1 column), got {_fmt(targets.shape)}"
                )
            )
        t = targets
    else:
        if hasattr(targets, "ndim") and hasattr(targets, "tolist"):
            values = targets.tolist()
            if getattr(targets, "ndim", 1) == 2:
                values = [v for row in values for v in row]
        elif isinstance(targets, (list, tuple, range)):
            values = list(targets)
        else:
            raise TypeError(
                at_user_site(
                    f"{name}: targets must be an int64 Tensor2D or a list of class indices, "
                    f"got {type(targets).__name__}"
                )
            )
        if len(values) != n:
            raise ShapeError(at_user_site(f"{name}: {n} rows of logits but {len(values)} targets"))
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ArgumentError(at_user_site(f"{name}: targets must be ints, found {v!r}"))
        t = Tensor2D([[v] for v in values], dtype="int64", backend=be)
    index = be.indices(t._data)
    bad = be.bad_index(index, c)
    if bad is not None:
        raise ArgumentError(at_user_site(f"{name}: target {bad} is out of range for {c} classes (valid: 0 to {c - 1})"))
    return index


class CrossEntropy(Op):
    """``L_i = logsumexp(X_i) - X_i[t_i]`` (reduced by mean, sum or none);  ``dX = (softmax(X) - onehot(t)) * G``.

    Fused and stable: the row maximum is subtracted before ``exp``, so logits of 1e4 give exact
    losses, and the gradient never divides by a probability.
    """

    __slots__ = ("n", "reduction", "targets")
    name = "cross_entropy"

    def __init__(self, targets: Any, reduction: str) -> None:
        self.targets = targets
        self.reduction = reduction

    def describe(self) -> str:
        return "cross_entropy" if self.reduction == "mean" else f"cross_entropy({self.reduction})"

    def forward(self, be: Backend, x: Data, keep_probs: bool = True) -> Data:
        losses, probs = be.softmax_xent(x, self.targets)
        if keep_probs:
            self.saved = probs
        if self.reduction == "none":
            return losses
        summed = be.sum(losses, None)
        return summed if self.reduction == "sum" else be.div(summed, float(x.shape[0]))

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = x._backend
        n = x.shape[0]
        if _autograd.is_grad_enabled():  # create_graph: the softmax must itself be differentiable
            onehot = _wrap(be.pick_adjoint(be.full(n, 1, 1.0, x.dtype), n, x.shape[1], None, self.targets), be)
            scale = grad / float(n) if self.reduction == "mean" else grad
            return ((softmax(x, 1) - onehot) * scale,)
        scale = be.div(grad._data, float(n)) if self.reduction == "mean" else grad._data
        return (_wrap(be.softmax_xent_grad(self.saved, self.targets, scale), be),)


def cross_entropy(logits: Tensor2D, targets: Any, reduction: str = "mean") -> Tensor2D:
    """Cross-entropy of ``logits`` (n, c) against ``targets``.

    ``targets`` are class indices (an int64 (n, 1) Tensor2D or a list of n ints) or, as in
    PyTorch, class probabilities shaped like the logits. ``reduction``: ``"mean"`` (1x1),
    ``"sum"`` (1x1) or ``"none"`` (n, 1).
    """
    logits = _tensor("cross_entropy", logits)
    red = _reduction("cross_entropy", reduction)
    _need_float("cross_entropy", logits)
    if isinstance(targets, Tensor2D) and targets._data.dtype in targets._backend.float_types:
        _same_storage("cross_entropy", logits, targets)
        losses = -(targets * log_softmax(logits, 1)).sum(1)
        return losses if red == "none" else losses.sum() if red == "sum" else losses.mean()
    idx = _class_targets("cross_entropy", targets, logits)
    op = CrossEntropy(idx, red)
    be = logits._backend
    recording = _autograd.is_grad_enabled() and logits.requires_grad
    return record(op, op.forward(be, logits._data, keep_probs=recording), be, (logits,))


def nll_loss(log_probs: Tensor2D, targets: Any, reduction: str = "mean") -> Tensor2D:
    """``-log_probs[i, t_i]`` reduced: pair it with ``log_softmax`` (together, ``cross_entropy``)."""
    log_probs = _tensor("nll_loss", log_probs)
    red = _reduction("nll_loss", reduction)
    idx = _class_targets("nll_loss", targets, log_probs)
    op = Pick(None, idx)
    be = log_probs._backend
    picked = record(op, op.forward(be, log_probs._data), be, (log_probs,))
    return -picked if red == "none" else -picked.sum() if red == "sum" else -picked.mean()


def one_hot(targets: Any, num_classes: int, dtype: Any = None, backend: Any = None) -> Tensor2D:
    """An (n, num_classes) matrix with a 1 at ``(i, targets[i])`` and 0 elsewhere."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ArgumentError(at_user_site(f"one_hot: num_classes must be a positive int, got {num_classes!r}"))
    if isinstance(targets, Tensor2D):
        n = targets.nrows * targets.ncols
        if backend is not None:
            targets = targets.to(backend=backend)
        be = targets._backend
    else:
        n = len(targets)
        be = _backends.get(backend)
    dt = dtype_name(dtype)
    shell = _wrap(be.full(n, num_classes, 0.0, dt), be)
    idx = _class_targets("one_hot", targets, shell)
    return _wrap(be.pick_adjoint(be.full(n, 1, 1.0, dt), n, num_classes, None, idx), be)


# ---------------------------------------------------------------------------------------------
# other losses
# ---------------------------------------------------------------------------------------------


def _reduce(losses: Tensor2D, reduction: str) -> Tensor2D:
    return losses if reduction == "none" else losses.sum() if reduction == "sum" else losses.mean()


def mse_loss(input: Tensor2D, target: Tensor2D, reduction: str = "mean") -> Tensor2D:
    """``(input - target)^2`` reduced by mean (default), sum or none."""
    red = _reduction("mse_loss", reduction)
    input, target = _binary("mse_loss", input, target)
    if input.shape != target.shape:
        raise ShapeError(
            at_user_site(f"mse_loss: input is {_fmt(input.shape)} but target is {_fmt(target.shape)}; they must match")
        )
    _need_float("mse_loss", input)
    diff = input - target
    return _reduce(diff * diff, red)


class BCEWithLogits(Op):
    """``L = max(x, 0) - x y + log(1 + exp(-|x|))``;  ``dx = G (sigmoid(x) - y)``,  ``dy = -G x``.

    A fused op on purpose: composed from relu, abs and log1p, the gradient at x = 0 comes out as
    ``-y`` instead of ``0.5 - y`` (relu and abs both have slope 0 there).
    """

    __slots__ = ()
    name = "binary_cross_entropy_with_logits"

    def describe(self) -> str:
        return "bce_with_logits"

    def forward(self, be: Backend, x: Data, y: Data) -> Data:
        soft = be.unary("log1p", be.unary("exp", be.unary("neg", be.unary("abs", x))))
        return be.add(be.sub(be.maximum(x, 0.0), be.mul(x, y)), soft)

    def backward(self, grad: Tensor2D, x: Tensor2D, y: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_x, need_y = self.needs_input_grad
        gx = grad * (sigmoid(x) - y) if need_x else None
        gy = -(grad * x) if need_y else None
        return gx, gy


def binary_cross_entropy_with_logits(input: Tensor2D, target: Tensor2D, reduction: str = "mean") -> Tensor2D:
    """Binary cross-entropy of logits against targets in [0, 1], stable for any logit."""
    red = _reduction("binary_cross_entropy_with_logits", reduction)
    input, target = _binary("binary_cross_entropy_with_logits", input, target)
    if input.shape != target.shape:
        raise ShapeError(
            at_user_site(
                f"binary_cross_entropy_with_logits: input is {_fmt(input.shape)} but target is "
                f"{_fmt(target.shape)}; they must match"
            )
        )
    _need_float("binary_cross_entropy_with_logits", input)
    op = BCEWithLogits()
    be = input._backend
    return _reduce(record(op, op.forward(be, input._data, target._data), be, (input, target)), red)


def dropout(x: Tensor2D, p: float = 0.5, training: bool = True) -> Tensor2D:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)`` (when training)."""
    x = _tensor("dropout", x)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ArgumentError(at_user_site(f"dropout: p must be a probability in [0, 1], got {p!r}"))
    if not training or p == 0.0:
        return x
    _need_float("dropout", x)
    be = x._backend
    if p == 1.0:
        return x * 0.0
    keep = be.compare("ge", be.uniform(x.nrows, x.ncols, 0.0, 1.0, x.dtype), float(p), x.dtype)
    return x * _wrap(be.mul(keep, 1.0 / (1.0 - float(p))), be)
