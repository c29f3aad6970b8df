"""Adam and AdamW (with AMSGrad), as PyTorch's."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Set
from typing import Any, ClassVar

from matgrad._errors import ArgumentError, ArgumentTypeError
from matgrad.optim.optimizer import Grads, Optimizer, ParamsT, check_nonnegative
from matgrad.tensor import Tensor2D

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam: with ``g = grad (+ weight_decay * p)`` and ``t`` the step count,

    ``m = b1 m + (1 - b1) g``;  ``v = b2 v + (1 - b2) g^2``  (AMSGrad: ``v_max = max(v_max, v)``);
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    With ``decoupled_weight_decay=True`` (AdamW) the decay is ``p *= 1 - lr * weight_decay``
    instead of entering ``g``. ``maximize=True`` ascends. Exactly ``torch.optim.Adam``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    _state_kinds: ClassVar[dict[str, str]] = {
        "step": "count",
        "exp_avg": "tensor",
        "exp_avg_sq": "tensor",
        "max_exp_avg_sq": "tensor",
    }
    _state_required: ClassVar[tuple[str, ...]] = ("step", "exp_avg", "exp_avg_sq")

    def _check_group(self, group: dict[str, Any]) -> None:
        name = type(self).__name__
        check_nonnegative(name, group, "lr", "eps", "weight_decay")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) and hasattr(betas, "tolist") and getattr(betas, "ndim", None) == 1:
            betas = betas.tolist()  # a NumPy array of two numbers
        if isinstance(betas, (str, bytes, Set, Mapping)) or not isinstance(betas, (tuple, list)):
            raise ArgumentTypeError(
                f"{name}: betas must be a pair (beta1, beta2) such as (0.9, 0.999), got "
                f"{type(betas).__name__} {betas!r:.40}"
            )
        if len(betas) != 2:
            raise ArgumentError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
                raise ArgumentTypeError(f"{name}: betas[{i}] must be a number, got {beta!r}")
            if not 0.0 <= float(beta) < 1.0:
                raise ArgumentError(f"{name}: betas[{i}] must be in [0, 1), got {beta}")
        group["betas"] = tuple(betas)

    def _step_group(self, group: dict[str, Any], grads: Grads) -> None:
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]
        amsgrad = group["amsgrad"]
        maximize = group["maximize"]
        decoupled = group["decoupled_weight_decay"]
        for p, g in grads:
            be, data = p.kernels, p.native
            state = self._state(p)
            if not state:
                state["step"] = 0
                state["exp_avg"] = Tensor2D.from_native(be.full(p.nrows, p.ncols, 0.0, p.dtype), be)
                state["exp_avg_sq"] = Tensor2D.from_native(be.full(p.nrows, p.ncols, 0.0, p.dtype), be)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = Tensor2D.from_native(be.full(p.nrows, p.ncols, 0.0, p.dtype), be)
            state["step"] += 1
            step = state["step"]
            if maximize:
                g = be.unary("neg", g)
            if weight_decay != 0:
                if decoupled:
                    be.assign(data, be.mul(data, 1.0 - lr * weight_decay))
                else:
                    g = be.add(g, be.mul(data, weight_decay))
            m = state["exp_avg"].native
            v = state["exp_avg_sq"].native
            be.axpy(m, be.sub(g, m), 1.0 - beta1)  # m.lerp_(g, 1 - b1), as PyTorch
            be.assign(v, be.mul(v, beta2))
            be.axpy(v, be.mul(g, g), 1.0 - beta2)
            step_size = lr / (1.0 - beta1**step)
            bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
            if amsgrad:
                v_max = state["max_exp_avg_sq"].native
                be.assign(v_max, be.maximum(v_max, v))
                v = v_max
            denom = be.add(be.div(be.unary("sqrt", v), bias_correction2_sqrt), eps)
            be.axpy(data, be.div(m, denom), -step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay``, default 0.01), as PyTorch's."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True)

    def _check_group(self, group: dict[str, Any]) -> None:
        group["decoupled_weight_decay"] = True
        super()._check_group(group)
