"""The Hessian's spectrum at a trained model: its top (or bottom) eigenpairs to a requested accuracy, and its
eigenvalue density by stochastic Lanczos quadrature (``nets.curvature.lanczos`` on a ``HessianOperator``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from nets.curvature.lanczos import SpectralDensity, extreme_eigenpairs, slq
from nets.curvature.operator import HessianOperator
from sgd_noise_common.results import NOT_JSON, Result

__all__ = ["TopEigen", "top_eigenvalues", "spectral_density"]


@dataclass(frozen=True)
class TopEigen(Result):
    """The ``k`` extreme eigenpairs of the measured Hessian.

    Attributes:
        eigenvalues: descending for ``which="largest"``, ascending for ``"smallest"``.
        eigenvectors: ``(num_params, k)``, orthonormal (flat, in the order of ``model.parameters()``), or ``None``;
            not part of ``to_dict()``.
        residuals: ‖Hy − θy‖ for each pair; the eigenvalue's error is at most this (relative: ``tol``).
        converged: every residual within ``tol``·|θ|.
        bn_statistics: which batch-norm statistics the measured loss used.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None = field(metadata=NOT_JSON, repr=False, compare=False)
    residuals: np.ndarray
    converged: bool
    tol: float
    which: str
    matvecs: int
    seconds: float
    bn_mode: str
    bn_statistics: str
    num_params: int
    notes: list = field(default_factory=list)


def top_eigenvalues(model: nn.Module, loss_fn, inputs, targets, *, k: int, batch_size: int, bn_mode: str = "eval",
                    which: str = "largest", tol: float = 1e-6, max_steps: int | None = None, rng,
                    vectors: bool = True, **operator_kwargs) -> TopEigen:
    """The ``k`` largest (or smallest, for negative curvature) eigenpairs of the measured loss's Hessian, each
    eigenvalue to relative accuracy ``tol`` (Lanczos with full reorthogonalisation, stopped on the Ritz residuals).

    Args:
        model, loss_fn, inputs, targets, batch_size, bn_mode: as for ``HessianOperator``; ``operator_kwargs`` pass
            the rest (``weight_decay``, ``bn_inputs``, ``recalibrate``, ``dtype``, ``device``, ``hvp_method``).
        k: how many eigenpairs.
        which: ``"largest"`` or ``"smallest"``.
        tol: relative accuracy of every eigenvalue (``‖Hy − θy‖ ≤ tol·|θ|``).
        max_steps: the most Hessian-vector products (default min(P, 300)).
        rng: a Generator or a seed for the start vector.
        vectors: keep the eigenvectors.
    """
    t0 = time.perf_counter()
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode, **operator_kwargs)
    out = extreme_eigenpairs(op.matvec_tensor, op.dim, k=k, which=which, tol=tol, max_steps=max_steps, rng=rng,
                             vectors=vectors, device=op.device)
    notes = [] if out.converged else [f"not converged to tol={tol:g} in {out.matvecs} matvecs"]
    return TopEigen(out.eigenvalues, out.eigenvectors, out.residuals, out.converged, tol, which,
                    op.matvecs, time.perf_counter() - t0, bn_mode, op.bn_statistics, op.dim, notes)


def spectral_density(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, bn_mode: str = "eval",
                     num_runs: int = 10, num_steps: int = 80, rng, **operator_kwargs) -> SpectralDensity:
    """The eigenvalue density of the measured loss's Hessian by stochastic Lanczos quadrature.

    Args:
        model, loss_fn, inputs, targets, batch_size, bn_mode, operator_kwargs: as for ``top_eigenvalues``.
        num_runs: independent Lanczos runs (Rademacher start vectors); the moments' errors are over runs.
        num_steps: Lanczos steps per run (the quadrature is exact for polynomials of degree < 2·num_steps).
        rng: a Generator or a seed.

    Returns:
        A ``SpectralDensity``: ``nodes`` and ``weights`` of shape ``(num_runs, num_steps)``, ``density()`` on a
        grid, ``moment(p)`` = (1/P)·Tr(H^p) with its standard error, and ``plot(path)``.
    """
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode, **operator_kwargs)
    d = slq(op.matvec_tensor, op.dim, num_runs=num_runs, num_steps=num_steps, rng=rng, device=op.device)
    d.notes.append(f"bn_mode={bn_mode}: {op.bn_statistics}")
    return d
