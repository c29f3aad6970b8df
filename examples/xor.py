"""Learn XOR, the classic problem a single linear layer cannot solve, with a 2-4-1 MLP.

Four points, two classes: (0,0) and (1,1) are 0, (0,1) and (1,0) are 1. A hidden tanh layer
bends the plane so that one line separates them. The model outputs a logit; the loss is binary
cross-entropy on logits, minimised by full-batch Adam. The loss is printed as it falls, then
the four predictions; the script exits with status 1 if any of them is wrong.

Run:

    python examples/xor.py
    python examples/xor.py --backend python --steps 300 --seed 1
"""

import argparse
import sys

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim

HIDDEN = 4  # tanh units in the hidden layer (2 is enough in principle, but gets stuck more often)
STEPS = 500  # full-batch Adam steps
LR = 0.05  # Adam's learning rate
PRINT_EVERY = 50  # steps between progress lines
SEED = 0  # initialisation

INPUTS = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
TARGETS = [[0.0], [1.0], [1.0], [0.0]]


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive, default=STEPS, help=f"optimiser steps (default {STEPS})")
    p.add_argument("--hidden", type=positive, default=HIDDEN, help=f"hidden units (default {HIDDEN})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    mg.manual_seed(args.seed)

    x = mg.Tensor2D(INPUTS)
    y = mg.Tensor2D(TARGETS)
    model = nn.MLP([2, args.hidden, 1], activation="tanh")
    opt = optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"backend {mg.get_backend()} | MLP 2-{args.hidden}-1 (tanh) | BCE with logits | "
        f"Adam lr {args.lr:g} | {args.steps} steps | seed {args.seed}"
    )

    for step in range(1, args.steps + 1):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % PRINT_EVERY == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.6f}")

    with mg.no_grad():
        probs = model(x).sigmoid().tolist()
    correct = 0
    print("\n  x1   x2   target   p(y=1)   prediction")
    for (x1, x2), (t,), (p,) in zip(INPUTS, TARGETS, probs):
        pred = int(p > 0.5)
        correct += pred == int(t)
        print(f"  {x1:.0f}    {x2:.0f}    {t:.0f}        {p:.4f}   {pred}  {'ok' if pred == int(t) else 'WRONG'}")
    print(f"\n{correct}/4 correct")
    if correct != 4:
        sys.exit(f"xor.py: only {correct}/4 correct; try more --steps or another --seed")


if __name__ == "__main__":
    main()
