r"""One SGD step on a network, the same for training, for the stationary phase and for every measurement of the
fluctuation–dissipation relation.

The optimiser is torch's ``SGD`` (momentum μ, dampening d, weight decay γ): with g = ∇f_B(θ) + γθ,
b ← μb + (1−d)g (b = g on the first step), θ ← θ − ηb. Observed (``observe=True``), a step also measures
Yaida's observables from the values before the update, O_L = θ·g, and from the buffer after it,
O_R = ``fdr_right_factor``(η, μ, d)·‖b'‖² (b' = g for plain SGD); at a stationary state ⟨O_L⟩ = ⟨O_R⟩.
The factor ½η(1+μ)/(1−d) has one home, ``sde.diagnostics.fdr_right_factor``; dot products accumulate in float64.

The observables stay on the parameters' device as 0-d float64 tensors: an observed step reads nothing back to the
host (no synchronisation with a GPU), and the caller converts them (``float``, ``np.asarray``, or an
``FDRMonitor``, which reads them when it summarises) only when it needs the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sde.diagnostics import fdr_right_factor

__all__ = ["make_optimizer", "sgd_step", "observed_step", "StepObservables"]


def make_optimizer(model: nn.Module, *, eta: float, momentum: float = 0.0, dampening: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.SGD:
    """torch's SGD over ``model``'s parameters with learning rate ``eta`` and the given momentum, dampening and
    weight decay (torch's conventions, as in the module docstring)."""
    return torch.optim.SGD(model.parameters(), lr=eta, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay)


def _hyper(opt: torch.optim.SGD) -> tuple[float, float, float, float]:
    g = opt.param_groups[0]
    return float(g["lr"]), float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"])


@dataclass(frozen=True)
class StepObservables:
    """What one step measured: O_L = θ·(g + γθ) before the update, O_R = ½η(1+μ)/(1−d)·‖b'‖² after it, and
    ‖g + γθ‖², the squared norm of the whole stochastic gradient before the update.

    Each is a 0-d float64 tensor on the parameters' device, not yet read back (``float(obs.o_left)`` reads it)."""

    o_left: torch.Tensor
    o_right: torch.Tensor
    grad_sq: torch.Tensor


def observed_step(params, opt: torch.optim.SGD, step) -> StepObservables:
    """Run ``step()`` (which must call ``opt.step()``) and measure Yaida's observables around it.

    Args:
        params: the parameters the optimiser updates, with their gradients of the data loss already computed.
        opt: the optimiser (its first parameter group's η, μ, d and γ apply).
        step: a callable that performs the update.

    Returns:
        The step's ``StepObservables``: 0-d float64 tensors on the parameters' device, summed parameter by
        parameter in their order (the same float64 additions as summing Python floats); nothing is read back.
    """
    lr, mu, damp, gamma = _hyper(opt)
    params = [p for p in params if p.grad is not None]
    device = params[0].device if params else None
    o_left = torch.zeros((), dtype=torch.float64, device=device)
    plain_sq = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        t = p.detach().double()
        g = p.grad.double() + gamma * t
        o_left += (t * g).sum()
        plain_sq += (g * g).sum()
    step()
    if mu:
        buf_sq = torch.zeros((), dtype=torch.float64, device=device)
        for p in params:
            buf_sq += opt.state[p]["momentum_buffer"].double().pow(2).sum()
    else:
        buf_sq = plain_sq
    return StepObservables(o_left, fdr_right_factor(lr, mu, damp) * buf_sq, plain_sq)


def sgd_step(model: nn.Module, opt: torch.optim.SGD, inputs: torch.Tensor, targets: torch.Tensor, *, loss_fn,
             lr: float | None = None, observe: bool = False) -> tuple[torch.Tensor, StepObservables | None]:
    """One SGD step on the minibatch ``(inputs, targets)`` in train mode.

    Args:
        model, opt: the network and its optimiser (``make_optimizer``).
        inputs, targets: the minibatch.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        lr: set the learning rate of every parameter group to this first (a schedule); ``None`` keeps it.
        observe: measure the step's ``StepObservables`` (for an ``sde.diagnostics.FDRMonitor``: record
            ``o_left`` and ``o_right``).

    Returns:
        ``(loss, observables)``: the minibatch loss (detached) and the observables, or ``None`` without
        ``observe``.
    """
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    model.train()
    loss = loss_fn(model(inputs), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if not observe:
        opt.step()
        return loss.detach(), None
    return loss.detach(), observed_step(model.parameters(), opt, opt.step)
