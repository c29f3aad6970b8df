"""Draw docs/images/data_parallel_step.svg: one training step of 2 data-parallel ranks.

Run from anywhere (needs Graphviz's dot: apt-get install graphviz):

    python scripts/make_distributed_diagram.py

Every rank holds the same weights W, takes its own half of the step's 64 rows, runs forward and
backward alone, and the ranks meet once, in the all-reduce that averages their gradients; then
each takes the same step, so the weights stay equal without ever being sent again.
"""

from __future__ import annotations

from pathlib import Path

import graphviz

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "data_parallel_step.svg"
RANKS = 2
ROWS = 64  # rows of the step (the global batch)
FONT = "Helvetica"


def diagram() -> graphviz.Digraph:
    g = graphviz.Digraph("data_parallel_step")
    g.attr(rankdir="TB", nodesep="0.35", ranksep="0.32", fontname=FONT, fontsize="12", bgcolor="transparent")
    g.attr(
        "node", shape="box", style="rounded,filled", fillcolor="#ffffff", color="#5c6bc0", fontname=FONT, fontsize="11"
    )
    g.attr("edge", color="#5c6bc0", fontname=FONT, fontsize="10")
    g.node(
        "batch",
        f"step k: rows {ROWS} k .. {ROWS} k + {ROWS - 1} of the epoch's permutation\n"
        "(the same seeded shuffle on every rank)",
        fillcolor="#e8eaf6",
    )
    g.node(
        "reduce",
        "all-reduce (SUM), then ÷ 2\nḡ = (g₀ + g₁) / 2\none call per bucket of gradients (≤ 25 MB)",
        shape="box",
        style="filled",
        fillcolor="#ffe0b2",
        color="#ef6c00",
        fontsize="12",
    )
    part = ROWS // RANKS
    sub = "₀₁"
    for r in range(RANKS):
        with g.subgraph(name=f"cluster_rank{r}") as c:
            c.attr(label=f"rank {r}  (process {r}, 1 thread)", style="rounded", color="#9fa8da", fontcolor="#3949ab")
            c.node(f"x{r}", f"its {part} rows: {part * r} .. {part * r + part - 1} of the step")
            c.node(f"w{r}", "W  (equal on every rank)", fillcolor="#f3e5f5", color="#8e24aa")
            c.node(f"fwd{r}", f"forward:  L{sub[r]} = mean of {part} losses")
            c.node(f"bwd{r}", f"backward:  g{sub[r]} = ∂L{sub[r]}/∂W")
            c.edge(f"x{r}", f"fwd{r}")
            c.edge(f"w{r}", f"fwd{r}")
            c.edge(f"fwd{r}", f"bwd{r}")
        g.edge("batch", f"x{r}", label=f" rows {part * r}..{part * r + part - 1}")
        g.edge(f"bwd{r}", "reduce", label=f" g{sub[r]}")
    with g.subgraph() as row:
        row.attr(rank="same")
        for r in range(RANKS):
            row.node(
                f"step{r}",
                f"rank {r}: optimiser step with ḡ\n(the same step everywhere: W stays equal)",
                fillcolor="#e8f5e9",
                color="#2e7d32",
            )
    for r in range(RANKS):
        g.edge("reduce", f"step{r}", label=" ḡ")
    g.attr(
        label=f"ḡ is the gradient of the mean loss over all {ROWS} rows: what one process with batch {ROWS} computes",
        labelloc="b",
        fontsize="11",
        fontcolor="#555555",
    )
    g.node(
        "start",
        "before the first step: DistributedDataParallel(model) broadcasts rank 0's W to every rank",
        shape="plaintext",
        style="",
        fontsize="10",
        fontcolor="#555555",
    )
    g.edge("start", "batch", style="invis")
    return g


def main() -> None:
    svg = diagram().pipe(format="svg")
    OUT.write_bytes(svg)
    print(f"wrote {OUT.relative_to(OUT.parent.parent.parent)} ({len(svg):,} bytes)")


if __name__ == "__main__":
    main()
