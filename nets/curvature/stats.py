"""Every Hessian measurement at once: ``hessian_stats`` runs the estimators on one operator and ``HessianStats``
holds what they found, each stochastic estimate with its standard error, and notes on anything suspicious."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from nets.curvature.eigenvalues import lanczos_lambda_max, power_iteration
from nets.curvature.operator import HessianOperator
from nets.curvature.trace import hutchinson, hutchpp

__all__ = ["HessianStats", "hessian_stats"]

#: Relative difference of two identical matvecs above which a note says the operator is not deterministic (a
#: float32 sum taken in another order differs by about 1e-7; a layer that draws randomness by far more).
DETERMINISM_TOL = 1e-4
#: Relative disagreement of power iteration and Lanczos above which a note is added (1 %, a hundred times their
#: default tolerance: more means different eigenvalues, or power iteration slowed by a small spectral gap).
CROSS_CHECK_TOL = 1e-2


@dataclass
class HessianStats:
    """What ``hessian_stats`` measured; every stochastic estimate carries its standard error.

    Attributes:
        lambda_max: λ_max by Lanczos; ``lambda_max_power`` by power iteration (the eigenvalue of largest
            magnitude); ``lanczos_converged`` whether ARPACK converged.
        trace, trace_stderr: Tr(H) by Hutchinson; ``trace_hutchpp`` and its standard error by Hutch++.
        frobenius, frobenius_stderr: ‖H‖_F from E‖Hv‖² over the Hutchinson probes.
        loss: the measured loss L(θ).
        num_params, num_examples, batch_size, bn_mode, weight_decay, num_probes, dtype, hvp_method: the setting.
        determinism: ``HessianOperator.determinism``; matvecs: the matvecs spent; seconds: wall time.
        notes: warnings in words (non-deterministic matvecs, no convergence, disagreeing eigenvalue estimates).
    """

    lambda_max: float
    lambda_max_power: float
    lanczos_converged: bool
    trace: float
    trace_stderr: float
    trace_hutchpp: float
    trace_hutchpp_stderr: float
    frobenius: float
    frobenius_stderr: float
    loss: float
    num_params: int
    num_examples: int
    batch_size: int
    bn_mode: str
    weight_decay: float
    num_probes: int
    determinism: float
    matvecs: int
    seconds: float
    dtype: str = "float32"
    hvp_method: str = ""
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Every field as a plain dict (``dataclasses.asdict``), e.g. for JSON."""
        return asdict(self)


def hessian_stats(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, bn_mode: str = "eval",
                  weight_decay: float = 0.0, num_probes: int = 32, rng=None, bn_inputs=None, recalibrate=True,
                  dtype=None, device=None, lanczos_tol: float = 1e-4, power_iters: int = 100, cross_check: bool = True,
                  hutchpp_matvecs: int | None = None, hvp_method: str = "auto") -> HessianStats:
    """λ_max, Tr(H) and ‖H‖_F of the measured loss, with standard errors and cross-checks.

    In order, on one ``HessianOperator`` and one random stream: the determinism probe, λ_max by Lanczos
    (``lanczos_lambda_max``) and by power iteration as a cross-check (``power_iteration``), Tr(H) and ‖H‖_F by
    Hutchinson (``hutchinson``, ‖H‖_F from E‖Hv‖²), and Tr(H) by Hutch++ (``hutchpp``).

    Args:
        model, loss_fn, inputs, targets, batch_size, bn_mode, weight_decay, bn_inputs, recalibrate, dtype, device,
            hvp_method: as for ``HessianOperator``.
        num_probes: Hutchinson probes (at least 2).
        rng: a Generator or a seed; it seeds every probe and starting vector.
        lanczos_tol: ARPACK's tolerance, also power iteration's relative stopping tolerance.
        power_iters: power iteration's most matvecs.
        cross_check: run power iteration beside Lanczos (about a third of the matvecs with the defaults); without
            it ``lambda_max_power`` is NaN.
        hutchpp_matvecs: Hutch++'s budget (default ``max(6, num_probes)``).

    Returns:
        A ``HessianStats``.

    Raises:
        ValueError: as ``HessianOperator``, ``hutchinson`` and ``hutchpp`` do for invalid arguments; for
            non-finite parameters, inputs or loss, before any solver runs.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(rng)
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode,
                         weight_decay=weight_decay, bn_inputs=bn_inputs, recalibrate=recalibrate, dtype=dtype,
                         device=device, hvp_method=hvp_method)
    loss = op.loss()
    if not math.isfinite(loss):  # before any eigensolver: ARPACK/LAPACK would fail on NaN with no useful message
        raise ValueError(f"the measured loss is {loss}: the model or the data give non-finite outputs")
    notes = []
    det = op.determinism(rng)
    if det > DETERMINISM_TOL:
        notes.append(f"matvecs are not deterministic (relative difference {det:.2g}): a layer draws randomness "
                     "or a non-deterministic kernel is in use")
    lam, conv = lanczos_lambda_max(op, tol=lanczos_tol, rng=rng)
    lam_p = power_iteration(op, iters=power_iters, tol=lanczos_tol, rng=rng)[0] if cross_check else math.nan
    if not conv:
        notes.append("Lanczos did not converge; lambda_max is its best estimate")
    if cross_check and abs(lam_p - lam) > CROSS_CHECK_TOL * abs(lam):
        notes.append(f"power iteration ({lam_p:.6g}) and Lanczos ({lam:.6g}) differ by more than 1 %: a negative "
                     "eigenvalue of larger magnitude, or a small spectral gap")
    h = hutchinson(op, num_probes, rng=rng)
    tpp, tpp_se = hutchpp(op, hutchpp_matvecs or max(6, num_probes), rng=rng)
    return HessianStats(lambda_max=lam, lambda_max_power=lam_p, lanczos_converged=conv, trace=h["trace"],
                        trace_stderr=h["trace_stderr"], trace_hutchpp=tpp, trace_hutchpp_stderr=tpp_se,
                        frobenius=h["frobenius"], frobenius_stderr=h["frobenius_stderr"], loss=op.loss(),
                        num_params=op.dim, num_examples=op.num_examples, batch_size=op.batch_size,
                        bn_mode=bn_mode, weight_decay=weight_decay, num_probes=num_probes, determinism=det,
                        matvecs=op.matvecs, seconds=time.perf_counter() - t0, dtype=str(op.dtype).split(".")[-1],
                        hvp_method=op.hvp_method, notes=notes)
