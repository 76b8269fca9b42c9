r"""The gradient noise at a model: Tr(C) of the per-example gradient covariance, ‖G‖² and the noise scale.

C is the covariance of the per-example gradients g_n over the measurement set, G = ḡ their mean, and
B_simple = Tr(C)/‖G‖² (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training").
Two methods: exact per-example gradients by ``torch.func``, or the two-batch estimator of
``sde.diagnostics.noise_scale`` (the home of its formulas), which also works when batch norm couples the examples.
Gradients stay on the measurement's device; only the per-example (or per-batch) scalars are read back, once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nets.curvature.operator import HessianOperator, batch_norm_layers
from nets.evaluation import batch_slices, measurement_precision
from sde.diagnostics import noise_scale
from sgd_noise_common.results import Result

__all__ = ["GradientNoise", "gradient_noise", "per_example_gradients"]


@dataclass(frozen=True)
class GradientNoise(Result):
    """What ``gradient_noise`` measured, each estimate with its standard error.

    Attributes:
        trace_c, trace_c_stderr: Tr(C) of the per-example gradient covariance over the measurement set.
        grad_sq, grad_sq_stderr: ‖G‖², the squared norm of the mean gradient (weight decay excluded).
        noise_scale, noise_scale_stderr: B_simple = Tr(C)/‖G‖².
        method: ``"per_example"`` or ``"two_batch"``; bn_mode: the batch-norm policy.
        num_examples: the measurement set's size; seconds: wall time.
        details: the two-batch method's ``b_small``, ``b_big`` and ``pairs``.
    """

    trace_c: float
    trace_c_stderr: float
    grad_sq: float
    grad_sq_stderr: float
    noise_scale: float
    noise_scale_stderr: float
    method: str
    bn_mode: str
    num_examples: int
    seconds: float
    details: dict = field(default_factory=dict)


def per_example_gradients(op: HessianOperator, *, chunk: int = 64):
    """The per-example gradients g_n of the measured loss's data term (no weight decay), ``chunk`` examples at a
    time: yields float64 tensors of shape ``(examples in the chunk, dim)``, in the measurement set's order
    (``torch.func``: ``vmap`` of ``grad`` through ``functional_call``, TF32 off)."""
    from torch.func import functional_call, grad, vmap

    model = op.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return op.loss_fn(out, y.unsqueeze(0))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
    with measurement_precision():
        for a, b in batch_slices(op.num_examples, chunk):
            g = per_grad(params, op.inputs[a:b], op.targets[a:b])
            yield torch.cat([g[n].reshape(b - a, -1).double() for n in names], dim=1)


def _ghost_terms(op: HessianOperator, mean: torch.Tensor, chunk: int):
    """‖g_n‖² and g_n·ḡ of every example without forming g_n, for a model whose parameters all sit in
    ``nn.Linear`` layers (2-D inputs) and eval-mode ``nn.BatchNorm1d`` layers, or ``None`` for any other model.

    Written by hand because no library here computes per-example gradient norms ("ghost norms", Goodfellow 2015;
    as Opacus does) for this loss: a linear layer's per-example weight gradient is the outer product δ_n a_nᵀ of
    its output gradient and its input, so ‖δ_n a_nᵀ‖² = ‖δ_n‖²‖a_n‖² and its dot with Ḡ is δ_nᵀĞa_n; an eval-mode
    batch norm's is δ_n ⊙ x̂_n (γ) and δ_n (β). One forward and backward pass of the summed loss gives every δ_n,
    the examples being independent (no train-mode batch norm). Equal to the ``vmap`` path to rounding
    (``tests/test_noise_ghost.py``), and about a forward-backward pass instead of one per example."""
    model = op.model
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners or any(not isinstance(m, (nn.Linear, nn.BatchNorm1d)) for m in owners):
        return None
    if any(isinstance(m, nn.BatchNorm1d) and m.training for m in owners):
        return None
    means = {id(p): t.double() for p, t in zip(op.params, op.to_list(mean))}
    saved: dict = {}

    def fwd(module, inputs, output):
        entry = saved[id(module)] = [inputs[0].detach(), None]

        def keep(grad, entry=entry):
            entry[1] = grad.detach()

        output.register_hook(keep)

    handles = [m.register_forward_hook(fwd) for m in owners]
    sq, dots = [], []
    try:
        with measurement_precision():
            for a, b in batch_slices(op.num_examples, chunk):
                saved.clear()
                out = model(op.inputs[a:b])
                try:  # each example's loss: the mean over any non-batch dimensions of the unreduced loss
                    raw = op.loss_fn(out, op.targets[a:b], reduction="none")
                except TypeError:
                    return None
                if raw.dim() == 0 or raw.shape[0] != b - a:
                    return None
                loss = raw.reshape(b - a, -1).mean(dim=1).sum()
                grads = torch.autograd.grad(loss, [p for m in owners for p in m.parameters(recurse=False)])
                del grads
                s = torch.zeros(b - a, dtype=torch.float64, device=op.device)
                d = torch.zeros(b - a, dtype=torch.float64, device=op.device)
                for m in owners:
                    x, delta = saved[id(m)]
                    if x.dim() != 2:
                        return None
                    x, delta = x.double(), delta.double()
                    if isinstance(m, nn.Linear):
                        s += (x * x).sum(dim=1) * (delta * delta).sum(dim=1)
                        d += ((delta @ means[id(m.weight)].reshape(m.out_features, m.in_features)) * x).sum(dim=1)
                        if m.bias is not None:
                            s += (delta * delta).sum(dim=1)
                            d += delta @ means[id(m.bias)]
                    elif m.affine:
                        xhat = (x - m.running_mean.double()) / torch.sqrt(m.running_var.double() + m.eps)
                        gg = delta * xhat
                        s += (gg * gg).sum(dim=1) + (delta * delta).sum(dim=1)
                        d += gg @ means[id(m.weight)] + delta @ means[id(m.bias)]
                sq.append(s)
                dots.append(d)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(sq), torch.cat(dots)


def _per_example(op: HessianOperator, chunk: int = 64) -> GradientNoise:
    """Exact Tr(C), ‖G‖² and B_simple from per-example gradients: their squared norms and dots with ḡ by
    ``_ghost_terms`` where the model allows (linear layers and eval-mode batch norm), else from the gradients
    themselves (``vmap`` of ``grad``, ``chunk`` at a time).

    The standard errors treat the set as a sample: Tr(C) by its influence function ψ_n = ‖g_n‖² − 2 g_n·ḡ, ‖G‖²
    by 2 g_n·ḡ, and the ratio by the delta method.
    """
    t0 = time.perf_counter()
    mean = op.gradient()
    if op.weight_decay:  # the noise does not include the deterministic weight-decay term
        mean = mean - op.weight_decay * op.flatten([p.detach().double() for p in op.params])
    ghost = _ghost_terms(op, mean, max(chunk, 256))
    if ghost is not None:
        sq, dots = ghost
    else:
        sq, dots = [], []
        for flat in per_example_gradients(op, chunk=chunk):
            sq.append((flat * flat).sum(dim=1))
            dots.append(flat @ mean)
        sq, dots = torch.cat(sq), torch.cat(dots)
    # The read-backs: N squared norms, N dot products and ‖G‖² (the gradients stay on the device).
    sq, dots = sq.cpu().numpy(), dots.cpu().numpy()
    g2 = float(mean @ mean)
    n = op.num_examples
    tr = float(sq.mean() - g2)
    # Influence function of Tr(C) = E‖g‖² − ‖E g‖²: ψ_n = ‖g_n‖² − 2 g_n·ḡ.
    tr_se = float(np.std(sq - 2.0 * dots, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    g2_se = float(np.std(2.0 * dots, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    ns = tr / g2 if g2 > 0 else math.inf
    # Delta method for the ratio, with ψ for Tr(C) and 2 g_n·ḡ for ‖G‖².
    ns_se = float(np.std((sq - 2.0 * dots) - ns * 2.0 * dots, ddof=1) / math.sqrt(n) / g2) if g2 > 0 else math.inf
    return GradientNoise(trace_c=tr, trace_c_stderr=tr_se, grad_sq=g2, grad_sq_stderr=g2_se, noise_scale=ns,
                         noise_scale_stderr=ns_se, method="per_example", bn_mode=op.bn_mode, num_examples=n,
                         seconds=time.perf_counter() - t0)


def _two_batch(model, loss_fn, inputs, targets, *, bn_mode, b_small, b_big, pairs, rng, dtype, device, bn_inputs,
               recalibrate) -> GradientNoise:
    """Tr(C), ‖G‖² and B_simple by ``sde.diagnostics.noise_scale`` from the squared norms of ``pairs`` gradients
    of batches of ``b_small`` and ``pairs`` of ``b_big``, each drawn without replacement from the set."""
    t0 = time.perf_counter()
    n = int(inputs.shape[0])
    rng = np.random.default_rng(rng)
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=b_big, bn_mode=bn_mode, bn_inputs=bn_inputs,
                         recalibrate=recalibrate, dtype=dtype, device=device)

    def sq_norm(b):
        idx = torch.as_tensor(np.sort(rng.choice(n, size=b, replace=False)), device=op.device)
        with measurement_precision():
            g = torch.autograd.grad(op.loss_fn(op.model(op.inputs[idx]), op.targets[idx]), op.params)
        return sum((gi.double() ** 2).sum() for gi in g)  # a 0-d float64 tensor on the device, not read back

    norms = [sq_norm(b_small) for _ in range(pairs)] + [sq_norm(b_big) for _ in range(pairs)]
    norms = torch.stack(norms).cpu().numpy()  # the one read-back: 2 * pairs numbers
    small, big = norms[:pairs], norms[pairs:]
    est = noise_scale(small, big, b_small, b_big, dataset_size=n)
    return GradientNoise(trace_c=est.trace_sigma, trace_c_stderr=est.trace_sigma_stderr, grad_sq=est.grad_sq,
                         grad_sq_stderr=est.grad_sq_stderr, noise_scale=est.b_simple,
                         noise_scale_stderr=est.b_simple_stderr, method="two_batch", bn_mode=bn_mode,
                         num_examples=n, seconds=time.perf_counter() - t0,
                         details=dict(b_small=b_small, b_big=b_big, pairs=pairs))


def gradient_noise(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, method: str = "auto",
                   bn_mode: str = "eval", weight_decay: float = 0.0, b_small: int | None = None,
                   pairs: int = 64, rng, bn_inputs=None, recalibrate=True, dtype=None,
                   device=None) -> GradientNoise:
    """Tr(C) of the per-example gradient covariance on the measurement set, ‖G‖² and B_simple.

    ``method="per_example"``: per-example gradients by ``torch.func`` (``vmap`` of ``grad``), exact on the set
    (the standard error is that of the set as a sample); defined when no layer couples the examples of a batch,
    i.e. not for batch norm in train mode. ``method="two_batch"``: McCandlish et al.'s unbiased estimators from
    ``pairs`` batches of ``b_small`` (default ``batch_size // 8``, at least 2) and of ``batch_size`` drawn without
    replacement from the set, ``sde.diagnostics.noise_scale``; it also works in train-mode batch norm, where it
    measures the noise of the minibatch gradients SGD actually takes. ``"auto"``: per-example when defined.

    Args:
        model, loss_fn, inputs, targets, bn_mode, bn_inputs, recalibrate, dtype, device: as for
            ``HessianOperator``.
        batch_size: the measurement batch size; the two-batch method's large batch.
        method: ``"auto"``, ``"per_example"`` or ``"two_batch"``.
        weight_decay: accepted as ``hessian_stats`` accepts it; the noise excludes the deterministic weight-decay
            gradient, so it does not change the result (up to rounding in the per-example method).
        b_small: the two-batch method's small batch.
        pairs: the two-batch method's number of batches of each size.
        rng: a Generator or a seed for the two-batch method's draws.

    Returns:
        A ``GradientNoise``.

    Raises:
        ValueError: for an unknown ``method``, per-example gradients with train-mode batch norm, or batch sizes
            outside 1 <= ``b_small`` < ``batch_size`` <= the set's size for the two-batch method.
    """
    if method not in ("auto", "per_example", "two_batch"):
        raise ValueError(f"method must be 'auto', 'per_example' or 'two_batch', got {method!r}")
    has_bn = bool(batch_norm_layers(model))
    if method == "auto":
        method = "two_batch" if (bn_mode == "train" and has_bn) else "per_example"
    if method == "per_example":
        if bn_mode == "train" and has_bn:
            raise ValueError("per-example gradients are not defined for batch norm in train mode (the examples "
                             "of a batch are coupled); use method='two_batch' or bn_mode='eval'")
        op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode,
                             weight_decay=weight_decay, bn_inputs=bn_inputs, recalibrate=recalibrate, dtype=dtype,
                             device=device)
        return _per_example(op)
    n = int(inputs.shape[0])
    b_small = b_small or max(2, batch_size // 8)
    if not 1 <= b_small < batch_size <= n:
        raise ValueError(f"need 1 <= b_small < batch_size <= the measurement set size {n}, got b_small={b_small},"
                         f" batch_size={batch_size}")
    return _two_batch(model, loss_fn, inputs, targets, bn_mode=bn_mode, b_small=b_small, b_big=batch_size,
                      pairs=pairs, rng=rng, dtype=dtype, device=device, bn_inputs=bn_inputs,
                      recalibrate=recalibrate)
