"""Which modules every op was recorded inside: the module clusters of the diagrams.

Installed once, when matgrad is imported: a pair of global module forward hooks keeps, per
thread, the stack of ``nn.Module`` calls in progress, and a graph record hook stamps that stack
on each op as ``op.scope`` (outermost module first). The engine itself knows nothing of modules.
"""

from __future__ import annotations

import threading
from typing import Any

from matgrad.autograd.graph import Op, RemovableHandle, register_record_hook

__all__ = ["current_scope", "install", "uninstall"]


class _Stack(threading.local):
    modules: tuple[Any, ...] = ()


_stack = _Stack()
_handles: list[RemovableHandle] = []


def current_scope() -> tuple[Any, ...]:
    """The modules being called in this thread, outermost first."""
    return _stack.modules


def _enter(module: Any, args: tuple[Any, ...]) -> None:
    _stack.modules = (*_stack.modules, module)


def _leave(module: Any, args: tuple[Any, ...], output: Any) -> None:
    modules = _stack.modules
    if modules and modules[-1] is module:
        _stack.modules = modules[:-1]


def _stamp(op: Op) -> None:
    op.scope = _stack.modules


def install() -> None:
    """Start recording module scopes (done when matgrad is imported; idempotent)."""
    if _handles:
        return
    from matgrad.nn.module import register_module_forward_hook, register_module_forward_pre_hook

    _handles.append(register_module_forward_pre_hook(_enter))
    _handles.append(register_module_forward_hook(_leave, always_call=True))
    _handles.append(register_record_hook(_stamp))


def uninstall() -> None:
    """Stop recording module scopes (diagrams then draw no module clusters for new graphs)."""
    while _handles:
        _handles.pop().remove()
    _stack.modules = ()
