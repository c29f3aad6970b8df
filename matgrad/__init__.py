"""matgrad: automatic differentiation at matrix granularity.

A ``Tensor2D`` wraps a row-major matrix and records the op and the inputs that made it;
``backward()`` walks that graph in topological order and applies each op's chain rule.

    >>> import matgrad as mg
    >>> x = mg.Tensor2D([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    >>> loss = (x @ x.T).sum()
    >>> loss.backward()
    >>> x.grad.tolist()
    [[8.0, 12.0], [8.0, 12.0]]
"""

from __future__ import annotations

# tensor first: the modules below import Tensor2D from it
from matgrad.tensor import Tensor2D, from_dlpack, from_numpy, get_default_dtype, set_default_dtype  # isort: skip
from matgrad import data, functional, metrics, nn, optim, viz
from matgrad._errors import (
    AnomalyError,
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    CheckpointError,
    DataError,
    DTypeError,
    GradcheckError,
    GraphError,
    MatgradError,
    ShapeError,
    TensorIndexError,
)
from matgrad.autograd import (
    Function,
    detect_anomaly,
    enable_grad,
    grad,
    is_anomaly_enabled,
    is_grad_enabled,
    no_grad,
    set_debug,
    set_grad_enabled,
)
from matgrad.backends import available_backends, get_backend, get_device, manual_seed, set_backend
from matgrad.compile import compile
from matgrad.creation import eye, full, full_like, ones, ones_like, rand, randn, uniform, zeros, zeros_like
from matgrad.gradcheck import gradcheck, gradgradcheck
from matgrad.io import load, save
from matgrad.ops import (
    argmax,
    argmin,
    cat,
    exp,
    log,
    log_softmax,
    logsumexp,
    matmul,
    relu,
    sigmoid,
    softmax,
    sqrt,
    tanh,
    where,
)
from matgrad.viz import scope as _scope

__version__ = "0.1.0"

_scope.install()  # diagrams draw module clusters: every op records the modules it ran in


__all__ = [
    "AnomalyError",
    "ArgumentError",
    "ArgumentTypeError",
    "BackendError",
    "CheckpointError",
    "DataError",
    "DTypeError",
    "GradcheckError",
    "GraphError",
    "MatgradError",
    "ShapeError",
    "Tensor2D",
    "TensorIndexError",
    "Function",
    "__version__",
    "argmax",
    "argmin",
    "available_backends",
    "cat",
    "compile",
    "data",
    "detect_anomaly",
    "enable_grad",
    "exp",
    "eye",
    "full",
    "from_dlpack",
    "from_numpy",
    "full_like",
    "functional",
    "get_backend",
    "get_device",
    "get_default_dtype",
    "grad",
    "gradcheck",
    "gradgradcheck",
    "is_anomaly_enabled",
    "is_grad_enabled",
    "load",
    "log",
    "log_softmax",
    "logsumexp",
    "manual_seed",
    "matmul",
    "metrics",
    "nn",
    "no_grad",
    "ones",
    "ones_like",
    "optim",
    "rand",
    "randn",
    "relu",
    "save",
    "set_backend",
    "set_debug",
    "set_default_dtype",
    "set_grad_enabled",
    "sigmoid",
    "softmax",
    "sqrt",
    "tanh",
    "uniform",
    "viz",
    "where",
    "zeros",
    "zeros_like",
]
