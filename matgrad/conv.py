"""Convolution and pooling at matrix granularity: a convolution is a matrix product.

A batch of ``C``-channel ``H x W`` images is a ``(B, C*H*W)`` Tensor2D in NCHW order, one image
per row: element ``(c, h, w)`` of image ``b`` sits at column ``(c*H + h)*W + w`` of row ``b``,
byte for byte the memory of PyTorch's ``(B, C, H, W)`` tensor. Nothing here leaves two dimensions:

* ``unfold`` (im2col) copies every window of every image into one row of a ``(B*L, C*kh*kw)``
  matrix of patches, ``L = out_h * out_w`` window positions per image;
* a convolution is then one matrix product with the ``(C_out, C*kh*kw)`` weight, giving
  ``(B*L, C_out)`` patch-major rows, which ``patches_to_images`` rearranges into ``(B, C_out*L)``
  image rows, NCHW again;
* ``fold`` (col2im) sums patches back into images: it is ``unfold``'s adjoint, so each is the
  other's backward pass, ``<fold(P), X> = <P, unfold(X)>``.

Max pooling is one fused op with its own kernels (measured faster than ``unfold`` then ``max``);
average pooling is one op over ``unfold`` and a row sum, its gradient ``fold``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, Union

from matgrad import _checks
from matgrad._checks import fmt as _fmt
from matgrad._errors import ArgumentError, ArgumentTypeError, ShapeError
from matgrad.autograd.grad_mode import state as _state
from matgrad.autograd.graph import Op
from matgrad.backends.base import Backend, Data, Window
from matgrad.ops import Where, expand
from matgrad.tensor import Tensor2D, _wrap

__all__ = [
    "AvgPool2d",
    "BlockTranspose",
    "Fold",
    "MaxPool2d",
    "Unfold",
    "Window",
    "avg_pool2d",
    "conv2d",
    "fold",
    "images_to_patches",
    "max_pool2d",
    "patches_to_images",
    "conv_window",
    "pool_window",
    "unfold",
]

IntPair = Union[int, Sequence[int]]


def _describe(w: Window, name: str) -> str:
    """``unfold(5x5, stride 2)``: the kernel, then whatever is not the default."""
    parts = [f"{w.kh}x{w.kw}"]
    for what, pair, default in (
        ("stride", (w.sh, w.sw), 1),
        ("padding", (w.ph, w.pw), 0),
        ("dilation", (w.dh, w.dw), 1),
    ):
        if pair != (default, default):
            parts.append(f"{what} {pair[0]}" if pair[0] == pair[1] else f"{what} {pair[0]}x{pair[1]}")
    return f"{name}({', '.join(parts)})"


def _check_images(name: str, w: Window, x: Tensor2D) -> None:
    if x.ncols != w.image_size:
        raise ShapeError(
            f"{name}: input is {_fmt(x.shape)} but {w.channels}x{w.height}x{w.width} images need rows of "
            f"{w.image_size} values (C*H*W); check image_size and the channel count"
        )


# ---------------------------------------------------------------------------------------------
# the ops
# ---------------------------------------------------------------------------------------------


class Unfold(Op):
    """``P = unfold(X)``: the ``(B*L, C*kh*kw)`` patches of the ``(B, C*H*W)`` images (im2col);  ``dX = fold(G)``.

    ``P[b*L + l, (c*kh + i)*kw + j] = X[b, (c*H + h)*W + w]`` with ``h = oh*sh - ph + i*dh``,
    ``w = ow*sw - pw + j*dw`` and ``l = oh*out_w + ow`` (0 where ``(h, w)`` is padding). Each
    output element copies one input element, so the gradient adds each ``G`` element back where
    it was read from: that is ``fold``.
    """

    __slots__ = ("window",)

    def __init__(self, window: Window) -> None:
        self.window = window

    def describe(self) -> str:
        return _describe(self.window, "unfold")

    def check(self, x: Tensor2D) -> None:
        _check_images(self.describe(), self.window, x)

    def forward(self, be: Backend, x: Data) -> Data:
        return be.unfold(x, self.window)

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (Fold(self.window)(grad),)


class Fold(Op):
    """``X = fold(P)``: ``(B*L, C*kh*kw)`` patches summed into ``(B, C*H*W)`` images (col2im);  ``dP = unfold(G)``.

    ``X[b, (c*H + h)*W + w] = sum of P[b*L + l, (c*kh + i)*kw + j]`` over every patch element that
    ``unfold`` reads from ``(c, h, w)``. ``fold`` is ``unfold``'s adjoint (its transpose, as a
    linear map), so its gradient is ``unfold``.
    """

    __slots__ = ("window",)

    def __init__(self, window: Window) -> None:
        self.window = window

    def describe(self) -> str:
        return _describe(self.window, "fold")

    def check(self, p: Tensor2D) -> None:
        w = self.window
        if p.ncols != w.patch_size or p.nrows % w.positions:
            raise ShapeError(
                f"{self.describe()}: input is {_fmt(p.shape)} but {w.kh}x{w.kw} patches of {w.channels} channel(s) "
                f"need {w.patch_size} columns (C*kh*kw) and a multiple of L = {w.positions} rows "
                f"({w.out_h}x{w.out_w} window positions per {w.height}x{w.width} image)"
            )

    def forward(self, be: Backend, p: Data) -> Data:
        return be.fold(p, self.window)

    def backward(self, grad: Tensor2D, p: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (Unfold(self.window)(grad),)


class BlockTranspose(Op):
    """``C = block_transpose(A, p, q)``;  ``dA = block_transpose(G, q, p)``.

    The elements of ``A`` read as consecutive ``p x q`` blocks, each transposed (and the result
    read as ``shape``); the gradient transposes ``G``'s ``q x p`` blocks back. With ``p = L``,
    ``q = C``: ``(B*L, C)`` patch-major rows to ``(B, C*L)`` image rows,
    ``C[b, c*L + l] = A[b*L + l, c]``; with ``p = C``, ``q = L``, the way back. A permutation, so
    its gradient is the inverse permutation.
    """

    __slots__ = ("image", "p", "q", "shape")
    name = "block_transpose"
    float_only = False

    def __init__(self, p: int, q: int, shape: tuple[int, int], image: tuple[int, int, int] | None = None) -> None:
        self.p, self.q, self.shape = p, q, shape
        self.image = image  # (C, H, W) of the output's image rows, when known: for diagrams

    @property
    def output_image(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the images in the output's rows, when the caller said (``conv2d`` does)."""
        return self.image

    def describe(self) -> str:
        if self.shape[1] == self.p * self.q:  # (B*L, C) -> (B, C*L)
            return f"patches_to_images(L={self.p})"
        return f"images_to_patches(C={self.p})"

    def check(self, a: Tensor2D) -> None:
        if (a.nrows * a.ncols) % (self.p * self.q):
            raise ShapeError(
                f"{self.describe()}: a {_fmt(a.shape)} matrix does not split into {self.p}x{self.q} blocks"
            )

    def forward(self, be: Backend, a: Data) -> Data:
        return be.reshape(be.block_transpose(a, self.p, self.q), *self.shape)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (BlockTranspose(self.q, self.p, a.shape)(grad),)


def _recording() -> bool:
    return _state.grad_enabled or _state.anomaly


class MaxPool2d(Op):
    """``Y = max_pool2d(X)`` over each window;  ``dX = fold(where(M, G / count(M), 0))``, ``M = [unfold(X) == Y]``.

    ``Y[b, c, l]`` is the maximum of window ``l`` of channel ``c``; ``M`` marks the elements of
    each window (a row of the patch matrix) equal to it, so ties share the gradient equally, as
    ``max`` reduction's rule does (PyTorch gives it all to the first), and overlapping windows add
    up. Padding is ``-inf``, never a maximum. Written with ops, the rule is ``fold`` of the
    selected ``G / n`` over ``unfold``'s patches: linear in ``G``, so it differentiates again.
    """

    __slots__ = ("window",)
    name = "max_pool2d"
    saves = (0,)
    saves_output = True

    def __init__(self, window: Window) -> None:
        self.window = window

    def describe(self) -> str:
        return _describe(self.window, "max_pool2d")

    def check(self, x: Tensor2D) -> None:
        _check_images(self.describe(), self.window, x)

    @property
    def output_image(self) -> tuple[int, int, int]:
        """``(C, H_out, W_out)``: the images in the output's rows."""
        return self.window.channels, self.window.out_h, self.window.out_w

    def forward(self, be: Backend, x: Data) -> Data:
        return be.max_pool(x, self.window)

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be, w, out = x._backend, self.window, self.output
        if not _recording():
            return (_wrap(be.max_pool_adjoint(x._data, out._data, grad._data, w), be),)
        # The same rule as ops: each channel is an image of its own, (B*C, H*W), pooled per patch.
        plane = w._replace(channels=1)
        rows = x.nrows * w.channels * w.positions
        patches = be.unfold(be.reshape(x._data, x.nrows * w.channels, w.height * w.width), plane, -math.inf)
        hits = be.compare("eq", patches, be.reshape(out._data, rows, 1))
        count = be.sum(hits, 1)
        share = grad.reshape(rows, 1) / _wrap(be.where(count, count, 1.0), be)
        selected = Where()(_wrap(hits, be), share, 0.0)
        return (Fold(plane)(selected).reshape(x.nrows, w.image_size),)


class AvgPool2d(Op):
    """``Y = sum(unfold(X), cols) / n``;  ``dX = fold(G / n)`` spread over each window.

    ``Y[b, c, l]`` is the mean of window ``l`` of channel ``c``: ``n = kh*kw`` (padding counts as
    zeros), or with ``count_include_pad=False`` the window's positions inside the image. Linear,
    so its gradient is its adjoint: ``fold`` of ``G / n`` repeated across each window's
    ``kh*kw`` patch columns.
    """

    __slots__ = ("counts", "include_pad", "window")
    name = "avg_pool2d"

    def __init__(self, window: Window, include_pad: bool = True) -> None:
        self.window = window
        self.include_pad = include_pad
        self.counts: Any = None

    def describe(self) -> str:
        return _describe(self.window, "avg_pool2d")

    @property
    def output_image(self) -> tuple[int, int, int]:
        """``(C, H_out, W_out)``: the images in the output's rows."""
        return self.window.channels, self.window.out_h, self.window.out_w

    def check(self, x: Tensor2D) -> None:
        _check_images(self.describe(), self.window, x)

    def _counts(self, be: Backend, planes: int, dtype: str) -> Any:
        """``kh*kw``, or the ``(planes*L, 1)`` column of each window's positions inside the image."""
        w = self.window
        if self.include_pad:
            return float(w.kh * w.kw)
        if self.counts is None or be.dtype(self.counts) != dtype or self.counts.shape[0] != planes * w.positions:
            ones = be.full(planes, w.height * w.width, 1.0, dtype)
            self.counts = be.sum(be.unfold(ones, w._replace(channels=1)), 1)
        return self.counts

    def forward(self, be: Backend, x: Data) -> Data:
        w = self.window
        b = x.shape[0]
        plane = w._replace(channels=1)  # each channel pooled as an image of its own: (B*C, H*W)
        sums = be.sum(be.unfold(be.reshape(x, b * w.channels, w.height * w.width), plane), 1)
        return be.reshape(be.div(sums, self._counts(be, b * w.channels, be.dtype(x))), b, w.channels * w.positions)

    def backward(self, grad: Tensor2D, x: Tensor2D) -> tuple[Tensor2D | None, ...]:
        w, be = self.window, x._backend
        rows, planes = x.nrows * w.channels * w.positions, x.nrows * w.channels
        counts = self._counts(be, planes, x.dtype)
        share = grad.reshape(rows, 1) / (counts if isinstance(counts, float) else _wrap(counts, be))
        spread = expand(share, rows, w.kh * w.kw)
        return (Fold(w._replace(channels=1))(spread).reshape(x.nrows, w.image_size),)


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


def _pair(name: str, arg: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each at least ``minimum``."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise ArgumentTypeError(f"{name}: {arg} must be an int or a pair of ints (height, width), got {value!r}")
    if any(v < minimum for v in values):
        raise ArgumentError(f"{name}: {arg} must be at least {minimum}, got {value!r}")
    return int(values[0]), int(values[1])


def _image_size(name: str, x: Tensor2D, image_size: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images in ``x``'s rows, from ``image_size = (H, W)`` and the row width."""
    if image_size is None:
        raise ArgumentTypeError(
            f"{name}: image_size=(height, width) is required: a {_fmt(x.shape)} batch of image rows "
            "does not say how each row of C*H*W values is shaped"
        )
    h, w = _pair(name, "image_size", image_size, 1)
    if x.ncols % (h * w):
        raise ShapeError(
            f"{name}: input rows hold {x.ncols} values, not a whole number of {h}x{w} channels "
            f"({h * w} values each); check image_size"
        )
    return x.ncols // (h * w), h, w


def conv_window(
    name: str,
    image: tuple[int, int, int],
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> Window:
    """The validated ``Window`` of a convolution over ``(C, H, W)`` images; errors name ``name``."""
    c, h, w = image
    kh, kw = _pair(name, "kernel_size", kernel_size, 1)
    sh, sw = _pair(name, "stride", stride, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    dh, dw = _pair(name, "dilation", dilation, 1)
    window = Window(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    if window.out_h < 1 or window.out_w < 1:
        raise ShapeError(
            f"{name}: a {kh}x{kw} kernel (dilation {dh}x{dw}, so {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1} wide) "
            f"does not fit in a {h}x{w} image padded to {h + 2 * ph}x{w + 2 * pw}; use a smaller kernel or more padding"
        )
    return window


def pool_window(
    name: str, image: tuple[int, int, int], kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1
) -> Window:
    """The validated ``Window`` of a pooling over ``(C, H, W)`` images (stride defaults to the kernel size).

    As PyTorch, padding is at most half the kernel; and no window may read only padding.
    """
    window = conv_window(name, image, kernel_size, kernel_size if stride is None else stride, padding, dilation)
    w = window
    for axis, size, out, k, s, p, d in (
        ("height", w.height, w.out_h, w.kh, w.sh, w.ph, w.dh),
        ("width", w.width, w.out_w, w.kw, w.sw, w.pw, w.dw),
    ):
        if 2 * p > k:
            raise ArgumentError(
                f"{name}: padding {p} is more than half the kernel size {k} (PyTorch's limit for pooling)"
            )
        for o in range(out):  # with dilation, a window's taps can straddle the image entirely
            if not any(0 <= o * s - p + i * d < size for i in range(k)):
                raise ArgumentError(
                    f"{name}: window {o} along the {axis} reads only padding (kernel {k}, stride {s}, "
                    f"padding {p}, dilation {d} over {size} pixels); use less padding or dilation"
                )
    return window


# ---------------------------------------------------------------------------------------------
# the functions (torch.nn.functional's names and argument order)
# ---------------------------------------------------------------------------------------------


def unfold(
    input: Tensor2D,
    kernel_size: IntPair,
    dilation: IntPair = 1,
    padding: IntPair = 0,
    stride: IntPair = 1,
    *,
    image_size: IntPair | None = None,
) -> Tensor2D:
    """im2col: the ``(B*L, C*kh*kw)`` patch matrix of the ``(B, C*H*W)`` images in ``input``.

    As ``torch.nn.functional.unfold`` (whose ``(B, C*kh*kw, L)`` result is this one with each
    image's block transposed); ``image_size = (H, W)``, and ``C`` follows from the row width.
    """
    x = _checks.tensor("unfold", input)
    window = conv_window("unfold", _image_size("unfold", x, image_size), kernel_size, stride, padding, dilation)
    return Unfold(window)(x)


def fold(
    input: Tensor2D,
    output_size: IntPair,
    kernel_size: IntPair,
    dilation: IntPair = 1,
    padding: IntPair = 0,
    stride: IntPair = 1,
) -> Tensor2D:
    """col2im: ``(B*L, C*kh*kw)`` patches summed back into ``(B, C*H*W)`` images, ``output_size = (H, W)``.

    The adjoint of ``unfold`` (as ``torch.nn.functional.fold``): overlapping patches add up.
    """
    p = _checks.tensor("fold", input)
    kh, kw = _pair("fold", "kernel_size", kernel_size, 1)
    h, w = _pair("fold", "output_size", output_size, 1)
    if p.ncols % (kh * kw):
        raise ShapeError(
            f"fold: input is {_fmt(p.shape)} but {kh}x{kw} patches need a multiple of {kh * kw} columns (C*kh*kw)"
        )
    window = conv_window("fold", (p.ncols // (kh * kw), h, w), (kh, kw), stride, padding, dilation)
    return Fold(window)(p)


def patches_to_images(input: Tensor2D, positions: int) -> Tensor2D:
    """``(B*L, C)`` patch-major rows (a convolution's matrix product) as ``(B, C*L)`` image rows (NCHW).

    ``out[b, c*L + l] = input[b*L + l, c]`` for ``L = positions``, the window positions per image.
    """
    x = _checks.tensor("patches_to_images", input)
    if isinstance(positions, bool) or not isinstance(positions, numbers.Integral) or positions < 1:
        raise ArgumentError(f"patches_to_images: positions must be a positive int, got {positions!r}")
    if x.nrows % positions:
        raise ShapeError(f"patches_to_images: {x.nrows} rows are not a whole number of images of {positions} patches")
    return BlockTranspose(int(positions), x.ncols, (x.nrows // positions, x.ncols * positions))(x)


def images_to_patches(input: Tensor2D, channels: int) -> Tensor2D:
    """``(B, C*L)`` image rows as ``(B*L, C)`` patch-major rows: ``patches_to_images`` undone."""
    x = _checks.tensor("images_to_patches", input)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ArgumentError(f"images_to_patches: channels must be a positive int, got {channels!r}")
    if x.ncols % channels:
        raise ShapeError(f"images_to_patches: rows of {x.ncols} values do not split into {channels} channels")
    positions = x.ncols // channels
    return BlockTranspose(int(channels), positions, (x.nrows * positions, int(channels)))(x)


def conv2d(
    input: Tensor2D,
    weight: Tensor2D,
    bias: Tensor2D | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    *,
    image_size: IntPair | None = None,
    kernel_size: IntPair | None = None,
) -> Tensor2D:
    """2-D convolution (cross-correlation, as PyTorch's) of ``(B, C*H*W)`` images: ``(B, C_out*H_out*W_out)``.

    ``weight`` is ``(C_out, C*kh*kw)`` (PyTorch's ``(C_out, C, kh, kw)``, row-major), ``bias``
    ``(1, C_out)``. Computed as ``patches_to_images(linear(unfold(input), weight, bias), L)``: one
    matrix product over every patch of the batch. The kernel is square unless ``kernel_size``
    says otherwise.
    """
    x = _checks.tensor("conv2d", input)
    w = _checks.tensor("conv2d", weight)
    image = _image_size("conv2d", x, image_size)
    c = image[0]
    if kernel_size is None:
        k = math.isqrt(w.ncols // c) if w.ncols % c == 0 else 0
        if k * k * c != w.ncols:
            raise ShapeError(
                f"conv2d: weight is {_fmt(w.shape)} but the input has {c} channel(s) of {image[1]}x{image[2]}; "
                f"a square kernel needs C*k*k = {w.ncols} columns: pass kernel_size=(kh, kw), or check image_size"
            )
        kernel_size = k
    window = conv_window("conv2d", image, kernel_size, stride, padding, dilation)
    if w.ncols != window.patch_size:
        raise ShapeError(
            f"conv2d: weight is {_fmt(w.shape)} but {c} input channel(s) with a {window.kh}x{window.kw} kernel "
            f"need {window.patch_size} columns (C*kh*kw); check in_channels and image_size"
        )
    from matgrad.functional import linear  # functional imports this module

    patches = Unfold(window)(x)
    out = linear(patches, w) if bias is None else linear(patches, w, bias)
    image = (w.nrows, window.out_h, window.out_w)
    return BlockTranspose(window.positions, w.nrows, (x.nrows, w.nrows * window.positions), image)(out)


def max_pool2d(
    input: Tensor2D,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    *,
    image_size: IntPair | None = None,
) -> Tensor2D:
    """The maximum of each window of each channel: ``(B, C*H*W)`` to ``(B, C*H_out*W_out)``.

    As ``torch.nn.functional.max_pool2d`` (stride defaults to the kernel size, padding is
    ``-inf``), except that tied maxima share the gradient equally, as ``max`` does.
    """
    x = _checks.tensor("max_pool2d", input)
    window = pool_window("max_pool2d", _image_size("max_pool2d", x, image_size), kernel_size, stride, padding, dilation)
    return MaxPool2d(window)(x)


def avg_pool2d(
    input: Tensor2D,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    count_include_pad: bool = True,
    image_size: IntPair | None = None,
) -> Tensor2D:
    """The mean of each window of each channel: ``(B, C*H*W)`` to ``(B, C*H_out*W_out)``.

    As ``torch.nn.functional.avg_pool2d``: padding counts as zeros in the mean, unless
    ``count_include_pad=False`` divides by the window's positions inside the image.
    """
    x = _checks.tensor("avg_pool2d", input)
    if not isinstance(count_include_pad, bool):
        raise ArgumentTypeError(f"avg_pool2d: count_include_pad must be a bool, got {count_include_pad!r}")
    window = pool_window("avg_pool2d", _image_size("avg_pool2d", x, image_size), kernel_size, stride, padding)
    return AvgPool2d(window, count_include_pad or not (window.ph or window.pw))(x)
