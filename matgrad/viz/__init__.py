"""Diagrams of the graph: ``draw_graph`` (Graphviz DOT), ``render_graph`` (SVG, PNG, PDF) and ``text_graph``.

The drawing functions live in ``matgrad.viz.graph`` and are loaded on first use (the graphviz
package takes ~25 ms to import); ``matgrad.viz.scope`` records which modules every op ran in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API docs; at run time loaded on first use
    from matgrad.viz.graph import draw_graph, draw_model_graph, render_graph, text_graph

__all__ = ["draw_graph", "draw_model_graph", "render_graph", "text_graph"]

_LAZY = {name: "matgrad.viz.graph" for name in __all__}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'matgrad.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
