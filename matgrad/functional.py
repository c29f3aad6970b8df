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
from matgrad._errors import ArgumentError, BackendError, ShapeError, at_user_site
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
    where,
)
from matgrad.tensor import Tensor2D, _wrap, check_size, dtype_name

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
    if not isinstance(x, Tensor2D) or not isinstance(weight, Tensor2D):
        x, weight = _tensor("linear", x), _tensor("linear", weight)
    xd, wd = x._data, weight._data
    be = x._backend
    if be is not weight._backend or xd.dtype != wd.dtype:
        _same_storage("linear", x, weight)
    (m, k), (n, k2) = xd.shape, wd.shape
    if k != k2:
        raise ShapeError(
            at_user_site(
                f"linear: input is {m}x{k} but weight is {n}x{k2} (out_features x in_features); "
                f"the input's {k} columns must equal in_features {k2}"
            )
        )
    if xd.dtype not in be.float_types:
        _need_float("linear", x)
    if bias is None:
        return record(Linear(), be.matmul(xd, wd, False, True), be, (x, weight))
    if not isinstance(bias, Tensor2D):
        bias = _tensor("linear", bias)
    bd = bias._data
    if bias._backend is not be or bd.dtype != xd.dtype:
        _same_storage("linear", x, bias)
    if bd.shape != (1, n):
        raise ShapeError(at_user_site(f"linear: bias is {_fmt(bias.shape)} but must be 1x{n} (1 x out_features)"))
    return record(Linear(), be.matmul(xd, wd, False, True, bd), be, (x, weight, bias))


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
        raise ArgumentError(at_user_site(f"{name}: target {bad} is out of range for {c} classes (valid: 0 to {c - 1})"))


def _target_column(name: str, targets: Any, n: int, c: int, be: Backend) -> Any:
    """Class indices for ``n`` rows of ``c`` classes as a native int64 (n, 1) matrix on ``be``.

    Checked for type and length; lists are also checked for range (a tensor's range is checked
    by the caller, or by the fused kernel as it gathers).
    """
    wanted = f"{n} rows of {n}x{c} logits need {n} class indices (an int64 {n}x1 column or a list of {n} ints)"
    if isinstance(targets, Tensor2D):
        if targets._data.dtype in targets._backend.float_types:
            raise ShapeError(
                at_user_site(
                    f"{name}: floating targets are class probabilities and must be shaped like the {n}x{c} "
                    f"logits, got {_fmt(targets.shape)}; class indices must be an int64 {n}x1 column (.long())"
                )
            )
        if targets._backend is not be:
            raise BackendError(
                at_user_site(f"{name}: targets live on {targets.backend}, the logits on {be.name}; move one with .to()")
            )
        shape = targets._data.shape
        if shape == (n, 1):
            return targets._data
        if shape != (1, n):
            raise ShapeError(at_user_site(f"{name}: {wanted}, got {_fmt(shape)}"))
        return be.transpose(targets._data)
    if hasattr(targets, "ndim") and hasattr(targets, "tolist"):
        shape = tuple(targets.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and 1 in shape)):
            raise ShapeError(at_user_site(f"{name}: {wanted}, got an array of shape {shape}"))
        values = targets.reshape(-1).tolist()
    elif isinstance(targets, (list, tuple, range)):
        values = list(targets)
    else:
        raise TypeError(
            at_user_site(f"{name}: targets must be an int64 Tensor2D or a list of ints, got {type(targets).__name__}")
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(at_user_site(f"{name}: class indices must be ints, found {type(v).__name__} {v!r:.40}"))
    if len(values) != n:
        raise ShapeError(at_user_site(f"{name}: {wanted}, got {len(values)}"))
    values = [int(v) for v in values]
    bad = next((v for v in values if not 0 <= v < c), None)
    if bad is not None:
        raise ArgumentError(at_user_site(f"{name}: target {bad} is out of range for {c} classes (valid: 0 to {c - 1})"))
    return be.from_rows([[v] for v in values], "int64")


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
        try:
            losses, probs = be.softmax_xent(x, self.targets)
        except IndexError:  # the kernel checks the range as it gathers; find the culprit for the message
            _check_range("cross_entropy", be.indices(self.targets), be, x.shape[1])
            raise
        if keep_probs:
            self.saved = probs
        if self.reduction == "none":
            return losses
        summed = be.sum(losses, None)
        return summed if self.reduction == "sum" else be.div(summed, float(x.shape[0]))

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = x._backend
        n = x.shape[0]
        if _autograd._grad_enabled:  # create_graph: the softmax must itself be differentiable
            index = be.indices(self.targets)
            onehot = _wrap(be.pick_adjoint(be.full(n, 1, 1.0, x.dtype), n, x.shape[1], None, index), be)
            return ((softmax(x, 1) - onehot) * (grad / float(n) if self.reduction == "mean" else grad),)
        scale: Any = grad._data
        if self.reduction != "none":  # a 1x1 upstream gradient: pass it as a number, one broadcast less
            scale = be.tolist(scale)[0][0] / (n if self.reduction == "mean" else 1)
        return (_wrap(be.softmax_xent_grad(self.saved, self.targets, scale), be),)


def cross_entropy(logits: Tensor2D, targets: Any, reduction: str = "mean") -> Tensor2D:
    """Cross-entropy of ``logits`` (n, c) against ``targets``.

    ``targets`` are class indices (an int64 (n, 1) Tensor2D or a list of n ints) or, as in
    PyTorch, class probabilities shaped like the logits. ``reduction``: ``"mean"`` (1x1),
    ``"sum"`` (1x1) or ``"none"`` (n, 1).
    """
    if not isinstance(logits, Tensor2D):
        logits = _tensor("cross_entropy", logits)
    red = reduction if reduction == "mean" else _reduction("cross_entropy", reduction)
    be = logits._backend
    if logits._data.dtype not in be.float_types:
        _need_float("cross_entropy", logits)
    soft = isinstance(targets, Tensor2D) and targets._data.dtype in targets._backend.float_types
    if soft and targets.shape == logits.shape:  # class probabilities (soft labels), as PyTorch allows
        _same_storage("cross_entropy", logits, targets)
        # a class of probability 0 adds nothing, even where its logit is -inf (not 0 * -inf = nan)
        logp = where(targets == 0.0, 0.0, log_softmax(logits, 1))
        return _reduce(-(targets * logp).sum(1), red)
    op = CrossEntropy(_target_column("cross_entropy", targets, *logits.shape, be), red)
    recording = _autograd._grad_enabled and logits.requires_grad
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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(at_user_site(f"one_hot: num_classes must be an int, got {type(num_classes).__name__}"))
    if num_classes < 1:
        raise ArgumentError(at_user_site(f"one_hot: num_classes must be positive, got {num_classes}"))
    if isinstance(targets, Tensor2D):
        n = targets.nrows * targets.ncols
        if targets.nrows != 1 and targets.ncols != 1:
            raise ShapeError(at_user_site(f"one_hot: targets must be a row or a column, got {_fmt(targets.shape)}"))
        if backend is not None:
            targets = targets.to(backend=backend)
        be = targets._backend
    elif isinstance(targets, (list, tuple, range)) or (hasattr(targets, "ndim") and hasattr(targets, "tolist")):
        n = len(targets)
        be = _backends.get(backend)
    else:
        raise TypeError(
            at_user_site(f"one_hot: targets must be a list of ints or a Tensor2D, got {type(targets).__name__}")
        )
    if n == 0:
        raise ShapeError(at_user_site("one_hot: no targets; matgrad has no empty matrices"))
    check_size("one_hot", n, num_classes)
    dt = dtype_name(dtype)
    if isinstance(targets, Tensor2D) and targets.ncols != 1:
        targets = targets.T
    index = be.indices(_target_column("one_hot", targets, n, num_classes, be))
    _check_range("one_hot", index, be, num_classes)
    return _wrap(be.pick_adjoint(be.full(n, 1, 1.0, dt), n, num_classes, None, index), be)


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
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(at_user_site(f"dropout: p must be a number (a probability), got {type(p).__name__}"))
    if not 0.0 <= p <= 1.0:
        raise ArgumentError(at_user_site(f"dropout: p must be a probability in [0, 1], got {p!r}"))
    if not training or p == 0.0:
        return x
    _need_float("dropout", x)
    be = x._backend
    if p == 1.0:
        return x * 0.0
    keep = be.compare("ge", be.uniform(x.nrows, x.ncols, 0.0, 1.0, x.dtype), float(p), x.dtype)
    return x * _wrap(be.mul(keep, 1.0 / (1.0 - float(p))), be)
