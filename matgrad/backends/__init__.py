"""Backend registry: which matrix backends exist, which one new tensors use, and the seed.

The default is ``MATGRAD_BACKEND`` when set, else ``"numpy"`` when NumPy is installed, else
``"python"``. It is resolved on first use, so ``import matgrad`` neither imports NumPy nor prints.

A backend is one library on one device: ``get("torch")`` is PyTorch on its default device (the
CPU), ``get("torch", "cuda")`` or ``get("torch:cuda")`` PyTorch on the current CUDA device; each
(library, device) pair is one object, created on first use. ``"numpy"`` and ``"python"`` run on
the CPU only. ``"torch"``, ``"cupy"`` and ``"array_api_strict"`` share one implementation of the
kernels written against the Python Array API standard (``matgrad/backends/array_api.py``).
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
    "devices",
    "get",
    "get_backend",
    "manual_seed",
    "set_backend",
]

NAMES = ("numpy", "python", "torch", "cupy", "array_api_strict")
ARRAY_API_NAMES = ("torch", "cupy", "array_api_strict")
"""The backends served by the Array API implementation (each needs its library and array-api-compat)."""

_instances: dict[str, Backend] = {}  # one per (library, device), keyed by its spec "name:device"
_lookup: dict[tuple[str, str | None], Backend] = {}  # what get() was asked for -> the backend
_default: Backend | None = None
_seed = 0
# Backends are per-process singletons: two threads asking for a new one at once must get the
# same object (tensors compare backends by identity). Held only while creating one.
_lock = threading.RLock()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _numpy_installed() -> bool:
    return _installed("numpy")


def _can_run(name: str) -> bool:
    if name == "python":
        return True
    if name == "numpy":
        return _numpy_installed()
    # every Array API backend draws random numbers and reads data through NumPy
    return _numpy_installed() and _installed("array_api_compat") and _installed(name)


def available_backends() -> list[str]:
    """Names of the backends whose libraries are installed, e.g. ``["numpy", "python", "torch"]``.

    Installed is not the same as usable on every device: ``"cupy"`` is listed when CuPy is
    installed, and ``devices("cupy")`` says whether a GPU is there.
    """
    return [name for name in NAMES if _can_run(name)]


def devices(name: str) -> list[str]:
    """The devices backend ``name`` can use here, e.g. ``["cpu", "cuda:0"]`` for torch with one GPU."""
    if name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, NAMES))}")
    if name in ("numpy", "python"):
        return ["cpu"]
    if not _can_run(name):
        return []
    from matgrad.backends.array_api import library_devices

    return library_devices(name)


def _split(spec: str) -> tuple[str, str | None]:
    """``"torch:cuda:1"`` -> ``("torch", "cuda:1")``; ``"numpy"`` -> ``("numpy", None)``."""
    name, sep, device = spec.partition(":")
    return name, (device if sep else None)


def _create(name: str, device: str | None) -> Backend:
    backend: Backend
    if name == "python" or name == "numpy":
        if device is not None and device.lower() not in ("cpu", "cpu:0"):
            raise BackendError(
                f"the {name} backend runs on the CPU only, not on device {device!r}; "
                "use backend='torch' or 'cupy' for a GPU"
            )
        if name == "python":
            from matgrad.backends.python import PythonBackend

            backend = PythonBackend()
        else:
            try:
                from matgrad.backends.numpy import NumpyBackend

                backend = NumpyBackend()
            except ImportError as exc:
                raise BackendError(
                    "the numpy backend needs NumPy, which is not installed: "
                    "`pip install matgrad[fast]` (or `pip install numpy`), or use backend='python'"
                ) from exc
    elif name in ARRAY_API_NAMES:
        if not _can_run(name):
            missing = [m for m in ("numpy", "array_api_compat", name) if not _installed(m)]
            raise BackendError(
                f"the {name} backend needs {', '.join(missing)}, not installed: "
                f'`pip install "matgrad[array-api]" {name.replace("_", "-")}`'
            )
        from matgrad.backends.array_api import ArrayApiBackend

        backend = ArrayApiBackend(name, device)
    else:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, NAMES))}")
    backend.seed(_seed)
    return backend


def get(name: str | Backend | None = None, device: str | None = None) -> Backend:
    """The backend called ``name`` on ``device`` (created once), or the default one for ``None``.

    ``name`` may carry the device after a colon (``"torch:cuda"``); ``device=None`` means the
    library's default device (the CPU for torch, the current GPU for CuPy). With ``name=None``
    and a device, the default backend's library on that device.
    """
    if name is None:
        be = _default if _default is not None else _resolve_default()
        return be if device is None else get(be.name, device)
    if isinstance(name, Backend):
        return name if device is None or device == name.device else get(name.name, device)
    if not isinstance(name, str):
        raise ArgumentTypeError(
            f"backend must be a name such as 'numpy' or 'python', got {type(name).__name__} {name!r}"
        )
    if device is not None and not isinstance(device, str):
        device = _device_text(device)
    backend = _lookup.get((name, device))
    if backend is None:
        backend = _get_slow(name, device)
    return backend


def _device_text(device: object) -> str:
    """A device given as an object (``torch.device("cuda", 0)``, an int for a CUDA index) as text."""
    if isinstance(device, bool) or not isinstance(device, int):
        text = str(device)
        if type(device).__module__.startswith("array_api_strict"):  # Device('device1') -> device1
            text = text.split("'")[1] if "'" in text else text
        return text
    return f"cuda:{device}"


def _get_slow(name: str, device: str | None) -> Backend:
    base, in_name = _split(name)
    if in_name is not None:
        if device is not None and device != in_name:
            raise BackendError(f"backend {name!r} names device {in_name!r} but device={device!r} was given")
        device = in_name
    with _lock:
        if base in ARRAY_API_NAMES and _can_run(base):
            from matgrad.backends.array_api import normalize_device

            key = normalize_device(base, device)
        elif base in ("numpy", "python"):
            if device is not None and device.lower() not in ("cpu", "cpu:0"):
                _create(base, device)  # raises: CPU only
            key = None
        else:
            key = device
        spec = base if key is None or base in ("numpy", "python") else f"{base}:{key}"
        backend = _instances.get(spec)
        if backend is None:
            backend = _create(base, key)
            _instances[spec] = backend
        _lookup[(name, device)] = backend
        return backend


def _resolve_default() -> Backend:
    global _default
    with _lock:
        if _default is not None:
            return _default
        env = os.environ.get("MATGRAD_BACKEND", "").strip()
        if env:
            if _split(env)[0] not in NAMES:
                raise BackendError(
                    f"MATGRAD_BACKEND={env!r} is not a backend; set it to one of {', '.join(map(repr, NAMES))} "
                    "(with a device after a colon where the library has devices, e.g. 'torch:cuda')"
                )
            _default = get(env)
        else:
            _default = get("numpy" if _numpy_installed() else "python")
        return _default


def set_backend(name: str | Backend, device: str | None = None) -> None:
    """Make ``name`` (``"numpy"``, ``"python"``, ``"torch"``, ...) on ``device`` the backend of new tensors."""
    global _default
    _default = get(name, device)


def get_backend() -> str:
    """The name of the backend new tensors use (``get_device()`` says on which device)."""
    return get().name


def get_device() -> str:
    """The device new tensors go to: ``"cpu"``, ``"cuda:0"``, ... (the default backend's device)."""
    return get().device


def manual_seed(seed: int) -> None:
    """Seed every backend's random generator, so draws (init, dropout, shuffling) repeat.

    The python backend draws from Python's Mersenne Twister; every other backend from NumPy's
    PCG64 on the host, then moves the numbers to its device, so one seed gives the same numbers
    on numpy, torch, cupy and array_api_strict, on any device (not on python).
    ``DataLoader`` shuffles with its own generator, seeded from here, identically on all.
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
