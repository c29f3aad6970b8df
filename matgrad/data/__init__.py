"""Data: IDX files, MNIST (files, download, shipped sample) and mini-batches.

    >>> from matgrad.data import DataLoader, load_mnist
    >>> x_train, y_train, x_test, y_test = load_mnist(sample=True)
    >>> x_train.shape, y_train.shape
    ((5000, 784), (5000, 1))
    >>> xb, yb = next(iter(DataLoader(x_train, y_train, batch_size=64, shuffle=True)))
    >>> xb.shape
    (64, 784)

Standard library only; NumPy is used when it is the backend (and by ``IdxArray.numpy()``).
"""

from __future__ import annotations

from matgrad.data.idx import IDX_TYPES, IdxArray, read_idx, write_idx
from matgrad.data.loader import DataLoader
from matgrad.data.mnist import MIRRORS, MNIST, default_root, download_mnist, load_mnist

__all__ = [
    "IDX_TYPES",
    "MIRRORS",
    "MNIST",
    "DataLoader",
    "IdxArray",
    "default_root",
    "download_mnist",
    "load_mnist",
    "read_idx",
    "write_idx",
]
