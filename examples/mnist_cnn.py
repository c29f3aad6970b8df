"""Train a small CNN on MNIST with matgrad: the documented recipe for >= 99% test accuracy.

The model is written as in PyTorch; only the first layer is told the image size, and the
Sequential passes each layer's output size down to the next:

    Conv2d(1, 16, 5) ReLU MaxPool2d(2) Conv2d(16, 32, 5) ReLU MaxPool2d(2) Flatten
    Linear(512, 128) ReLU Linear(128, 10)

Adam (lr 0.002) with a cosine learning-rate schedule over 6 epochs, mini-batches of 64: the
recipe of ``matgrad train --model cnn``. docs/examples.md has the measured runs. ``--save``
writes a safetensors checkpoint that the same ``torch.nn.Sequential`` loads unchanged.

Run it with the four MNIST files (gzipped or not) in a directory:

    python examples/mnist_cnn.py --data DIR
    python examples/mnist_cnn.py --data DIR --save cnn.safetensors

A quick run on the sample shipped with matgrad (no files needed), e.g. in CI:

    python examples/mnist_cnn.py --sample --epochs 2 --limit 2000
    python examples/mnist_cnn.py --sample --backend python --epochs 1 --limit 64 --test-limit 50 --channels 4,8
"""

import argparse
import sys
import time

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim
from matgrad.data import DataLoader, load_mnist
from matgrad.metrics import confusion_matrix, format_confusion_matrix

# -- the recipe -------------------------------------------------------------------------------
CHANNELS = (16, 32)  # feature maps of the two 5x5 convolutions
HIDDEN = 128  # units of the fully connected layer after them
EPOCHS = 6  # passes over the 60,000 training images
BATCH_SIZE = 64  # images per optimiser step
LR = 2e-3  # Adam's initial learning rate, annealed to 0 along a cosine over EPOCHS
SEED = 0  # initialisation and shuffling
EVAL_BATCH = 1000  # images per forward pass when evaluating (no graph is built)


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def pair(text):
    """argparse type: two comma-separated channel counts such as 16,32."""
    parts = [positive(p) for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two channel counts like 16,32, got {text!r}")
    return parts


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", metavar="DIR", help="directory with the four MNIST files (default: $MATGRAD_DATA)")
    p.add_argument("--download", action="store_true", help="download MNIST into --data (or the cache) if missing")
    p.add_argument("--sample", action="store_true", help="use the small sample shipped with matgrad instead")
    p.add_argument("--epochs", type=positive, default=EPOCHS, help=f"passes over the training set (default {EPOCHS})")
    p.add_argument("--batch-size", type=positive, default=BATCH_SIZE, help=f"default {BATCH_SIZE}")
    p.add_argument("--lr", type=float, default=LR, help=f"initial learning rate (default {LR:g})")
    p.add_argument("--channels", type=pair, default=list(CHANNELS), help="conv channels (default 16,32)")
    p.add_argument("--hidden", type=positive, default=HIDDEN, help=f"fully connected units (default {HIDDEN})")
    p.add_argument("--limit", type=positive, metavar="N", help="train on the first N training images only")
    p.add_argument("--test-limit", type=positive, metavar="N", help="evaluate on the first N test images only")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    p.add_argument("--save", metavar="FILE", help="write the trained model (.safetensors, PyTorch's shapes)")
    return p.parse_args()


def cnn(c1, c2, hidden):
    """The model, as PyTorch would write it, plus image_size on the first layer."""
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, image_size=(28, 28)),  # 1x28x28 -> c1 x 24x24
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> c1 x 12x12
        nn.Conv2d(c1, c2, 5),  # -> c2 x 8x8
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> c2 x 4x4
        nn.Flatten(),  # the identity on rows: there so the layer indices match PyTorch's
        nn.Linear(c2 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def evaluate(model, x, y):
    """Mean cross-entropy and predicted classes on (x, y), in eval mode and without a graph."""
    model.eval()
    total, preds = 0.0, []
    with mg.no_grad():
        for lo in range(0, x.nrows, EVAL_BATCH):
            logits = model(x[lo : lo + EVAL_BATCH])
            total += F.cross_entropy(logits, y[lo : lo + EVAL_BATCH], reduction="sum").item()
            preds += [row[0] for row in logits.argmax(axis=1).tolist()]
    model.train()
    return total / x.nrows, preds


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)

    try:
        if args.sample:
            data = load_mnist(sample=True)
            source = "the MNIST sample shipped with matgrad"
        else:
            data = load_mnist(args.data, download=args.download)
            source = f"MNIST from {args.data or mg.data.default_root()}"
    except mg.MatgradError as exc:
        sys.exit(f"mnist_cnn.py: {exc}\n(or run with --sample for the small sample shipped with matgrad)")
    x_train, y_train = data.x_train[: args.limit], data.y_train[: args.limit]
    x_test, y_test = data.x_test[: args.test_limit], data.y_test[: args.test_limit]

    mg.manual_seed(args.seed)
    model = cnn(*args.channels, args.hidden)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    schedule = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    n_params = sum(p.nrows * p.ncols for p in model.parameters())
    print(f"backend {mg.get_backend()} | {source}: {x_train.nrows} training, {x_test.nrows} test images")
    print(
        f"CNN conv5x5({args.channels[0]}) pool conv5x5({args.channels[1]}) pool {args.hidden} 10 ({n_params:,} "
        f"parameters) | Adam lr {args.lr:g}, cosine over {args.epochs} epochs | batch {args.batch_size}"
    )

    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        total = 0.0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * xb.nrows
        schedule.step()
        train_time = time.perf_counter() - t0
        test_loss, preds = evaluate(model, x_test, y_test)
        test_acc = mg.metrics.accuracy(preds, y_test)
        print(
            f"epoch {epoch:2d}/{args.epochs}  lr {lr:.2e}  train loss {total / x_train.nrows:.4f}  "
            f"test loss {test_loss:.4f}  test acc {test_acc:6.2%}  time {train_time:5.1f}s"
        )

    elapsed = time.perf_counter() - started
    correct = round(test_acc * x_test.nrows)
    print(
        f"\nfinal test accuracy {test_acc:.2%} ({correct}/{x_test.nrows}) after {args.epochs} epochs in {elapsed:.1f}s"
    )
    print("\nconfusion matrix (rows: true digit, columns: predicted):")
    print(format_confusion_matrix(confusion_matrix(preds, y_test)))
    if args.save:
        mg.save(model, args.save)
        print(f"\nsaved to {args.save}: conv weights stored (out, in, 5, 5), as torch.nn.Conv2d's")


if __name__ == "__main__":
    main()
