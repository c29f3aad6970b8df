"""Activations and losses, as PyTorch's ``torch.nn.functional`` names them.

``linear``, ``cross_entropy`` and ``binary_cross_entropy_with_logits`` are single fused ops:
one node in the graph, fewer passes over memory, and a backward rule that stays stable where
the composition of smaller ops would not.
"""

from __future__ import annotations

import numbers
from typing import Any

from matgrad import _checks
from matgrad import backends as _backends
from matgrad._checks import fmt as _fmt
from matgrad._errors import ArgumentError, ArgumentTypeError, BackendError, ShapeError
from matgrad.autograd.grad_mode import GRAD
from matgrad.autograd.grad_mode import state as _state
from matgrad.autograd.graph import Op
from matgrad.backends.base import Backend, Data
from matgrad.conv import avg_pool2d, conv2d, fold, max_pool2d, unfold
from matgrad.ops import (
    Pick,
    Where,
    gemm,
    leaky_relu,
    log_softmax,
    logsumexp,
    relu,
    sigmoid,
    softmax,
    tanh,
    where,
)
from matgrad.tensor import Tensor2D, _wrap, check_size, dtype_name

__all__ = [
    "avg_pool2d",
    "binary_cross_entropy_with_logits",
    "conv2d",
    "cross_entropy",
    "dropout",
    "fold",
    "leaky_relu",
    "linear",
    "log_softmax",
    "logsumexp",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "one_hot",
    "relu",
    "sigmoid",
    "softmax",
    "softplus",
    "tanh",
    "unfold",
]

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(name: str, reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ArgumentError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return str(reduction)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------


class Linear(Op):
    """``Y = X @ W.T + b``;  ``dX = G @ W``,  ``dW = G.T @ X``,  ``db = sum_rows(G)``.

    ``W`` is ``(out_features, in_features)`` as in PyTorch; ``b`` is ``(1, out_features)`` and
    the engine sums its broadcast gradient over the batch.
    """

    arity = -1
    saves = (0, 1)

    def check(self, x: Tensor2D, w: Tensor2D, *bias: Tensor2D) -> None:
        (m, k), (n, k2) = x._data.shape, w._data.shape
        if k != k2:
            raise ShapeError(
                f"linear: input is {m}x{k} but weight is {n}x{k2} (out_features x in_features); "
                f"the input's {k} columns must equal in_features {k2}"
            )
        if bias and bias[0]._data.shape != (1, n):
            raise ShapeError(f"linear: bias is {_fmt(bias[0].shape)} but must be 1x{n} (1 x out_features)")

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
    if bias is None:
        if not isinstance(x, Tensor2D) or not isinstance(weight, Tensor2D):
            _checks.tensor("linear", x), _checks.tensor("linear", weight)
        return Linear()(x, weight)
    if not isinstance(x, Tensor2D) or not isinstance(weight, Tensor2D) or not isinstance(bias, Tensor2D):
        _checks.tensor("linear", x), _checks.tensor("linear", weight), _checks.tensor("linear", bias)
    return Linear()(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# cross-entropy from logits
# ---------------------------------------------------------------------------------------------


def _class_targets(name: str, targets: Any, logits: Tensor2D) -> Any:
    """Class indices as the backend's flat index, checked for length and range."""
    be = logits._backend
    column = _target_column(name, targets, *logits.shape, be)
    index = be.indices(column)
    _check_range(name, index, be, logits.ncols)
    return index


def _check_range(name: str, index: Any, be: Backend, c: int) -> None:
    bad = be.bad_index(index, c)
    if bad is not None:
        raise ArgumentError(f"{name}: target {bad} is out of range for {c} classes (valid: 0 to {c - 1})")


def _target_column(name: str, targets: Any, n: int, c: int, be: Backend) -> Any:
    """Class indices for ``n`` rows of ``c`` classes as a native int64 (n, 1) matrix on ``be``.

    Checked for type and length; lists are also checked for range (a tensor's range is checked
    by the caller, or by the fused kernel as it gathers). Always new storage, never the caller's.
    """
    wanted = f"{n} rows of {n}x{c} logits need {n} class indices (an int64 {n}x1 column or a list of {n} ints)"
    if isinstance(targets, Tensor2D):
        if targets._data.dtype in targets._backend.float_types:
            raise ShapeError(
                f"{name}: floating targets are class probabilities and must be shaped like the {n}x{c} "
                f"logits, got {_fmt(targets.shape)}; class indices must be an int64 {n}x1 column (.long())"
            )
        if targets._backend is not be:
            where = "devices" if targets.backend == be.name else "backends"
            raise BackendError(
                f"{name}: targets and logits live on different {where} ({targets._backend.label} and {be.label}); "
                f"move the targets with .to(backend={be.spec!r})"
            )
        shape = targets._data.shape
        # A copy: the loss's backward reads the classes, and the caller may refill the tensor in
        # place (a reused batch buffer) before calling backward.
        if shape == (n, 1):
            return be.copy(targets._data)
        if shape != (1, n):
            raise ShapeError(f"{name}: {wanted}, got {_fmt(shape)}")
        return be.transpose(targets._data)
    if hasattr(targets, "ndim") and hasattr(targets, "tolist"):
        shape = tuple(targets.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and 1 in shape)):
            raise ShapeError(f"{name}: {wanted}, got an array of shape {shape}")
        kind = getattr(targets.dtype, "kind", None)
        if kind in ("i", "u"):  # a NumPy array of ints: no per-element Python loop
            if targets.size != n:
                raise ShapeError(f"{name}: {wanted}, got {targets.size}")
            column = be.from_array(targets.reshape(n, 1), "int64")
            _check_range(name, be.indices(column), be, c)
            return column
        if kind is not None:
            raise ArgumentTypeError(f"{name}: class indices must be integers, got an array of {targets.dtype}")
        values = targets.reshape(-1).tolist()
    elif isinstance(targets, (list, tuple, range)):
        values = list(targets)
    else:
        raise ArgumentTypeError(
            f"{name}: targets must be an int64 Tensor2D or a list of ints, got {type(targets).__name__}"
        )
    if not set(map(type, values)) <= {int}:  # the common case is checked at C speed
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ArgumentTypeError(f"{name}: class indices must be ints, found {type(v).__name__} {v!r:.40}")
        values = [int(v) for v in values]
    if len(values) != n:
        raise ShapeError(f"{name}: {wanted}, got {len(values)}")
    if values and (min(values) < 0 or max(values) >= c):
        bad = next(v for v in values if not 0 <= v < c)
        raise ArgumentError(f"{name}: target {bad} is out of range for {c} classes (valid: 0 to {c - 1})")
    return be.reshape(be.from_rows([values], "int64"), n, 1)


class CrossEntropy(Op):
    """``L_i = logsumexp(X_i) - X_i[t_i]`` (reduced by mean, sum or none);  ``dX = (softmax(X) - onehot(t)) * G``.

    Fused and stable: the row maximum is subtracted before ``exp``, so logits of 1e4 give exact
    losses, and the gradient never divides by a probability.
    """

    __slots__ = ("reduction", "targets")
    name = "cross_entropy"
    saves = (0,)

    def __init__(self, targets: Any, reduction: str) -> None:
        self.targets = targets
        self.reduction = reduction

    def describe(self) -> str:
        return "cross_entropy" if self.reduction == "mean" else f"cross_entropy({self.reduction})"

    def forward(self, be: Backend, x: Data) -> Data:
        try:
            losses, probs = be.softmax_xent(x, self.targets)
        except IndexError:  # the kernel checks the range as it gathers; find the culprit for the message
            _check_range("cross_entropy", be.indices(self.targets), be, x.shape[1])
            raise
        self.saved = probs
        if self.reduction == "none":
            return losses
        summed = be.sum(losses, None)
        return summed if self.reduction == "sum" else be.div(summed, float(x.shape[0]))

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = x._backend
        n = x.shape[0]
        if _state.mode & GRAD:  # create_graph: the softmax must itself be differentiable
            index = be.indices(self.targets)
            onehot = _wrap(be.pick_adjoint(be.full(n, 1, 1.0, x.dtype), n, x.shape[1], None, index), be)
            return ((softmax(x, 1) - onehot) * (grad / float(n) if self.reduction == "mean" else grad),)
        scale: Any = grad._data
        if self.reduction != "none":  # a 1x1 upstream gradient: pass it as a number, one broadcast less
            scale = be.tolist(scale)[0][0] / (n if self.reduction == "mean" else 1)
        return (_wrap(be.softmax_xent_grad(self.saved, self.targets, scale), be),)


class SoftCrossEntropy(Op):
    """``L_i = -sum_j T_ij log_softmax(X)_ij`` (reduced by mean, sum or none), for class probabilities ``T``;
    ``dX = G * (softmax(X) * sum_j T_ij - T)``,  ``dT = -G * log_softmax(X)``.

    Fused on purpose: a target of exactly 0 adds nothing to the loss even where its logit is
    -inf (0 * -inf would be NaN), yet its gradient is still ``-log_softmax(X)`` (a guard written
    as ``where(T == 0, 0, log_softmax(X))`` would cut that path to 0).
    """

    __slots__ = ("reduction",)
    name = "cross_entropy"
    arity, broadcast = 2, True
    saves = (0, 1)

    def __init__(self, reduction: str) -> None:
        self.reduction = reduction

    def describe(self) -> str:
        return "cross_entropy(soft)" if self.reduction == "mean" else f"cross_entropy(soft, {self.reduction})"

    def check(self, x: Tensor2D, t: Tensor2D) -> None:
        if x.shape != t.shape:
            raise ShapeError(
                f"cross_entropy: class-probability targets must be shaped like the {_fmt(x.shape)} logits, "
                f"got {_fmt(t.shape)}"
            )

    def forward(self, be: Backend, x: Data, t: Data) -> Data:
        top = be.max(x, 1)
        top = be.where(be.compare("eq", top, -float("inf")), 0.0, top)
        shifted = be.sub(x, top)
        logp = be.sub(shifted, be.unary("log", be.sum(be.unary("exp", shifted), 1)))
        terms = be.mul(t, be.where(be.compare("eq", t, 0.0), 0.0, logp))  # 0 * log 0 is 0 here, not NaN
        losses = be.unary("neg", be.sum(terms, 1))
        if self.reduction == "none":
            return losses
        summed = be.sum(losses, None)
        return summed if self.reduction == "sum" else be.div(summed, float(x.shape[0]))

    def backward(self, grad: Tensor2D, x: Tensor2D, t: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_x, need_t = self.needs_input_grad
        g = grad / float(x.nrows) if self.reduction == "mean" else grad
        gx = g * (softmax(x, 1) * t.sum(1) - t) if need_x else None
        gt = -(g * log_softmax(x, 1)) if need_t else None
        return gx, gt


def cross_entropy(logits: Tensor2D, targets: Any, reduction: str = "mean") -> Tensor2D:
    """Cross-entropy of ``logits`` (n, c) against ``targets``.

    ``targets`` are class indices (an int64 (n, 1) Tensor2D or a list of n ints) or, as in
    PyTorch, class probabilities shaped like the logits. ``reduction``: ``"mean"`` (1x1),
    ``"sum"`` (1x1) or ``"none"`` (n, 1).
    """
    if not isinstance(logits, Tensor2D):
        logits = _checks.tensor("cross_entropy", logits)
    red = reduction if reduction == "mean" else _reduction("cross_entropy", reduction)
    be = logits._backend
    if logits._data.dtype not in be.float_types:
        _checks.need_float("cross_entropy", logits)
    soft = isinstance(targets, Tensor2D) and targets._data.dtype in targets._backend.float_types
    if soft and targets.shape == logits.shape:  # class probabilities (soft labels), as PyTorch allows
        return SoftCrossEntropy(red)(logits, targets)
    return CrossEntropy(_target_column("cross_entropy", targets, *logits.shape, be), red)(logits)


def nll_loss(log_probs: Tensor2D, targets: Any, reduction: str = "mean") -> Tensor2D:
    """``-log_probs[i, t_i]`` reduced: pair it with ``log_softmax`` (together, ``cross_entropy``)."""
    log_probs = _checks.tensor("nll_loss", log_probs)
    red = _reduction("nll_loss", reduction)
    picked = Pick(None, _class_targets("nll_loss", targets, log_probs))(log_probs)
    return -picked if red == "none" else -picked.sum() if red == "sum" else -picked.mean()


def one_hot(targets: Any, num_classes: int, dtype: Any = None, backend: Any = None) -> Tensor2D:
    """An (n, num_classes) matrix with a 1 at ``(i, targets[i])`` and 0 elsewhere."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ArgumentTypeError(f"one_hot: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ArgumentError(f"one_hot: num_classes must be positive, got {num_classes}")
    if isinstance(targets, Tensor2D):
        n = targets.nrows * targets.ncols
        if targets.nrows != 1 and targets.ncols != 1:
            raise ShapeError(f"one_hot: targets must be a row or a column, got {_fmt(targets.shape)}")
        if backend is not None:
            targets = targets.to(backend=backend)
        be = targets._backend
    elif isinstance(targets, (list, tuple, range)) or (hasattr(targets, "ndim") and hasattr(targets, "tolist")):
        n = len(targets)
        be = _backends.get(backend)
    else:
        raise ArgumentTypeError(f"one_hot: targets must be a list of ints or a Tensor2D, got {type(targets).__name__}")
    if n == 0:
        raise ShapeError("one_hot: no targets; matgrad has no empty matrices")
    check_size("one_hot", n, num_classes)
    dt = dtype_name(dtype)
    if isinstance(targets, Tensor2D) and targets.ncols != 1:
        targets = targets.T
    index = be.indices(_target_column("one_hot", targets, n, num_classes, be))
    _check_range("one_hot", index, be, num_classes)
    return _wrap(be.pick_adjoint(be.full(n, 1, 1.0, dt), n, num_classes, None, index), be)


# ---------------------------------------------------------------------------------------------
# other losses and activations
# ---------------------------------------------------------------------------------------------


def _reduce(losses: Tensor2D, reduction: str) -> Tensor2D:
    return losses if reduction == "none" else losses.sum() if reduction == "sum" else losses.mean()


def _same_shape(name: str, input: Any, target: Any) -> tuple[Tensor2D, Tensor2D]:
    input, target = _checks.binary(name, input, target)
    if input.shape != target.shape:
        raise ShapeError(f"{name}: input is {_fmt(input.shape)} but target is {_fmt(target.shape)}; they must match")
    _checks.need_float(name, input)
    return input, target


def mse_loss(input: Tensor2D, target: Tensor2D, reduction: str = "mean") -> Tensor2D:
    """``(input - target)^2`` reduced by mean (default), sum or none."""
    red = _reduction("mse_loss", reduction)
    input, target = _same_shape("mse_loss", input, target)
    diff = input - target
    return _reduce(diff * diff, red)


class BCEWithLogits(Op):
    """``L = y softplus(-x) + (1 - y) softplus(x)``;  ``dx = G (sigmoid(x) - y)``,  ``dy = -G x``.

    A fused op on purpose: composed from relu, abs and log1p, the gradient at x = 0 comes out as
    ``-y`` instead of ``0.5 - y`` (relu and abs both have slope 0 there). ``softplus(z)`` is
    ``max(z, 0) + log1p(exp(-|z|))``; a term whose weight (``y`` or ``1 - y``) is exactly 0 adds
    nothing, so an infinite logit gives the limit (0 for a matching target, +inf otherwise)
    rather than ``0 * inf`` or ``inf - inf`` (the usual ``max(x, 0) - x y + ...`` gives NaN at
    x = +inf, y = 0; PyTorch's gives NaN at x = -inf, y = 1).
    """

    name = "binary_cross_entropy_with_logits"
    arity, broadcast = 2, True
    saves = (0, 1)

    def describe(self) -> str:
        return "bce_with_logits"

    def forward(self, be: Backend, x: Data, y: Data) -> Data:
        tail = be.unary("log1p", be.unary("exp", be.unary("neg", be.unary("abs", x))))
        below = be.add(be.maximum(be.unary("neg", x), 0.0), tail)  # softplus(-x) = -log sigmoid(x)
        above = be.add(be.maximum(x, 0.0), tail)  # softplus(x) = -log(1 - sigmoid(x))
        pos = be.where(be.compare("eq", y, 0.0), 0.0, be.mul(y, below))
        neg = be.where(be.compare("eq", y, 1.0), 0.0, be.mul(be.sub(1.0, y), above))
        return be.add(pos, neg)

    def backward(self, grad: Tensor2D, x: Tensor2D, y: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_x, need_y = self.needs_input_grad
        gx = grad * (sigmoid(x) - y) if need_x else None
        gy = -(grad * x) if need_y else None
        return gx, gy


def binary_cross_entropy_with_logits(input: Tensor2D, target: Tensor2D, reduction: str = "mean") -> Tensor2D:
    """Binary cross-entropy of logits against targets in [0, 1], stable for any logit."""
    red = _reduction("binary_cross_entropy_with_logits", reduction)
    input, target = _same_shape("binary_cross_entropy_with_logits", input, target)
    return _reduce(BCEWithLogits()(input, target), red)


# --8<-- [start:softplus]
class Softplus(Op):
    """``C = log(1 + exp(beta A)) / beta``;  ``dA = G * sigmoid(beta A)`` (``C = A``, ``dA = G`` above the threshold).

    Computed as ``max(z, 0) + log1p(exp(-|z|))`` for ``z = beta A``: the naive form overflows at
    z = 89 in float32 and loses every digit below z = -37.
    """

    __slots__ = ("beta", "threshold")
    saves = (0,)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta, self.threshold = beta, threshold

    def describe(self) -> str:
        return "softplus" if self.beta == 1.0 else f"softplus(beta={self.beta:g})"

    def forward(self, be: Backend, a: Data) -> Data:
        z = be.mul(a, self.beta)
        soft = be.add(be.maximum(z, 0.0), be.unary("log1p", be.unary("exp", be.unary("neg", be.unary("abs", z)))))
        return be.where(be.compare("gt", z, self.threshold), a, be.div(soft, self.beta))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        z = a * self.beta
        return (where(z > self.threshold, grad, grad * sigmoid(z)),)


def softplus(input: Tensor2D, beta: float = 1.0, threshold: float = 20.0) -> Tensor2D:
    """``log(1 + exp(beta * input)) / beta``, linear above ``threshold`` (as ``torch.nn.functional.softplus``)."""
    for option, value in (("beta", beta), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ArgumentTypeError(f"softplus: {option} must be a real number, got {type(value).__name__}")
    if not beta > 0:
        raise ArgumentError(f"softplus: beta must be positive, got {beta!r}")
    return Softplus(float(beta), float(threshold))(input)


# --8<-- [end:softplus]


class Dropout(Op):
    """``C = A * M / (1 - p)`` for a random 0/1 mask ``M``;  ``dA = where(M, G / (1 - p), 0)``."""

    __slots__ = ("mask", "scale")

    def __init__(self, mask: Data, scale: float) -> None:
        self.mask = mask
        self.scale = scale

    def forward(self, be: Backend, a: Data) -> Data:
        return be.mul(be.mul(a, self.mask), self.scale)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = grad._backend
        if not _state.mode:
            return (_wrap(be.keep(be.mul(grad._data, self.scale), self.mask), be),)
        return (Where()(_wrap(self.mask, be), grad * self.scale, 0.0),)


def dropout(x: Tensor2D, p: float = 0.5, training: bool = True) -> Tensor2D:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)`` (when training)."""
    x = _checks.tensor("dropout", x)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ArgumentTypeError(f"dropout: p must be a number (a probability), got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ArgumentError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    _checks.need_float("dropout", x)
    be = x._backend
    if p == 1.0:
        return x * 0.0
    keep = be.compare("ge", be.uniform(x.nrows, x.ncols, 0.0, 1.0, x.dtype), float(p), x.dtype)
    return Dropout(keep, 1.0 / (1.0 - float(p)))(x)
