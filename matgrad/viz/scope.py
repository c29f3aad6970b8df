"""Which modules every op was recorded inside: the module clusters of the diagrams.

Installed once, when matgrad is imported, as a pair of global module forward hooks; the engine
itself knows nothing of modules, and recording an op costs nothing extra. When a module is
called, the pre-hook notes where the op sequence stands and pushes the module on this thread's
stack; when its ``forward`` returns, the post-hook walks back from the outputs through the ops
recorded since, and stamps each one not yet stamped with the stack (outermost module first) as
``op.scope``. Inner modules return first, so every op gets its innermost scope. An op computed
inside a module but not on the way to its output is drawn outside it.
"""

from __future__ import annotations

import threading
from typing import Any

from matgrad.autograd import graph as _graph
from matgrad.autograd.graph import RemovableHandle
from matgrad.tensor import Tensor2D

__all__ = ["current_scope", "install", "uninstall"]


class _Stack(threading.local):
    modules: tuple[Any, ...] = ()
    starts: tuple[int, ...] = ()


_stack = _Stack()
_handles: list[RemovableHandle] = []


def current_scope() -> tuple[Any, ...]:
    """The modules being called in this thread, outermost first."""
    return _stack.modules


def _enter(module: Any, args: tuple[Any, ...]) -> None:
    _stack.modules = (*_stack.modules, module)
    _stack.starts = (*_stack.starts, next(_graph._sequence))  # ops recorded from now on number above it


def _leave(module: Any, args: tuple[Any, ...], output: Any) -> None:
    modules, starts = _stack.modules, _stack.starts
    if not modules or modules[-1] is not module:
        return
    scope, start = modules, starts[-1]
    _stack.modules, _stack.starts = modules[:-1], starts[:-1]
    if output is not None:
        _stamp(output, scope, start)


def _stamp(output: Any, scope: tuple[Any, ...], start: int) -> None:
    """Give ``scope`` to every unstamped op recorded since ``start`` on the way to ``output``."""
    todo = [t for t in (output if isinstance(output, (tuple, list)) else (output,)) if isinstance(t, Tensor2D)]
    seen: set[int] = set()
    while todo:
        op = todo.pop()._op
        if op is None or id(op) in seen or getattr(op, "seq", -1) < start:
            continue
        seen.add(id(op))
        if not hasattr(op, "_scope"):
            op.scope = scope
        todo.extend(op.inputs)


def install() -> None:
    """Start recording module scopes (done when matgrad is imported; idempotent)."""
    if _handles:
        return
    from matgrad.nn.module import register_module_forward_hook, register_module_forward_pre_hook

    _handles.append(register_module_forward_pre_hook(_enter))
    _handles.append(register_module_forward_hook(_leave, always_call=True))


def uninstall() -> None:
    """Stop recording module scopes (diagrams then draw no module clusters for new graphs)."""
    while _handles:
        _handles.pop().remove()
    _stack.modules, _stack.starts = (), ()
