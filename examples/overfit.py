"""Overfit 1,000 MNIST training images on purpose, to 100% training accuracy.

Memorising a small training set is the first sanity check of a network and its gradients:
if the model cannot reach 100% on 1,000 images, something is broken. This is what the
from-scratch blog post behind matgrad set out to do. The script trains an MLP with Adam and
stops at the first epoch where every training image is classified correctly (or fails with
exit status 1 after MAX_EPOCHS). It then reports the test accuracy for contrast: far below
100%, because 1,000 images are too few to generalise from.

By default the images are the first 1,000 of the sample shipped with matgrad (no files
needed); ``--data DIR`` takes them from full MNIST instead.

Run:

    python examples/overfit.py
    python examples/overfit.py --data DIR --limit 1000
    python examples/overfit.py --backend python --limit 200 --hidden 32
"""

import argparse
import sys
import time

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim
from matgrad.data import DataLoader, load_mnist
from matgrad.metrics import accuracy, predict

LIMIT = 1000  # training images to memorise: the first LIMIT of the training set
HIDDEN = 128  # one hidden ReLU layer: MLP 784-128-10
MAX_EPOCHS = 100  # give up (exit status 1) if 100% is not reached by then
BATCH_SIZE = 32  # images per optimiser step
LR = 1e-3  # Adam's learning rate
SEED = 0  # initialisation and shuffling


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", metavar="DIR", help="full MNIST directory (default: the sample shipped with matgrad)")
    p.add_argument("--limit", type=positive, default=LIMIT, help=f"training images to overfit (default {LIMIT})")
    p.add_argument("--hidden", type=positive, default=HIDDEN, help=f"hidden units (default {HIDDEN})")
    p.add_argument("--epochs", type=positive, default=MAX_EPOCHS, help=f"most epochs to try (default {MAX_EPOCHS})")
    p.add_argument("--batch-size", type=positive, default=BATCH_SIZE, help=f"default {BATCH_SIZE}")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR:g})")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    try:
        data = load_mnist(args.data) if args.data else load_mnist(sample=True)
    except mg.MatgradError as exc:
        sys.exit(f"overfit.py: {exc}")
    source = f"MNIST from {args.data}" if args.data else "the MNIST sample shipped with matgrad"
    x, y = data.x_train[: args.limit], data.y_train[: args.limit]

    mg.manual_seed(args.seed)
    model = nn.MLP([784, args.hidden, 10])
    opt = optim.Adam(model.parameters(), lr=args.lr)
    loader = DataLoader(x, y, args.batch_size, shuffle=True, seed=args.seed)
    print(
        f"backend {mg.get_backend()} | the first {x.nrows} training images of {source} | "
        f"MLP 784-{args.hidden}-10 | Adam lr {args.lr:g} | batch {args.batch_size} | seed {args.seed}"
    )

    started = time.perf_counter()
    train_acc = 0.0
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * xb.nrows
        train_acc = accuracy(predict(model, x), y)
        print(f"epoch {epoch:3d}  loss {total / x.nrows:.4f}  train acc {train_acc:7.2%}")
        if train_acc == 1.0:
            break
    elapsed = time.perf_counter() - started

    test_acc = accuracy(predict(model, data.x_test), data.y_test)
    print(f"\ntrain accuracy {train_acc:.2%} on {x.nrows} images after {epoch} epochs ({elapsed:.1f}s)")
    print(f"test accuracy  {test_acc:.2%} on {data.x_test.nrows} unseen images: memorised, not generalised")
    if train_acc < 1.0:
        sys.exit(f"overfit.py: did not reach 100% training accuracy in {args.epochs} epochs")


if __name__ == "__main__":
    main()
