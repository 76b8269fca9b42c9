r"""Sharpness of a minimum as the largest rise of the loss in a small box around it.

ε-sharpness (Keskar, Mudigere, Nocedal, Smelyanskiy & Tang, ICLR 2017, "On Large-Batch Training for Deep Learning:
Generalization Gap and Sharp Minima", Metric 2.1, with A = I):

.. math:: \phi_{x,f}(\epsilon) = \frac{\max_{y\in\mathcal C_\epsilon} f(x+y) - f(x)}{1 + f(x)} \times 100,\qquad
          \mathcal C_\epsilon = \{y : |y_i| \le \epsilon(|x_i| + 1)\}.

The maximum is found as they do, by L-BFGS-B on the box (``scipy.optimize.minimize``), from a random point of the
box (at an exact minimum the gradient vanishes and a start at y = 0 would not move). The adaptive variant scales
the box by |x_i| alone, |y_i| ≤ ε|x_i| (Kwon et al., ICML 2021, "ASAM"), which makes the measure invariant to the
rescalings of the weights that leave a ReLU network's function unchanged. A local maximiser gives a lower bound of
the true maximum; for a convex loss the maximum over a box is at a vertex, which L-BFGS-B reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from nets.curvature.operator import HessianOperator
from sgd_noise_common.results import Result

__all__ = ["Sharpness", "epsilon_sharpness"]


@dataclass(frozen=True)
class Sharpness(Result):
    """Keskar et al.'s ε-sharpness (``epsilon_sharpness``).

    Attributes:
        sharpness: φ, in percent; loss: f(x); max_loss: f(x + y*), the largest loss found in the box.
        epsilon, adaptive: the box (see ``epsilon_sharpness``).
        iterations, evaluations: L-BFGS-B's iterations and the loss-and-gradient passes.
        bn_statistics: which batch-norm statistics the measured loss used.
    """

    sharpness: float
    loss: float
    max_loss: float
    epsilon: float
    adaptive: bool
    iterations: int
    evaluations: int
    bn_statistics: str


def epsilon_sharpness(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, epsilon: float = 1e-3,
                      adaptive: bool = False, maxiter: int = 10, bn_mode: str = "eval", rng,
                      **operator_kwargs) -> Sharpness:
    """Keskar et al.'s ε-sharpness (or its adaptive variant) of the measured loss at the model's parameters.

    Args:
        model, loss_fn, inputs, targets, batch_size, bn_mode, operator_kwargs: as for ``HessianOperator`` (the
            model is not changed: a copy is perturbed).
        epsilon: the box's half-width, relative to |θ_i| + 1 (or to |θ_i| with ``adaptive``).
        adaptive: the box |y_i| ≤ ε|θ_i|.
        maxiter: L-BFGS-B iterations (Keskar et al. use 10).
        rng: a Generator or a seed for the start point.

    Returns:
        A ``Sharpness``.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode, **operator_kwargs)
    # L-BFGS-B (scipy) works on the host: θ is read back once for the box, y goes to the device and the gradient
    # comes back at each of its evaluations; θ + y is formed on the device (the same float64 sum).
    theta_t = op.flatten([p.detach() for p in op.params]).double()
    theta = theta_t.cpu().numpy()
    bound = epsilon * (np.abs(theta) if adaptive else np.abs(theta) + 1.0)
    f0 = op.loss()
    calls = [0]

    def set_params(y) -> None:
        with torch.no_grad():
            for p, v in zip(op.params, op.to_list(theta_t + torch.from_numpy(np.asarray(y, dtype=np.float64))
                                                  .to(op.device))):
                p.copy_(v)

    def negative(y):
        calls[0] += 1
        set_params(y)
        return -op.loss(), -op.gradient().cpu().numpy()

    rng = np.random.default_rng(rng)
    y0 = rng.uniform(-bound, bound)
    res = scipy.optimize.minimize(negative, y0, jac=True, method="L-BFGS-B",
                                  bounds=scipy.optimize.Bounds(-bound, bound), options={"maxiter": maxiter})
    set_params(np.zeros_like(theta))
    f_max = max(-float(res.fun), f0)
    return Sharpness(sharpness=(f_max - f0) / (1.0 + f0) * 100.0, loss=f0, max_loss=f_max, epsilon=epsilon,
                     adaptive=adaptive, iterations=int(res.nit), evaluations=calls[0],
                     bn_statistics=op.bn_statistics)
