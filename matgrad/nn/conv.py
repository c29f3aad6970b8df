"""Image layers: ``Conv2d``, ``MaxPool2d``, ``AvgPool2d`` and ``Flatten``, as in ``torch.nn``.

Images are rows: a batch of ``C x H x W`` images is a ``(B, C*H*W)`` Tensor2D (NCHW, PyTorch's
memory order). A row does not say how it is shaped, so an image layer must know the
``(C, H, W)`` of its input. Only the first layer is told, ``image_size=(28, 28)``; a
``Sequential`` passes each layer's output shape to the next as it is built, so a CNN reads as in
PyTorch and nobody computes an intermediate size by hand. A layer that does not fit what comes
before it (a Linear after the last pooling, say) is an error at construction, naming the layer,
the size it expects and the size it would get.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from matgrad import backends as _backends
from matgrad import functional as F
from matgrad._errors import ArgumentError, ArgumentTypeError, ShapeError
from matgrad.backends.base import Window
from matgrad.conv import AvgPool2d as _AvgPoolOp
from matgrad.conv import BlockTranspose, Unfold, _pair, conv_window, pool_window
from matgrad.conv import MaxPool2d as _MaxPoolOp
from matgrad.nn import init
from matgrad.nn.activation import Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from matgrad.nn.linear import Identity, Linear, _float_dtype
from matgrad.nn.module import Module, Parameter, _positive_int
from matgrad.tensor import Tensor2D, _wrap, check_size

__all__ = ["AvgPool2d", "Conv2d", "Flatten", "MaxPool2d", "infer_image_shapes"]

Shape = tuple[int, int, int]


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _tuple(pair: tuple[int, int]) -> str:
    return f"({pair[0]}, {pair[1]})"


class _ImageLayer(Module):
    """A layer over image rows: knows its input's ``(C, H, W)`` once told, and so its output's."""

    image_shape: Shape | None
    """``(C, H, W)`` of the input images: from ``image_size``, or from the layer before in a Sequential."""

    _where: str

    def __init__(self) -> None:
        super().__init__()
        self.image_shape = None
        self._where = ""

    def output_shape(self, image_shape: Shape | None = None) -> Shape:
        """``(C, H, W)`` of the output images for inputs of ``image_shape`` (default: this layer's own)."""
        raise NotImplementedError

    def _accepts(self, shape: Shape) -> str | None:
        """Why images of ``shape`` cannot be this layer's input, or None."""
        return None

    def set_image_shape(self, image_shape: Shape, where: str = "", source: str = "") -> None:
        """Declare the ``(C, H, W)`` of the input images (a Sequential does this as it is built).

        ``where`` names this layer and ``source`` the one the images come from, for messages.
        """
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ArgumentError(f"{self._label()}: an image shape is (C, H, W) of positive ints, got {image_shape!r}")
        why = self._accepts(shape)
        if why is None and self.image_shape is not None and self.image_shape != shape:
            why = f"it was built for {_fmt(self.image_shape)} images"
        if why is not None:
            head = f"Sequential {where}: " if where else ""
            raise ShapeError(f"{head}{self._label()} cannot take the {_fmt(shape)} images {source or 'given'}: {why}")
        self.output_shape(shape)  # raises if the window does not fit
        self.image_shape = shape
        self._where = where

    def _label(self) -> str:
        return f"{self._get_name()}({self.extra_repr()})"

    def _unknown(self) -> ShapeError:
        return ShapeError(
            f"{self._label()}: the size of its input images is unknown; pass image_size=(height, width) to "
            "the first layer of the Sequential (it is passed down), or to this layer"
        )

    def _check_rows(self, input: Any, shape: Shape) -> None:
        if not isinstance(input, Tensor2D):
            raise ArgumentTypeError(f"{self._label()}: expected a Tensor2D of image rows, got {type(input).__name__}")
        size = shape[0] * shape[1] * shape[2]
        if input.ncols != size:
            where = f", {self._where}" if self._where else ""
            raise ShapeError(
                f"{self._label()}{where}: expected rows of {_fmt(shape)} = {size} values (C x H x W), got a "
                f"{input.nrows}x{input.ncols} input"
            )


class Conv2d(_ImageLayer):
    """2-D convolution of image rows: ``(B, C_in*H*W)`` to ``(B, C_out*H_out*W_out)``, as ``torch.nn.Conv2d``.

    ``weight`` is ``(out_channels, in_channels*kh*kw)``, the row-major memory of PyTorch's
    ``(out_channels, in_channels, kh, kw)``, and ``bias`` ``(1, out_channels)``; both initialised
    as PyTorch's, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_channels*kh*kw``.
    ``image_size=(H, W)`` names the input images' size; inside a ``Sequential`` only the first
    image layer needs it. Computed as one matrix product over the patch matrix (``unfold``).
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    weight: Parameter
    bias: Parameter | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        image_size: int | tuple[int, int] | None = None,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int("Conv2d", "in_channels", in_channels)
        self.out_channels = _positive_int("Conv2d", "out_channels", out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _pair("Conv2d", "stride", stride, 1)
        self.padding = _pair("Conv2d", "padding", padding, 0)
        self.dilation = _pair("Conv2d", "dilation", dilation, 1)
        if not isinstance(bias, bool):
            raise ArgumentTypeError(f"Conv2d: bias must be a bool, got {type(bias).__name__} {bias!r:.40}")
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        check_size("Conv2d", self.out_channels, fan_in)
        dt = _float_dtype("Conv2d", dtype)
        be = _backends.get(backend)
        self.weight = Parameter(_wrap(be.full(self.out_channels, fan_in, 0.0, dt), be))
        if bias:
            self.bias = Parameter(_wrap(be.full(1, self.out_channels, 0.0, dt), be))
        else:
            self.register_parameter("bias", None)
        self._window: Window | None = None
        self.reset_parameters()
        if image_size is not None:
            h, w = _pair("Conv2d", "image_size", image_size, 1)
            self.set_image_shape((self.in_channels, h, w))

    def reset_parameters(self) -> None:
        """PyTorch's default: ``W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_(W, a=sqrt(5))``)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.ncols)
            init.uniform_(self.bias, -bound, bound)

    def _accepts(self, shape: Shape) -> str | None:
        if shape[0] != self.in_channels:
            return f"it takes {self.in_channels}-channel images (in_channels={self.in_channels})"
        return None

    def set_image_shape(self, image_shape: Shape, where: str = "", source: str = "") -> None:
        super().set_image_shape(image_shape, where, source)
        c, h, w = self.image_shape  # type: ignore[misc]
        self._window = conv_window(self._label(), (c, h, w), self.kernel_size, self.stride, self.padding, self.dilation)

    def output_shape(self, image_shape: Shape | None = None) -> Shape:
        shape = image_shape or self.image_shape
        if shape is None:
            raise self._unknown()
        w = conv_window(self._label(), shape, self.kernel_size, self.stride, self.padding, self.dilation)
        return self.out_channels, w.out_h, w.out_w

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """PyTorch's shapes of the parameters, for checkpoints: ``weight`` is ``(out, in, kh, kw)``."""
        return {"weight": (self.out_channels, self.in_channels, *self.kernel_size)}

    def forward(self, input: Tensor2D) -> Tensor2D:
        window = self._window
        if window is None:
            raise self._unknown()
        if not isinstance(input, Tensor2D) or input.ncols != window.image_size:
            self._check_rows(input, self.image_shape)  # type: ignore[arg-type]
        params = self._parameters
        patches = Unfold(window)(input)
        out = F.linear(patches, params["weight"], params["bias"])  # type: ignore[arg-type]
        c, n = self.out_channels, window.positions
        return BlockTranspose(n, c, (input.nrows, c * n), (c, window.out_h, window.out_w))(out)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={_tuple(self.kernel_size)}"
        s += f", stride={_tuple(self.stride)}"
        if self.padding != (0, 0):
            s += f", padding={_tuple(self.padding)}"
        if self.dilation != (1, 1):
            s += f", dilation={_tuple(self.dilation)}"
        if self.bias is None:
            s += ", bias=False"
        return s


class _Pool(_ImageLayer):
    """What max and average pooling share: the window, and the channel count learnt from the input."""

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int]
    padding: int | tuple[int, int]
    dilation: int | tuple[int, int]
    _size: tuple[int, int] | None

    def __init__(self, owner: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any, image_size: Any) -> None:
        super().__init__()
        _pair(owner, "kernel_size", kernel_size, 1)
        _pair(owner, "stride", kernel_size if stride is None else stride, 1)
        _pair(owner, "padding", padding, 0)
        _pair(owner, "dilation", dilation, 1)
        # stored as given, so the repr reads as PyTorch's (kernel_size=2, stride=2)
        self.kernel_size = kernel_size if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride = self.kernel_size if stride is None else stride if isinstance(stride, int) else tuple(stride)
        self.padding = padding if isinstance(padding, int) else tuple(padding)
        self.dilation = dilation if isinstance(dilation, int) else tuple(dilation)
        self._size = None if image_size is None else _pair(owner, "image_size", image_size, 1)
        self._windows: dict[Shape, Window] = {}

    def window(self, shape: Shape) -> Window:
        found = self._windows.get(shape)
        if found is None:
            found = self._windows[shape] = pool_window(
                self._label(), shape, self.kernel_size, self.stride, self.padding, self.dilation
            )
        return found

    def output_shape(self, image_shape: Shape | None = None) -> Shape:
        shape = image_shape or self.image_shape
        if shape is None:
            raise self._unknown()
        w = self.window(shape)
        return w.channels, w.out_h, w.out_w

    def _accepts(self, shape: Shape) -> str | None:
        if self._size is not None and shape[1:] != self._size:
            return f"image_size={_tuple(self._size)} was given"
        return None

    def _input_window(self, input: Any) -> Window:
        shape = self.image_shape
        if shape is None:
            if self._size is None:
                raise self._unknown()
            if not isinstance(input, Tensor2D):
                self._check_rows(input, (1, *self._size))
            h, w = self._size
            if input.ncols % (h * w):
                raise ShapeError(
                    f"{self._label()}: rows of {input.ncols} values are not a whole number of {h}x{w} channels"
                )
            shape = (input.ncols // (h * w), h, w)
        window = self.window(shape)
        if not isinstance(input, Tensor2D) or input.ncols != window.image_size:
            self._check_rows(input, shape)
        return window


class MaxPool2d(_Pool):
    """The maximum of each window of each channel, as ``torch.nn.MaxPool2d`` (stride defaults to the kernel size).

    Tied maxima share the gradient equally (as matgrad's ``max``; PyTorch gives it to one).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        *,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__("MaxPool2d", kernel_size, stride, padding, dilation, image_size)

    def forward(self, input: Tensor2D) -> Tensor2D:
        return _MaxPoolOp(self._input_window(input))(input)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class AvgPool2d(_Pool):
    """The mean of each window of each channel, as ``torch.nn.AvgPool2d`` (stride defaults to the kernel size)."""

    count_include_pad: bool

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        *,
        count_include_pad: bool = True,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__("AvgPool2d", kernel_size, stride, padding, 1, image_size)
        if not isinstance(count_include_pad, bool):
            raise ArgumentTypeError(f"AvgPool2d: count_include_pad must be a bool, got {count_include_pad!r}")
        self.count_include_pad = count_include_pad

    def forward(self, input: Tensor2D) -> Tensor2D:
        window = self._input_window(input)
        return _AvgPoolOp(window, self.count_include_pad or not (window.ph or window.pw))(input)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(Module):
    """The identity on image rows: ``(B, C*H*W)`` is already flat. There so that a CNN's layers,
    and its ``state_dict`` keys, line up with the same ``torch.nn.Sequential``'s."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        if (start_dim, end_dim) != (1, -1):
            raise ArgumentError(
                f"Flatten: matgrad's rows are already flat, so only Flatten(start_dim=1, end_dim=-1) exists; "
                f"got start_dim={start_dim!r}, end_dim={end_dim!r}"
            )

    def forward(self, input: Tensor2D) -> Tensor2D:
        return input

    def extra_repr(self) -> str:
        return "start_dim=1, end_dim=-1"


_KEEPS_SHAPE = (ReLU, LeakyReLU, Sigmoid, Tanh, Dropout, Identity, Flatten)


def infer_image_shapes(layers: Iterable[tuple[str, Module]]) -> None:
    """Give each image layer the ``(C, H, W)`` its input will have, from the layers before it.

    An image layer that knows its own input (the first, from ``image_size``) starts the chain;
    element-wise layers (ReLU, Dropout, ...) and ``Flatten`` keep the shape; a ``Linear`` after
    images must take ``C*H*W`` features. Anything else ends the chain (later image layers need
    their own ``image_size``). Raises a ShapeError naming the layer and both sizes at the first
    misfit.
    """
    shape: Shape | None = None
    source = ""
    for name, layer in layers:
        where = f"layer {name}"
        if isinstance(layer, _ImageLayer):
            if shape is not None:
                layer.set_image_shape(shape, where, source)
            elif layer.image_shape is not None:
                layer._where = where
            shape = layer.output_shape() if layer.image_shape is not None else None
            source = f"of layer {name} ({layer._get_name()})"
        elif isinstance(layer, _KEEPS_SHAPE):
            continue
        elif isinstance(layer, Linear) and shape is not None:
            size = shape[0] * shape[1] * shape[2]
            if layer.in_features != size:
                raise ShapeError(
                    f"Sequential {where}: Linear(in_features={layer.in_features}) takes the {_fmt(shape)} images "
                    f"{source}, rows of {size} values; use Linear({size}, {layer.out_features})"
                )
            shape = None
        else:
            shape = None
