r"""Tr(H) and ‖H‖_F from Hessian-vector products: Hutchinson's estimator and Hutch++.

With Rademacher probes v (independent ±1 entries), E[vᵀHv] = Tr(H) and E‖Hv‖² = ‖H‖_F²; Hutch++ (Meyer, Musco,
Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation") takes the trace of a rank-k sketch exactly and
applies Hutchinson only to the rest, which lowers the variance when the spectrum decays.
"""

from __future__ import annotations

import math

import numpy as np

from nets.curvature.operator import HessianOperator

__all__ = ["hutchinson", "hutchpp", "adaptive_trace"]


def _rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def hutchinson(op: HessianOperator, num_probes: int, *, rng=None) -> dict:
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
    >>> bool(abs(r["trace"] - exact) < 4 * r["trace_stderr"])  # within 4 standard errors
    True

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        num_probes: the number of probes (and matvecs), at least 2.
        rng: a Generator or a seed for the probes.

    Returns:
        A dict: ``trace``, ``trace_stderr``, ``frobenius``, ``frobenius_stderr`` (infinite when the estimate of
        ‖H‖_F is 0), and the per-probe values ``probes`` (vᵀHv) and ``squares`` (‖Hv‖²) as arrays.

    Raises:
        ValueError: when ``num_probes < 2``.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")
    rng = np.random.default_rng(rng)
    quad, sq = np.empty(num_probes), np.empty(num_probes)
    for i in range(num_probes):
        v = _rademacher(rng, op.dim)
        hv = op.matvec(v)
        quad[i] = v @ hv
        sq[i] = hv @ hv
    tr, tr_se = float(quad.mean()), float(quad.std(ddof=1) / math.sqrt(num_probes))
    f2, f2_se = float(sq.mean()), float(sq.std(ddof=1) / math.sqrt(num_probes))
    frob = math.sqrt(max(f2, 0.0))
    return dict(trace=tr, trace_stderr=tr_se, frobenius=frob,
                frobenius_stderr=f2_se / (2.0 * frob) if frob > 0 else math.inf, probes=quad, squares=sq)


def hutchpp(op: HessianOperator, num_matvecs: int, *, rng=None) -> tuple[float, float]:
    r"""Tr(H) by Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

    With k = ``num_matvecs`` // 3: Q is an orthonormal basis of H S for k Rademacher columns S, Tr(QᵀHQ) is taken
    exactly, and Hutchinson with k Rademacher probes projected off Q estimates the rest; at most 3k matvecs. When
    k ≥ ``dim`` the sketch spans the whole space and the trace is exact:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> op = HessianOperator(torch.nn.Linear(4, 1, bias=False), torch.nn.functional.mse_loss, x, y,
    ...                      batch_size=8, dtype=torch.float64)
    >>> tr, se = hutchpp(op, 12, rng=0)
    >>> bool(abs(tr - 2 * float((x ** 2).sum()) / 20) < 1e-10), se < 1e-10
    (True, True)

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        num_matvecs: the budget of matvecs, at least 6.
        rng: a Generator or a seed for the sketch and the probes.

    Returns:
        ``(trace, stderr)``; the standard error is that of the Hutchinson part over its k probes.

    Raises:
        ValueError: when ``num_matvecs < 6`` (k < 2 leaves no standard error).
    """
    k = num_matvecs // 3
    if k < 2:
        raise ValueError(f"num_matvecs must be >= 6 for Hutch++ with a standard error, got {num_matvecs}")
    rng = np.random.default_rng(rng)
    s = _rademacher(rng, (op.dim, k))
    y = np.column_stack([op.matvec(s[:, i]) for i in range(k)])
    q, _ = np.linalg.qr(y)
    t1 = float(sum(q[:, i] @ op.matvec(q[:, i]) for i in range(q.shape[1])))
    g = _rademacher(rng, (op.dim, k))
    g = g - q @ (q.T @ g)
    vals = np.array([g[:, i] @ op.matvec(g[:, i]) for i in range(k)])
    return t1 + float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(k))


def adaptive_trace(op, *, rtol: float = 0.01, confidence: float = 0.95, max_matvecs: int = 4000,
                   min_probes: int = 10, deflate=None, rng=None) -> dict:
    r"""Tr(H) to a requested relative accuracy: Hutchinson probes are added until the confidence interval's
    half-width is at most ``rtol``·|Tr(H)|.

    With ``deflate = (λ, V)`` (top eigenpairs already computed, V orthonormal ``(dim, k)``), the trace is split as
    Tr(H) = Σλ_i + Tr(PHP) with P = I − VVᵀ, and only the remainder is estimated (probes Pv): on a decaying
    spectrum the largest eigenvalues carry most of the variance of vᵀHv, so far fewer probes reach the same
    accuracy; the eigenvalues' own error (Lanczos residuals) is ignored, being far below the probes'.

    The interval is Student's, mean ± t·s/√n at the two-sided ``confidence``; stopping when it is narrow enough
    makes n random (and slightly lowers the coverage), so its coverage is checked by calibration in the tests
    rather than assumed.

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        rtol: the wanted half-width, relative to |Tr(H)|.
        confidence: of the interval.
        max_matvecs: give up (``reached=False``) after this many probes.
        min_probes: probes before the first test (the standard error of fewer is itself unreliable).
        deflate: ``(eigenvalues, eigenvectors)`` to deflate, or ``None``.
        rng: a Generator or a seed for the probes.

    Returns:
        ``trace``, ``stderr``, ``halfwidth``, ``probes``, ``matvecs``, ``reached``, ``confidence``, ``deflated`` (k).
    """
    from scipy.stats import t as student

    if not 0 < rtol < 1 or not 0 < confidence < 1:
        raise ValueError(f"rtol and confidence must lie in (0, 1), got {rtol} and {confidence}")
    if min_probes < 2 or max_matvecs < min_probes:
        raise ValueError(f"need 2 <= min_probes <= max_matvecs, got {min_probes} and {max_matvecs}")
    rng = np.random.default_rng(rng)
    base, v_defl = 0.0, None
    if deflate is not None:
        lam, v_defl = np.asarray(deflate[0], dtype=np.float64), np.asarray(deflate[1], dtype=np.float64)
        base = float(lam.sum())
    values: list[float] = []
    while True:
        v = _rademacher(rng, op.dim)
        if v_defl is not None:
            v = v - v_defl @ (v_defl.T @ v)
        values.append(float(v @ op.matvec(v)))
        n = len(values)
        if n < min_probes:
            continue
        arr = np.asarray(values)
        est, se = base + float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(n))
        z = float(student.isf((1.0 - confidence) / 2.0, n - 1))  # Student's t: honest for the first few probes
        if z * se <= rtol * abs(est) or n >= max_matvecs:
            return {"trace": est, "stderr": se, "halfwidth": z * se, "probes": n, "matvecs": n,
                    "reached": bool(z * se <= rtol * abs(est)), "confidence": confidence,
                    "deflated": 0 if v_defl is None else int(v_defl.shape[1])}
