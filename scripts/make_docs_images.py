"""Draw the pictures of docs/diagrams.md and time drawing a 784-128-64-10 MLP's loss graph.

Run from anywhere (needs Graphviz's dot: apt-get install graphviz):

    python scripts/make_docs_images.py

Writes docs/images/mlp_forward.svg (the forward graph of an untrained MLP on one batch),
docs/images/mlp_gradients.svg (the same graph after backward, with gradient norms) and
docs/images/mlp_backward.svg (the gradient graph that create_graph=True records).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import matgrad as mg
from matgrad import nn, viz

SIZES = [784, 128, 64, 10]  # the MNIST MLP: 784 pixels, two hidden layers, 10 classes
BATCH = 32  # rows of the batch drawn
SEED = 0  # same seed, same values, same bytes
REPEAT = 5  # timings are the median of this many runs
OUT = Path(__file__).resolve().parent.parent / "docs" / "images"


def batch() -> tuple[nn.Module, mg.Tensor2D, list[int]]:
    """A fresh, untrained MLP and one batch of pixel-like inputs with labels."""
    mg.manual_seed(SEED)
    model = nn.MLP(SIZES)
    return model, mg.rand(BATCH, SIZES[0]), [i % SIZES[-1] for i in range(BATCH)]


def median_ms(fn: object) -> float:
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    model, x, y = batch()
    pictures = {
        "mlp_forward.svg": viz.draw_model_graph(model, x, y, grad=False),
        "mlp_gradients.svg": viz.draw_model_graph(model, x, y, show_values=True),
        "mlp_backward.svg": viz.draw_model_graph(model, x, y, grad=False, backward=True),
    }
    for name, dot in pictures.items():
        path = viz.render_graph(dot, OUT / name)
        print(f"wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size:,} bytes)")

    def forward() -> mg.Tensor2D:
        return mg.functional.cross_entropy(model(x), y)

    loss = forward()
    trained = forward()
    trained.backward()
    dot = viz.draw_graph(loss, params=model)
    scratch = OUT / ".timing.svg"
    figures = {
        "forward pass + loss (for scale)": lambda: forward(),
        "draw_graph(loss).source": lambda: viz.draw_graph(loss, params=model).source,
        "draw_graph(..., show_values, show_grad)": lambda: (
            viz.draw_graph(trained, params=model, show_values=True, show_grad=True).source
        ),
        "dot: DOT -> SVG (dot.pipe)": lambda: dot.pipe(format="svg"),
        "render_graph(loss, 'g.svg') end to end": lambda: viz.render_graph(loss, scratch, params=model),
        "text_graph(loss)": lambda: viz.text_graph(loss, params=model),
    }
    print(f"\n{'-'.join(map(str, SIZES))} MLP, batch {BATCH}, backend {mg.get_backend()}, median of {REPEAT}:")
    for what, fn in figures.items():
        print(f"  {what:42s} {median_ms(fn):8.2f} ms")
    scratch.unlink()


if __name__ == "__main__":
    main()
