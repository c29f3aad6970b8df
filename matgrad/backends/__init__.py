"""Backend registry: which matrix backends exist, which one new tensors use, and the seed.

The default is ``MATGRAD_BACKEND`` when set, else ``"numpy"`` when NumPy is installed, else
``"python"``. It is resolved on first use, so ``import matgrad`` neither imports NumPy nor prints.
"""

from __future__ import annotations

import importlib.util
import os
import threading

from matgrad._errors import ArgumentError, ArgumentTypeError, BackendError
from matgrad.backends.base import DTYPES, FLOAT_DTYPES, Backend

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "Backend",
    "available_backends",
    "get",
    "get_backend",
    "manual_seed",
    "set_backend",
]

NAMES = ("numpy", "python")

_instances: dict[str, Backend] = {}
_default: Backend | None = None
_seed = 0
# Backends are per-process singletons: two threads asking for a new one at once must get the
# same object (tensors compare backends by identity). Held only while creating one.
_lock = threading.RLock()


def _numpy_installed() -> bool:
    return importlib.util.find_spec("numpy") is not None


def available_backends() -> list[str]:
    """Names of the backends that can run here, e.g. ``["numpy", "python"]``."""
    return [name for name in NAMES if name != "numpy" or _numpy_installed()]


def _create(name: str) -> Backend:
    backend: Backend
    if name == "python":
        from matgrad.backends.python import PythonBackend

        backend = PythonBackend()
    elif name == "numpy":
        try:
            from matgrad.backends.numpy import NumpyBackend

            backend = NumpyBackend()
        except ImportError as exc:
            raise BackendError(
                "the numpy backend needs NumPy, which is not installed: "
                "`pip install matgrad[fast]` (or `pip install numpy`), or use backend='python'"
            ) from exc
    else:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, NAMES))}")
    backend.seed(_seed)
    return backend


def get(name: str | Backend | None = None) -> Backend:
    """The backend called ``name`` (created once), or the default one for ``None``."""
    if name is None:
        return _default if _default is not None else _resolve_default()
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise ArgumentTypeError(
            f"backend must be a name such as 'numpy' or 'python', got {type(name).__name__} {name!r}"
        )
    backend = _instances.get(name)
    if backend is None:
        with _lock:
            backend = _instances.get(name)
            if backend is None:
                backend = _instances[name] = _create(name)
    return backend


def _resolve_default() -> Backend:
    global _default
    with _lock:
        if _default is not None:
            return _default
        env = os.environ.get("MATGRAD_BACKEND", "").strip()
        if env:
            if env not in NAMES:
                raise BackendError(f"MATGRAD_BACKEND={env!r} is not a backend; set it to 'numpy' or 'python'")
            _default = get(env)
        else:
            _default = get("numpy" if _numpy_installed() else "python")
        return _default


def set_backend(name: str) -> None:
    """Make ``name`` (``"python"`` or ``"numpy"``) the backend of new tensors."""
    global _default
    _default = get(name)


def get_backend() -> str:
    """The name of the backend new tensors use."""
    return get().name


def manual_seed(seed: int) -> None:
    """Seed every backend's random generator, so draws (init, dropout, shuffling) repeat.

    Each backend has its own generator (NumPy's PCG64, Python's Mersenne Twister), so the same
    seed gives the same sequence run after run on one backend, but not the same numbers on both.
    ``DataLoader`` shuffles with its own generator, seeded from here, identically on both.
    """
    global _seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ArgumentError(f"manual_seed: seed must be in 0 .. 2**64 - 1, got {seed}")
    with _lock:
        _seed = seed
        for backend in list(_instances.values()):
            backend.seed(seed)
