"""Look inside a computation: print the graph behind an MLP's loss, and draw it with Graphviz.

A small MLP computes the cross-entropy loss of one random batch, and ``backward()`` fills the
gradients. ``matgrad.viz.text_graph`` prints the graph as an indented tree (output first,
inputs below), with each tensor's shape, value range and gradient norm; this needs nothing
but matgrad. Then ``matgrad.viz.render_graph`` draws the same graph to an SVG when Graphviz's
``dot`` program is installed (otherwise the DOT text is written, to render elsewhere).

Run:

    python examples/draw_graph.py                       # writes mlp_graph.svg
    python examples/draw_graph.py --output graph.png --backward
    python examples/draw_graph.py --backend python --output graph.dot
"""

import argparse
import shutil
from pathlib import Path

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, viz

SIZES = (4, 8, 3)  # the MLP: 4 inputs, 8 hidden ReLU units, 3 classes
BATCH = 5  # rows in the example batch
OUTPUT = "mlp_graph.svg"  # the drawing: .svg, .png, .pdf (need Graphviz's dot) or .dot (DOT text)
SEED = 0  # inputs, labels and initialisation


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", "-o", default=OUTPUT, help=f"drawing to write (default {OUTPUT})")
    p.add_argument("--backward", action="store_true", help="draw the gradient graph instead of the forward one")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    mg.manual_seed(args.seed)

    model = nn.MLP(list(SIZES))
    x = mg.randn(BATCH, SIZES[0])
    y = mg.Tensor2D([[i % SIZES[-1]] for i in range(BATCH)], dtype="int64")
    loss = F.cross_entropy(model(x), y)
    print(f"backend {mg.get_backend()} | MLP {'-'.join(map(str, SIZES))} | batch of {BATCH} | loss {loss.item():.4f}\n")
    if args.backward:  # drawing the gradient graph runs mg.grad itself, before backward() frees the graph
        dot = viz.draw_graph(loss, params=model, backward=True)
    loss.backward()
    print(viz.text_graph(loss, params=model, show_values=True, show_grad=True))
    if not args.backward:
        dot = viz.draw_graph(loss, params=model, show_grad=True)

    output = Path(args.output)
    if output.suffix.lower() in (".svg", ".png", ".pdf") and shutil.which("dot") is None:
        output = output.with_suffix(".dot")
        print(
            f"\nGraphviz's dot program was not found (apt-get install graphviz, brew install graphviz); "
            f"writing the DOT text to {output} instead"
        )
    viz.render_graph(dot, output)
    what = "gradient graph" if args.backward else "forward graph, with gradient norms,"
    print(f"\ndrew the {what} to {output} ({output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
