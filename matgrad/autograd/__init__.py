"""Autograd: grad modes, the op protocol, the backward engine and user-defined ops.

* ``grad_mode``: ``no_grad``, ``enable_grad``, ``set_grad_enabled``, ``detect_anomaly`` (per thread);
* ``graph``: ``Op`` (every op's base class and its single apply path), ``record``, graph hooks;
* ``engine``: ``backward`` and ``grad`` over one pure propagation function;
* ``function``: ``Function``, a user's op with a user's backward, as ``torch.autograd.Function``;
* ``functional``: ``vjp``, ``jvp``, ``jacobian``, ``hessian``, ``hvp``, ``vhp``, as
  ``torch.autograd.functional`` (Jacobians as matrices by row-major indexing).
"""

from __future__ import annotations

from matgrad.autograd.grad_mode import (
    detect_anomaly,
    enable_grad,
    is_anomaly_enabled,
    is_debug_enabled,
    is_grad_enabled,
    no_grad,
    set_debug,
    set_grad_enabled,
)

from matgrad.autograd.graph import Op, RemovableHandle, record, register_record_hook  # isort: skip
from matgrad.autograd.engine import backward, grad
from matgrad.autograd.function import Function, FunctionCtx

from matgrad.autograd import functional  # isort: skip

__all__ = [
    "Function",
    "FunctionCtx",
    "Op",
    "RemovableHandle",
    "backward",
    "detect_anomaly",
    "enable_grad",
    "functional",
    "grad",
    "is_anomaly_enabled",
    "is_debug_enabled",
    "is_grad_enabled",
    "no_grad",
    "record",
    "register_record_hook",
    "set_debug",
    "set_grad_enabled",
]
