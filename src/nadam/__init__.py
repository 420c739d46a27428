"""Keras 2's Nadam optimizer, bit for bit, on NumPy arrays and PyTorch tensors.

Example:
    >>> import numpy as np
    >>> import nadam
    >>> w = nadam.Variable(np.ones(3))
    >>> opt = nadam.Nadam(learning_rate=0.01)
    >>> opt.apply_gradients([(np.full(3, 0.5), w)])
    1
"""

from nadam import optimizers, schedules
from nadam.nadam import Nadam
from nadam.optimizer import Optimizer
from nadam.variables import IndexedSlices, Variable

__all__ = [
    "IndexedSlices",
    "Nadam",
    "Optimizer",
    "Variable",
    "optimizers",
    "schedules",
]
__version__ = "0.1.0"
