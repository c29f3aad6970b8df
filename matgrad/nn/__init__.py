"""Layers, models and losses, named as in ``torch.nn``.

>>> import matgrad as mg
>>> from matgrad import nn
>>> model = nn.MLP([784, 128, 10])
>>> list(model.state_dict())
['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

from matgrad.nn import init
from matgrad.nn.activation import Dropout, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from matgrad.nn.container import MLP, Sequential
from matgrad.nn.conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from matgrad.nn.linear import Identity, Linear
from matgrad.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from matgrad.nn.module import IncompatibleKeys, Module, Parameter

__all__ = [
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "IncompatibleKeys",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MLP",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "init",
]
