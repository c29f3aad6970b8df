"""``Optimizer``: parameter groups, per-parameter state and checkpoints, laid out as PyTorch's.

Subclasses check their hyper-parameters in ``_check_group`` and update one group's parameters
in ``_step_group``; ``step`` runs that under ``no_grad`` so no graph is recorded and the
parameters stay leaves. Updates call the backend kernels on the raw matrices directly, in place.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Iterable, Mapping, Union

from matgrad import autograd as _autograd
from matgrad._errors import ArgumentError, BackendError, CheckpointError, DTypeError, ShapeError, at_user_site
from matgrad.backends.base import FLOAT_DTYPES, Data
from matgrad.tensor import Tensor2D, _wrap

__all__ = ["Optimizer", "ParamsT"]

ParamsT = Union[Iterable[Tensor2D], Iterable[dict[str, Any]]]
"""What an optimiser takes: tensors (``model.parameters()``) or dicts with per-group options."""


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class Optimizer:
    """Base class: ``param_groups`` (list of dicts: ``"params"`` and options), ``state`` (param -> dict)."""

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]
    state: dict[Tensor2D, dict[str, Any]]

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.state = {}
        self.param_groups = []
        if isinstance(params, Tensor2D):
            raise TypeError(
                at_user_site(f"{name}: params must be an iterable of tensors or dicts; wrap the single tensor: [p]")
            )
        from matgrad.nn.module import Module  # nn sits above optim's inputs, import lazily

        if isinstance(params, Module):
            raise TypeError(at_user_site(f"{name}: pass model.parameters(), not the model itself"))
        try:
            groups: list[Any] = list(params)
        except TypeError:
            raise TypeError(
                at_user_site(f"{name}: params must be an iterable of tensors or dicts, got {type(params).__name__}")
            ) from None
        if not groups:
            raise ArgumentError(
                at_user_site(
                    f"{name}: got an empty parameter list; pass model.parameters() (a generator can be used "
                    "only once: was it consumed already?)"
                )
            )
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- hooks for subclasses ---------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ArgumentError (a ValueError) for an option outside its valid range."""

    def _step_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement _step_group")

    # -- groups -----------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], "lr": ..., ...}``; options it omits take the defaults."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(at_user_site(f"{name}: a parameter group must be a dict, got {type(param_group).__name__}"))
        if "params" not in param_group:
            raise ArgumentError(at_user_site(f"{name}: a parameter group needs a 'params' entry"))
        group = dict(param_group)
        raw = group["params"]
        if isinstance(raw, (set, frozenset)):
            raise TypeError(at_user_site(f"{name}: parameters must come in an ordered collection (a list), not a set"))
        params: list[Tensor2D] = [raw] if isinstance(raw, Tensor2D) else list(raw)
        if not params:
            raise ArgumentError(at_user_site(f"{name}: a parameter group has an empty 'params' list"))
        seen: set[int] = set()
        for p in params:
            if not isinstance(p, Tensor2D):
                raise TypeError(at_user_site(f"{name}: can only optimise Tensor2D parameters, got {type(p).__name__}"))
            if not p.is_leaf:
                raise ArgumentError(
                    at_user_site(
                        f"{name}: cannot optimise a non-leaf tensor (the output of {p.op.describe() if p.op else ''}); "
                        "optimise the leaves it was computed from"
                    )
                )
            if p.dtype not in FLOAT_DTYPES:
                raise DTypeError(at_user_site(f"{name}: parameters must be floating, got a {p.dtype} tensor"))
            if id(p) in seen:
                raise ArgumentError(
                    at_user_site(f"{name}: a {_fmt(p.shape)} parameter is listed twice; pass each parameter once")
                )
            seen.add(id(p))
        for other in self.param_groups:
            if any(id(q) in seen for q in other["params"]):
                raise ArgumentError(at_user_site(f"{name}: some parameters appear in more than one parameter group"))
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
                    be = p._backend
                    p.grad = None if set_to_none else _wrap(be.full(p.nrows, p.ncols, 0.0, p.dtype), be)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a ``.grad``, in place; returns ``closure()`` if given.

        ``closure`` recomputes the loss (with grad mode on) and calls ``backward``, as in PyTorch.
        """
        loss = None
        if closure is not None:
            with _autograd.enable_grad():
                loss = closure()
        with _autograd.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _grad(self, p: Tensor2D) -> Data | None:
        """The raw gradient of ``p``, or None when it has none; checked against ``p``."""
        g = p.grad
        if g is None:
            return None
        gd = g._data
        if gd.shape != p._data.shape or g._backend is not p._backend or gd.dtype != p._data.dtype:
            what = f"{_fmt(g.shape)} {g.dtype} on {g.backend}"
            message = (
                f"{type(self).__name__}.step: a {_fmt(p.shape)} {p.dtype} parameter on {p.backend} has a .grad "
                f"of {what}; gradients must match their parameter"
            )
            if gd.shape != p._data.shape:
                raise ShapeError(at_user_site(message))
            if g._backend is not p._backend:
                raise BackendError(at_user_site(message))
            raise DTypeError(at_user_site(message))
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
        name = type(self).__name__
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise CheckpointError(
                f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' (from state_dict())"
            )
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise CheckpointError(
                f"{name}.load_state_dict: the state dict has {len(saved_groups)} parameter groups, "
                f"this optimiser has {len(self.param_groups)}"
            )
        by_index: dict[int, Tensor2D] = {}
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise CheckpointError(
                    f"{name}.load_state_dict: parameter group {i} has {len(saved['params'])} parameters in "
                    f"the state dict but {len(group['params'])} here"
                )
            by_index.update(zip((int(k) for k in saved["params"]), group["params"]))
        new_state: dict[Tensor2D, dict[str, Any]] = {}
        for key, saved_state in state_dict["state"].items():
            p = by_index.get(int(key))
            if p is None:
                raise CheckpointError(f"{name}.load_state_dict: state for parameter {key}, which no group lists")
            new_state[p] = {k: _load_value(name, f"{key}.{k}", v, p) for k, v in saved_state.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new_group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            new_group["params"] = group["params"]
            self._check_group(new_group)
            new_groups.append(new_group)
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join([*lines, ")"])


def _copy_value(value: Any) -> Any:
    if isinstance(value, Tensor2D):
        return _wrap(value._backend.copy(value._data), value._backend)
    return copy.deepcopy(value)


def _load_value(owner: str, where: str, value: Any, param: Tensor2D) -> Any:
    """A state entry for ``param``: tensors (or arrays) copied to its dtype and backend."""
    if isinstance(value, Tensor2D) or (hasattr(value, "shape") and hasattr(value, "tolist")):
        shape = tuple(value.shape)
        if shape != param.shape:
            raise CheckpointError(
                f"{owner}.load_state_dict: state {where} is {_fmt(shape)} but its parameter is {_fmt(param.shape)}"
            )
        return Tensor2D(value, dtype=param.dtype, backend=param._backend)
    return copy.deepcopy(value)


def check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or a TypeError naming ``owner`` and the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(at_user_site(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}"))
    return float(value)


def check_nonnegative(owner: str, group: Mapping[str, Any], *names: str) -> None:
    """Each option in ``names`` must be a number >= 0 (NaN is refused)."""
    for name in names:
        if not check_number(owner, name, group[name]) >= 0.0:
            raise ArgumentError(at_user_site(f"{owner}: {name} must be >= 0, got {group[name]}"))
