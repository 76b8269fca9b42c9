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

Opt-in, the forward pass and the loss (and with them the backward pass, through AOTAutograd) can be compiled by
``torch.compile`` (``compiled_loss``; ``nets.train --compile``): mode ``"reduce-overhead"`` on CUDA (the step is
captured as CUDA graphs, which removes the launch overhead that dominates the small models), torch's default mode
elsewhere. The optimiser's update and the observables stay eager. The compiled step computes the same numbers as
the eager one to float round-off (another order of the same float32 sums; ``tests/test_compile.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sde.diagnostics import fdr_right_factor

__all__ = ["make_optimizer", "sgd_step", "observed_step", "StepObservables", "compiled_loss",
           "CompileError", "COMPILE_BACKEND"]

#: The ``torch.compile`` backend of ``compiled_loss`` (inductor: generated C++ on the CPU, Triton on CUDA).
COMPILE_BACKEND = "inductor"


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


class CompileError(ValueError):
    """``torch.compile`` could not compile the step here (no C++ compiler, an unsupported platform...): one line
    naming the cause, raised at the first step."""


def compiled_loss(model: nn.Module, loss_fn, *, device=None):
    """``forward(inputs, targets) = loss_fn(model(inputs), targets)`` compiled by ``torch.compile``, for
    ``sgd_step(..., forward=...)``.

    Mode ``"reduce-overhead"`` on CUDA (CUDA graphs), torch's default mode on other devices; backend
    ``COMPILE_BACKEND``. Compilation happens at the first call (tens of seconds on a CPU); a batch of a new size
    compiles again (torch then makes the batch dimension dynamic), so a schedule of many batch sizes pays it more
    than once. A failure to compile is a ``CompileError`` naming its cause.

    Args:
        model: the network (its parameters and buffers are read at each call, so a state loaded in place into it
            later, as on resume, is used).
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        device: where the model computes (default: its first parameter's device).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    mode = "reduce-overhead" if device.type == "cuda" and COMPILE_BACKEND == "inductor" else None

    def forward(inputs, targets):
        return loss_fn(model(inputs), targets)

    compiled = torch.compile(forward, mode=mode, backend=COMPILE_BACKEND)
    first = [True]

    def call(inputs, targets):
        if mode == "reduce-overhead":  # a new step: the last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if not first[0]:
            return compiled(inputs, targets)
        try:
            out = compiled(inputs, targets)
        except Exception as exc:  # noqa: BLE001 - torch's compiler errors have no common public base
            if type(exc).__module__.split(".")[0] != "torch" or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            root = exc  # the compiler's own error, under torch's wrappers (BackendCompilerFailed, ...)
            while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
                root = getattr(root, "inner_exception", None) or root.__cause__
            detail = (str(root).strip().splitlines() or [""])[0][:200]
            raise CompileError(f"compile: torch.compile could not compile the training step on {device} "
                               f"({type(root).__name__}: {detail}); train without --compile") from exc
        first[0] = False
        return out

    call.compiled = compiled
    call.mode = mode or "default"
    return call


def sgd_step(model: nn.Module, opt: torch.optim.SGD, inputs: torch.Tensor, targets: torch.Tensor, *, loss_fn,
             lr: float | None = None, observe: bool = False,
             forward=None) -> tuple[torch.Tensor, StepObservables | None]:
    """One SGD step on the minibatch ``(inputs, targets)`` in train mode.

    Args:
        model, opt: the network and its optimiser (``make_optimizer``).
        inputs, targets: the minibatch.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        lr: set the learning rate of every parameter group to this first (a schedule); ``None`` keeps it.
        observe: measure the step's ``StepObservables`` (for an ``sde.diagnostics.FDRMonitor``: record
            ``o_left`` and ``o_right``).
        forward: ``forward(inputs, targets)``, the loss of ``model`` on the batch, to use instead of
            ``loss_fn(model(inputs), targets)``: a compiled one (``compiled_loss``); ``None``: eager.

    Returns:
        ``(loss, observables)``: the minibatch loss (detached) and the observables, or ``None`` without
        ``observe``.
    """
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    model.train()
    loss = loss_fn(model(inputs), targets) if forward is None else forward(inputs, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if not observe:
        opt.step()
        return loss.detach(), None
    return loss.detach(), observed_step(model.parameters(), opt, opt.step)
