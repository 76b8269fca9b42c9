r"""Lanczos with a stopping rule of its own: extreme eigenpairs of the Hessian to a requested relative accuracy,
and the stochastic Lanczos quadrature of its spectral density.

Why not ``scipy.sparse.linalg.eigsh``: ARPACK's implicitly restarted Lanczos works on a subspace of at least
``ncv = 2k + 1 ≥ 20`` vectors whatever ``tol`` asks for, so λ_max costs at least 21 Hessian-vector products, and its
``tol`` is a stopping rule, not a statement of accuracy. Here the Krylov basis grows one vector per product with full
reorthogonalisation (numerically an exact Lanczos, affordable for the few dozen steps needed), and the run stops as
soon as every wanted Ritz pair (θ, y) has a residual bound

.. math:: \lVert H y - \theta y\rVert = \beta_m\,|s_{m}| \le \mathrm{tol}\cdot|\theta|,

where s_m is the last component of the Ritz vector in the Krylov basis. For a symmetric H some eigenvalue λ then lies
within ‖r‖ of θ (Kahan), so θ is within ``tol`` (relative) of an eigenvalue of H, and within ‖r‖²/gap of it once the
residual is below the gap to the rest of the spectrum; the largest Ritz value never exceeds λ_max. A cluster of
eigenvalues closer together than the residual can leave the extreme one unresolved: the returned value is then
within ``tol`` of a member of the cluster. (The start vector is random, so it is not orthogonal to the wanted
eigenvector, with probability one.)

Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019): for a start vector v with
E[vvᵀ] = I/n, m Lanczos steps give the Gauss quadrature nodes θ_i (the Ritz values) and weights τ_i² (squared first
components of the Ritz vectors) with Σ_i τ_i² f(θ_i) ≈ vᵀ f(H) v, exact for polynomials of degree < 2m; averaged over
runs it estimates (1/n)·Tr f(H), i.e. the spectral density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from nets.curvature.arrays import is_tensor, to_host, to_operator, vector_norm
from sgd_noise_common.results import NOT_JSON, Result

__all__ = ["LanczosResult", "lanczos", "Eigenpairs", "extreme_eigenpairs", "SpectralDensity", "slq"]


@dataclass(frozen=True)
class LanczosResult:
    """The basis and tridiagonal matrix of a Lanczos run: ``alphas`` (diagonal), ``betas`` (off-diagonal, the last
    one the norm of the unreduced remainder) and ``basis`` (the orthonormal Krylov vectors, ``(steps, dim)``: a
    numpy array, or a float64 tensor on the device of a run started from a tensor)."""

    alphas: np.ndarray
    betas: np.ndarray
    basis: np.ndarray | torch.Tensor
    matvecs: int

    def tridiagonal(self) -> np.ndarray:
        """T, the projection of H on the Krylov basis."""
        m = self.alphas.size
        t = np.diag(self.alphas)
        if m > 1:
            t += np.diag(self.betas[:m - 1], 1) + np.diag(self.betas[:m - 1], -1)
        return t


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    order = np.argsort(theta)
    return order[::-1][:k] if which == "largest" else order[:k]


def lanczos(matvec, dim: int, *, steps: int, v0: np.ndarray, stop=None) -> LanczosResult:
    """Lanczos with full reorthogonalisation for at most ``steps`` steps from ``v0``.

    The run works in ``v0``'s library: from a torch tensor, ``matvec`` takes and returns tensors on its device and
    the basis, the products and the reorthogonalisation stay there (only α and β, two scalars a step, are read
    back); from a numpy vector, in numpy. The arithmetic is the same float64 in both.

    Args:
        matvec: v ↦ H v on float64 vectors of length ``dim`` (H symmetric); it may return a new array or a
            buffer of its own, which the run then changes in place.
        dim: the dimension n.
        steps: the most Krylov vectors.
        v0: the start vector (normalised here): numpy, or a torch tensor on the device the run is to use.
        stop: ``stop(alphas, betas) -> bool``, checked after every step (``None``: run all ``steps``).

    Returns:
        A ``LanczosResult``; it stops early when the Krylov space becomes invariant (β ≈ 0).
    """
    if is_tensor(v0):
        q = v0.to(dtype=torch.float64)
        basis = torch.empty((min(steps, dim), dim), dtype=torch.float64, device=q.device)
    else:
        q = np.asarray(v0, dtype=np.float64)
        basis = np.empty((min(steps, dim), dim))
    q = q / vector_norm(q)
    alphas, betas = [], []
    for j in range(basis.shape[0]):
        basis[j] = q
        w = to_operator(matvec(q), q.device if is_tensor(q) else None)
        alpha = float(q @ w)
        # Full reorthogonalisation, twice ("twice is enough", Parlett): keeps the basis orthonormal to rounding.
        w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(vector_norm(w))
        alphas.append(alpha)
        betas.append(beta)
        if beta <= 1e-12 * max(abs(a) for a in alphas) or (stop is not None and stop(alphas, betas)):
            break
        q = w / beta
    m = len(alphas)
    return LanczosResult(np.array(alphas), np.array(betas), basis[:m].clone() if is_tensor(basis) else basis[:m].copy(),
                         m)


@dataclass(frozen=True)
class Eigenpairs(Result):
    """Extreme eigenpairs of a symmetric operator (``extreme_eigenpairs``), each with its residual bound.

    Attributes:
        eigenvalues: ``(k,)``, descending for ``which="largest"``, ascending for ``"smallest"``.
        residuals: the bounds ‖Hy − θy‖ of the Ritz pairs (an eigenvalue lies within each).
        converged: every bound within ``tol``·|θ|.
        matvecs: the products spent.
        tol, which: as requested.
        eigenvectors: ``(dim, k)``, orthonormal, or None (``vectors=False``); not part of ``to_dict()``.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: bool
    matvecs: int
    tol: float
    which: str
    eigenvectors: np.ndarray | None = field(default=None, metadata=NOT_JSON, repr=False, compare=False)


def extreme_eigenpairs(matvec, dim: int, *, k: int = 1, which: str = "largest", tol: float = 1e-6,
                       max_steps: int | None = None, rng, vectors: bool = True, device=None,
                       vectors_on_device: bool = False) -> Eigenpairs:
    """The ``k`` largest (or smallest) eigenpairs of a symmetric operator, each to relative accuracy ``tol``.

    Args:
        matvec, dim: the operator v ↦ H v and its dimension.
        k: how many eigenpairs.
        which: ``"largest"`` (descending) or ``"smallest"`` (ascending: negative curvature first).
        tol: the wanted bound ‖Hy − θy‖ ≤ tol·|θ| on every returned pair.
        max_steps: the most matvecs (default min(dim, 300)).
        rng: a Generator or a seed for the start vector.
        vectors: also return the Ritz vectors.
        device: None: ``matvec`` works on numpy vectors. A torch device: ``matvec`` takes and returns float64
            tensors there (``HessianOperator.matvec_tensor``), and the Krylov basis stays there; the start vector
            is drawn by ``rng`` as for numpy, and the eigenvectors come back as numpy.
        vectors_on_device: with a ``device``, leave the eigenvectors there as a float64 tensor (for a caller that
            goes on computing with them there, as ``noise_hessian_alignment`` does) instead of reading them back.

    Returns:
        ``Eigenpairs``: ``eigenvalues`` (``(k,)``), ``residuals`` (the bounds ‖Hy − θy‖), ``converged`` (every
        bound within tol·|θ|), ``matvecs`` and, with ``vectors``, ``eigenvectors`` (``(dim, k)``, orthonormal).

    >>> h = np.diag(np.arange(1.0, 101.0))
    >>> out = extreme_eigenpairs(lambda v: h @ v, 100, k=3, tol=1e-10, rng=0)
    >>> out.eigenvalues.round(8).tolist(), out.converged
    ([100.0, 99.0, 98.0], True)
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must lie in [1, {dim}], got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    steps = min(dim, max_steps or 300)
    rng = np.random.default_rng(rng)

    def converged(alphas, betas) -> bool:
        if len(alphas) < k:
            return False
        t = LanczosResult(np.array(alphas), np.array(betas), np.empty((0, 0)), 0).tridiagonal()
        theta, s = np.linalg.eigh(t)
        idx = _wanted(theta, k, which)
        res = betas[-1] * np.abs(s[-1, idx])
        return bool(np.all(res <= tol * np.abs(theta[idx])))

    v0 = rng.standard_normal(dim)
    run = lanczos(matvec, dim, steps=steps, v0=v0 if device is None else to_operator(v0, device), stop=converged)
    theta, s = np.linalg.eigh(run.tridiagonal())
    idx = _wanted(theta, min(k, theta.size), which)
    res = run.betas[-1] * np.abs(s[-1, idx])
    vecs = run.basis.T @ to_operator(s[:, idx], device) if vectors else None
    if vecs is not None and not (vectors_on_device and device is not None):
        vecs = to_host(vecs)
    return Eigenpairs(theta[idx], res, bool(theta.size >= k and np.all(res <= tol * np.abs(theta[idx]))),
                      run.matvecs, tol, which, eigenvectors=vecs)


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of the spectrum of H (n = ``dim``).

    Attributes:
        nodes, weights: ``(num_runs, num_steps)``: each run's Gauss quadrature (Ritz values and squared first
            components; each row of weights sums to 1).
        dim: n.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    matvecs: int
    notes: list = field(default_factory=list)

    def moment(self, p: int) -> tuple[float, float]:
        """(1/n)·Tr(H^p) estimated, with its standard error over runs."""
        per_run = np.sum(self.weights * self.nodes ** p, axis=1)
        se = float(per_run.std(ddof=1) / math.sqrt(per_run.size)) if per_run.size > 1 else math.nan
        return float(per_run.mean()), se

    def density(self, grid=None, *, sigma: float | None = None, points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """The spectral density smoothed by a Gaussian of width ``sigma`` (default 1 % of the spectrum's span):
        ``(grid, density)``, integrating to 1 over the grid."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
        sigma = sigma or 0.01 * span
        if grid is None:
            grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
        grid = np.asarray(grid, dtype=np.float64)
        z = (grid[:, None] - self.nodes.ravel()[None, :]) / sigma
        dens = (np.exp(-0.5 * z * z) @ self.weights.ravel()) / (sigma * math.sqrt(2 * math.pi) * self.nodes.shape[0])
        return grid, dens

    def plot(self, path, *, title: str = "Hessian eigenvalue density (SLQ)") -> None:
        """A figure of the smoothed density on a log scale (as PyHessian draws it), saved atomically to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sgd_noise_common.files import save_figure_atomic

        grid, dens = self.density()
        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        ax.semilogy(grid, np.maximum(dens, 1e-12), lw=1.2)
        ax.set(xlabel="eigenvalue", ylabel="density", title=title, ylim=(max(dens.max() * 1e-8, 1e-12),
                                                                          dens.max() * 2))
        save_figure_atomic(fig, path, dpi=120)

    def to_dict(self) -> dict:
        """Nodes, weights and the first three moments with their standard errors, as JSON data."""
        moments = {f"m{p}": self.moment(p) for p in (1, 2, 3)}
        return {"nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "dim": self.dim,
                "matvecs": self.matvecs, "moments": {k: {"mean": v[0], "stderr": v[1]} for k, v in moments.items()},
                "notes": list(self.notes)}


def slq(matvec, dim: int, *, num_runs: int = 10, num_steps: int = 80, rng, device=None) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``num_runs`` Lanczos runs of ``num_steps`` from Rademacher start vectors
    (``device``: as for ``extreme_eigenpairs``; the start vectors are drawn by ``rng`` on the host either way).

    Returns:
        A ``SpectralDensity`` (a run that reaches an invariant subspace early is padded with zero weights).

    >>> h = np.diag(np.linspace(1.0, 2.0, 50))
    >>> d = slq(lambda v: h @ v, 50, num_runs=4, num_steps=20, rng=0)
    >>> round(d.moment(1)[0], 10), bool(np.allclose(d.weights.sum(axis=1), 1.0))
    (1.5, True)
    """
    if num_runs < 1 or num_steps < 1:
        raise ValueError(f"num_runs and num_steps must be >= 1, got {num_runs} and {num_steps}")
    rng = np.random.default_rng(rng)
    m = min(num_steps, dim)
    nodes, weights, matvecs = np.zeros((num_runs, m)), np.zeros((num_runs, m)), 0
    for r in range(num_runs):
        v0 = rng.choice([-1.0, 1.0], size=dim)
        run = lanczos(matvec, dim, steps=m, v0=v0 if device is None else to_operator(v0, device))
        theta, s = np.linalg.eigh(run.tridiagonal())
        nodes[r, :theta.size], weights[r, :theta.size] = theta, s[0] ** 2
        if theta.size < m:  # an invariant subspace: pad with the last node and zero weight
            nodes[r, theta.size:] = theta[-1]
        matvecs += run.matvecs
    return SpectralDensity(nodes, weights, dim, matvecs)
