"""The ``matgrad`` command: train an MLP on MNIST, evaluate a checkpoint, draw graphs, show setup.

    matgrad train                      # the shipped 5,000-image sample, MLP 784-128-10, SGD
    matgrad train --model cnn          # a small CNN (two conv layers), Adam
    matgrad train --data DIR --epochs 3 --save model.safetensors
    matgrad eval --model model.safetensors
    matgrad graph --hidden 128,64 -o mlp.svg
    matgrad explore -o graph.html      # step through forward and backward in the browser
    matgrad train --explore run.html   # ... with snapshots of the weights; --live serves it while training
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
from itertools import pairwise
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from matgrad._errors import ArgumentError
from matgrad._files import atomic_write, check_output, new_temp, remove_quietly, why_not_regular

if TYPE_CHECKING:
    from matgrad.tensor import Tensor2D

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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 (any free port) to 65535, got {value}")
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


def backend_options(p: argparse.ArgumentParser) -> None:
    from matgrad.backends import NAMES

    p.add_argument("--backend", choices=NAMES, help="matrix backend (default: numpy if installed)")
    p.add_argument("--device", help="the backend's device: cuda, cuda:1, cpu (torch, cupy), device1 (array_api_strict)")


def _build_parser() -> argparse.ArgumentParser:
    from matgrad import __version__

    parser = _Parser(
        prog="matgrad",
        description="Autodiff at matrix granularity: train an MLP or a CNN on MNIST from scratch, and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"matgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,graph,explore,info}", parser_class=_Parser)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data", metavar="DIR", help="MNIST directory (the four IDX files); default: the shipped sample"
        )
        p.add_argument("--download", action="store_true", help="download MNIST into --data (or the cache) if missing")
        backend_options(p)

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
    train.add_argument(
        "--explore", metavar="FILE", help="write the explorer page: graph, weight snapshots, curves (.html)"
    )
    train.add_argument(
        "--explore-every",
        type=_positive_int,
        metavar="N",
        help="snapshot the weights every N steps (default: ~20 in all)",
    )
    train.add_argument(
        "--live",
        nargs="?",
        const=0,
        type=_port,
        metavar="PORT",
        help="serve the explorer on 127.0.0.1 while training (no PORT: a free one)",
    )
    train.add_argument(
        "--compile", action="store_true", help="replay each step's captured kernels (matgrad.compile): faster"
    )
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

    ex = sub.add_parser(
        "explore",
        help="write an MLP's explorer page",
        description="Write the interactive explorer of an untrained MLP's loss on a batch of the MNIST sample.",
    )
    ex.add_argument("--hidden", type=_hidden_sizes, default=[128], metavar="SIZES", help="hidden sizes (128,64)")
    ex.add_argument("-o", "--output", default="graph.html", metavar="FILE", help="output file (default graph.html)")
    ex.add_argument("--batch-size", type=_positive_int, default=64, help="rows in the batch (default 64)")
    ex.add_argument("--seed", type=_seed, default=0, help="random seed for the weights (default 0)")
    backend_options(ex)

    sub.add_parser("info", help="versions, backends, Graphviz, data cache", description="Show the setup.")
    return parser


# -- shared pieces ------------------------------------------------------------------------------


def _use_backend(args: argparse.Namespace) -> None:
    import matgrad as mg

    if args.backend is not None or args.device is not None:
        mg.set_backend(args.backend or mg.get_backend(), args.device)


def _backend_label() -> str:
    """``numpy``, or ``torch on cuda:0``: what the header lines print."""
    from matgrad.backends import get

    return get().label


def _load_data(args: argparse.Namespace) -> Any:
    from matgrad.data import load_mnist

    if args.data is None and not args.download:
        return load_mnist(sample=True), "the shipped MNIST sample"
    data = load_mnist(args.data, download=args.download)
    return data, f"MNIST from {args.data or 'the data cache'}"


def _mlp_metadata(sizes: Sequence[int]) -> dict[str, str]:
    return {"format": "matgrad.nn.MLP", "sizes": ",".join(map(str, sizes)), "activation": "relu"}


# -- the CNN -------------------------------------------------------------------------------------

# The recipe of each model: epochs, optimiser and its learning rate when not given. The cnn's
# Adam learning rate also decays to 0 along a cosine over the epochs (CosineAnnealingLR).
MODELS = {"mlp": (10, "sgd", 0.05), "cnn": (6, "adam", 0.002)}
CNN_CHANNELS = (16, 32)
CNN_FORMAT = "matgrad.cli.cnn"


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


def _cnn(width: int, hidden: Sequence[int], channels: Sequence[int] = CNN_CHANNELS) -> tuple[Any, str, dict[str, str]]:
    """The CLI's CNN for rows of ``width`` pixels, its one-line description and the checkpoint metadata."""
    from matgrad import nn

    size = _image_size(width)
    model = build_cnn(size, hidden, channels)
    steps = [f"{'x'.join(map(str, model[0].image_shape))}"]
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            steps.append(f"{'conv' if isinstance(m, nn.Conv2d) else 'pool'} {'x'.join(map(str, m.output_shape()))}")
    description = f"CNN {' > '.join([*steps, *map(str, [*hidden, 10])])}"
    metadata = {
        "format": CNN_FORMAT,
        "image_size": ",".join(map(str, size)),
        "channels": ",".join(map(str, channels)),
        "hidden": ",".join(map(str, hidden)),
    }
    return model, description, metadata


def _cnn_from_metadata(metadata: dict[str, str], path: str) -> tuple[Any, str, int]:
    """The CNN a checkpoint's metadata describes, its description and its input width."""
    try:
        h, w = (int(v) for v in metadata["image_size"].split(","))
        hidden = [int(v) for v in metadata["hidden"].split(",") if v]
        channels = [int(v) for v in metadata["channels"].split(",")]
    except (KeyError, ValueError):
        raise CommandError(f"{path}: unreadable CNN metadata {metadata!r}") from None
    model, description, _ = _cnn(h * w, hidden, channels)
    return model, description, h * w


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
    try:
        with atomic_write(path, "--plot") as f:
            fig.savefig(f, format=os.path.splitext(path)[1].lstrip(".").lower())
    finally:
        plt.close(fig)


GRAPH_SUFFIXES = (".svg", ".png", ".pdf", ".dot", ".gv")
EXPLORE_SUFFIXES = (".html", ".htm")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_suffix(option: str, path: str, suffixes: Sequence[str]) -> None:
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise CommandError(
            f"{option} {path}: cannot write {os.path.basename(path)!r}; name a {', '.join(suffixes[:-1])} "
            f"or {suffixes[-1]} file"
        )


def _check_writable(path: str, option: str, suffixes: Sequence[str] = ()) -> str:
    """Refuse, before any work, an output that cannot be written; returns the file it will replace.

    The suffix must be one we write; the path must not be a directory, FIFO or device, nor a
    read-only file; its folder must exist and be writable, which is tested by creating and
    removing a file there (permissions alone miss read-only mounts and ACLs).
    """
    if not path:
        raise CommandError(f"{option}: the file name is empty")
    _check_suffix(option, path, suffixes)
    try:
        target = check_output(path, option)
    except OSError as exc:
        raise CommandError(exc.strerror or str(exc)) from None
    except ArgumentError as exc:
        raise CommandError(str(exc)) from None
    folder, name = os.path.split(target)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{option}: cannot write {path}: permission denied on the folder {folder}")
    try:
        probe, f = new_temp(folder, name)
    except OSError as exc:
        raise CommandError(f"{option}: cannot write {path}: cannot create a file in {folder}: {exc.strerror}") from None
    f.close()
    remove_quietly(probe)
    return target


def _same_file(a: str, b: str) -> bool:
    """Whether real paths ``a`` and ``b`` name one file: equal, or hard links to one inode."""
    if os.path.normcase(a) == os.path.normcase(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): different names of different files
        return False


def _check_outputs(outputs: Sequence[tuple[str, str | None, Sequence[str]]], inputs: Sequence[tuple[str, str]]) -> None:
    """Check every output of a command before it starts, and that no two of them, and no output
    and an input, are the same file (compared after symlinks; hard links too).

    ``outputs`` are (option, path or None, accepted suffixes); ``inputs`` (what, path).
    """
    dot_missing = shutil.which("dot") is None
    claimed: list[tuple[str, str, str]] = []  # (option, path as given, real path)
    for option, path, suffixes in outputs:
        if path is None:
            continue
        target = _check_writable(path, option, suffixes)
        files = [target]
        if dot_missing and option in ("--graph", "-o") and os.path.splitext(target)[1].lower() not in (".dot", ".gv"):
            files.append(os.path.splitext(target)[0] + ".dot")  # render_graph's fallback without Graphviz
        for real in files:
            for other_option, other_path, other_real in claimed:
                if _same_file(real, other_real):
                    raise CommandError(
                        f"{option} {path} and {other_option} {other_path} are the same file"
                        + ("" if real == target else f" ({real}, written when Graphviz's dot is missing)")
                        + "; give each output its own file"
                    )
            for what, input_path in inputs:
                if _same_file(real, os.path.realpath(input_path)):
                    raise CommandError(
                        f"{option} {path} is {what} {input_path}; writing it would destroy an input, so name "
                        "another file"
                    )
        claimed += [(option, path, real) for real in files]


def _data_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The MNIST files a command reads (or downloads), as (description, path) inputs."""
    from matgrad.data.mnist import NAMES, SAMPLE_DIR, default_root

    root = SAMPLE_DIR if args.data is None and not args.download else args.data or default_root()
    what = "the MNIST file"
    return [(what, os.path.join(root, name + suffix)) for name in NAMES for suffix in ("", ".gz")]


def _check_input(option: str, path: str) -> None:
    """Refuse an input that is not a regular file, saying what it is (never opening a FIFO)."""
    why = why_not_regular(path)
    if why is not None:
        raise CommandError(f"{option} {path}: {why}")


# -- memory ---------------------------------------------------------------------------------------


def _element_size() -> int:
    import matgrad as mg
    from matgrad._memory import element_bytes

    return element_bytes(mg.get_backend(), str(mg.get_default_dtype()))


def _estimate_mlp(sizes: Sequence[int], rows: int, *, training: bool, state: int = 0) -> int:
    """Bytes an MLP of ``sizes`` needs on the current backend and dtype: its parameters, and in
    training their gradients and ``state`` optimiser buffers each; one temporary the size of the
    largest weight (initialisation draws it, an update computes it); the activations of ``rows``
    inputs (kept for backward, with their gradients, in training)."""
    each = _element_size()
    weights = [a * b for a, b in pairwise(sizes)]
    params = sum(weights) + sum(sizes[1:])
    outputs = sum(sizes[1:])
    if training:
        # parameters, gradients, optimiser state; one layer's update temporary; activations
        # (linear and relu outputs) and their gradients
        elements = params * (2 + state) + max(weights) + rows * (sizes[0] + 4 * outputs)
    else:  # parameters, the temporary that initialising the largest one takes, activations
        elements = params + max(weights) + rows * (sizes[0] + 2 * outputs)
    return elements * each


def _check_memory(need: int, what: str, fix: str) -> None:
    from matgrad._memory import check_memory

    check_memory(need, what, fix, CommandError)


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
    from matgrad._parallel import session

    # Under torchrun (WORLD_SIZE > 1): data parallel, and rank 0 alone prints, evaluates and writes.
    with session(args) as par:
        return _train_in(args, par)


def _train_in(args: argparse.Namespace, par: Any) -> int:
    import matgrad as mg
    import matgrad.functional as F
    from matgrad import nn, optim
    from matgrad.data import DataLoader
    from matgrad.metrics import accuracy, confusion_matrix, format_confusion_matrix, predict

    _check_outputs(
        [
            ("--save", args.save, ()),
            ("--graph", args.graph, GRAPH_SUFFIXES),
            ("--plot", args.plot, PLOT_SUFFIXES),
            ("--explore", args.explore, EXPLORE_SUFFIXES),
        ],
        _data_files(args),
    )
    _check_explore_options(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError('--plot needs matplotlib: pip install "matgrad[plot]"') from None
    _use_backend(args)
    with par.main_first(args.download):  # one process downloads, the others read what it wrote
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
    model: Any
    if args.model == "cnn":
        model, description, metadata = _cnn(x_train.ncols, args.hidden)
    else:
        sizes = [x_train.ncols, *args.hidden, 10]
        state = {"adam": 2, "sgd": 1 if args.momentum else 0}[args.optimizer]
        rows = max(min(args.batch_size, x_train.nrows), min(1000, x_train.nrows))  # a batch, or predict's 1000 rows
        _check_memory(
            _estimate_mlp(sizes, rows, training=True, state=state),
            f"training MLP {'-'.join(map(str, sizes))} with {args.optimizer} at batch {args.batch_size}",
            "use smaller --hidden sizes or a smaller --batch-size",
        )
        model, description, metadata = nn.MLP(sizes), f"MLP {'-'.join(map(str, sizes))}", _mlp_metadata(sizes)
    ddp = par.wrap(model)  # among several processes: rank 0's parameters everywhere, gradients averaged
    if args.optimizer == "sgd":
        opt: optim.Optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        recipe = f"SGD lr {args.lr:g}, momentum {args.momentum:g}"
    else:
        opt = optim.Adam(model.parameters(), lr=args.lr)
        recipe = f"Adam lr {args.lr:g}"
    schedule = optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs) if args.model == "cnn" else None
    if schedule is not None:
        recipe += " (cosine decay)"
    loader = DataLoader(
        x_train, y_train, args.batch_size, shuffle=True, seed=args.seed, rank=par.rank, world_size=par.world_size
    )
    watch = _training_explorer(args, model, x_train, y_train, len(loader) * args.epochs, description)
    print(
        f"matgrad {mg.__version__} | backend {_backend_label()} | {source}: {x_train.nrows} training and "
        f"{data.x_test.nrows} test images"
    )
    print(
        f"model {description} ({sum(p.nrows * p.ncols for p in model.parameters()):,} "
        f"parameters) | {recipe} | batch {par.batch_text(args.batch_size)} | {args.epochs} epochs | seed {args.seed}"
    )

    def train_step(xb: Tensor2D, yb: Tensor2D) -> tuple[Tensor2D, Tensor2D]:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        if ddp is None:
            opt.step()
        return loss, logits

    step = mg.compile(train_step) if args.compile else train_step

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
            loss, logits = step(xb, yb)
            if ddp is not None:  # outside the compiled step, whose replay would skip the all-reduce
                ddp.average_gradients()  # one all-reduce: the mean of every process's gradients
                opt.step()
            value = loss.item()
            if watch is not None:
                watch.step(value, logits, yb, epoch)
            total += value * xb.nrows
            seen += xb.nrows
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{value:.4f}", img_per_s=f"{seen / elapsed:,.0f}" if elapsed else "-", refresh=False)
        train_time = time.perf_counter() - t0
        if schedule is not None:
            schedule.step()
        total, seen = par.sum(total, seen)  # over every process: the loss of the whole epoch
        if not par.is_main:
            continue
        train_acc = accuracy(predict(model, x_train), y_train)
        test_preds = predict(model, data.x_test)
        test_acc = accuracy(test_preds, data.y_test)
        history.append({"epoch": epoch, "loss": total / seen, "train_acc": train_acc, "test_acc": test_acc})
        if watch is not None:
            watch.end_epoch(epoch, total / seen, train_acc, test_acc)
        print(
            f"epoch {epoch:>3}/{args.epochs}  loss {total / seen:.4f}  train acc {train_acc:7.2%}  "
            f"test acc {test_acc:7.2%}  time {train_time:.2f}s ({seen / train_time:,.0f} img/s)"
        )
    par.finish()  # every process has finished training: only now does rank 0 write anything
    if not par.is_main:
        return 0
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
    if watch is not None:
        written = watch.finish()
        if written is not None:
            snaps = len(watch.record.snaps)
            print(f"wrote the explorer of the run ({snaps} snapshot{'s' if snaps != 1 else ''}) to {written}")
        if args.live is not None:
            print("stopped the live explorer")
    return 0


_running: list[Any] = []  # training explorers whose live server must stop with the command, Ctrl-C included


def _check_explore_options(args: argparse.Namespace) -> None:
    """``--explore-every`` needs something to snapshot for (``--explore`` is checked with the other outputs)."""
    if args.explore_every is not None and not args.explore and args.live is None:
        raise CommandError("--explore-every needs --explore FILE or --live")


def _training_explorer(
    args: argparse.Namespace, model: Any, x_train: Any, y_train: Any, total_steps: int, description: str
) -> Any:
    """The explorer of this run (``--explore``, ``--live``), its server started; None without them."""
    if not args.explore and args.live is None:
        return None
    from matgrad.viz.live import TrainingExplorer

    batch = min(args.batch_size, x_train.nrows)
    every = args.explore_every or max(1, total_steps // 20)
    watch = TrainingExplorer(
        model,
        x_train[:batch],
        y_train[:batch],
        path=args.explore,
        port=args.live,
        every=every,
        title=f"{description}: loss on the first {batch} training images",
    )
    watch.record.total_steps = total_steps
    try:
        url = watch.start()
    except OSError as exc:
        raise CommandError(f"--live {args.live}: cannot serve on 127.0.0.1: {exc.strerror or exc}") from None
    _running.append(watch)
    if url:
        print(f"live explorer at {url} (stops with the training, or Ctrl-C)", flush=True)
    return watch


def _infer_mlp(shapes: dict[str, tuple[int, int]], metadata: dict[str, str], path: str) -> list[int]:
    """The MLP sizes of a checkpoint, from its metadata or its tensors' shapes, and checked
    against those shapes: nothing is built from metadata that the tensors do not bear out."""
    if metadata.get("sizes"):
        text = metadata["sizes"]
        try:
            sizes = [int(s) for s in text.split(",")]
        except ValueError:
            raise CommandError(f"{path}: unreadable 'sizes' metadata {text!r}") from None
        if len(sizes) < 2 or min(sizes) < 1:
            raise CommandError(f"{path}: 'sizes' metadata {text!r} is not an MLP (two or more positive sizes)")
        for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
            for key, want in ((f"{2 * i}.weight", (fan_out, fan_in)), (f"{2 * i}.bias", (1, fan_out))):
                have = shapes.get(key)
                if have != want:
                    held = "no such tensor" if have is None else f"{have[0]}x{have[1]}"
                    raise CommandError(
                        f"{path}: its 'sizes' metadata {text!r} needs {key} of {want[0]}x{want[1]}, but the file "
                        f"holds {held}; the metadata does not match the tensors (a corrupted or edited file)"
                    )
        return sizes
    sizes = []
    index = 0
    while f"{index}.weight" in shapes:
        rows, cols = shapes[f"{index}.weight"]
        if not sizes:
            sizes.append(cols)
        elif cols != sizes[-1]:
            raise CommandError(
                f"{path}: {index}.weight is {rows}x{cols}, but the layer before it has {sizes[-1]} outputs"
            )
        sizes.append(rows)
        index += 2
    if len(sizes) < 2:
        raise CommandError(f"{path}: not an MLP checkpoint (expected keys 0.weight, 0.bias, 2.weight, ...)")
    return sizes


def _eval(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad import nn
    from matgrad.io import load_header
    from matgrad.metrics import accuracy, confusion_matrix, format_confusion_matrix, predict

    _check_input("--model", args.model)
    _use_backend(args)
    # the header alone (bounded, validated) first: check before allocating anything
    header, metadata = load_header(args.model)
    model: Any
    if metadata.get("format") == CNN_FORMAT:  # written by train --model cnn: rebuilt from its metadata
        model, description, inputs = _cnn_from_metadata(metadata, args.model)
    else:
        sizes = _infer_mlp({name: info.shape for name, info in header.items()}, metadata, args.model)
        loaded = sum(info.shape[0] * info.shape[1] for info in header.values())
        _check_memory(
            _estimate_mlp(sizes, 1000, training=False) + loaded * _element_size(),  # the model and the loaded state
            f"{args.model}: evaluating MLP {'-'.join(map(str, sizes))}",
            "evaluate it on a machine with more memory",
        )
        model, description, inputs = nn.MLP(sizes), f"MLP {'-'.join(map(str, sizes))}", sizes[0]
    state = mg.load(args.model)
    model.load_state_dict(state)
    del state
    data, source = _load_data(args)
    if data.x_test.ncols != inputs:
        raise CommandError(f"{args.model}: the model takes {inputs} inputs but the images have {data.x_test.ncols}")
    t0 = time.perf_counter()
    preds = predict(model, data.x_test)
    elapsed = time.perf_counter() - t0
    print(f"model {description} from {args.model} | backend {_backend_label()} | {source}")
    print(f"test accuracy {accuracy(preds, data.y_test):.2%} on {data.x_test.nrows} images ({elapsed:.2f}s)\n")
    print(format_confusion_matrix(confusion_matrix(preds, data.y_test)))
    return 0


def _graph(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad import nn
    from matgrad.data import load_mnist
    from matgrad.viz import draw_model_graph, render_graph

    _check_outputs([("-o", args.output, GRAPH_SUFFIXES)], [])
    data = load_mnist(sample=True)
    mg.manual_seed(0)
    n = min(args.batch_size, data.x_train.nrows)
    model: Any
    if args.model == "cnn":
        model, description, _ = _cnn(data.x_train.ncols, args.hidden)
    else:
        sizes = [data.x_train.ncols, *args.hidden, 10]
        _check_memory(
            _estimate_mlp(sizes, n, training=args.backward),
            f"drawing MLP {'-'.join(map(str, sizes))}",
            "use smaller --hidden sizes (the drawing is the same for any width)",
        )
        model, description = nn.MLP(sizes), f"MLP {'-'.join(map(str, sizes))}"
    dot = draw_model_graph(model, data.x_train[:n], data.y_train[:n], grad=False, backward=args.backward)
    render_graph(dot, args.output)
    what = "gradient graph" if args.backward else "loss graph"
    print(f"drew the {what} of {description} on a {n}-image batch to {args.output}")
    return 0


def _explore(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad import nn
    from matgrad.data import load_mnist
    from matgrad.functional import cross_entropy
    from matgrad.viz import explore

    _check_outputs([("-o", args.output, EXPLORE_SUFFIXES)], [])
    _use_backend(args)
    data = load_mnist(sample=True)
    mg.manual_seed(args.seed)
    sizes = [data.x_train.ncols, *args.hidden, 10]
    model = nn.MLP(sizes)
    n = min(args.batch_size, data.x_train.nrows)
    x = data.x_train[:n].detach()
    x.name = "x"
    loss = cross_entropy(model(x), data.y_train[:n])
    loss.name = "loss"
    page = explore(loss, params=model, title=f"MLP {'-'.join(map(str, sizes))}: loss on {n} MNIST images")
    path = page.save(args.output)
    steps = page.payload["steps"]
    forward = page.payload["forward_steps"]
    print(
        f"wrote the explorer of MLP {'-'.join(map(str, sizes))} on a {n}-image batch to {path} "
        f"({page.node_count} nodes, {forward} forward and {len(steps) - forward} backward steps, "
        f"{os.path.getsize(path) / 1e6:.2f} MB)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    import matgrad as mg
    from matgrad.backends import available_backends, devices
    from matgrad.data.mnist import NAMES, SAMPLE_DIR, default_root

    print(f"matgrad {mg.__version__} (Python {platform.python_version()}, {platform.machine()})")
    listed = [
        name if name in ("numpy", "python") else f"{name} ({', '.join(devices(name)) or 'no device'})"
        for name in available_backends()
    ]
    print(
        f"backends available: {', '.join(listed)}; in use: {_backend_label()}"
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


_COMMANDS = {"train": _train, "eval": _eval, "graph": _graph, "explore": _explore, "info": _info}
_MEMORY_HINTS = {
    "train": "use smaller --hidden sizes, a smaller --batch-size or --limit, or free memory",
    "eval": "the model or the data is too large for this machine; free memory or use a larger one",
    "graph": "use smaller --hidden sizes or a smaller --batch-size",
    "explore": "use smaller --hidden sizes or a smaller --batch-size",
    "info": "free memory",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matgrad`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from matgrad._errors import MatgradError
    from matgrad._parallel import rank_tag

    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader went away (matgrad train | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("matgrad: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:  # NumPy's _ArrayMemoryError too: one line that says what to change
        print(
            f"matgrad {args.command}{rank_tag()}: error: out of memory; {_MEMORY_HINTS[args.command]}", file=sys.stderr
        )
        return EXIT_ERROR
    except (CommandError, MatgradError, OSError, ValueError) as exc:
        print(f"matgrad {args.command}{rank_tag()}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        while _running:  # a live explorer's server stops (its thread joined) however the command ends
            _running.pop().close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
