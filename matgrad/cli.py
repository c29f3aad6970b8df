"""The ``matgrad`` command: train an MLP on MNIST, evaluate a checkpoint, draw graphs, show setup.

    matgrad train                      # the shipped 5,000-image sample, MLP 784-128-10, SGD
    matgrad train --model cnn          # a small CNN (two conv layers), Adam
    matgrad train --data DIR --epochs 3 --save model.safetensors
    matgrad eval --model model.safetensors
    matgrad graph --hidden 128,64 -o mlp.svg
    matgrad info

Errors (bad options, missing files, unreadable checkpoints) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from typing import Any, NoReturn, Sequence

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument types ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**64 - 1, got {value}")
    return value


def _hidden_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated layer sizes like 128,64, got {text!r}"
            ) from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {size}")
        sizes.append(size)
    return sizes


def _build_parser() -> argparse.ArgumentParser:
    from matgrad import __version__

    parser = _Parser(
        prog="matgrad",
        description="Autodiff at matrix granularity: train an MLP or a CNN on MNIST from scratch, and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"matgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,graph,info}", parser_class=_Parser)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data", metavar="DIR", help="MNIST directory (the four IDX files); default: the shipped sample"
        )
        p.add_argument("--download", action="store_true", help="download MNIST into --data (or the cache) if missing")
        p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")

    train = sub.add_parser(
        "train",
        help="train an MLP or a CNN on MNIST",
        description="Train an MLP (or, with --model cnn, a CNN) on MNIST.",
    )
    data_options(train)
    train.add_argument(
        "--model", choices=list(MODELS), default="mlp", help="mlp (784-128-10) or cnn (two conv layers); default mlp"
    )
    train.add_argument(
        "--epochs", type=_positive_int, help="passes over the training set (default 10 for mlp, 6 for cnn)"
    )
    train.add_argument("--batch-size", type=_positive_int, default=64, help="examples per step (default 64)")
    train.add_argument(
        "--lr", type=_non_negative_float, help="learning rate (default 0.05, or 0.002 for the cnn's Adam)"
    )
    train.add_argument("--optimizer", choices=["sgd", "adam"], help="optimiser (default sgd for mlp, adam for cnn)")
    train.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument(
        "--hidden", type=_hidden_sizes, default=[128], metavar="SIZES", help="hidden layer sizes (default 128)"
    )
    train.add_argument("--seed", type=_seed, default=0, help="random seed for init and shuffling (default 0)")
    train.add_argument("--limit", type=_positive_int, metavar="N", help="train on the first N images only")
    train.add_argument("--save", metavar="FILE", help="write the trained model (.safetensors)")
    train.add_argument("--graph", metavar="FILE", help="draw the loss graph of one batch (.svg, .png, .pdf, .dot)")
    train.add_argument("--plot", metavar="FILE", help="draw loss and accuracy curves (needs matplotlib)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser(
        "eval", help="evaluate a saved model", description="Evaluate a saved MLP or CNN on MNIST's test set."
    )
    ev.add_argument("--model", required=True, metavar="FILE", help="checkpoint written by `matgrad train --save`")
    data_options(ev)

    graph = sub.add_parser(
        "graph", help="draw a model's loss graph", description="Draw an untrained MLP's (or CNN's) loss graph."
    )
    graph.add_argument("--model", choices=list(MODELS), default="mlp", help="mlp or cnn (default mlp)")
    graph.add_argument("--hidden", type=_hidden_sizes, default=[128], metavar="SIZES", help="hidden sizes (128,64)")
    graph.add_argument("-o", "--output", default="mlp.svg", metavar="FILE", help="output file (default mlp.svg)")
    graph.add_argument("--batch-size", type=_positive_int, default=8, help="rows in the example batch (default 8)")
    graph.add_argument("--backward", action="store_true", help="draw the gradient graph instead")

    sub.add_parser("info", help="versions, backends, Graphviz, data cache", description="Show the setup.")
    return parser


# -- shared pieces ------------------------------------------------------------------------------


def _use_backend(name: str | None) -> None:
    import matgrad as mg

    if name is not None:
        mg.set_backend(name)


def _load_data(args: argparse.Namespace) -> Any:
    from matgrad.data import load_mnist

    if args.data is None and not args.download:
        return load_mnist(sample=True), "the shipped MNIST sample"
    data = load_mnist(args.data, download=args.download)
    return data, f"MNIST from {args.data or 'the data cache'}"


def _mlp_metadata(sizes: Sequence[int]) -> dict[str, str]:
    return {"format": "matgrad.nn.MLP", "sizes": ",".join(map(str, sizes)), "activation": "relu"}


# -- models -------------------------------------------------------------------------------------

# The recipe of each model: epochs, optimiser and its learning rate when not given. The cnn's
# Adam learning rate also decays to 0 along a cosine over the epochs (CosineAnnealingLR).
MODELS = {"mlp": (10, "sgd", 0.05), "cnn": (6, "adam", 0.002)}
CNN_CHANNELS = (16, 32)


def _image_size(width: int) -> tuple[int, int]:
    side = round(width**0.5)
    if side * side != width:
        raise CommandError(f"--model cnn needs square images; these rows hold {width} pixels")
    return side, side


def build_cnn(image_size: tuple[int, int], hidden: Sequence[int], channels: Sequence[int] = CNN_CHANNELS) -> Any:
    """The CLI's CNN: ``[Conv2d 5x5, ReLU, MaxPool2d 2]`` per channel count, ``Flatten``, ``[Linear, ReLU]``
    per hidden size, ``Linear``.

    For 28x28 MNIST, ``conv(1->16, 5) relu pool conv(16->32, 5) relu pool flatten linear(512->128)
    relu linear(128->10)``: the same ``torch.nn.Sequential`` loads its checkpoints.
    """
    from matgrad import nn

    layers: list[Any] = []
    c_in = 1
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 5, image_size=image_size if i == 0 else None), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    c, h, w = nn.Sequential(*layers)[-1].output_shape()  # a Sequential passes the image sizes down
    width = c * h * w
    layers.append(nn.Flatten())
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _build_model(kind: str, width: int, hidden: Sequence[int]) -> tuple[Any, str, dict[str, str]]:
    """The model, its one-line description and the checkpoint metadata that rebuilds it."""
    from matgrad import nn

    if kind == "mlp":
        sizes = [width, *hidden, 10]
        return nn.MLP(sizes), f"MLP {'-'.join(map(str, sizes))}", _mlp_metadata(sizes)
    size = _image_size(width)
    model = build_cnn(size, hidden)
    steps = [f"{'x'.join(map(str, model[0].image_shape))}"]
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            steps.append(f"{'conv' if isinstance(m, nn.Conv2d) else 'pool'} {'x'.join(map(str, m.output_shape()))}")
    description = f"CNN {' > '.join([*steps, *map(str, [*hidden, 10])])}"
    metadata = {
        "format": "matgrad.cli.cnn",
        "image_size": ",".join(map(str, size)),
        "channels": ",".join(map(str, CNN_CHANNELS)),
        "hidden": ",".join(map(str, hidden)),
    }
    return model, description, metadata


def _plot_curves(path: str, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["test_acc"] for h in history], marker="o", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


GRAPH_SUFFIXES = (".svg", ".png", ".pdf", ".dot", ".gv")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_writable(path: str, option: str, suffixes: Sequence[str] = ()) -> None:
    """Refuse, before any work, an output file whose folder is missing or whose suffix we cannot write."""
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise CommandError(
            f"{option} {path}: cannot write {os.path.basename(path)!r}; name a {', '.join(suffixes[:-1])} "
            f"or {suffixes[-1]} file"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{option} {path}: the folder {folder} does not exist")


def _one_line(exc: BaseException) -> str:
    """An error's message on one line: a list of problems (one per line) joined with "; "."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


# -- commands -----------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    import matgrad as mg
    import matgrad.functional as F
    from matgrad import optim
    from matgrad.data import DataLoader
    from matgrad.metrics import accuracy, confusion_matrix, format_confusion_matrix, predict

    for option, path, suffixes in (
        ("--save", args.save, ()),
        ("--graph", args.graph, GRAPH_SUFFIXES),
        ("--plot", args.plot, PLOT_SUFFIXES),
    ):
        if path:
            _check_writable(path, option, suffixes)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError('--plot needs matplotlib: pip install "matgrad[plot]"') from None
    _use_backend(args.backend)
    data, source = _load_data(args)
    x_train, y_train = data.x_train, data.y_train
    if args.limit is not None:
        n = min(args.limit, x_train.nrows)
        x_train, y_train = x_train[:n], y_train[:n]

    epochs, optimizer, lr = MODELS[args.model]
    args.epochs = args.epochs or epochs
    args.optimizer = args.optimizer or optimizer
    if args.lr is None:
        args.lr = lr if args.optimizer == optimizer else MODELS["mlp"][2]
    mg.manual_seed(args.seed)
    model, description, metadata = _build_model(args.model, x_train.ncols, args.hidden)
    if args.optimizer == "sgd":
        opt: optim.Optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        recipe = f"SGD lr {args.lr:g}, momentum {args.momentum:g}"
    else:
        opt = optim.Adam(model.parameters(), lr=args.lr)
        recipe = f"Adam lr {args.lr:g}"
    schedule = optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs) if args.model == "cnn" else None
    if schedule is not None:
        recipe += " (cosine decay)"
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    print(
        f"matgrad {mg.__version__} | backend {mg.get_backend()} | {source}: {x_train.nrows} training and "
        f"{data.x_test.nrows} test images"
    )
    print(
        f"model {description} ({sum(p.nrows * p.ncols for p in model.parameters()):,} "
        f"parameters) | {recipe} | batch {args.batch_size} | {args.epochs} epochs | seed {args.seed}"
    )

    from tqdm import tqdm

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{args.epochs}",
            unit="batch",
            leave=False,
            disable=True if args.quiet else None,
            file=sys.stderr,
        )
        for xb, yb in bar:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            total += value * xb.nrows
            seen += xb.nrows
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{value:.4f}", img_per_s=f"{seen / elapsed:,.0f}" if elapsed else "-", refresh=False)
        train_time = time.perf_counter() - t0
        if schedule is not None:
            schedule.step()
        train_acc = accuracy(predict(model, x_train), y_train)
        test_preds = predict(model, data.x_test)
        test_acc = accuracy(test_preds, data.y_test)
        history.append({"epoch": epoch, "loss": total / seen, "train_acc": train_acc, "test_acc": test_acc})
        print(
            f"epoch {epoch:>3}/{args.epochs}  loss {total / seen:.4f}  train acc {train_acc:7.2%}  "
            f"test acc {test_acc:7.2%}  time {train_time:.2f}s ({seen / train_time:,.0f} img/s)"
        )
    total_time = time.perf_counter() - started
    print(
        f"\ndone in {total_time:.1f}s: final test accuracy {history[-1]['test_acc']:.2%} "
        f"(best {max(h['test_acc'] for h in history):.2%}), train accuracy {history[-1]['train_acc']:.2%}"
    )
    print("\nconfusion matrix on the test images (rows: true digit, columns: predicted):")
    print(format_confusion_matrix(confusion_matrix(test_preds, data.y_test)))

    if args.save:
        mg.save(model, args.save, metadata=metadata)
        print(f"\nsaved the model to {args.save}")
    if args.graph:
        from matgrad.viz import draw_model_graph, render_graph

        batch = min(args.batch_size, x_train.nrows)
        dot = draw_model_graph(model, x_train[:batch], y_train[:batch], grad=True)
        render_graph(dot, args.graph)
        print(f"drew the loss graph of one {batch}-image batch, with gradients, to {args.graph}")
    if args.plot:
        _plot_curves(args.plot, history)
        print(f"drew the training curves to {args.plot}")
    return 0


def _infer_mlp(state: dict[str, Any], metadata: dict[str, str], path: str) -> list[int]:
    if metadata.get("sizes"):
        try:
            return [int(s) for s in metadata["sizes"].split(",")]
        except ValueError:
            raise CommandError(f"{path}: unreadable 'sizes' metadata {metadata['sizes']!r}") from None
    sizes: list[int] = []
    index = 0
    while f"{index}.weight" in state:
        w = state[f"{index}.weight"]
        if not sizes:
            sizes.append(w.ncols)
        sizes.append(w.nrows)
        index += 2
    if len(sizes) < 2:
        raise CommandError(f"{path}: not an MLP checkpoint (expected keys 0.weight, 0.bias, 2.weight, ...)")
    return sizes


def _eval(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad import nn
    from matgrad.io import load_metadata
    from matgrad.metrics import accuracy, confusion_matrix, format_confusion_matrix, predict

    if not os.path.isfile(args.model):
        raise CommandError(f"--model {args.model}: no such file")
    _use_backend(args.backend)
    state = mg.load(args.model)
    metadata = load_metadata(args.model)
    model: Any
    if metadata.get("format") == "matgrad.cli.cnn":
        try:
            h, w = (int(v) for v in metadata["image_size"].split(","))
            hidden = [int(v) for v in metadata["hidden"].split(",") if v]
            channels = [int(v) for v in metadata["channels"].split(",")]
        except (KeyError, ValueError):
            raise CommandError(f"{args.model}: unreadable CNN metadata {metadata!r}") from None
        model, inputs = build_cnn((h, w), hidden, channels), h * w
        description = f"CNN {h}x{w} images"
    else:
        sizes = _infer_mlp(state, metadata, args.model)
        model, inputs = nn.MLP(sizes), sizes[0]
        description = f"MLP {'-'.join(map(str, sizes))}"
    model.load_state_dict(state)
    data, source = _load_data(args)
    if data.x_test.ncols != inputs:
        raise CommandError(f"{args.model}: the model takes {inputs} inputs but the images have {data.x_test.ncols}")
    t0 = time.perf_counter()
    preds = predict(model, data.x_test)
    elapsed = time.perf_counter() - t0
    print(f"model {description} from {args.model} | backend {mg.get_backend()} | {source}")
    print(f"test accuracy {accuracy(preds, data.y_test):.2%} on {data.x_test.nrows} images ({elapsed:.2f}s)\n")
    print(format_confusion_matrix(confusion_matrix(preds, data.y_test)))
    return 0


def _graph(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad.data import load_mnist
    from matgrad.viz import draw_model_graph, render_graph

    _check_writable(args.output, "-o", GRAPH_SUFFIXES)
    data = load_mnist(sample=True)
    mg.manual_seed(0)
    model, description, _ = _build_model(args.model, data.x_train.ncols, args.hidden)
    n = args.batch_size
    dot = draw_model_graph(model, data.x_train[:n], data.y_train[:n], grad=False, backward=args.backward)
    render_graph(dot, args.output)
    what = "gradient graph" if args.backward else "loss graph"
    print(f"drew the {what} of {description} on a {n}-image batch to {args.output}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad.backends import available_backends
    from matgrad.data.mnist import NAMES, SAMPLE_DIR, default_root

    print(f"matgrad {mg.__version__} (Python {platform.python_version()}, {platform.machine()})")
    print(
        f"backends available: {', '.join(available_backends())}; in use: {mg.get_backend()}"
        + (f" (MATGRAD_BACKEND={os.environ['MATGRAD_BACKEND']})" if os.environ.get("MATGRAD_BACKEND") else "")
    )
    try:
        import numpy

        print(f"numpy {numpy.__version__}")
    except ImportError:
        print('numpy: not installed (pip install "matgrad[fast]" for the fast backend)')
    dot = shutil.which("dot")
    print(
        f"Graphviz dot: {dot}" if dot else "Graphviz dot: not found (apt-get install graphviz, brew install graphviz)"
    )
    root = default_root()
    present = [n for n in NAMES if any(os.path.exists(os.path.join(root, n + s)) for s in ("", ".gz"))]
    print(f"data cache: {root} ({len(present)}/4 MNIST files present; set MATGRAD_DATA to move it)")
    print(f"shipped sample: {SAMPLE_DIR}")
    return 0


_COMMANDS = {"train": _train, "eval": _eval, "graph": _graph, "info": _info}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matgrad`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from matgrad._errors import MatgradError

    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader went away (matgrad train | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("matgrad: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, MatgradError, OSError, ValueError) as exc:
        print(f"matgrad {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
