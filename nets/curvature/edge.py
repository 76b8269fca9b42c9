r"""Batch sharpness: the curvature of the minibatch loss along its own gradient, averaged as SGD feels it.

For a batch B of S examples, g_B = ∇L_B(θ) and H_B = ∇²L_B(θ) are the gradient and Hessian of the batch loss.
Batch sharpness is the ratio of expectations over batches

    BS = E_B[g_Bᵀ H_B g_B] / E_B[‖g_B‖²],

the quantity that Andreyev & Beneventano ("Edge of Stochastic Stability") report to settle at 2/η under SGD while
λ_max of the full-batch loss stays below it (and at 2(1 ∓ μ)/η with momentum μ at small and large S). It is a ratio
of expectations, not the expectation of the per-batch ratio g_BᵀH_Bg_B/‖g_B‖², which weights every batch equally
whatever its gradient's size (``BatchSharpness.mean_of_ratios`` gives that one, for contrast only).

Each batch costs one forward pass, its gradient and one Hessian-vector product along that gradient (double backward,
or ``torch.func``'s reverse-over-forward, as ``HessianOperator.hvp_method`` chooses). The gradients and products stay
on the model's device; two numbers per batch are kept there and read back once at the end.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nets.curvature.operator import HessianOperator
from nets.evaluation import measurement_precision
from sgd_noise_common.results import NOT_JSON, Result
from sgd_noise_common.stats import ratio_of_means
from sgd_noise_common.validate import generator

__all__ = ["BatchSharpness", "batch_sharpness", "MAX_ENUMERATED"]

#: The most batches ``batch_sharpness(..., exact=True)`` enumerates (C(N, S) of them).
MAX_ENUMERATED = 100_000


@dataclass(frozen=True)
class BatchSharpness(Result):
    """What ``batch_sharpness`` measured.

    Attributes:
        estimate, stderr: BS = E_B[g_BᵀH_Bg_B] / E_B[‖g_B‖²] over batches of ``batch_size`` drawn without
            replacement from the set, and its standard error (the delta method for a ratio of means over the
            sampled batches, ``sgd_noise_common.stats.ratio_of_means``; 0 when ``exact``). Compare ``estimate·η/2``
            with 1 for the edge of stochastic stability.
        numerator, numerator_stderr: E_B[g_BᵀH_Bg_B], the numerator's mean over the batches.
        denominator, denominator_stderr: E_B[‖g_B‖²] = ‖G‖² + κ Tr(C) with κ = (N − S)/(S(N − 1)).
        mean_of_ratios, mean_of_ratios_stderr: E_B[g_BᵀH_Bg_B/‖g_B‖²], the expectation of the per-batch ratio: not
            batch sharpness, reported for contrast (the two differ when a batch's curvature along its gradient
            correlates with the gradient's size).
        batches: batches averaged (C(N, S) when ``exact``); batch_size: S; dataset_size: N.
        exact: every batch enumerated once (the estimate is then the expectation itself, to round-off).
        weight_decay: γ, included as in SGD's update (g_B + γθ, H_B + γI).
        bn_mode, bn_statistics: the batch-norm policy and the statistics it used (``HessianOperator``).
        hvp_method: how each product was taken; seconds: wall time.
        numerators, denominators: the per-batch g_BᵀH_Bg_B and ‖g_B‖² (numpy; not in ``to_dict()``).
    """

    estimate: float
    stderr: float
    numerator: float
    numerator_stderr: float
    denominator: float
    denominator_stderr: float
    mean_of_ratios: float
    mean_of_ratios_stderr: float
    batches: int
    batch_size: int
    dataset_size: int
    exact: bool
    weight_decay: float
    bn_mode: str
    bn_statistics: str
    hvp_method: str
    seconds: float
    numerators: np.ndarray = field(default=None, repr=False, metadata=NOT_JSON)
    denominators: np.ndarray = field(default=None, repr=False, metadata=NOT_JSON)


def _batch_terms(op: HessianOperator, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g_Bᵀ(H_B + γI)g_B and ‖g_B‖² (with g_B including γθ) of the batch ``idx``, as 0-d float64 tensors on the
    operator's device (nothing is read back)."""
    xb, yb = op.inputs[idx], op.targets[idx]
    gamma = op.weight_decay
    if op.hvp_method == "reverse-over-reverse":
        loss = op.loss_fn(op.model(xb), yb)
        g = torch.autograd.grad(loss, op.params, create_graph=True)
        if gamma:
            g = [gi + gamma * p for gi, p in zip(g, op.params)]
        v = [gi.detach() for gi in g]
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), op.params)
    else:
        from torch.func import grad, jvp

        names, params, loss_of = op.functional()
        f = loss_of(xb, yb)
        gd = grad(f)(params)
        if gamma:
            gd = {n: gd[n] + gamma * params[n] for n in names}
        hd = grad(lambda q: jvp(f, (q,), (gd,))[1])(params)
        v = [gd[n].detach() for n in names]
        hv = [hd[n] + gamma * gd[n] for n in names] if gamma else [hd[n] for n in names]
    num = torch.zeros((), dtype=torch.float64, device=op.device)
    den = torch.zeros((), dtype=torch.float64, device=op.device)
    for vi, hi in zip(v, hv):
        vd = vi.double()
        num += (vd * hi.double()).sum()
        den += (vd * vd).sum()
    return num, den


def batch_sharpness(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, rng, batches: int = 256,
                    exact: bool = False, bn_mode: str = "eval", weight_decay: float = 0.0, bn_inputs=None,
                    recalibrate: bool = True, dtype=None, device=None, hvp_method: str = "auto") -> BatchSharpness:
    """Batch sharpness E_B[g_BᵀH_Bg_B] / E_B[‖g_B‖²] at the model's parameters (module docstring), with its error.

    Args:
        model, loss_fn, inputs, targets, bn_mode, bn_inputs, recalibrate, dtype, device, hvp_method: as for
            ``HessianOperator`` (the model is left untouched: a copy is measured). ``loss_fn`` is the mean over a
            batch; in ``bn_mode="train"`` each batch is normalised by its own statistics, as SGD's step is.
        batch_size: S, the examples of each batch, drawn without replacement from the N of ``inputs``.
        rng: a seed or ``numpy.random.Generator`` for the batches (unused when ``exact``).
        batches: how many batches to draw, independently of each other.
        exact: enumerate all C(N, S) batches instead (at most ``MAX_ENUMERATED``): the expectation itself.
        weight_decay: γ: the batch objective L_B + (γ/2)‖θ‖² that SGD with weight decay descends.

    Returns:
        A ``BatchSharpness``.

    Raises:
        ValueError: for S outside [1, N] (or S < 2 in train-mode batch norm), ``batches < 2``, or ``exact`` with
            more than ``MAX_ENUMERATED`` batches; and ``HessianOperator``'s errors.
    """
    t0 = time.perf_counter()
    n = int(inputs.shape[0])
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in [1, {n}] (the set's size), got {batch_size}")
    if bn_mode == "train" and batch_size < 2:
        raise ValueError("bn_mode='train' needs batches of >= 2 examples")
    if exact:
        count = math.comb(n, batch_size)
        if count > MAX_ENUMERATED:
            raise ValueError(f"exact=True would enumerate C({n}, {batch_size}) = {count} batches, more than "
                             f"MAX_ENUMERATED = {MAX_ENUMERATED}; sample them (exact=False)")
        draws = (list(c) for c in itertools.combinations(range(n), batch_size))
    else:
        if int(batches) < 2:
            raise ValueError(f"batches must be >= 2 for an error bar, got {batches}")
        gen = generator("rng", rng)
        count = int(batches)
        draws = (np.sort(gen.choice(n, size=batch_size, replace=False)) for _ in range(count))
    # The operator's own batching serves only the eval-mode recalibration; train mode never loops over it.
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size if bn_mode == "eval" else n,
                         bn_mode=bn_mode, weight_decay=weight_decay, bn_inputs=bn_inputs, recalibrate=recalibrate,
                         dtype=dtype, device=device, hvp_method=hvp_method)
    nums, dens = [], []
    with measurement_precision():
        for d in draws:
            num, den = _batch_terms(op, torch.as_tensor(d, dtype=torch.long, device=op.device))
            nums.append(num)
            dens.append(den)
    both = torch.stack([torch.stack(nums), torch.stack(dens)]).cpu().numpy()  # the one read-back: 2 per batch
    u, v = both[0], both[1]
    est, se = ratio_of_means(u, v)
    per = np.divide(u, v, out=np.full_like(u, np.nan), where=v > 0)

    def mean_se(a):
        return float(a.mean()), (0.0 if exact else float(a.std(ddof=1) / math.sqrt(a.size)))

    num_m, num_se = mean_se(u)
    den_m, den_se = mean_se(v)
    mor, mor_se = mean_se(per)
    return BatchSharpness(estimate=est, stderr=0.0 if exact else se, numerator=num_m, numerator_stderr=num_se,
                          denominator=den_m, denominator_stderr=den_se, mean_of_ratios=mor,
                          mean_of_ratios_stderr=mor_se, batches=count, batch_size=int(batch_size), dataset_size=n,
                          exact=bool(exact), weight_decay=float(weight_decay), bn_mode=bn_mode,
                          bn_statistics=op.bn_statistics, hvp_method=op.hvp_method,
                          seconds=time.perf_counter() - t0, numerators=u, denominators=v)
