"""The op table: one row per op, driving forward, parity and gradient tests on every backend.

A row names the function under test, how its input shapes follow from a drawn (m, n), the domain
each input's values come from, the ``Op`` classes it exercises (the meta-test checks every Op
subclass appears somewhere) and whether second derivatives exist (smooth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hypothesis import strategies as st

import matgrad as mg
import matgrad.functional as F
from matgrad import conv, ops
from matgrad.autograd import Op
from matgrad.autograd.function import FunctionOp

Shape = tuple[int, int]

# Value domains for the inputs of an op (each draws floats exactly representable in float32).
DOMAINS: dict[str, st.SearchStrategy[float]] = {
    "real": st.floats(-2.0, 2.0, width=32),
    "positive": st.floats(0.25, 3.0, width=32),
    "nonzero": st.one_of(st.floats(-2.0, -0.25, width=32), st.floats(0.25, 2.0, width=32)),
    # kinks (relu, abs, leaky_relu) and ties (max, min) need distinct values away from 0:
    # a multiple of 1/64 between -2 and 2, never 0; made unique per matrix by the test.
    "distinct": st.integers(-128, 128).filter(lambda k: k != 0).map(lambda k: k / 64),
    "probability": st.floats(0.0625, 0.9375, width=32),
}


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., mg.Tensor2D]
    shapes: Callable[[int, int], list[Shape]]
    ops: tuple[type[Op], ...]
    domains: tuple[str, ...] = ("real",)
    smooth: bool = True
    random: bool = False  # draws from a backend's generator, so backends cannot agree value for value


def same(k: int) -> Callable[[int, int], list[Shape]]:
    return lambda m, n: [(m, n)] * k


def dropout_fixed_mask(a: mg.Tensor2D) -> mg.Tensor2D:
    """Dropout with the same mask on every call, so gradcheck sees a deterministic function."""
    mg.manual_seed(7)
    return F.dropout(a, 0.5, training=True)


def other_backend(a: mg.Tensor2D) -> str:
    return "python" if a.backend == "numpy" else "numpy"


def labels(m: int, n: int) -> list[int]:
    """A deterministic class index per row for (m, n) logits."""
    return [(3 * i + 1) % n for i in range(m)]


class ScaledSquare(mg.Function):
    """A user-defined op: ``C = alpha * X^2``;  ``dX = 2 alpha X G`` (its rule written in Tensor2D ops)."""

    @staticmethod
    def forward(ctx: mg.autograd.FunctionCtx, x: mg.Tensor2D, alpha: float) -> mg.Tensor2D:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x * x * alpha

    @staticmethod
    def backward(ctx: mg.autograd.FunctionCtx, grad: mg.Tensor2D) -> tuple[mg.Tensor2D, None]:
        (x,) = ctx.saved_tensors
        return grad * x * (2.0 * ctx.alpha), None


class MulAndAdd(mg.Function):
    """A user-defined op with two outputs: ``(A * B, A + B)``."""

    @staticmethod
    def forward(ctx: mg.autograd.FunctionCtx, a: mg.Tensor2D, b: mg.Tensor2D) -> tuple[mg.Tensor2D, mg.Tensor2D]:
        ctx.save_for_backward(a, b)
        return a * b, a + b

    @staticmethod
    def backward(
        ctx: mg.autograd.FunctionCtx, g_prod: mg.Tensor2D, g_sum: mg.Tensor2D
    ) -> tuple[mg.Tensor2D, mg.Tensor2D]:
        a, b = ctx.saved_tensors
        return g_prod * b + g_sum, g_prod * a + g_sum


def _mul_and_add(a: mg.Tensor2D, b: mg.Tensor2D) -> mg.Tensor2D:
    prod, total = MulAndAdd.apply(a, b)
    return mg.cat([prod, total * 3.0], axis=1)


CASES: list[Case] = [
    # element-wise binary, with every broadcast pattern
    Case("add", lambda a, b: a + b, same(2), (ops.Add,)),
    Case("add_row", lambda a, b: a + b, lambda m, n: [(m, n), (1, n)], (ops.Add,)),
    Case("add_col_left", lambda a, b: a + b, lambda m, n: [(m, 1), (m, n)], (ops.Add,)),
    Case("add_scalar_tensor", lambda a, b: b + a, lambda m, n: [(1, 1), (m, n)], (ops.Add,)),
    Case("add_number", lambda a: 2.5 + a, same(1), (ops.Add,)),
    Case("sub", lambda a, b: a - b, lambda m, n: [(m, n), (m, 1)], (ops.Sub,)),
    Case("rsub_number", lambda a: 1.0 - a, same(1), (ops.Sub,)),
    Case("mul", lambda a, b: a * b, lambda m, n: [(1, n), (m, n)], (ops.Mul,)),
    Case("mul_self", lambda a: a * a, same(1), (ops.Mul,)),
    Case("div", lambda a, b: a / b, lambda m, n: [(m, n), (1, 1)], (ops.Div,), ("real", "nonzero")),
    Case("rdiv_number", lambda a: 1.0 / a, same(1), (ops.Div,), ("nonzero",)),
    Case("where", lambda a, b: mg.where(a > 0, a, b), same(2), (ops.Where,), ("distinct", "real")),
    # element-wise unary
    Case("neg", lambda a: -a, same(1), (ops.Neg,)),
    Case("pow2", lambda a: a**2, same(1), (ops.Pow,)),
    Case("pow_frac", lambda a: a**1.5, same(1), (ops.Pow,), ("positive",)),
    Case("pow_neg", lambda a: a**-2, same(1), (ops.Pow,), ("nonzero",)),
    Case("rpow", lambda a: 2.0**a, same(1), (ops.Exp, ops.Mul)),
    Case("exp", lambda a: a.exp(), same(1), (ops.Exp,)),
    Case("log", lambda a: a.log(), same(1), (ops.Log,), ("positive",)),
    Case("sqrt", lambda a: a.sqrt(), same(1), (ops.Sqrt,), ("positive",)),
    Case("abs", lambda a: a.abs(), same(1), (ops.Abs,), ("distinct",), smooth=False),
    Case("relu", lambda a: a.relu(), same(1), (ops.ReLU,), ("distinct",), smooth=False),
    Case("leaky_relu", lambda a: a.leaky_relu(0.1), same(1), (ops.LeakyReLU,), ("distinct",), smooth=False),
    Case("sigmoid", lambda a: a.sigmoid(), same(1), (ops.Sigmoid,)),
    Case("tanh", lambda a: a.tanh(), same(1), (ops.Tanh,)),
    # matrix product and layout
    Case("matmul", lambda a, b: a @ b, lambda m, n: [(m, n), (n, m + 1)], (ops.MatMul,)),
    Case("matmul_at_b", lambda a, b: ops.gemm(a, b, True, False), lambda m, n: [(n, m), (n, 2)], (ops.MatMul,)),
    Case("matmul_a_bt", lambda a, b: ops.gemm(a, b, False, True), lambda m, n: [(m, n), (2, n)], (ops.MatMul,)),
    Case("matmul_at_bt", lambda a, b: ops.gemm(a, b, True, True), lambda m, n: [(n, m), (2, n)], (ops.MatMul,)),
    Case("transpose", lambda a: a.T, same(1), (ops.Transpose,)),
    Case("reshape", lambda a: a.reshape(1, -1), same(1), (ops.Reshape,)),
    Case("reshape_col", lambda a: a.reshape(-1, 1), same(1), (ops.Reshape,)),
    Case("expand_row", lambda a: ops.expand(a, 3, a.ncols), lambda m, n: [(1, n)], (ops.Expand,)),
    Case("clone", lambda a: a.clone(), same(1), (ops.Clone,)),
    Case("alias", lambda a: a[:, :] * 2.0, same(1), (ops.Alias,)),
    Case("to_other_backend", lambda a: a.to(backend=other_backend(a)) * 3.0, same(1), (ops.To,)),
    Case("cat_rows", lambda a, b: mg.cat([a, b, a], axis=0), lambda m, n: [(m, n), (2, n)], (ops.Cat,)),
    Case("cat_cols", lambda a, b: mg.cat([a, b], axis=1), lambda m, n: [(m, n), (m, 1)], (ops.Cat,)),
    # indexing (results always 2-D)
    Case("index_row", lambda a: a[a.nrows - 1], same(1), (ops.Take,)),
    Case("index_slice", lambda a: a[: (a.nrows + 1) // 2], same(1), (ops.Take,)),
    Case("index_gather", lambda a: a[[a.nrows - 1, 0, a.nrows - 1]], same(1), (ops.Take, ops.TakeAdjoint)),
    Case("index_column", lambda a: a[:, a.ncols - 1], same(1), (ops.Take,)),
    Case("index_block", lambda a: a[[0, a.nrows - 1], 0 : a.ncols], same(1), (ops.Take,)),
    Case(
        "index_pairs",
        lambda a: a[[0, a.nrows - 1, 0], [a.ncols - 1, 0, a.ncols - 1]],
        same(1),
        (ops.Pick, ops.PickAdjoint),
    ),
    # reductions
    Case("sum", lambda a: a.sum(), same(1), (ops.Sum, ops.Expand)),
    Case("sum_axis0", lambda a: a.sum(axis=0), same(1), (ops.Sum,)),
    Case("sum_axis1", lambda a: a.sum(axis=1), same(1), (ops.Sum,)),
    Case("mean", lambda a: a.mean(), same(1), (ops.Mean,)),
    Case("mean_axis0", lambda a: a.mean(axis=0), same(1), (ops.Mean,)),
    Case("max", lambda a: a.max(), same(1), (ops.Max,), ("distinct",), smooth=False),
    Case("max_axis1", lambda a: a.max(axis=1), same(1), (ops.Max,), ("distinct",), smooth=False),
    Case("min_axis0", lambda a: a.min(axis=0), same(1), (ops.Min,), ("distinct",), smooth=False),
    # softmax family
    Case("softmax", lambda a: a.softmax(), same(1), (ops.Softmax,)),
    Case("softmax_axis0", lambda a: a.softmax(axis=0), same(1), (ops.Softmax,)),
    Case("log_softmax", lambda a: a.log_softmax(), same(1), (ops.LogSoftmax,)),
    Case("logsumexp", lambda a: a.logsumexp(), same(1), (ops.LogSumExp,)),
    Case("logsumexp_axis0", lambda a: a.logsumexp(axis=0), same(1), (ops.LogSumExp,)),
    # functional: fused layers and losses
    Case("linear", F.linear, lambda m, n: [(m, n), (3, n), (1, 3)], (F.Linear,)),
    Case("linear_nobias", F.linear, lambda m, n: [(m, n), (2, n)], (F.Linear,)),
    Case(
        "cross_entropy",
        lambda x: F.cross_entropy(x, labels(x.nrows, x.ncols)),
        same(1),
        (F.CrossEntropy,),
    ),
    Case(
        "cross_entropy_sum",
        lambda x: F.cross_entropy(x, labels(x.nrows, x.ncols), reduction="sum"),
        same(1),
        (F.CrossEntropy,),
    ),
    Case(
        "cross_entropy_none",
        lambda x: F.cross_entropy(x, labels(x.nrows, x.ncols), reduction="none"),
        same(1),
        (F.CrossEntropy,),
    ),
    Case(
        "cross_entropy_soft",
        lambda x, t: F.cross_entropy(x, t.softmax()),
        same(2),
        (F.SoftCrossEntropy,),
    ),
    Case("nll_loss", lambda x: F.nll_loss(x.log_softmax(), labels(x.nrows, x.ncols)), same(1), (ops.Pick,)),
    Case("mse_loss", F.mse_loss, same(2), (ops.Sub, ops.Mul, ops.Mean)),
    Case(
        "bce_with_logits",
        F.binary_cross_entropy_with_logits,
        same(2),
        (F.BCEWithLogits,),
        ("real", "probability"),
    ),
    Case("dropout", lambda a: dropout_fixed_mask(a), same(1), (F.Dropout,), random=True),
    # --8<-- [start:softplus]
    Case("softplus", F.softplus, same(1), (F.Softplus,)),
    Case("softplus_beta", lambda a: F.softplus(a * 8.0, beta=2.0, threshold=100.0), same(1), (F.Softplus,)),
    # above the threshold softplus is the identity (value and gradient), as PyTorch's
    Case("softplus_linear", lambda a: F.softplus(a + 2.0, threshold=1.0), same(1), (F.Softplus,), ("positive",)),
    # --8<-- [end:softplus]
    # convolution and pooling: m images of C x H x W in rows, NCHW (matgrad.conv)
    Case(
        "unfold", lambda x: F.unfold(x, 2, image_size=(4, 3)), lambda m, n: [(m, 2 * 4 * 3)], (conv.Unfold, conv.Fold)
    ),
    Case(
        "unfold_stride_pad_dilation",
        lambda x: F.unfold(x, (2, 3), dilation=(2, 1), padding=(1, 2), stride=(1, 2), image_size=(4, 5)),
        lambda m, n: [(m, 4 * 5)],
        (conv.Unfold,),
    ),
    # 2 channels of 4x3 with a 2x2 kernel: L = 3 * 2 positions, 2 * 2 * 2 patch columns
    Case("fold", lambda p: F.fold(p, (4, 3), 2), lambda m, n: [(6 * m, 8)], (conv.Fold, conv.Unfold)),
    Case(
        "fold_stride_pad",  # 5x5, 3x3 kernel, stride 2, padding 1: 3x3 positions, overlapping
        lambda p: F.fold(p, (5, 5), 3, padding=1, stride=2),
        lambda m, n: [(9 * m, 9)],
        (conv.Fold,),
    ),
    Case(
        "patches_to_images", lambda a: conv.patches_to_images(a, 3), lambda m, n: [(3 * m, n)], (conv.BlockTranspose,)
    ),
    Case(
        "images_to_patches", lambda a: conv.images_to_patches(a, 2), lambda m, n: [(m, 2 * n)], (conv.BlockTranspose,)
    ),
    Case(
        "conv2d",
        lambda x, w, b: F.conv2d(x, w, b, image_size=(4, 3)),
        lambda m, n: [(m, 2 * 4 * 3), (3, 2 * 2 * 2), (1, 3)],
        (conv.Unfold, F.Linear, conv.BlockTranspose),
    ),
    Case(
        "conv2d_stride_pad_dilation",
        lambda x, w: F.conv2d(x, w, None, (2, 1), 1, (1, 2), image_size=(4, 4), kernel_size=(2, 3)),
        lambda m, n: [(m, 4 * 4), (2, 6)],
        (conv.Unfold, F.Linear, conv.BlockTranspose),
    ),
    Case(
        "max_pool2d",
        lambda x: F.max_pool2d(x, 2, image_size=(4, 4)),
        lambda m, n: [(m, 2 * 4 * 4)],
        (conv.MaxPool2d,),
        ("distinct",),
        smooth=False,
    ),
    Case(
        "max_pool2d_overlap_pad",  # 3x3 windows, stride 1, padding 1: every element in up to 9 windows
        lambda x: F.max_pool2d(x, 3, stride=1, padding=1, image_size=(3, 4)),
        lambda m, n: [(m, 3 * 4)],
        (conv.MaxPool2d,),
        ("distinct",),
        smooth=False,
    ),
    Case(
        "max_pool2d_dilation",
        lambda x: F.max_pool2d(x, 2, stride=(1, 2), dilation=2, image_size=(4, 5)),
        lambda m, n: [(m, 4 * 5)],
        (conv.MaxPool2d,),
        ("distinct",),
        smooth=False,
    ),
    Case(
        "avg_pool2d", lambda x: F.avg_pool2d(x, 2, image_size=(4, 4)), lambda m, n: [(m, 2 * 4 * 4)], (conv.AvgPool2d,)
    ),
    Case(
        "avg_pool2d_pad_exclude",
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False, image_size=(5, 4)),
        lambda m, n: [(m, 5 * 4)],
        (conv.AvgPool2d,),
    ),
    # user-defined ops go through the same door
    Case("function", lambda a: ScaledSquare.apply(a, 1.5), same(1), (FunctionOp,)),
    # hand-computed rows on one 1x3x3 image (and one 1x4x4 for pooling)
    Case("unfold_hand", lambda x: F.unfold(x, 2, image_size=(3, 3)), lambda m, n: [(m, 9)], (conv.Unfold,)),
    Case("fold_hand", lambda p: F.fold(p, (3, 3), 2), lambda m, n: [(4 * m, 4)], (conv.Fold,)),
    Case(
        "conv2d_hand",
        lambda x, w, b: F.conv2d(x, w, b, image_size=(3, 3)),
        lambda m, n: [(m, 9), (1, 4), (1, 1)],
        (conv.Unfold, F.Linear, conv.BlockTranspose),
    ),
    Case(
        "max_pool2d_hand",
        lambda x: F.max_pool2d(x, 2, image_size=(4, 4)),
        lambda m, n: [(m, 16)],
        (conv.MaxPool2d,),
        ("distinct",),
        smooth=False,
    ),
    Case("avg_pool2d_hand", lambda x: F.avg_pool2d(x, 2, image_size=(4, 4)), lambda m, n: [(m, 16)], (conv.AvgPool2d,)),
    Case("function_two_outputs", _mul_and_add, same(2), (FunctionOp,)),
]

CASES_BY_NAME = {c.name: c for c in CASES}


def all_op_classes() -> set[type[Op]]:
    """Every concrete Op subclass defined in matgrad (private bases excluded)."""
    found: set[type[Op]] = set()
    todo = list(Op.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and cls.__module__.startswith("matgrad."):
            found.add(cls)
    return found


# Hand-computed forward values: (case name, input rows, expected output rows).
HAND: list[tuple[str, list[list[list[float]]], list[list[float]]]] = [
    ("add_row", [[[1, 2], [3, 4]], [[10, 20]]], [[11, 22], [13, 24]]),
    ("add_col_left", [[[1], [2]], [[1, 2], [3, 4]]], [[2, 3], [5, 6]]),
    ("sub", [[[5, 6], [7, 8]], [[1], [2]]], [[4, 5], [5, 6]]),
    ("mul", [[[2, 3]], [[1, 2], [3, 4]]], [[2, 6], [6, 12]]),
    ("div", [[[1, 2], [3, 4]], [[2]]], [[0.5, 1], [1.5, 2]]),
    ("rdiv_number", [[[4, -0.5]]], [[0.25, -2]]),
    ("rsub_number", [[[0.25, 3]]], [[0.75, -2]]),
    ("neg", [[[1, -2]]], [[-1, 2]]),
    ("pow2", [[[3, -2]]], [[9, 4]]),
    ("pow_neg", [[[2, -0.5]]], [[0.25, 4]]),
    ("sqrt", [[[4, 2.25]]], [[2, 1.5]]),
    ("abs", [[[-3, 2]]], [[3, 2]]),
    ("relu", [[[-1, 0, 2]]], [[0, 0, 2]]),
    ("leaky_relu", [[[-10, 3]]], [[-1, 3]]),
    ("sigmoid", [[[0]]], [[0.5]]),
    ("tanh", [[[0]]], [[0]]),
    ("matmul", [[[1, 2], [3, 4]], [[5, 6, 7], [8, 9, 10]]], [[21, 24, 27], [47, 54, 61]]),
    ("matmul_a_bt", [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], [[17, 23], [39, 53]]),
    ("matmul_at_b", [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], [[26, 30], [38, 44]]),
    ("transpose", [[[1, 2, 3], [4, 5, 6]]], [[1, 4], [2, 5], [3, 6]]),
    ("reshape", [[[1, 2], [3, 4]]], [[1, 2, 3, 4]]),
    ("cat_cols", [[[1], [2]], [[3], [4]]], [[1, 3], [2, 4]]),
    ("index_row", [[[1, 2], [3, 4], [5, 6]]], [[5, 6]]),
    ("index_gather", [[[1, 2], [3, 4], [5, 6]]], [[5, 6], [1, 2], [5, 6]]),
    ("index_column", [[[1, 2], [3, 4]]], [[2], [4]]),
    ("index_pairs", [[[1, 2, 3], [4, 5, 6]]], [[3], [4], [3]]),
    ("sum", [[[1, 2], [3, 4]]], [[10]]),
    ("sum_axis0", [[[1, 2], [3, 4]]], [[4, 6]]),
    ("sum_axis1", [[[1, 2], [3, 4]]], [[3], [7]]),
    ("mean", [[[1, 2], [3, 6]]], [[3]]),
    ("max", [[[1, 7], [3, 4]]], [[7]]),
    ("max_axis1", [[[1, 7], [3, 4]]], [[7], [4]]),
    ("min_axis0", [[[1, 7], [3, 4]]], [[1, 4]]),
    ("softmax", [[[0, 0]]], [[0.5, 0.5]]),
    ("logsumexp", [[[0, 0]]], [[0.6931471805599453]]),
    ("linear", [[[1, 2]], [[1, 0], [0, 1], [1, 1]], [[10, 20, 30]]], [[11, 22, 33]]),
    ("mse_loss", [[[1, 2], [3, 4]], [[1, 0], [3, 0]]], [[5]]),
    # logits [0, 0] with labels(1, 2) = [1]: -log(1/2)
    ("cross_entropy", [[[0, 0]]], [[0.6931471805599453]]),
    # x = 0, y = 1: log(1 + e^0) = log 2
    ("bce_with_logits", [[[0]], [[1]]], [[0.6931471805599453]]),
    ("softplus", [[[0, 30]]], [[0.6931471805599453, 30]]),
    ("function", [[[2, -1]]], [[6, 1.5]]),
    ("function_two_outputs", [[[2, 3]], [[4, 5]]], [[8, 15, 18, 24]]),
    ("alias", [[[1, -2]]], [[2, -4]]),
    # 1x3x3 image 1..9, 2x2 patches read row by row: positions (0,0), (0,1), (1,0), (1,1)
    ("unfold_hand", [[[1, 2, 3, 4, 5, 6, 7, 8, 9]]], [[1, 2, 4, 5], [2, 3, 5, 6], [4, 5, 7, 8], [5, 6, 8, 9]]),
    # folding patches of ones counts how many windows cover each pixel
    ("fold_hand", [[[1, 1, 1, 1]] * 4], [[1, 2, 1, 2, 4, 2, 1, 2, 1]]),
    # kernel [[1, 0], [0, 1]] adds each pixel to its lower-right neighbour, plus a bias of 10
    ("conv2d_hand", [[[1, 2, 3, 4, 5, 6, 7, 8, 9]], [[1, 0, 0, 1]], [[10]]], [[16, 18, 22, 24]]),
    ("max_pool2d_hand", [[[1, 5, 2, 0, 3, 4, 8, 1, 0, -1, 2, 2, -3, 6, 2, 9]]], [[5, 8, 6, 9]]),
    ("avg_pool2d_hand", [[[1, 5, 2, 0, 3, 4, 8, 1, 0, -1, 2, 2, -3, 6, 2, 9]]], [[3.25, 2.75, 0.5, 3.75]]),
    # L=3 patches of C=2 channels -> channel 0's three values, then channel 1's
    ("patches_to_images", [[[1, 2], [3, 4], [5, 6]]], [[1, 3, 5, 2, 4, 6]]),
]
