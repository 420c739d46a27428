"""`nadam.torch`: Keras 2's Nadam as a `torch.optim.Optimizer`.

Example:
    >>> import torch
    >>> from nadam.torch import Nadam
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = Nadam(model.parameters(), lr=1e-3)
    >>> model(torch.ones(2, 3)).sum().backward()
    >>> opt.step()
    >>> opt.iterations
    1

For the Keras-style API on tensors (`apply_gradients`, `minimize`, `get_weights`), use
`nadam.Nadam` directly: it takes torch tensors and `nn.Parameter`s as variables.
"""

from nadam.integrations.torch_optim import Nadam

__all__ = ["Nadam"]
