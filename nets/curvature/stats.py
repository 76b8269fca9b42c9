r"""Every Hessian measurement at once, each to a stated accuracy: ``hessian_stats`` runs the estimators on one
operator and ``HessianStats`` holds what they found, what each result guarantees, and notes on anything suspicious.

The plan, on one ``HessianOperator`` and one random stream:

1. λ_max by Lanczos with full reorthogonalisation, stopped as soon as the Ritz residual bound
   ‖Hy − θy‖ ≤ ``lambda_tol``·|θ| holds (``nets.curvature.lanczos``; no 20-vector floor as ARPACK has).
2. The determinism probe: the last Lanczos product taken again (one HVP).
3. Tr(H) and ‖H‖_F by ``trace_and_frobenius``: Rademacher probes deflated by the Krylov space that step 1 built
   (its trace and Frobenius parts are known exactly from the Lanczos relation HQ = QT + r e_mᵀ), combined with
   plain Hutchinson's samples of the same probes in the proportion of least variance, added until both Student-t
   intervals at ``confidence`` are within ``trace_rtol`` (relative).
4. Optionally power iteration (``cross_check``) and Hutch++ (``hutchpp_matvecs``), as before.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from nets.curvature.arrays import apply_one, device_of, is_tensor, to_operator, vector_norm
from nets.curvature.eigenvalues import power_iteration
from nets.curvature.lanczos import LanczosResult, lanczos
from nets.curvature.operator import HessianOperator
from nets.curvature.trace import Deflation, TraceAndFrobenius, hutchpp, trace_and_frobenius
from sgd_noise_common.results import Result

__all__ = ["HessianStats", "hessian_stats", "operator_stats"]

#: Relative difference of two identical matvecs above which a note says the operator is not deterministic (a
#: float32 sum taken in another order differs by about 1e-7; a layer that draws randomness by far more).
DETERMINISM_TOL = 1e-4
#: Relative disagreement of power iteration and Lanczos above which a note is added (1 %: more means different
#: eigenvalues, or power iteration slowed by a small spectral gap).
CROSS_CHECK_TOL = 1e-2
#: The most Lanczos steps for λ_max (each one HVP and one stored vector of the parameters' size): as
#: ``extreme_eigenpairs``'s default; a spectrum that needs more is reported as not converged.
MAX_LANCZOS_STEPS = 300


@dataclass(frozen=True)
class HessianStats(Result):
    """What ``hessian_stats`` measured, and what it guarantees.

    Attributes:
        lambda_max: the largest Ritz value of a Lanczos run (a lower bound on λ_max(H)); ``lambda_max_residual``
            ‖Hy − θy‖ of its Ritz vector (an eigenvalue of H lies within it); ``lanczos_converged``: the residual
            is within ``lambda_tol``·|λ|; ``lanczos_steps``: HVPs the run took.
        trace, trace_stderr, trace_halfwidth: Tr(H), its standard error and the half-width of its interval at
            ``confidence``; ``trace_plain_weight``: the weight of plain Hutchinson in the estimate, against the
            samples deflated by the Lanczos Krylov space (0: deflated only; see ``trace_and_frobenius``).
        frobenius, frobenius_stderr, frobenius_halfwidth, frobenius_plain_weight: the same for ‖H‖_F.
        confidence, trace_rtol: the requested level and relative half-width (of each interval, not joint);
            ``reached``: both intervals are within it; ``num_probes``: probes taken (at least the ``min_probes``
            argument); ``deflated``: the dimension of the deflated Krylov space.
        lambda_max_power: power iteration's estimate with ``cross_check=True``, else NaN.
        trace_hutchpp, trace_hutchpp_stderr: Hutch++ with ``hutchpp_matvecs`` given, else NaN.
        bn_statistics: which batch-norm statistics the measured loss used (``HessianOperator.bn_statistics``).
        loss: the measured loss L(θ).
        num_params, num_examples, batch_size, bn_mode, weight_decay, dtype, hvp_method: the setting.
        determinism: relative difference of one HVP taken twice; matvecs: the HVPs spent; seconds: wall time.
        guarantee: what the numbers guarantee, in words; notes: warnings in words.

    ``operator_stats`` (the estimators alone, on any symmetric operator) leaves the setting (``loss`` to
    ``hvp_method``, ``bn_statistics``) at its defaults: NaN, 0 or empty.
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
    loss: float = math.nan
    num_params: int = 0
    num_examples: int = 0
    batch_size: int = 0
    bn_mode: str = ""
    weight_decay: float = 0.0
    num_probes: int = 0
    determinism: float = math.nan
    matvecs: int = 0
    seconds: float = math.nan
    dtype: str = "float32"
    hvp_method: str = ""
    lambda_max_residual: float = math.nan
    lambda_tol: float = math.nan
    lanczos_steps: int = 0
    trace_halfwidth: float = math.nan
    frobenius_halfwidth: float = math.nan
    trace_plain_weight: float = math.nan
    frobenius_plain_weight: float = math.nan
    confidence: float = math.nan
    trace_rtol: float = math.nan
    reached: bool = False
    deflated: int = 0
    bn_statistics: str = ""
    guarantee: str = ""
    notes: list = field(default_factory=list)


def _lambda_max(op: HessianOperator, tol: float, rng: np.random.Generator) -> tuple[LanczosResult, np.ndarray]:
    """Lanczos from a Gaussian start, stopped when the largest Ritz pair's residual bound is within tol·|θ|
    (``extreme_eigenpairs``'s rule for k = 1); returns the run and H q_m, the product of its last vector."""
    last = {}

    def matvec(v):
        hv = apply_one(op, v)
        last["hq"] = hv.clone() if is_tensor(hv) else hv.copy()  # lanczos reorthogonalises its product in place
        return hv

    def converged(alphas, betas) -> bool:
        theta, s = np.linalg.eigh(LanczosResult(np.array(alphas), np.array(betas), np.empty((0, 0)), 0)
                                  .tridiagonal())
        return bool(betas[-1] * abs(s[-1, -1]) <= tol * abs(theta[-1]))

    # On a HessianOperator the run, its basis and its last product stay on the operator's device.
    run = lanczos(matvec, op.dim, steps=min(op.dim, MAX_LANCZOS_STEPS),
                  v0=to_operator(rng.standard_normal(op.dim), device_of(op)), stop=converged)
    return run, last["hq"]


def _guarantee(lam: float, res: float, tol: float, converged: bool, tf: TraceAndFrobenius) -> str:
    tr, fr = tf.trace, tf.frobenius
    pct = f"{100 * tr.confidence:g} %"
    rel = res / abs(lam) if lam else math.inf
    head = (f"lambda_max = {lam:.6g} is a Ritz value, so at most the largest eigenvalue of H, and an eigenvalue of "
            f"H lies within its residual {res:.2g} ({rel:.1e} relative, {'within' if converged else 'NOT within'} "
            f"the requested {tol:g})")
    if tf.probes == 0:
        body = "Tr(H) and |H|_F are exact (the Krylov space spans the parameter space)"
    else:
        body = (f"Tr(H) = {tr.estimate:.6g} +- {tr.halfwidth:.2g} and |H|_F = {fr.estimate:.6g} +- "
                f"{fr.halfwidth:.2g} are Student-t intervals at {pct} each "
                f"({'within' if tf.reached else 'NOT within'} the requested {100 * tr.rtol:g} % relative, "
                f"{tf.probes} probes)")
    return f"{head}; {body}"


def hessian_stats(op: HessianOperator, *, rng, lambda_tol: float = 1e-4, trace_rtol: float = 0.05,
                  confidence: float = 0.95, min_probes: int = 10, max_probes: int = 1000, cross_check: bool = False,
                  power_iters: int = 100, hutchpp_matvecs: int | None = None) -> HessianStats:
    r"""λ_max, Tr(H) and ‖H‖_F of an operator's measured loss, each to a stated accuracy (see the module docstring).

    λ_max is Lanczos's largest Ritz value θ, stopped when ‖Hy − θy‖ ≤ ``lambda_tol``·|θ|: θ ≤ λ_max(H), and some
    eigenvalue of H lies within the residual of θ (within residual²/gap once the residual is below the gap to the
    rest of the spectrum). Tr(H) and ‖H‖_F come with Student-t intervals at ``confidence`` whose half-widths are at
    most ``trace_rtol`` relative when ``reached``; ``guarantee`` says all this with the numbers.

    The measured loss (model, data, batch size, batch-norm policy, weight decay, dtype, device, HVP method) is the
    operator's: ``hessian_stats(HessianOperator(model, loss_fn, inputs, targets, batch_size=256), rng=0)``.

    Args:
        op: the ``HessianOperator`` (its products are counted from its ``matvecs`` when called).
        rng: a Generator or a seed; it seeds every probe and starting vector.
        lambda_tol: the relative residual bound at which Lanczos stops.
        trace_rtol: the wanted relative half-width of the Tr(H) and ‖H‖_F intervals.
        confidence: their level (each, not joint).
        min_probes: probes before the first test of the intervals (at least 2); more are added until they are
            narrow enough.
        max_probes: the most probes; ``reached`` is False when they stop there.
        cross_check: also run power iteration (up to ``power_iters`` HVPs, stopped at ``lambda_tol``);
            ``lambda_max_power`` is NaN otherwise.
        hutchpp_matvecs: also run Hutch++ with this budget (at least 6); ``trace_hutchpp`` and its error are NaN
            otherwise.

    Returns:
        A ``HessianStats``.

    Raises:
        TypeError: when ``op`` is not a ``HessianOperator`` (the model-and-data form of this function is gone:
            build the operator).
        ValueError: as ``trace_and_frobenius`` and ``hutchpp`` do for invalid arguments; for ``lambda_tol <= 0``;
            for a non-finite loss, before any solver runs (the operator refuses non-finite parameters and inputs).
    """
    t0 = time.perf_counter()
    if not isinstance(op, HessianOperator):
        raise TypeError("hessian_stats takes a HessianOperator, whose options are those of the measured loss: "
                        "hessian_stats(HessianOperator(model, loss_fn, inputs, targets, batch_size=...), rng=...); "
                        f"got {type(op).__name__}")
    if not lambda_tol > 0:
        raise ValueError(f"lambda_tol must be > 0, got {lambda_tol}")
    if min_probes < 2 or max_probes < min_probes:
        raise ValueError(f"need 2 <= min_probes <= max_probes, got {min_probes} and {max_probes}")
    rng = np.random.default_rng(rng)
    spent = op.matvecs
    loss = op.loss()
    if not math.isfinite(loss):  # before any eigensolver: LAPACK would fail on NaN with no useful message
        raise ValueError(f"the measured loss is {loss}: the model or the data give non-finite outputs")
    est = operator_stats(op, lambda_tol=lambda_tol, trace_rtol=trace_rtol, confidence=confidence,
                         min_probes=min_probes, max_probes=max_probes, rng=rng, cross_check=cross_check,
                         power_iters=power_iters, hutchpp_matvecs=hutchpp_matvecs)
    return dataclasses.replace(est, guarantee=f"{est.guarantee}; batch norm: {op.bn_statistics}.", loss=loss,
                               num_params=op.dim, num_examples=op.num_examples, batch_size=op.batch_size,
                               bn_mode=op.bn_mode, weight_decay=op.weight_decay, matvecs=op.matvecs - spent,
                               seconds=time.perf_counter() - t0, dtype=str(op.dtype).split(".")[-1],
                               hvp_method=op.hvp_method, bn_statistics=op.bn_statistics)


def operator_stats(op, *, lambda_tol: float, trace_rtol: float, confidence: float, min_probes: int,
                   max_probes: int, rng: np.random.Generator, cross_check: bool = False, power_iters: int = 100,
                   hutchpp_matvecs: int | None = None) -> HessianStats:
    """The estimators of ``hessian_stats`` on any symmetric operator (``dim``, ``matvec`` and optionally
    ``matmat``: a ``HessianOperator``, or a dense matrix in the tests), in the plan's order.

    Returns:
        A ``HessianStats`` of the estimates, its setting left at the defaults and ``guarantee`` lacking only its
        batch-norm clause.
    """
    rng = np.random.default_rng(rng)
    notes = []
    run, hq_last = _lambda_max(op, lambda_tol, rng)
    again = apply_one(op, run.basis[-1])
    det = float(vector_norm(again - hq_last)) / max(float(vector_norm(hq_last)), np.finfo(float).tiny)
    if det > DETERMINISM_TOL:
        notes.append(f"matvecs are not deterministic (relative difference {det:.2g}): a layer draws randomness "
                     "or a non-deterministic kernel is in use")
    deflation = Deflation.from_lanczos(run, hq_last)
    theta, s = np.linalg.eigh(deflation.projected)
    lam, res = float(theta[-1]), float(vector_norm(deflation.remainder)) * float(abs(s[-1, -1]))
    converged = res <= lambda_tol * abs(lam) or run.matvecs == op.dim
    if not converged:
        notes.append(f"Lanczos did not reach the residual bound {lambda_tol:g} in {run.matvecs} steps; "
                     "lambda_max is its best estimate")
    tf = trace_and_frobenius(op, rtol=trace_rtol, confidence=confidence, min_probes=min_probes,
                             max_probes=max_probes, deflation=deflation, rng=rng)
    if not tf.reached:
        notes.append(f"the Tr(H) and |H|_F intervals did not reach +-{100 * trace_rtol:g} % in {max_probes} probes")
    lam_p = math.nan
    if cross_check:
        lam_p = power_iteration(op, iters=power_iters, tol=lambda_tol, rng=rng)[0]
        if abs(lam_p - lam) > CROSS_CHECK_TOL * abs(lam):
            notes.append(f"power iteration ({lam_p:.6g}) and Lanczos ({lam:.6g}) differ by more than 1 %: a "
                         "negative eigenvalue of larger magnitude, or a small spectral gap")
    tpp = hutchpp(op, hutchpp_matvecs, rng=rng) if hutchpp_matvecs is not None else None
    tr, fr = tf.trace, tf.frobenius
    return HessianStats(
        lambda_max=lam, lambda_max_power=lam_p, lanczos_converged=converged, trace=tr.estimate,
        trace_stderr=tr.stderr, trace_hutchpp=math.nan if tpp is None else tpp.estimate,
        trace_hutchpp_stderr=math.nan if tpp is None else tpp.stderr, frobenius=fr.estimate,
        frobenius_stderr=fr.stderr, num_probes=tf.probes, determinism=det,
        lambda_max_residual=res, lambda_tol=lambda_tol, lanczos_steps=run.matvecs,
        trace_halfwidth=tr.halfwidth, frobenius_halfwidth=fr.halfwidth,
        trace_plain_weight=tr.plain_weight, frobenius_plain_weight=fr.plain_weight,
        confidence=confidence,
        trace_rtol=trace_rtol, reached=bool(tf.reached), deflated=tr.deflated,
        guarantee=_guarantee(lam, res, lambda_tol, converged, tf), notes=notes)
