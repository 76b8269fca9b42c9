r"""Tr(H) and ‖H‖_F from Hessian-vector products: Hutchinson's estimator and Hutch++.

With Rademacher probes v (independent ±1 entries), E[vᵀHv] = Tr(H) and E‖Hv‖² = ‖H‖_F²; Hutch++ (Meyer, Musco,
Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation") takes the trace of a rank-k sketch exactly and
applies Hutchinson only to the rest, which lowers the variance when the spectrum decays. ``trace_and_frobenius``
does the same with a Krylov space that Lanczos has already built (Chen & Hallman 2023, "Krylov-aware stochastic trace
estimation") and stops when the confidence intervals of both Tr(H) and ‖H‖_F are as narrow as asked.

Every estimator returns a ``TraceEstimate`` per quantity (``hutchinson`` and ``trace_and_frobenius``, which estimate
Tr(H) and ‖H‖_F from the same probes, a ``TraceAndFrobenius`` holding two).

Probes go to the operator in blocks of ``PROBE_BLOCK`` (``HessianOperator.matmat``: several HVPs per pass) where the
operator has a ``matmat``; the probes themselves are drawn one by one, so a result does not depend on the block size
beyond rounding (and, for the adaptive estimators, beyond stopping at the end of a block).

On a ``HessianOperator`` the probes, the products, the deflation's basis and remainder and the projections are
float64 tensors on the operator's device (``nets.curvature.arrays``): the probes are drawn on the host by the numpy
Generator (the same random numbers as before) and go to the device once per block; only the per-probe values come
back. Other operators (a dense matrix) are served in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from nets.curvature.arrays import apply, apply_one, column_dots, device_of, is_tensor, to_host, to_operator
from nets.curvature.operator import PROBE_BLOCK, HessianOperator
from sgd_noise_common.results import NOT_JSON, Result

__all__ = ["TraceEstimate", "TraceAndFrobenius", "ProbeSamples", "hutchinson", "hutchpp", "adaptive_trace",
           "Deflation", "trace_and_frobenius", "probe_samples", "apply_block", "PROBE_BLOCK"]

# PROBE_BLOCK (probes per pass, the estimators' default ``block``) has its home and its measurement in
# ``nets.curvature.operator``.


@dataclass(frozen=True)
class TraceEstimate(Result):
    r"""One stochastic estimate of a trace-like quantity (Tr(H), or ‖H‖_F = √Tr(H²)), whichever estimator made it.

    Attributes:
        quantity: what is estimated, in words: ``"Tr(H)"`` or ``"|H|_F"``.
        estimate: the estimate.
        stderr: its standard error (‖H‖_F's: the delta method's se(‖H‖_F²)/(2‖H‖_F), infinite when the estimate
            is 0).
        halfwidth: the half-width of its confidence interval at ``confidence`` (Student's t); NaN for a fixed
            budget without a ``confidence`` (``hutchinson``, ``hutchpp``).
        confidence: the interval's two-sided level, or NaN.
        rtol: the requested relative half-width, or NaN for a fixed budget.
        reached: ``halfwidth <= rtol·|estimate|`` when it stopped; None for a fixed budget (nothing was requested).
        probes: the random probes averaged.
        matvecs: the Hessian-vector products spent on this estimate (probes, plus a sketch or a deflation taken
            exactly).
        deflated: the dimension of the subspace whose part is taken exactly (Hutch++'s sketch, the deflation).
        deflated_trace: that exact part of Tr(H), Tr(QᵀHQ) (``adaptive_trace`` with ``deflate``, ``hutchpp``); NaN
            otherwise.
        eigenvalue_sum: Σλ_i of the eigenpairs passed to ``adaptive_trace(deflate=...)`` as given (equal to
            ``deflated_trace`` only when they are Ritz pairs of the same operator); NaN otherwise.
        plain_weight: ``trace_and_frobenius``'s weight of plain Hutchinson in the combined estimate (0: deflated
            only, 1: plain only); NaN for the other estimators.
        samples: the per-probe values averaged (``hutchinson``: vᵀHv, or ‖Hv‖² for ‖H‖_F); None otherwise. Not
            part of ``to_dict()``.
    """

    quantity: str
    estimate: float
    stderr: float
    probes: int
    matvecs: int
    halfwidth: float = math.nan
    confidence: float = math.nan
    rtol: float = math.nan
    reached: bool | None = None
    deflated: int = 0
    deflated_trace: float = math.nan
    eigenvalue_sum: float = math.nan
    plain_weight: float = math.nan
    samples: np.ndarray | None = field(default=None, metadata=NOT_JSON, repr=False, compare=False)

    def __str__(self) -> str:
        width = f" +- {self.halfwidth:.2g} ({100 * self.confidence:g} %)" if math.isfinite(self.halfwidth) \
            else f" +- {self.stderr:.2g} (1 s.e.)"
        return f"{self.quantity} = {self.estimate:.6g}{width}, {self.probes} probes"


@dataclass(frozen=True)
class TraceAndFrobenius(Result):
    """Tr(H) and ‖H‖_F estimated from the same probes (``hutchinson``, ``trace_and_frobenius``).

    Attributes:
        trace, frobenius: a ``TraceEstimate`` each (their ``probes`` and ``matvecs`` are the same products).
    """

    trace: TraceEstimate
    frobenius: TraceEstimate

    @property
    def probes(self) -> int:
        """The probes both estimates come from."""
        return self.trace.probes

    @property
    def reached(self) -> bool | None:
        """Both intervals within the requested ``rtol`` (None for a fixed budget)."""
        if self.trace.reached is None:
            return None
        return bool(self.trace.reached and self.frobenius.reached)


def _rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def _probe_block(rng: np.random.Generator, dim: int, b: int) -> np.ndarray:
    """b Rademacher probes as the columns of a ``(dim, b)`` array, drawn one after another (the same stream for
    every block size)."""
    return np.column_stack([_rademacher(rng, dim) for _ in range(b)])


def _next_block(n: int, block: int, min_probes: int, max_probes: int) -> int:
    """The size of the next block after n probes: at most ``block``, and stopping exactly at ``min_probes`` (the
    first test) and at ``max_probes``."""
    b = min(max(1, block), max_probes - n)
    return min(b, min_probes - n) if n < min_probes else b


def _probes(rng: np.random.Generator, op, b: int):
    """``_probe_block`` where the operator computes: drawn on the host, moved to its device in one copy."""
    return to_operator(_probe_block(rng, op.dim, b), device_of(op))


def apply_block(op, vs):
    """H V for the columns of ``vs``: ``op.matmat`` on chunks of at most ``op.probe_block`` columns (the operator's
    measured best) where the operator has one, else column by column. A tensor ``vs`` goes through the operator's
    device path (``matmat_tensor``, ``matvec_tensor``) and the result stays there."""
    step = int(getattr(op, "probe_block", vs.shape[1]) or 1)
    if is_tensor(vs):
        def stack(cols):
            return torch.cat(cols, dim=1)

        def one(v):
            return apply_one(op, v.contiguous())[:, None]
    else:
        stack = np.column_stack

        def one(v):
            return apply_one(op, v)
    if vs.shape[1] > 1 and step > 1 and (hasattr(op, "matmat") or hasattr(op, "matmat_tensor")):
        return stack([apply(op, vs[:, a:a + step]) if min(step, vs.shape[1] - a) > 1
                      else one(vs[:, a]) for a in range(0, vs.shape[1], step)])
    return stack([one(vs[:, i]) for i in range(vs.shape[1])])


class _OneByOne:
    """An operator's products one column at a time (Hutch++'s sketch, as it has always been taken)."""

    def __init__(self, op):
        self.op = op

    def matvec(self, v):
        return self.op.matvec(v)

    def matvec_tensor(self, v):
        return self.op.matvec_tensor(v)


def hutchinson(op: HessianOperator, num_probes: int, *, rng, block: int = PROBE_BLOCK) -> TraceAndFrobenius:
    r"""Tr(H) = E[vᵀHv] and ‖H‖_F² = E‖Hv‖² with Rademacher v, from the same ``num_probes`` matvecs.

    vᵀHv is unbiased for Tr(H) and ‖Hv‖² for ‖H‖_F² (its square root, ‖H‖_F, is slightly biased low); the standard
    errors are those of a mean over the probes, and ‖H‖_F's is the delta method's se(F²)/(2F). For linear least
    squares, H = 2XᵀX/N and Tr(H) = 2‖X‖_F²/N:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> op = HessianOperator(torch.nn.Linear(4, 1, bias=False), torch.nn.functional.mse_loss, x, y,
    ...                      batch_size=8, dtype=torch.float64)
    >>> r = hutchinson(op, 200, rng=0)
    >>> exact = 2 * float((x ** 2).sum()) / 20
    >>> bool(abs(r.trace.estimate - exact) < 4 * r.trace.stderr)  # within 4 standard errors
    True

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        num_probes: the number of probes (and matvecs), at least 2.
        rng: a Generator or a seed for the probes.
        block: probes per pass (``apply_block``); the result is the same to rounding for every block size.

    Returns:
        A ``TraceAndFrobenius``: ``trace`` and ``frobenius`` (its standard error infinite when the estimate is 0),
        with their per-probe values in ``samples`` (vᵀHv and ‖Hv‖²); no interval (a fixed budget).

    Raises:
        ValueError: when ``num_probes < 2``.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")
    rng = np.random.default_rng(rng)
    quad, sq = np.empty(num_probes), np.empty(num_probes)
    for a in range(0, num_probes, max(1, block)):
        b = min(max(1, block), num_probes - a)
        v = _probes(rng, op, b)
        hv = apply_block(op, v)
        quad[a:a + b] = to_host(column_dots(v, hv))
        sq[a:a + b] = to_host(column_dots(hv, hv))
    tr, tr_se = float(quad.mean()), float(quad.std(ddof=1) / math.sqrt(num_probes))
    f2, f2_se = float(sq.mean()), float(sq.std(ddof=1) / math.sqrt(num_probes))
    frob = math.sqrt(max(f2, 0.0))
    return TraceAndFrobenius(
        TraceEstimate("Tr(H)", tr, tr_se, num_probes, num_probes, samples=quad),
        TraceEstimate("|H|_F", frob, f2_se / (2.0 * frob) if frob > 0 else math.inf, num_probes, num_probes,
                      samples=sq))


def hutchpp(op: HessianOperator, num_matvecs: int, *, rng) -> TraceEstimate:
    r"""Tr(H) by Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

    With k = ``num_matvecs`` // 3: Q is an orthonormal basis of H S for k Rademacher columns S, Tr(QᵀHQ) is taken
    exactly, and Hutchinson with k Rademacher probes projected off Q estimates the rest; at most 3k matvecs. When
    k ≥ ``dim`` the sketch spans the whole space and the trace is exact:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> op = HessianOperator(torch.nn.Linear(4, 1, bias=False), torch.nn.functional.mse_loss, x, y,
    ...                      batch_size=8, dtype=torch.float64)
    >>> r = hutchpp(op, 12, rng=0)
    >>> bool(abs(r.estimate - 2 * float((x ** 2).sum()) / 20) < 1e-10), r.stderr < 1e-10
    (True, True)

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        num_matvecs: the budget of matvecs, at least 6.
        rng: a Generator or a seed for the sketch and the probes.

    Returns:
        A ``TraceEstimate``: the standard error is that of the Hutchinson part over its k ``probes``;
        ``deflated_trace`` is Tr(QᵀHQ), ``deflated`` the sketch's rank and ``matvecs`` the 3k products.

    Raises:
        ValueError: when ``num_matvecs < 6`` (k < 2 leaves no standard error).
    """
    k = num_matvecs // 3
    if k < 2:
        raise ValueError(f"num_matvecs must be >= 6 for Hutch++ with a standard error, got {num_matvecs}")
    rng = np.random.default_rng(rng)
    dev = device_of(op)
    s = to_operator(_rademacher(rng, (op.dim, k)), dev)
    y = apply_block(_OneByOne(op), s)
    q = torch.linalg.qr(y)[0] if is_tensor(y) else np.linalg.qr(y)[0]
    t1 = float(sum(float(q[:, i] @ apply_one(op, q[:, i].contiguous())) for i in range(q.shape[1])))
    g = to_operator(_rademacher(rng, (op.dim, k)), dev)
    g = g - q @ (q.T @ g)
    vals = np.array([float(g[:, i] @ apply_one(op, g[:, i].contiguous())) for i in range(k)])
    return TraceEstimate("Tr(H)", t1 + float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(k)), k,
                         2 * k + q.shape[1], deflated=int(q.shape[1]), deflated_trace=t1)


def adaptive_trace(op, *, rtol: float = 0.01, confidence: float = 0.95, max_matvecs: int = 4000,
                   min_probes: int = 10, deflate=None, rng, block: int = PROBE_BLOCK) -> TraceEstimate:
    r"""Tr(H) to a requested relative accuracy: Hutchinson probes are added until the confidence interval's
    half-width is at most ``rtol``·|Tr(H)|.

    With ``deflate = (λ, V)`` (top eigenpairs already computed, V ``(dim, k)``), the trace is split as
    Tr(H) = Tr(QᵀHQ) + Tr(PHP) with Q an orthonormal basis of V's columns and P = I − QQᵀ, and only the remainder
    is estimated (probes Pv): on a decaying spectrum the largest eigenvalues carry most of the variance of vᵀHv, so
    far fewer probes reach the same accuracy. Tr(QᵀHQ) is taken exactly, by k products H q_i on this operator
    (counted in ``matvecs``), not as Σλ_i: the split holds for any orthogonal projector, so the estimate is
    unbiased however inaccurate V is, and λ serves only to report ``eigenvalue_sum`` (Σλ_i, which equals
    Tr(QᵀHQ) only when (λ, V) are Ritz pairs of this very operator).

    The interval is Student's, mean ± t·s/√n at the two-sided ``confidence``; stopping when it is narrow enough
    makes n random (and slightly lowers the coverage), so its coverage is checked by calibration in the tests
    rather than assumed, and at 934k parameters against an exact Tr(H) by ``benchmarks/trace_calibration.py``.

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        rtol: the wanted half-width, relative to |Tr(H)|.
        confidence: of the interval.
        max_matvecs: give up (``reached=False``) after this many probes.
        min_probes: probes before the first test (the standard error of fewer is itself unreliable).
        deflate: ``(eigenvalues, eigenvectors)`` to deflate, or ``None``.
        rng: a Generator or a seed for the probes.
        block: probes per pass (``apply_block``); the test is made after each block, so up to ``block - 1``
            probes more than needed may be spent.

    Returns:
        A ``TraceEstimate`` of Tr(H): ``matvecs`` counts the probes plus the k products of the deflation,
        ``deflated`` is k and, with ``deflate``, ``deflated_trace`` is Tr(QᵀHQ) (exact) and ``eigenvalue_sum``
        Σλ_i as given.
    """
    from scipy.stats import t as student

    if not 0 < rtol < 1 or not 0 < confidence < 1:
        raise ValueError(f"rtol and confidence must lie in (0, 1), got {rtol} and {confidence}")
    if min_probes < 2 or max_matvecs < min_probes:
        raise ValueError(f"need 2 <= min_probes <= max_matvecs, got {min_probes} and {max_matvecs}")
    rng = np.random.default_rng(rng)
    base, v_defl, extra, spent = 0.0, None, {}, 0
    if deflate is not None:
        # Issue 18: the deflated part used to be Σλ_i, exact only when (λ, V) are Ritz pairs of this operator. Pairs
        # from another operator (other batch-norm statistics, another dtype or data), or vectors that are not
        # orthonormal, left a bias of Σλ_i − Tr(QᵀHQ) in every estimate, which no number of probes removes and no
        # interval shows. Tr(H) = Tr(QᵀHQ) + Tr(PHP) holds exactly for the orthogonal projector of any orthonormal
        # Q, so Q is V orthonormalised (Householder QR) and Tr(QᵀHQ) is taken from k products on this operator.
        v_defl = to_operator(_orthonormal(to_host(deflate[1])), device_of(op))
        hq = apply_block(op, v_defl)
        spent = v_defl.shape[1]
        base = float(column_dots(v_defl, hq).sum())
        extra = {"deflated_trace": base, "eigenvalue_sum": float(np.sum(np.asarray(deflate[0], dtype=np.float64))),
                 "deflated": int(v_defl.shape[1])}
    values: list[float] = []
    while True:
        v = _probes(rng, op, _next_block(len(values), block, min_probes, max_matvecs))
        if v_defl is not None:
            v = v - v_defl @ (v_defl.T @ v)
        values.extend(to_host(column_dots(v, apply_block(op, v))).tolist())
        n = len(values)
        if n < min_probes:
            continue
        arr = np.asarray(values)
        est, se = base + float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(n))
        z = float(student.isf((1.0 - confidence) / 2.0, n - 1))  # Student's t: honest for the first few probes
        if z * se <= rtol * abs(est) or n >= max_matvecs:
            return TraceEstimate("Tr(H)", est, se, n, n + spent, halfwidth=z * se, confidence=confidence, rtol=rtol,
                                 reached=bool(z * se <= rtol * abs(est)), **extra)


def _orthonormal(v: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``v`` (``(dim, k)``, full column rank) by Householder QR: orthonormal
    to rounding, so that I − QQᵀ is an orthogonal projector and one projection of a probe is enough."""
    if v.ndim != 2 or v.shape[1] < 1:
        raise ValueError(f"the deflation vectors must be a (dim, k) array with k >= 1, got shape {v.shape}")
    q, r = np.linalg.qr(v)
    d = np.abs(np.diag(r))
    if d.min() <= 1e-8 * d.max():
        raise ValueError("the deflation vectors are linearly dependent (or nearly so)")
    return q * np.sign(np.diag(r))  # the signs of V's own columns (Q = V when V is orthonormal)


@dataclass(frozen=True)
class Deflation:
    r"""An orthonormal basis Q of a subspace and what H does to it, exactly: HQ = QT + r e_mᵀ with T = QᵀHQ and
    r ⟂ Q (so (I − QQᵀ)HQ = r e_mᵀ has rank one).

    A Lanczos run of m steps from q₁ gives exactly this (T its tridiagonal matrix, r = β_m q_{m+1}, the unreduced
    remainder of the last step); exact eigenpairs give T = diag(λ) and r = 0. What it implies for the estimators,
    with P = I − QQᵀ:

    .. math:: \mathrm{Tr}(H) = \mathrm{Tr}(T) + \mathrm{Tr}(PHP),\qquad
              \lVert H\rVert_F^2 = \lVert HQ\rVert_F^2 + \mathrm{Tr}(PH^2P)
              = \lVert T\rVert_F^2 + \lVert r\rVert^2 + \mathbb{E}\lVert HPv\rVert^2,

    (the second from Tr(H²) = Tr(H²QQᵀ) + Tr(H²P) and Tr(H²P) = Tr(PH²P)), and for a probe v = Qc + u (u = Pv),
    without any further product:

    .. math:: v^\top Hv = u^\top Hu + 2c_m\,r^\top u + c^\top Tc,\qquad Hv = Hu + QTc + c_m r.

    Any orthonormal Q works the same way with a remainder matrix R = (I − QQᵀ)HQ of shape ``(dim, m)`` in place of
    r e_mᵀ (``from_vectors``): vᵀHv = uᵀHu + 2cᵀRᵀu + cᵀTc and Hv = Hu + QTc + Rc.

    Attributes:
        basis: Q, ``(dim, m)`` with orthonormal columns.
        projected: T = QᵀHQ, ``(m, m)`` (numpy: small).
        remainder: r, ``(dim,)`` (or R, ``(dim, m)``): zero when Q spans an invariant subspace.

    ``basis`` and ``remainder`` are where the operator computes: float64 tensors on a ``HessianOperator``'s device
    (from its Lanczos run or its products), numpy arrays otherwise; ``probe_samples`` moves them to the probes.
    """

    basis: np.ndarray | torch.Tensor
    projected: np.ndarray
    remainder: np.ndarray | torch.Tensor

    @classmethod
    def from_lanczos(cls, run, last_product: np.ndarray) -> Deflation:
        """From a ``nets.curvature.lanczos.LanczosResult`` and H q_m, the product of its last basis vector (the
        remainder r = (I − QQᵀ)Hq_m, orthogonalised twice as Lanczos does)."""
        q = run.basis.T
        last_product = to_operator(last_product, q.device if is_tensor(q) else None)
        r = last_product - q @ (q.T @ last_product)
        r -= q @ (q.T @ r)
        return cls(q, run.tridiagonal(), r)

    @classmethod
    def from_eigenpairs(cls, eigenvalues, eigenvectors, op=None) -> Deflation:
        """From eigenpairs: taken as exact (T = diag(λ), r = 0) without ``op``; with ``op``, from what the operator
        does to them (``from_vectors``: the eigenvalues are then not used).

        Pairs taken as exact that are not exact eigenpairs of the operator the probes go to (computed on other
        batch-norm statistics, another dtype or data, or not orthonormal) bias every estimate by Tr(T) − Tr(QᵀHQ)
        (issue 18); pass ``op`` unless they are."""
        if op is not None:
            return cls.from_vectors(op, eigenvectors)
        v = np.asarray(eigenvectors, dtype=np.float64)
        return cls(v, np.diag(np.asarray(eigenvalues, dtype=np.float64)), np.zeros(v.shape[0]))

    @classmethod
    def from_vectors(cls, op, vectors) -> Deflation:
        """Exactly, from any ``(dim, k)`` vectors and k products on ``op``: Q is the vectors orthonormalised, T = QᵀHQ
        and the remainder R = (I − QQᵀ)HQ a ``(dim, k)`` matrix (HQ = QT + R). Unbiased whatever the vectors are."""
        q = to_operator(_orthonormal(to_host(vectors)), device_of(op))
        hq = apply_block(op, q)
        t = q.T @ hq
        r = hq - q @ t
        r -= q @ (q.T @ r)
        return cls(q, to_host(0.5 * (t + t.T)), r)

    @property
    def trace(self) -> float:
        """Tr(QᵀHQ) = Tr(T), the part of Tr(H) taken exactly."""
        return float(np.trace(self.projected))

    @property
    def frobenius_sq(self) -> float:
        """‖HQ‖_F² = ‖T‖_F² + ‖r‖², the part of ‖H‖_F² taken exactly."""
        return float(np.sum(self.projected ** 2)) + float((self.remainder ** 2).sum())


def _interval(samples: np.ndarray, base: float, t: float) -> tuple[float, float, float]:
    """``(estimate, stderr, halfwidth)`` of base + mean(samples), Student's at the critical value t."""
    se = float(samples.std(ddof=1) / math.sqrt(samples.size))
    return base + float(samples.mean()), se, t * se


def _combined(deflated: np.ndarray, plain: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    r"""The least-variance combination of two unbiased samples of one mean, with its Student interval.

    With y = ``deflated`` and the control variate x = ``plain`` − ``deflated`` (mean 0, known), the estimate is
    the least-squares intercept ȳ − β̂x̄ of y on x, i.e. (1 − w)·mean(deflated) + w·mean(plain) with w = −β̂:
    w = 0 is the deflated estimator, w = 1 plain Hutchinson, and the fitted weight leaves the smallest sample
    variance of all. Its standard error is the intercept's, s·√(1/n + x̄²/S_xx), with Student's t at n − 2
    degrees of freedom (exact for a linear Gaussian model given x).

    Returns:
        ``(estimate, stderr, halfwidth, w)``.
    """
    from scipy.stats import t as student

    n = deflated.size
    x = plain - deflated
    xc = x - x.mean()
    sxx = float(xc @ xc)
    yc = deflated - deflated.mean()
    # Fewer than 3 probes (no degree of freedom left for the fit) or x constant (to rounding of y's scale):
    # nothing to fit; the deflated sample alone, t at n - 1.
    if n < 3 or sxx <= 1e-24 * max(float(yc @ yc), np.finfo(float).tiny):
        t = float(student.isf((1.0 - confidence) / 2.0, n - 1))
        return (*_interval(deflated, 0.0, t), 0.0)
    beta = float(xc @ yc) / sxx
    resid = yc - beta * xc
    se = math.sqrt(float(resid @ resid) / (n - 2) * (1.0 / n + float(x.mean()) ** 2 / sxx))
    t = float(student.isf((1.0 - confidence) / 2.0, n - 2))
    return float(deflated.mean() - beta * x.mean()), se, t * se, -beta


@dataclass(frozen=True)
class ProbeSamples:
    """Per probe, from one product each (``probe_samples``): ``tr_plain`` (vᵀHv) and ``f2_plain`` (‖Hv‖²) and, with a
    deflation, ``tr_defl`` (uᵀHu) and ``f2_defl`` (‖Hu‖²) for u = Pv (see ``Deflation``; None without one)."""

    tr_plain: np.ndarray
    f2_plain: np.ndarray
    tr_defl: np.ndarray | None = None
    f2_defl: np.ndarray | None = None


def probe_samples(op, v, deflation: Deflation | None) -> ProbeSamples:
    """The ``ProbeSamples`` of the probes that are the columns of ``v`` (numpy, or a tensor on the operator's
    device), from one product each; the deflation's arrays are taken to ``v``'s device, and only the per-probe
    values come back to the host."""
    if deflation is None:
        hv = apply_block(op, v)
        return ProbeSamples(to_host(column_dots(v, hv)), to_host(column_dots(hv, hv)))
    dev = v.device if is_tensor(v) else None
    q, t_mat, r = (to_operator(a, dev) for a in (deflation.basis, deflation.projected, deflation.remainder))
    c = q.T @ v
    u = v - q @ c
    hu = apply_block(op, u)
    quad_u = column_dots(u, hu)
    sq_u = column_dots(hu, hu)
    # ‖Hv‖² = ‖Hu + QTc + c_m r‖² without forming Hv: Q orthonormal and r ⟂ Q, so only the small products Qᵀ(Hu),
    # rᵀ(Hu) and Tc are needed (each a pass over (dim, b), against three for Hv itself).
    tc = t_mat @ c
    if r.ndim == 1:  # the Lanczos remainder r e_mᵀ
        cross = column_dots(q.T @ hu, tc) + c[-1] * (r @ hu)
        f2_plain = sq_u + 2.0 * cross + column_dots(tc, tc) + (r @ r) * c[-1] ** 2
        tr_plain = quad_u + 2.0 * c[-1] * (r @ u) + column_dots(c, tc)
    else:  # a general remainder R (``Deflation.from_vectors``)
        rc = r @ c
        cross = column_dots(q.T @ hu, tc) + column_dots(rc, hu)
        f2_plain = sq_u + 2.0 * cross + column_dots(tc, tc) + column_dots(rc, rc)
        tr_plain = quad_u + 2.0 * column_dots(rc, u) + column_dots(c, tc)
    return ProbeSamples(to_host(tr_plain), to_host(f2_plain), to_host(quad_u), to_host(sq_u))


def trace_and_frobenius(op, *, rtol: float = 0.05, confidence: float = 0.95, min_probes: int = 10,
                        max_probes: int = 1000, deflation: Deflation | None = None, rng,
                        block: int = PROBE_BLOCK) -> TraceAndFrobenius:
    r"""Tr(H) and ‖H‖_F, each to a confidence interval of relative half-width at most ``rtol``.

    Rademacher probes are added (in blocks) until both intervals are narrow enough. With a ``Deflation`` each probe
    gives, from one product H(Pv), two unbiased samples of each quantity (see ``Deflation``): the deflated one,
    Tr(T) + uᵀHu and ‖HQ‖_F² + ‖Hu‖² (Hutch++'s split, with the Krylov space as the sketch), and plain
    Hutchinson's, vᵀHv and ‖Hv‖². Deflation wins on a decaying spectrum (the large eigenvalues carry most of the
    variance of vᵀHv), plain Hutchinson on a flat one (H ≈ cI, where it is exact and the projected probes are
    not); rather than choose, each estimate is the least-variance combination of the two (``_combined``: the
    deflated sample with the plain one as a control variate), so it needs at most the probes of the better of the
    two; each estimate's ``plain_weight`` is the fitted weight on plain Hutchinson (0: deflated, 1: plain).

    The intervals are Student's at the two-sided ``confidence`` (for the combination, the regression intercept's,
    n − 2 degrees of freedom); ‖H‖_F's is the square root of the interval for ‖H‖_F², reported as the larger
    distance to its ends (``frobenius.halfwidth``, so the symmetric interval contains the exact one). Stopping
    when the intervals are narrow makes n random and lowers the coverage a little (37 and 36 misses in 300 at a
    nominal 90 % when it stops after 10 to 100 probes, 29 and 26 after about 180), so the coverage is checked by
    calibration in the tests (tests/test_stats.py).

    Args:
        op: the operator (``dim``, ``matvec`` and, when present, ``matmat``).
        rtol: the wanted half-width of both intervals, relative to the estimate.
        confidence: of each interval (not joint).
        min_probes: probes before the first test (the standard error of fewer is itself unreliable); at least 2.
        max_probes: give up (``reached=False``) after this many.
        deflation: a ``Deflation`` (e.g. the Krylov space of the Lanczos run that found λ_max), or ``None``.
        rng: a Generator or a seed for the probes.
        block: probes per pass (``apply_block``).

    Returns:
        A ``TraceAndFrobenius``: two ``TraceEstimate`` with their intervals (‖H‖_F's standard error is the delta
        method's se(F²)/(2F)), ``probes`` (= ``matvecs``, the products spent here), ``reached``, ``deflated`` (m)
        and ``plain_weight`` (1 without a deflation). When Q spans the whole space both are exact (no probe; zero
        widths).

    Raises:
        ValueError: for ``rtol`` or ``confidence`` outside (0, 1), or not 2 <= ``min_probes`` <= ``max_probes``.
    """
    from scipy.stats import t as student

    if not 0 < rtol < 1 or not 0 < confidence < 1:
        raise ValueError(f"rtol and confidence must lie in (0, 1), got {rtol} and {confidence}")
    if min_probes < 2 or max_probes < min_probes:
        raise ValueError(f"need 2 <= min_probes <= max_probes, got {min_probes} and {max_probes}")
    rng = np.random.default_rng(rng)
    m = 0 if deflation is None else deflation.basis.shape[1]

    def both(tr, tr_se, tr_hw, tr_w, f, f_se, f_hw, f_w, n, reached) -> TraceAndFrobenius:
        common = dict(probes=n, matvecs=n, confidence=confidence, rtol=rtol, reached=bool(reached), deflated=m)
        return TraceAndFrobenius(TraceEstimate("Tr(H)", tr, tr_se, halfwidth=tr_hw, plain_weight=tr_w, **common),
                                 TraceEstimate("|H|_F", f, f_se, halfwidth=f_hw, plain_weight=f_w, **common))

    if m >= op.dim:  # Q spans everything: Tr(T) and ‖T‖_F are H's own
        f = math.sqrt(max(deflation.frobenius_sq, 0.0))
        return both(deflation.trace, 0.0, 0.0, 0.0, f, 0.0, 0.0, 0.0, 0, True)
    samples = {key: [] for key in ("tr_plain", "f2_plain") + (() if deflation is None else ("tr_defl", "f2_defl"))}
    while True:
        n = len(samples["tr_plain"])
        v = _probes(rng, op, _next_block(n, block, min_probes, max_probes))
        drawn = probe_samples(op, v, deflation)
        for key, vals in samples.items():
            vals.extend(getattr(drawn, key))
        n = len(samples["tr_plain"])
        if n < min_probes:
            continue
        arr = {k: np.asarray(v) for k, v in samples.items()}
        if deflation is None:
            t = float(student.isf((1.0 - confidence) / 2.0, n - 1))
            (tr, tr_se, tr_hw), (f2, f2_se, f2_hw) = (_interval(arr["tr_plain"], 0.0, t),
                                                      _interval(arr["f2_plain"], 0.0, t))
            tr_w = f_w = 1.0
        else:
            tr, tr_se, tr_hw, tr_w = _combined(arr["tr_defl"] + deflation.trace, arr["tr_plain"], confidence)
            f2, f2_se, f2_hw, f_w = _combined(arr["f2_defl"] + deflation.frobenius_sq, arr["f2_plain"], confidence)
        f = math.sqrt(max(f2, 0.0))
        f_hw = max(f - math.sqrt(max(f2 - f2_hw, 0.0)), math.sqrt(max(f2 + f2_hw, 0.0)) - f)
        reached = tr_hw <= rtol * abs(tr) and f_hw <= rtol * f
        if reached or n >= max_probes:
            return both(tr, tr_se, tr_hw, tr_w, f, f2_se / (2.0 * f) if f > 0 else math.inf, f_hw, f_w, n, reached)
