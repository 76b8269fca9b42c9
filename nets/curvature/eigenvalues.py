"""The largest Hessian eigenvalue λ_max: Lanczos (scipy's ARPACK ``eigsh``) and power iteration as a cross-check."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse.linalg

from nets.curvature.arrays import apply_one, device_of, to_operator, vector_norm
from nets.curvature.operator import HessianOperator

__all__ = ["lanczos_lambda_max", "power_iteration"]


def lanczos_lambda_max(op: HessianOperator, *, tol: float = 1e-4, maxiter: int | None = None,
                       rng) -> tuple[float, bool]:
    """The largest (algebraic) eigenvalue of H by Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``).

    An operator of dimension at most 2 (too small for ARPACK) is formed densely and diagonalised exactly.

    For linear least squares, L(w) = mean_n (x_nᵀw − y_n)², H = 2XᵀX/N:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> op = HessianOperator(torch.nn.Linear(4, 1, bias=False), torch.nn.functional.mse_loss, x, y,
    ...                      batch_size=8, dtype=torch.float64)
    >>> exact = np.linalg.eigvalsh(2 * (x.T @ x).numpy() / 20)[-1]
    >>> lam, converged = lanczos_lambda_max(op, rng=0)
    >>> bool(abs(lam - exact) < 1e-8 * exact), converged
    (True, True)

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        tol: ARPACK's relative tolerance.
        maxiter: ARPACK's iteration limit (default 100).
        rng: a Generator or a seed for the starting vector.

    Returns:
        ``(lambda_max, converged)``; when ARPACK does not converge, its best estimate (NaN if it has none) and
        False.
    """
    rng = np.random.default_rng(rng)
    v0 = rng.standard_normal(op.dim)
    if op.dim <= 2:
        dense = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
        return float(np.linalg.eigvalsh(0.5 * (dense + dense.T))[-1]), True
    try:
        vals = scipy.sparse.linalg.eigsh(op.as_linear_operator(), k=1, which="LA", tol=tol, v0=v0,
                                         maxiter=maxiter or max(100, 20), return_eigenvectors=False)
        return float(vals[0]), True
    except scipy.sparse.linalg.ArpackNoConvergence as exc:
        vals = exc.eigenvalues
        return (float(vals[0]) if len(vals) else math.nan), False


def power_iteration(op: HessianOperator, *, iters: int = 100, tol: float = 1e-4, rng) -> tuple[float, int]:
    """The eigenvalue of H of largest magnitude by power iteration (Rayleigh quotient), a cross-check on Lanczos.

    It agrees with ``lanczos_lambda_max`` when λ_max is also the eigenvalue of largest magnitude; it converges
    geometrically with ratio |λ₂/λ₁|, so slowly when the spectral gap is small.

    On the least-squares operator of ``lanczos_lambda_max``'s example (H = 2XᵀX/N, positive definite):

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> op = HessianOperator(torch.nn.Linear(4, 1, bias=False), torch.nn.functional.mse_loss, x, y,
    ...                      batch_size=8, dtype=torch.float64)
    >>> exact = np.linalg.eigvalsh(2 * (x.T @ x).numpy() / 20)[-1]
    >>> est, iterations = power_iteration(op, iters=1000, tol=1e-12, rng=0)
    >>> bool(abs(est - exact) < 1e-8 * exact), iterations < 1000
    (True, True)

    Args:
        op: the operator (``dim`` and ``matvec`` are used).
        iters: the most matvecs.
        tol: stop when the estimate changes by less than ``tol`` relative between two iterations.
        rng: a Generator or a seed for the starting vector.

    Returns:
        ``(estimate, iterations)``; ``(0.0, k)`` when H v vanishes at iteration k.
    """
    rng = np.random.default_rng(rng)
    # On a HessianOperator the vector stays on its device; two scalars an iteration come back.
    v = to_operator(rng.standard_normal(op.dim), device_of(op))
    v /= vector_norm(v)
    est = 0.0
    for k in range(1, iters + 1):
        hv = apply_one(op, v)
        new = float(v @ hv)
        norm = float(vector_norm(hv))
        if norm == 0.0:
            return 0.0, k
        v = hv / norm
        if k > 1 and abs(new - est) <= tol * abs(new):
            return new, k
        est = new
    return est, iters

