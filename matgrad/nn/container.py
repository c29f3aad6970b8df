"""``Sequential`` and ``MLP``."""

from __future__ import annotations

import itertools
import numbers
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Set
from typing import Any, Iterator, Sequence, overload

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, TensorIndexError
from matgrad.nn.activation import Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from matgrad.nn.conv import infer_image_shapes
from matgrad.nn.linear import Identity, Linear, _float_dtype
from matgrad.nn.module import Module, _positive_int

__all__ = ["MLP", "Sequential"]


class Sequential(Module):
    """Modules called in order, each on the previous one's output: ``Sequential(m0, m1, ...)``.

    Children are named ``"0"``, ``"1"``, ... (or by the keys of an ``OrderedDict``), so the
    parameter names match ``torch.nn.Sequential``'s. Image layers (``Conv2d``, pooling) learn
    their input image size from the layer before them as the Sequential is built.
    """

    def __init__(self, *args: Module | OrderedDict[str, Module]) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, child in args[0].items():
                self.add_module(name, child)
        else:
            for i, arg in enumerate(args):
                if not isinstance(arg, Module):
                    raise ArgumentTypeError(f"Sequential: argument {i} is a {type(arg).__name__}, not a Module")
                self.add_module(str(i), arg)
        infer_image_shapes(self._named_layers())

    def _named_layers(self) -> list[tuple[str, Module]]:
        return [(name, m) for name, m in self._modules.items() if m is not None]

    def _key(self, idx: int) -> str:
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise ArgumentTypeError(f"Sequential indices must be ints or slices, not {type(idx).__name__}")
        size = len(self._modules)
        if not -size <= idx < size:
            raise TensorIndexError(f"index {idx} is out of range for a Sequential of {size} modules")
        return list(self._modules)[int(idx) % size]

    @overload
    def __getitem__(self, idx: int) -> Module: ...

    @overload
    def __getitem__(self, idx: slice) -> Sequential: ...

    def __getitem__(self, idx: int | slice) -> Module:
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))  # type: ignore[arg-type]
        module = self._modules[self._key(idx)]
        assert module is not None  # Sequential never holds None
        return module

    def __setitem__(self, idx: int, module: Module) -> None:
        setattr(self, self._key(idx), module)

    def __delitem__(self, idx: int | slice) -> None:
        keys = list(self._modules)[idx] if isinstance(idx, slice) else [self._key(idx)]
        for key in keys:
            del self._modules[key]
        # renumber, as PyTorch does, so names stay 0..n-1
        self._modules = OrderedDict((str(i), m) for i, m in enumerate(self._modules.values()))

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end (named ``str(len(self))``); returns self."""
        self.add_module(str(len(self)), module)
        infer_image_shapes(self._named_layers())
        return self

    def forward(self, input: Any) -> Any:
        for module in self._modules.values():
            if module is not None:
                input = module(input)
        return input


_ACTIVATIONS: dict[str, type[Module]] = {
    "relu": ReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "leaky_relu": LeakyReLU,
    "identity": Identity,
}


class MLP(Sequential):
    """A multi-layer perceptron: ``Linear, activation, [Dropout], ..., Linear`` (no activation last).

    ``MLP([784, 128, 10])`` is ``Sequential(Linear(784, 128), ReLU(), Linear(128, 10))``, with
    state-dict keys ``0.weight, 0.bias, 2.weight, 2.bias`` as the same ``torch.nn.Sequential``.
    ``activation``: ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"leaky_relu"``, ``"identity"`` or a
    Module subclass (instantiated with no arguments for each hidden layer).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | type[Module] = "relu",
        dropout: float = 0.0,
        *,
        bias: bool = True,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        if isinstance(sizes, (str, bytes, Mapping, Set)) or not isinstance(sizes, Iterable):
            raise ArgumentTypeError(
                f"MLP: sizes must be a list of layer sizes, e.g. [784, 128, 10]; got {type(sizes).__name__} "
                f"{sizes!r:.60}"
            )
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ArgumentError(
                f"MLP: sizes must list at least an input and an output size, e.g. [784, 128, 10]; got {sizes!r}"
            )
        dims = [_positive_int("MLP", f"sizes[{i}]", s) for i, s in enumerate(sizes)]
        act = _activation(activation)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ArgumentTypeError(
                f"MLP: dropout must be a probability in [0, 1), got {type(dropout).__name__} {dropout!r:.60}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ArgumentError(f"MLP: dropout must be a probability in [0, 1), got {dropout!r}")
        dtype = _float_dtype("MLP", dtype)
        backend = _backends.get(backend)
        layers: list[Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
            layers.append(Linear(n_in, n_out, bias, dtype=dtype, backend=backend))
            if i < len(dims) - 2:
                layers.append(act())
                if dropout > 0:
                    layers.append(Dropout(dropout))
        super().__init__(*layers)
        self.sizes = dims


def _activation(activation: str | type[Module]) -> type[Module]:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ArgumentError(
                f"MLP: unknown activation {activation!r}; use one of {', '.join(map(repr, _ACTIVATIONS))} "
                "or a Module subclass such as nn.Tanh"
            )
        return _ACTIVATIONS[activation]
    if isinstance(activation, type) and issubclass(activation, Module):
        return activation
    raise ArgumentTypeError(
        f"MLP: activation must be a name or a Module subclass (nn.ReLU, not nn.ReLU()), got {activation!r}"
    )
