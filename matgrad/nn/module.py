"""``Parameter`` and ``Module``: the base of every layer, as PyTorch's ``torch.nn.Module``.

A ``Module`` registers the ``Parameter`` and ``Module`` objects assigned to its attributes, in
order, so ``named_parameters()`` and ``state_dict()`` name them ``"0.weight"``, ``"encoder.1.bias"``
exactly as PyTorch would, and ``load_state_dict`` can read a PyTorch checkpoint of the same model.
"""

from __future__ import annotations

import numbers
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping, NamedTuple, TypeVar

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, CheckpointError, DTypeError, MatgradError
from matgrad.autograd.grad_mode import no_grad
from matgrad.autograd.graph import RemovableHandle
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D, dtype_name

__all__ = [
    "IncompatibleKeys",
    "Module",
    "Parameter",
    "module_stack",
    "register_module_forward_hook",
    "register_module_forward_pre_hook",
]

M = TypeVar("M", bound="Module")


class Parameter(Tensor2D):
    """A ``Tensor2D`` that a ``Module`` registers when it is assigned to one of its attributes.

    ``Parameter(data, requires_grad=True)``: ``data`` is anything ``Tensor2D`` accepts; a
    ``Tensor2D`` is not copied, the parameter shares its storage (as ``torch.nn.Parameter``).
    """

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        if isinstance(data, Tensor2D):
            self._data = data._data
            self._backend = data._backend
            self._vc = data._version_counter()  # one storage, one version counter
            self._op = None
            self._retain = False
            self.grad = None
            self.name = data.name
            self.requires_grad = False
            if requires_grad:
                self.requires_grad_(True)
        else:
            super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # copy.deepcopy and pickle: the values, dtype and backend spec ("torch:cuda:0": a backend
        # object holds a module and cannot be pickled); .grad is dropped, as PyTorch's Parameter does.
        data = self.tolist() if self.backend == "python" else self.numpy()
        return (_rebuild_parameter, (data, self.dtype, self.kernels.spec, self.requires_grad))


def _rebuild_parameter(data: Any, dtype: str, backend: str, requires_grad: bool) -> Parameter:
    return Parameter(Tensor2D(data, dtype=dtype, backend=backend), requires_grad)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` did not match: ``(missing_keys, unexpected_keys)``."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"IncompatibleKeys(missing_keys={self.missing_keys}, unexpected_keys={self.unexpected_keys})"

    def __str__(self) -> str:
        return self.__repr__()


def _addindent(text: str, spaces: int) -> str:
    """Indent every line but the first by ``spaces`` (blank lines stay empty), as PyTorch's repr."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    pad = " " * spaces
    return lines[0] + "\n" + "\n".join(pad + line if line.strip() else "" for line in lines[1:])


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "a 0-D scalar"


def _as_numpy(value: Any) -> Any:
    """An array from another library (a PyTorch tensor) as a NumPy array; NumPy arrays pass through."""
    if hasattr(getattr(value, "dtype", None), "kind") or not hasattr(value, "__array__"):
        return value
    import numpy  # an object with __array__ means NumPy is installed

    detach = getattr(value, "detach", None)  # a tensor that requires grad refuses __array__
    return numpy.asarray(detach() if callable(detach) else value)


def _entry(key: str, value: Any) -> tuple[Any, str | None]:
    """A state-dict entry as a Tensor2D or an array (NumPy when it came from PyTorch), or why it cannot be one."""
    if isinstance(value, Tensor2D):
        return value, None
    if getattr(value, "shape", None) is None or not hasattr(value, "tolist"):
        return value, f"entry {key!r} is a {type(value).__name__}; expected a Tensor2D or a 2-D array of numbers"
    try:
        array = _as_numpy(value)
        shape = tuple(int(s) for s in array.shape)
    except Exception as exc:  # any failure of a foreign library's conversion: report it, load nothing
        return value, f"entry {key!r} ({type(value).__name__}) cannot be read as an array: {exc}"
    kind = getattr(getattr(array, "dtype", None), "kind", None)
    if kind is not None and kind not in "iuf":
        what = {"b": "bool", "c": "complex", "U": "string", "S": "bytes", "O": "object"}.get(kind, str(array.dtype))
        size = _fmt(shape) if len(shape) != 1 else f"length-{shape[0]}"
        return value, f"entry {key!r} is a {size} array of {what} values; parameters hold real numbers"
    return array, None


def _shape_of(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return _fmt(tuple(shape)) if isinstance(shape, tuple) else type(value).__name__


def _check_name(method: str, kind: str, owner: Module, name: Any) -> None:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"{method}: the {kind} name must be a string, got {type(name).__name__} {name!r:.40}")
    # KeyError, as PyTorch's register_parameter / add_module raise for these names
    if name == "":
        raise KeyError(f'{method}: the {kind} name is empty; give a name such as "weight" or "fc1"')
    if "." in name:
        raise KeyError(
            f'{method}: the {kind} name "{name}" contains ".", which separates names in state_dict keys; '
            'use "_" instead'
        )
    if "_parameters" not in owner.__dict__:
        raise AttributeError(f"cannot register a {kind} before Module.__init__() is called")


class _Calls(threading.local):
    stack: tuple[Any, ...] = ()


_calls = _Calls()


def module_stack() -> tuple[Module, ...]:
    """The modules being called in this thread, outermost first (``()`` outside any ``forward``).

    What the diagrams' module clusters are made of: ``matgrad.viz.scope`` stamps it on each op.
    """
    return _calls.stack


PreHook = Callable[["Module", tuple[Any, ...]], Any]
Hook = Callable[["Module", tuple[Any, ...], Any], Any]
_global_pre_hooks: list[PreHook] = []
_global_hooks: list[Hook] = []
_always_called: set[int] = set()  # ids of global forward hooks that also run when forward raises


def register_module_forward_pre_hook(hook: PreHook) -> RemovableHandle:
    """Call ``hook(module, args)`` before every module's ``forward`` (all modules, as PyTorch's).

    The hook may return new positional arguments (a tuple, or one value) in place of ``args``.
    """
    _global_pre_hooks.append(hook)
    return RemovableHandle(_global_pre_hooks, hook)


def register_module_forward_hook(hook: Hook, *, always_call: bool = False) -> RemovableHandle:
    """Call ``hook(module, args, output)`` after every module's ``forward`` (all modules, as PyTorch's).

    The hook may return a new output. With ``always_call=True`` it also runs when ``forward``
    raises (with ``output`` None), so a hook pair can keep a stack of the modules being called.
    """
    _global_hooks.append(hook)
    if always_call:
        _always_called.add(id(hook))
    return RemovableHandle(_global_hooks, hook)


class Module:
    """Base class of layers and models: subclass it, assign layers and parameters, write ``forward``.

    ``model(x)`` calls ``forward(x)``, running the forward hooks around it: this module's own
    (``register_forward_pre_hook``, ``register_forward_hook``) and the global ones (the diagrams
    use those to know which modules every op was recorded inside).
    """

    training: bool
    _parameters: dict[str, Parameter | None]
    _modules: dict[str, Module | None]

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; every subclass defines it."""
        raise NotImplementedError(f'Module [{self._get_name()}] is missing the required "forward" function')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        calls = _calls
        outer = calls.stack
        calls.stack = (*outer, self)
        try:
            if _global_pre_hooks or _global_hooks or "_hooks" in self.__dict__:
                return self._call_with_hooks(args, kwargs)
            return self.forward(*args, **kwargs)
        finally:
            calls.stack = outer

    def _call_with_hooks(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        own = self.__dict__.get("_hooks")
        if own is None:
            if not (_global_pre_hooks or _global_hooks):
                return self.forward(*args, **kwargs)
            pre: list[PreHook] = _global_pre_hooks  # the common case: no list is built
            post: list[Hook] = _global_hooks
        else:
            pre, post = [*_global_pre_hooks, *own[0]], [*_global_hooks, *own[1]]
        for hook in pre:
            new = hook(self, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
        try:
            output = self.forward(*args, **kwargs)
        except BaseException:
            for after in post:
                if id(after) in _always_called:
                    after(self, args, None)
            raise
        for after in post:
            new = after(self, args, output)
            if new is not None:
                output = new
        return output

    def register_forward_pre_hook(self, hook: PreHook) -> RemovableHandle:
        """Call ``hook(self, args)`` before each ``forward``; it may return new arguments (as PyTorch)."""
        own = self.__dict__.setdefault("_hooks", ([], []))
        own[0].append(hook)
        return RemovableHandle(own[0], hook)

    def register_forward_hook(self, hook: Hook) -> RemovableHandle:
        """Call ``hook(self, args, output)`` after each ``forward``; it may return a new output (as PyTorch)."""
        own = self.__dict__.setdefault("_hooks", ([], []))
        own[1].append(hook)
        return RemovableHandle(own[1], hook)

    # -- registration ---------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        modules = self.__dict__.get("_modules")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() is called")
            self.__dict__.pop(name, None)
            if modules is not None:
                modules.pop(name, None)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise ArgumentTypeError(
                    f"cannot assign a {type(value).__name__} as parameter {name!r} of {self._get_name()} "
                    "(Parameter or None expected); wrap it: nn.Parameter(tensor)"
                )
            params[name] = None
        elif isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign a module before Module.__init__() is called")
            self.__dict__.pop(name, None)
            if params is not None:
                params.pop(name, None)
            modules[name] = value
        elif modules is not None and name in modules:
            if value is not None:
                raise ArgumentTypeError(
                    f"cannot assign a {type(value).__name__} as child module {name!r} of {self._get_name()} "
                    "(Module or None expected)"
                )
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails: parameters and children live in the dicts.
        d = self.__dict__
        if "_parameters" in d and name in d["_parameters"]:
            return d["_parameters"][name]
        if "_modules" in d and name in d["_modules"]:
            return d["_modules"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add ``param`` under ``name`` (``None`` records an absent parameter, such as no bias)."""
        _check_name("register_parameter", "parameter", self, name)
        taken = name in self.__dict__ or name in self._modules
        if taken or (hasattr(type(self), name) and name not in self._parameters):
            raise KeyError(f"attribute {name!r} already exists on {self._get_name()}")
        if param is not None and not isinstance(param, Parameter):
            raise ArgumentTypeError(
                f"cannot register a {type(param).__name__} as parameter {name!r} (Parameter or None expected)"
            )
        self._parameters[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        """Add the child ``module`` under ``name``; it is called and saved as ``name.*``."""
        _check_name("add_module", "module", self, name)
        if module is not None and not isinstance(module, Module):
            raise ArgumentTypeError(f"{type(module).__name__} is not a Module subclass")
        taken = name in self.__dict__ or name in self._parameters
        if taken or (hasattr(type(self), name) and name not in self._modules):
            raise KeyError(f"attribute {name!r} already exists on {self._get_name()}")
        self._modules[name] = module

    register_module = add_module

    # -- traversal ------------------------------------------------------------------------------
    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for this module (``""``) and every descendant (``"0"``, ``"encoder.1"``)."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            yield from module.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        """This module and every descendant, each once."""
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for the direct children, each once."""
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        """The direct children, each once."""
        for _, module in self.named_children():
            yield module

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)``; a parameter shared by several modules comes once."""
        seen: set[int] = set()
        owners = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for owner_name, owner in owners:
            for name, param in owner._parameters.items():
                if param is None:
                    continue
                if remove_duplicate:
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                yield owner_name + ("." if owner_name else "") + name, param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every parameter, each once, in registration order (what an optimiser takes)."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def get_submodule(self, target: str) -> Module:
        """The descendant called ``target`` (``"encoder.1"``), or this module for ``""``."""
        module = self
        for i, part in enumerate(target.split(".") if target else []):
            child = module._modules.get(part)
            if child is None:
                path = ".".join(target.split(".")[:i]) or "the root"
                raise AttributeError(f"{module._get_name()} ({path}) has no submodule {part!r}")
            module = child
        return module

    def apply(self: M, fn: Callable[[Module], Any]) -> M:
        """Call ``fn`` on every descendant, then on this module (e.g. a custom initialisation)."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # -- modes and gradients --------------------------------------------------------------------
    def train(self: M, mode: bool = True) -> M:
        """Set training mode (Dropout active) on this module and every descendant; returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be a bool, got {mode!r}")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self: M) -> M:
        """``train(False)``: evaluation mode (Dropout is the identity)."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad``: ``None`` (the default) or zeros."""
        for p in self.parameters():
            if p.grad is not None:
                # a fresh tensor, never zeroed in place: a .grad may share storage with another's
                p.grad = (
                    None
                    if set_to_none
                    else Tensor2D.from_native(p.kernels.full(p.nrows, p.ncols, 0.0, p.dtype), p.kernels)
                )

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self, *, prefix: str = "", keep_vars: bool = False) -> OrderedDict[str, Tensor2D]:
        """``OrderedDict`` of dotted name -> tensor sharing the parameter's storage (detached).

        As in PyTorch, a parameter shared by two modules appears under both names.
        """
        out: OrderedDict[str, Tensor2D] = OrderedDict()
        for name, param in self.named_parameters(prefix=prefix, remove_duplicate=False):
            out[name] = param if keep_vars else param.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy the values of ``state_dict`` into the parameters, in place.

        Values may be Tensor2D or 2-D arrays of any dtype and backend (converted to the
        parameter's); a 1-D value of length n fills a (1, n) parameter (PyTorch stores biases
        1-D), and a value of the shape a layer declares in ``checkpoint_shapes()`` fills its
        parameter row-major (a ``Conv2d`` weight from PyTorch's ``(out, in, kh, kw)``). Nothing is
        copied unless every entry fits: a ``CheckpointError`` lists every
        missing, unexpected (when ``strict``) and mis-shaped key. Returns
        ``(missing_keys, unexpected_keys)``.
        """
        name = self._get_name()
        if not isinstance(state_dict, Mapping):
            raise ArgumentTypeError(
                f"load_state_dict for {name}: expected a dict-like state_dict (name -> tensor), "
                f"got {type(state_dict).__name__}"
            )
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        entries: dict[str, Any] = {}
        wrong_type: list[str] = []
        for key in own:
            if key in state_dict:
                entries[key], why = _entry(key, state_dict[key])
                if why is not None:
                    wrong_type.append(why)
        if wrong_type:
            raise DTypeError(
                f"load_state_dict for {name}: "
                + "\n  ".join(["entries of the wrong type (nothing was loaded):", *wrong_type])
            )
        mismatched: list[str] = []
        declared = self._checkpoint_shapes()
        for key, value in entries.items():
            param = own[key]
            shape = tuple(int(s) for s in value.shape)
            if (
                shape != param.shape
                and not (len(shape) == 1 and param.nrows == 1 and shape[0] == param.ncols)
                and shape != declared.get(key)
            ):
                mismatched.append(f"{key}: the checkpoint has {_fmt(shape)}, the model has {_fmt(param.shape)}")
        problems: list[str] = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(f"{k} ({_fmt(own[k].shape)})" for k in missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(f"{k} ({_shape_of(state_dict[k])})" for k in unexpected))
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if strict and (missing or unexpected):
            problems.append("(load_state_dict(..., strict=False) skips missing and unexpected keys)")
        if problems:
            raise CheckpointError(
                f"load_state_dict for {name}: "
                + "\n  ".join(["the checkpoint does not fit the model (nothing was loaded):", *problems])
            )
        values: dict[str, Tensor2D] = {}
        failed: list[str] = []
        for key, value in entries.items():
            try:
                values[key] = self._converted(value, own[key])
            except (MatgradError, TypeError, ValueError) as exc:
                failed.append(f"{key}: {exc}")
        if failed:
            raise CheckpointError(
                f"load_state_dict for {name}: "
                + "\n  ".join(["entries that cannot be converted (nothing was loaded):", *failed])
            )
        with no_grad():
            for key, value in values.items():
                own[key].copy_(value)
        return IncompatibleKeys(missing, unexpected)

    def _checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Other shapes the layers store parameters in (``checkpoint_shapes()``), by state-dict key."""
        shapes: dict[str, tuple[int, ...]] = {}
        for prefix, module in self.named_modules(remove_duplicate=False):
            declared = getattr(module, "checkpoint_shapes", None)
            if callable(declared):
                for key, shape in declared().items():
                    shapes[f"{prefix}.{key}" if prefix else key] = tuple(int(d) for d in shape)
        return shapes

    @staticmethod
    def _converted(value: Any, param: Tensor2D) -> Tensor2D:
        """``value`` (a Tensor2D or an array from ``_entry``) with the parameter's shape, dtype and backend."""
        if isinstance(value, Tensor2D):
            if value.kernels is param.kernels and value.dtype == param.dtype:
                return value
            return Tensor2D(value, dtype=param.dtype, backend=param.kernels)
        if len(value.shape) != 2:  # a 1-D bias is a row; a conv weight (out, in, kh, kw) is (out, in*kh*kw)
            value = value.reshape(param.nrows, param.ncols)
        return Tensor2D(value, dtype=param.dtype, backend=param.kernels)

    # -- conversion -----------------------------------------------------------------------------
    def to(self: M, dtype: Any = None, backend: str | None = None, device: str | None = None) -> M:
        """Convert every parameter (and its ``.grad``) in place to ``dtype`` / ``backend`` / ``device``; returns self.

        The parameters stay the same objects, so an optimiser built before still holds them
        (its state, if any, keeps the old dtype: build optimisers after ``to``).
        """
        dt = None if dtype is None else dtype_name(dtype)
        if dt is not None and dt not in FLOAT_DTYPES:
            raise DTypeError(f"{self._get_name()}.to: parameters must be floating, not {dt}")
        be = None if backend is None else _backends.get(backend, device)
        for p in self.parameters():
            new_be = be or (p.kernels if device is None else _backends.get(p.kernels, device))
            new_dt = dt or p.dtype
            if new_be is p.kernels and new_dt == p.dtype:
                continue
            with no_grad():
                p.set_(Tensor2D(p.detach(), dtype=new_dt, backend=new_be))
            if p.grad is not None:
                p.grad = Tensor2D(p.grad.detach(), dtype=new_dt, backend=new_be)
        return self

    def float(self: M) -> M:
        """``to("float32")``."""
        return self.to("float32")

    def double(self: M) -> M:
        """``to("float64")``."""
        return self.to("float64")

    # -- display --------------------------------------------------------------------------------
    def _get_name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr line (e.g. the layer sizes)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({key}): " + _addindent(repr(module), 2) for key, module in self._modules.items()]
        lines = extra_lines + child_lines
        text = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                text += extra_lines[0]
            else:
                text += "\n  " + "\n  ".join(lines) + "\n"
        return text + ")"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._modules))


def _positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as a positive int, or a TypeError / ArgumentError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ArgumentError(f"{owner}: {name} must be at least 1, got {value}")
    return int(value)
