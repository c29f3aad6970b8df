"""Which modules every op was recorded inside: the module clusters of the diagrams.

Installed once, when matgrad is imported: a graph record hook stamps each recorded op with the
stack of ``nn.Module`` calls in progress in this thread (``matgrad.nn.module.module_stack()``,
outermost first) as ``op.scope``. The engine itself knows nothing of modules.
"""

from __future__ import annotations

from typing import Any

from matgrad.autograd.graph import Op, RemovableHandle, register_record_hook
from matgrad.nn.module import _calls, module_stack

__all__ = ["current_scope", "install", "uninstall"]

_handles: list[RemovableHandle] = []


def current_scope() -> tuple[Any, ...]:
    """The modules being called in this thread, outermost first."""
    return module_stack()


def _stamp(op: Op) -> None:
    modules = _calls.stack
    if modules:
        op.scope = modules


def install() -> None:
    """Start recording module scopes (done when matgrad is imported; idempotent)."""
    if not _handles:
        _handles.append(register_record_hook(_stamp))


def uninstall() -> None:
    """Stop recording module scopes (diagrams then draw no module clusters for new graphs)."""
    while _handles:
        _handles.pop().remove()
