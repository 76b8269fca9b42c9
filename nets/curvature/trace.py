r"""Tr(H) and ‖H‖_F from Hessian-vector products: Hutchinson's estimator and Hutch++.

With Rademacher probes v (independent ±1 entries), E[vᵀHv] = Tr(H) and E‖Hv‖² = ‖H‖_F²; Hutch++ (Meyer, Musco,
Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation") takes the trace of a rank-k sketch exactly and
applies Hutchinson only to the rest, which lowers the variance when the spectrum decays.
"""

from __future__ import annotations

import math

import numpy as np

from nets.curvature.operator import HessianOperator

__all__ = ["hutchinson", "hutchpp"]


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
