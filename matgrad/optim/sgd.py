"""Stochastic gradient descent, with momentum, dampening, Nesterov and weight decay, as PyTorch's."""

from __future__ import annotations

from typing import Any, ClassVar

from matgrad._errors import ArgumentError
from matgrad.optim.optimizer import Grads, Optimizer, ParamsT, check_finite, check_nonnegative
from matgrad.tensor import Tensor2D

__all__ = ["SGD"]


class SGD(Optimizer):
    """``g = grad (+ weight_decay * p)``;  ``b = momentum * b + (1 - dampening) * g`` (``b = g`` at
    the first step);  ``g = g + momentum * b`` (Nesterov) or ``g = b``;  ``p -= lr * g``.

    ``maximize=True`` ascends (``g = -grad``). Exactly ``torch.optim.SGD``.
    """

    capturable = True  # no per-step constants: matgrad.compile replays the update's kernels

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    _state_kinds: ClassVar[dict[str, str]] = {"momentum_buffer": "tensor or None"}

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("SGD", group, "lr", "momentum", "weight_decay")
        check_finite("SGD", "dampening", group["dampening"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ArgumentError(
                "SGD: nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _step_group(self, group: dict[str, Any], grads: Grads) -> None:
        lr = group["lr"]
        momentum = group["momentum"]
        dampening = group["dampening"]
        weight_decay = group["weight_decay"]
        nesterov = group["nesterov"]
        maximize = group["maximize"]
        for p, g in grads:
            be, data = p.kernels, p.native
            if maximize:
                g = be.unary("neg", g)
            if weight_decay != 0:
                g = be.add(g, be.mul(data, weight_decay))
            if momentum != 0:
                state = self._state(p)
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = Tensor2D.from_native(be.copy(g), be)
                else:
                    b = buf.native
                    be.assign(b, be.mul(b, momentum))
                    be.axpy(b, g, 1.0 - dampening)
                g = be.add(g, be.mul(buf.native, momentum)) if nesterov else buf.native
            be.axpy(data, g, -lr)
