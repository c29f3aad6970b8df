"""Full-MNIST accuracy of matgrad against PyTorch with the same recipe, side by side.

Run:  python benchmarks/mnist_accuracy.py --data ../shared/data/mnist [--seeds 3] [--epochs 3]
      [--lr 0.1 --momentum 0] [--hidden 128] [--json out.json]

Recipe (issue 3): MLP 784-128-10 with ReLU, PyTorch's default initialisation, batch 64, plain
SGD lr 0.1 (no momentum), cross-entropy, float32. For every seed, matgrad and PyTorch see the
same shuffled order of the training set each epoch; each framework draws its own initial
weights from its own generator (same distribution). A third run, "matgrad, torch init", starts
matgrad from PyTorch's exact initial weights, so it differs from PyTorch only by floating-point
rounding: its accuracy should match PyTorch's to a few hundredths of a point.
Prints test accuracy after every epoch, the mean over seeds, and the epoch time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from itertools import pairwise

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np

import matgrad as mg
import matgrad.functional as F
from matgrad.data import load_mnist


def orders(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


def run_matgrad(data, sizes, epochs, lr, momentum, batch, perms, seed, init_from=None):  # type: ignore[no-untyped-def]
    mg.set_backend("numpy")
    mg.manual_seed(seed)
    model = mg.nn.MLP(sizes)
    if init_from is not None:
        model.load_state_dict(init_from)
    opt = mg.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x_np, y_np = data.x_train.numpy(), data.y_train.numpy()
    be = mg.backends.get("numpy")
    accs, times = [], []
    for perm in perms:
        t0 = time.perf_counter()
        for lo in range(0, len(perm), batch):
            idx = perm[lo : lo + batch]
            xb = mg.Tensor2D.from_native(x_np[idx], be)
            yb = mg.Tensor2D.from_native(y_np[idx], be)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        accs.append(mg.metrics.accuracy(mg.metrics.predict(model, data.x_test), data.y_test))
    return accs, times


def run_torch(data, sizes, epochs, lr, momentum, batch, perms, seed):  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    init = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x = torch.from_numpy(data.x_train.numpy())
    y = torch.from_numpy(data.y_train.numpy().reshape(-1))
    xt = torch.from_numpy(data.x_test.numpy())
    yt = torch.from_numpy(data.y_test.numpy().reshape(-1))
    accs, times = [], []
    for perm in perms:
        p = torch.from_numpy(perm)
        t0 = time.perf_counter()
        for lo in range(0, len(perm), batch):
            idx = p[lo : lo + batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            accs.append((model(xt).argmax(1) == yt).float().mean().item())
    return accs, times, init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="directory with the four MNIST IDX files")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", default="128")
    parser.add_argument("--limit", type=int, help="train on the first N images (smoke runs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data = load_mnist(args.data, backend="numpy")
    if args.limit:
        data = data._replace(x_train=data.x_train[: args.limit], y_train=data.y_train[: args.limit])
    sizes = [784, *[int(h) for h in args.hidden.split(",")], 10]
    n = data.x_train.nrows
    recipe = (
        f"MLP {'-'.join(map(str, sizes))}, SGD lr {args.lr:g}, momentum {args.momentum:g}, "
        f"batch {args.batch_size}, {n} training images, {args.epochs} epochs"
    )
    print(recipe)
    rows: dict[str, list[list[float]]] = {"pytorch": [], "matgrad": [], "matgrad, torch init": []}
    epoch_times: dict[str, list[float]] = {k: [] for k in rows}
    for seed in range(args.seeds):
        perms = orders(n, args.epochs, 1000 + seed)
        common = (data, sizes, args.epochs, args.lr, args.momentum, args.batch_size, perms, seed)
        acc_t, t_t, init = run_torch(*common)
        acc_m, t_m = run_matgrad(*common)
        acc_c, t_c = run_matgrad(*common, init_from=init)
        for key, acc, ts in (("pytorch", acc_t, t_t), ("matgrad", acc_m, t_m), ("matgrad, torch init", acc_c, t_c)):
            rows[key].append(acc)
            epoch_times[key].extend(ts)
            print(f"seed {seed}  {key:20} " + "  ".join(f"epoch {e + 1}: {a:.2%}" for e, a in enumerate(acc)))

    print("\nmean test accuracy over seeds (epoch time = median over all epochs)")
    header = f"{'':22}" + "".join(f"{'epoch ' + str(e + 1):>12}" for e in range(args.epochs)) + f"{'epoch time':>12}"
    print(header)
    summary = {}
    for key, runs in rows.items():
        means = [statistics.mean(r[e] for r in runs) for e in range(args.epochs)]
        summary[key] = {"mean_accuracy": means, "runs": runs, "median_epoch_s": statistics.median(epoch_times[key])}
        print(f"{key:22}" + "".join(f"{m:12.2%}" for m in means) + f"{statistics.median(epoch_times[key]):11.2f}s")
    gap = [100 * (a - b) for a, b in zip(summary["matgrad"]["mean_accuracy"], summary["pytorch"]["mean_accuracy"])]
    print("matgrad - pytorch, points: " + "  ".join(f"epoch {e + 1}: {g:+.2f}" for e, g in enumerate(gap)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"recipe": recipe, "results": summary}, fh, indent=2)


if __name__ == "__main__":
    main()
