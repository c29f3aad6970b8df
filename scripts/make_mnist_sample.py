"""Build the MNIST sample shipped in matgrad/data/mnist_sample/ from the full MNIST files.

    python scripts/make_mnist_sample.py --source ../shared/data/mnist --out matgrad/data/mnist_sample

Draws TRAIN_PER_DIGIT training and TEST_PER_DIGIT test images of each digit with
random.Random(SEED), checks the source files against MNIST's SHA-256, and writes the four
gzipped IDX files (reproducible bytes) and a README.md with the attribution and checksums.
Running it twice gives identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys

from matgrad.data import IdxArray, read_idx, write_idx
from matgrad.data.mnist import NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, _find, _problem

TRAIN_PER_DIGIT = 500  # 5,000 training images
TEST_PER_DIGIT = 100  # 1,000 test images
SEED = 0

README = """\
# MNIST sample

{n_train:,} training and {n_test:,} test images drawn from MNIST, shipped with matgrad so that
`load_mnist(sample=True)` and `matgrad train` work on a fresh machine with no network.

## Attribution and licence

The MNIST database of handwritten digits is by Yann LeCun, Corinna Cortes and Christopher J.C.
Burges (http://yann.lecun.com/exdb/mnist/) and is licensed under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/).
This sample is a subset of it, redistributed under the same licence; the only changes are the
selection and order of the images (and the recompression).

## How it was drawn

- From the official files (their SHA-256 checked first): {per_train} training images of each digit from
  the 60,000 training images, {per_test} test images of each digit from the 10,000 test images.
- Within each digit, `random.Random({seed}).sample` picks the images (one generator, digits 0 to 9,
  training set first), kept in their original order.
- The files interleave the digits: 0, 1, ..., 9, 0, 1, ..., so every prefix is close to balanced.
- The IDX files are written with gzip level 9, mtime 0 and no file name: rebuilding
  gives the same bytes (with the same zlib; the uncompressed checksums below hold whatever the zlib).

Rebuild from the repository root:

```bash
python scripts/make_mnist_sample.py --source ../shared/data/mnist --out matgrad/data/mnist_sample
```

## Files

SHA-256 of the uncompressed IDX files:

| file | shape | bytes (uncompressed) | bytes (.gz) | sha256 (uncompressed) |
|---|---|---|---|---|
{rows}
"""


def _draw(labels: bytes, per_digit: int, rng: random.Random) -> list[int]:
    """``per_digit`` indices of each digit, interleaved 0..9, 0..9, ... (each digit in file order)."""
    chosen = []
    for digit in range(10):
        pool = [i for i, v in enumerate(labels) if v == digit]
        if len(pool) < per_digit:
            sys.exit(f"only {len(pool)} images of digit {digit}, {per_digit} requested")
        chosen.append(sorted(rng.sample(pool, per_digit)))
    return [chosen[d][j] for j in range(per_digit) for d in range(10)]


def _load(source: str, name: str) -> IdxArray:
    path = _find(source, name)
    if path is None:
        sys.exit(f"{name}(.gz) not found in {source}")
    arr = read_idx(path)
    problem = _problem(arr, name)
    if problem is not None:
        sys.exit(f"{path} is not the official MNIST file: {problem}")
    return arr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="directory holding the full MNIST IDX files (.gz or not)")
    parser.add_argument("--out", required=True, help="output directory, e.g. matgrad/data/mnist_sample")
    args = parser.parse_args(argv)

    full = {name: _load(args.source, name) for name in NAMES}
    rng = random.Random(SEED)
    out: dict[str, IdxArray] = {}
    for images, labels, per_digit in (
        (TRAIN_IMAGES, TRAIN_LABELS, TRAIN_PER_DIGIT),
        (TEST_IMAGES, TEST_LABELS, TEST_PER_DIGIT),
    ):
        img, lab = full[images], full[labels]
        _, h, w = img.shape
        size = h * w
        order = _draw(lab.data, per_digit, rng)
        pixels = b"".join(img.data[i * size : (i + 1) * size] for i in order)
        out[images] = IdxArray((len(order), h, w), "uint8", pixels)
        out[labels] = IdxArray((len(order),), "uint8", bytes(lab.data[i] for i in order))

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in NAMES:
        arr = out[name]
        path = os.path.join(args.out, name + ".gz")
        write_idx(path, arr)
        raw = arr.header() + arr.data
        shape = "x".join(map(str, arr.shape))
        digest = hashlib.sha256(raw).hexdigest()
        rows.append(f"| {name}.gz | {shape} | {len(raw)} | {os.path.getsize(path)} | {digest} |")
        print(f"{path}: {shape}, {os.path.getsize(path):,} bytes, sha256 {digest}")
    text = README.format(
        n_train=out[TRAIN_LABELS].shape[0],
        n_test=out[TEST_LABELS].shape[0],
        per_train=TRAIN_PER_DIGIT,
        per_test=TEST_PER_DIGIT,
        seed=SEED,
        rows="\n".join(rows),
    )
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
