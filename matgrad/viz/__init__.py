"""Diagrams of the graph: ``draw_graph`` (Graphviz DOT), ``render_graph`` (SVG, PNG, PDF), ``text_graph``,
and ``explore`` (an interactive page that steps through the forward and backward passes).

The drawing functions live in ``matgrad.viz.graph``, the explorer in ``matgrad.viz.explorer``; both
are loaded on first use (the graphviz package takes ~25 ms to import); ``matgrad.viz.scope``
records which modules every op ran in; ``matgrad.viz.rules`` writes an op's docstring rule as LaTeX
for the explorer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API docs; at run time loaded on first use
    from matgrad.viz.explorer import Explorer, explore
    from matgrad.viz.graph import draw_graph, draw_model_graph, render_graph, text_graph

__all__ = ["Explorer", "draw_graph", "draw_model_graph", "explore", "render_graph", "text_graph"]

_LAZY = {name: "matgrad.viz.graph" for name in ("draw_graph", "draw_model_graph", "render_graph", "text_graph")}
_LAZY.update({name: "matgrad.viz.explorer" for name in ("Explorer", "explore")})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'matgrad.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
