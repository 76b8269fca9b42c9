r"""torch's SGD update in numpy, for the checks that run SGD on quadratics chain by chain (``verification.fdr``).

``torch.optim.SGD`` with momentum μ, dampening d and weight decay γ: with g = ∇f_B(θ) + γθ, the buffer is
b = g on the first step and b ← μb + (1 − d)g after it, and θ ← θ − ηb (θ ← θ − ηg without momentum). The networks
use torch's optimiser itself (``nets.sgd``); ``tests/test_sgd.py`` holds the two to each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sgd_direction"]


def sgd_direction(grad, theta, buffer, *, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                  first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The direction b of torch's SGD step θ ← θ − ηb, and the momentum buffer after the step.

    Args:
        grad: ∇f_B(θ), the minibatch gradient of the data loss (any shape, e.g. ``(chains, d)``).
        theta: θ before the step (for the weight-decay term).
        buffer: the momentum buffer before the step (ignored on the first step and without momentum).
        momentum, dampening, weight_decay: μ, d, γ.
        first: whether this is the optimiser's first step (torch then sets b = g, without dampening).

    Returns:
        ``(direction, buffer)``; without momentum the direction is g + γθ and the buffer is returned unchanged.

    >>> d, b = sgd_direction(np.array([1.0]), np.array([2.0]), np.array([0.5]), momentum=0.9, dampening=0.5)
    >>> d.tolist(), b.tolist()
    ([0.95], [0.95])
    """
    g = grad + weight_decay * theta if weight_decay else grad
    if not momentum:
        return g, buffer
    buf = np.array(g, copy=True) if first else momentum * buffer + (1.0 - dampening) * g
    return buf, buf
