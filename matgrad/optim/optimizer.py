"""``Optimizer``: parameter groups, per-parameter state and checkpoints, laid out as PyTorch's.

Subclasses check their hyper-parameters in ``_check_group`` and update one group's parameters
in ``_step_group``; ``step`` runs that under ``no_grad`` so no graph is recorded and the
parameters stay leaves. Updates call the backend kernels on the raw matrices directly, in place.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Set
from typing import Any, Callable, ClassVar, Iterable, Mapping, Union

from matgrad import autograd as _autograd
from matgrad._errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    CheckpointError,
    DTypeError,
    MatgradError,
    ShapeError,
)
from matgrad.backends.base import FLOAT_DTYPES, Data
from matgrad.tensor import Tensor2D

__all__ = ["Optimizer", "ParamsT"]

ParamsT = Union[Iterable[Tensor2D], Iterable[dict[str, Any]]]
"""What an optimiser takes: tensors (``model.parameters()``) or dicts with per-group options."""

Grads = list[tuple[Tensor2D, Data]]
"""One group's parameters that have a gradient, each with its checked raw gradient."""


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class Optimizer:
    """Base class: ``param_groups`` (list of dicts: ``"params"`` and options), ``state`` (param -> dict)."""

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]
    state: dict[Tensor2D, dict[str, Any]]

    capturable: ClassVar[bool] = False
    """True when a step's kernels depend only on the group options and the state tensors (SGD),
    so ``matgrad.compile`` can replay them, checking the options first; otherwise it calls
    ``step()`` again at every replay (Adam: its step counts change the constants every step)."""
    _state_kinds: ClassVar[dict[str, str]] = {}
    """Per-parameter state entries and what ``load_state_dict`` accepts for each: ``"tensor"``
    (the parameter's shape), ``"tensor or None"``, ``"count"`` (an int >= 0); others are copied."""
    _state_required: ClassVar[tuple[str, ...]] = ()
    """Entries a non-empty per-parameter state must hold."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.state = {}
        self.param_groups = []
        # The option values each group last passed _check_group with (its values() as a tuple):
        # options rarely change between steps, so step() re-checks a group only when they did.
        self._checked: dict[int, tuple[Any, ...]] = {}
        if isinstance(params, Tensor2D):
            raise ArgumentTypeError(
                f"{name}: params must be an iterable of tensors or dicts; wrap the single tensor: [p]"
            )
        from matgrad.nn.module import Module  # nn sits above optim's inputs, import lazily

        if isinstance(params, Module):
            raise ArgumentTypeError(f"{name}: pass model.parameters(), not the model itself")
        if isinstance(params, (Set, Mapping)):
            raise ArgumentTypeError(
                f"{name}: params must be an ordered iterable (a list) of tensors or dicts, not a "
                f"{type(params).__name__}: a set's order is arbitrary, and the order numbers the parameters "
                "in state_dict()"
            )
        try:
            groups: list[Any] = list(params)
        except TypeError:
            raise ArgumentTypeError(
                f"{name}: params must be an iterable of tensors or dicts, got {type(params).__name__}"
            ) from None
        if not groups:
            raise ArgumentError(
                f"{name}: got an empty parameter list; pass model.parameters() (a generator can be used "
                "only once: was it consumed already?)"
            )
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- hooks for subclasses ---------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ArgumentError (a ValueError) for an option outside its valid range."""

    def _step_group(self, group: dict[str, Any], grads: Grads) -> None:
        """Update ``grads``' parameters (those of ``group`` with a gradient, already checked), in place."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _step_group")

    # -- groups -----------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], "lr": ..., ...}``; options it omits take the defaults."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise ArgumentTypeError(f"{name}: a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ArgumentError(f"{name}: a parameter group needs a 'params' entry")
        group = dict(param_group)
        raw = group["params"]
        if isinstance(raw, (Set, Mapping)):
            raise ArgumentTypeError(f"{name}: parameters must come in an ordered collection (a list), not a set")
        params: list[Tensor2D] = [raw] if isinstance(raw, Tensor2D) else list(raw)
        if not params:
            raise ArgumentError(f"{name}: a parameter group has an empty 'params' list")
        seen: set[int] = set()
        for p in params:
            if not isinstance(p, Tensor2D):
                raise ArgumentTypeError(f"{name}: can only optimise Tensor2D parameters, got {type(p).__name__}")
            if not p.is_leaf:
                raise ArgumentError(
                    f"{name}: cannot optimise a non-leaf tensor (the output of {p.op.describe() if p.op else ''}); "
                    "optimise the leaves it was computed from"
                )
            if p.dtype not in FLOAT_DTYPES:
                raise DTypeError(f"{name}: parameters must be floating, got a {p.dtype} tensor")
            if id(p) in seen:
                raise ArgumentError(f"{name}: a {_fmt(p.shape)} parameter is listed twice; pass each parameter once")
            seen.add(id(p))
        for other in self.param_groups:
            if any(id(q) in seen for q in other["params"]):
                raise ArgumentError(f"{name}: some parameters appear in more than one parameter group")
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        self._check_group(group)
        group["params"] = params
        self.param_groups.append(group)

    # -- the update -------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad``: ``None`` (the default, as PyTorch) or fresh zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    be = p.kernels
                    p.grad = None if set_to_none else Tensor2D.from_native(be.full(p.nrows, p.ncols, 0.0, p.dtype), be)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a ``.grad``, in place; returns ``closure()`` if given.

        ``closure`` recomputes the loss (with grad mode on) and calls ``backward``, as in PyTorch.
        """
        loss = None
        if closure is not None:
            with _autograd.enable_grad():
                loss = closure()
        # Check every group and every gradient before updating anything: a failed step leaves
        # every parameter and every state buffer as it was.
        checked: list[Grads] = []
        for group in self.param_groups:
            options = tuple(group.values())
            if self._checked.get(id(group)) != options:
                self._check_group(group)
                self._checked[id(group)] = options
            grads = []
            for p in group["params"]:
                g = self._grad(p)
                if g is not None:
                    grads.append((p, g))
            checked.append(grads)
        with _autograd.no_grad():
            for group, grads in zip(self.param_groups, checked):
                if grads:
                    self._step_group(group, grads)
                    how = f"{type(self).__name__}.step()"
                    for p, _ in grads:  # a graph that saved p before this step can no longer use it
                        p._mark_changed(how)
        return loss

    def _grad(self, p: Tensor2D) -> Data | None:
        """The raw gradient of ``p``, or None when it has none; checked against ``p``."""
        g = p.grad
        if g is None:
            return None
        gd, pd = g.native, p.native
        if gd.shape != pd.shape or g.kernels is not p.kernels or gd.dtype != pd.dtype:
            what = f"{_fmt(g.shape)} {g.dtype} on {g.backend}"
            message = (
                f"{type(self).__name__}.step: a {_fmt(p.shape)} {p.dtype} parameter on {p.backend} has a .grad "
                f"of {what}; gradients must match their parameter (nothing was updated)"
            )
            if gd.shape != pd.shape:
                raise ShapeError(message)
            if g.kernels is not p.kernels:
                raise BackendError(message)
            raise DTypeError(message)
        return gd

    def _state(self, p: Tensor2D) -> dict[str, Any]:
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {}
        return state

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{options..., "params": [indices]}]}``.

        Parameters are numbered in group order, as PyTorch does; state tensors are copies.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {
            index[id(p)]: {k: _copy_value(v) for k, v in s.items()} for p, s in self.state.items() if id(p) in index
        }
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore options and state saved by ``state_dict`` (values converted to each parameter's
        dtype and backend). Nothing changes unless the whole state dict fits."""
        owner = f"{type(self).__name__}.load_state_dict"

        def bad(message: str) -> CheckpointError:
            return CheckpointError(f"{owner}: {message}")

        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise bad("expected a dict with 'state' and 'param_groups' (from state_dict())")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)):
            raise bad(f"'param_groups' must be a list of dicts (from state_dict()), got {type(saved_groups).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise bad(
                f"the state dict has {len(saved_groups)} parameter groups, this optimiser has {len(self.param_groups)}"
            )
        by_index: dict[int, Tensor2D] = {}
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            where = f"param_groups[{i}]"
            if not isinstance(saved, Mapping):
                raise bad(f"{where} must be a dict of options and 'params', got {type(saved).__name__}")
            indices = saved.get("params")
            if not isinstance(indices, (list, tuple)):
                what = "has no 'params'" if "params" not in saved else f"'params' is a {type(indices).__name__}"
                raise bad(f"{where} {what}; expected the list of parameter indices that state_dict() writes")
            for index in indices:
                if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                    raise bad(f"{where}['params'] holds {index!r:.40}; parameter indices must be ints")
            if len(indices) != len(group["params"]):
                raise bad(
                    f"parameter group {i} has {len(indices)} parameters in the state dict but "
                    f"{len(group['params'])} here"
                )
            for index, p in zip(indices, group["params"]):
                if int(index) in by_index:
                    raise bad(f"parameter index {index} is listed twice in 'params'")
                by_index[int(index)] = p
            absent = [k for k in self.defaults if k not in saved]
            if absent:
                raise bad(f"{where} lacks the option{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))}")
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise bad(f"'state' must be a dict of parameter index -> dict, got {type(saved_state).__name__}")
        new_state: dict[Tensor2D, dict[str, Any]] = {}
        for key, entry in saved_state.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral):
                raise bad(f"'state' keys must be parameter indices (ints), got {key!r:.40}")
            p = by_index.get(int(key))
            if p is None:
                raise bad(f"state for parameter {key}, which no group lists")
            if not isinstance(entry, Mapping):
                raise bad(f"state[{key}] must be a dict of buffers, got {type(entry).__name__}")
            absent = [k for k in self._state_required if k not in entry] if entry else []
            if absent:
                raise bad(f"state[{key}] lacks {', '.join(map(repr, absent))}")
            new_state[p] = {k: self._load_value(owner, f"{key}.{k}", k, v, p) for k, v in entry.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new_group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            new_group["params"] = group["params"]
            self._check_group(new_group)
            new_groups.append(new_group)
        self.param_groups = new_groups
        self.state = new_state

    def _load_value(self, owner: str, where: str, name: Any, value: Any, param: Tensor2D) -> Any:
        """A state entry for ``param``: tensors (or arrays) copied to its dtype and backend, counts as ints."""
        kind = self._state_kinds.get(name) if isinstance(name, str) else None
        if kind == "count":
            return _load_count(owner, where, value)
        is_array = isinstance(value, Tensor2D) or (hasattr(value, "shape") and hasattr(value, "tolist"))
        if kind is None and not is_array:
            return copy.deepcopy(value)
        if value is None and kind == "tensor or None":
            return None
        if not is_array:
            raise CheckpointError(f"{owner}: state {where} is a {type(value).__name__}; expected a tensor or an array")
        shape = tuple(value.shape)
        if shape != param.shape:
            raise CheckpointError(
                f"{owner}: state {where} is {_fmt(shape)} but its parameter is {_fmt(param.shape)}"
                if shape
                else f"{owner}: state {where} is a 0-D scalar but its parameter is {_fmt(param.shape)}"
            )
        kind_code = getattr(getattr(value, "dtype", None), "kind", None)
        if kind_code is not None and kind_code not in "iuf":
            raise CheckpointError(f"{owner}: state {where} is an array of {value.dtype} values; expected numbers")
        try:
            return Tensor2D(value, dtype=param.dtype, backend=param.kernels)
        except (MatgradError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{owner}: state {where} cannot be converted: {exc}") from None

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join([*lines, ")"])


def _copy_value(value: Any) -> Any:
    if isinstance(value, Tensor2D):
        return Tensor2D.from_native(value.kernels.copy(value.native), value.kernels)
    return copy.deepcopy(value)


def _load_count(owner: str, where: str, value: Any) -> int:
    """A step count from a state dict: an int >= 0 (a whole float, or a one-element array as PyTorch saves)."""
    v = value
    if not isinstance(v, numbers.Real) and hasattr(v, "shape") and hasattr(v, "item"):
        size = 1
        for n in v.shape:
            size *= int(n)
        v = v.item() if size == 1 else None
    count = float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else math.nan
    if not (math.isfinite(count) and count >= 0 and count.is_integer()):
        raise CheckpointError(f"{owner}: state {where} must be a step count (an int >= 0), got {value!r:.40}")
    return int(count)


def check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or a TypeError naming ``owner`` and the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_nonnegative(owner: str, group: Mapping[str, Any], *names: str) -> None:
    """Each option in ``names`` must be a finite number >= 0 (NaN and Inf are refused)."""
    for name in names:
        value = check_number(owner, name, group[name])
        if not value >= 0.0:
            raise ArgumentError(f"{owner}: {name} must be >= 0, got {group[name]}")
        if not math.isfinite(value):
            raise ArgumentError(f"{owner}: {name} must be finite, got {group[name]}")


def check_finite(owner: str, name: str, value: Any) -> float:
    """``value`` as a finite float: a TypeError for a non-number, an ArgumentError for NaN or Inf."""
    v = check_number(owner, name, value)
    if not math.isfinite(v):
        raise ArgumentError(f"{owner}: {name} must be finite, got {value}")
    return v
