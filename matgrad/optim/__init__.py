"""Optimisers and learning-rate schedules, named as in ``torch.optim``.

>>> from matgrad import nn, optim
>>> model = nn.MLP([4, 8, 3])
>>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
"""

from __future__ import annotations

from matgrad.optim import lr_scheduler
from matgrad.optim.adam import Adam, AdamW
from matgrad.optim.optimizer import Optimizer
from matgrad.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
