"""The quadratic model of a minimum: L(θ) = ½ (θ−θ*)ᵀ H (θ−θ*) with a gradient-noise covariance C."""

from __future__ import annotations

import numbers
from functools import cached_property

import numpy as np

from sgd_noise_common import validate

__all__ = ["Quadratic"]

# Two matrices "commute" when ‖HC − CH‖_F ≤ COMMUTE_RTOL ‖H‖_F ‖C‖_F: well above the rounding of a rotated
# product QΛQᵀ (about 1e-15 relative) and far below any genuine non-commutation a user would build.
COMMUTE_RTOL = 1e-9
# Eigenvalues of H closer than this (relative to λ_max) are treated as one degenerate eigenspace when choosing a
# basis that also diagonalises C.
DEGENERACY_RTOL = 1e-9


class Quadratic:
    r"""A quadratic loss with Gaussian gradient noise, the paper's model of the final phase of training.

    .. math:: L(\theta) = \tfrac12 (\theta-\theta^*)^\top H (\theta-\theta^*), \qquad
              g_B(\theta) = H(\theta-\theta^*) + \xi,\quad \xi \sim \mathcal N(0, C/S).

    Args:
        hessian: the Hessian H, a symmetric positive definite ``(d, d)`` matrix.
        noise_covariance: the per-example gradient covariance C. ``None`` means C = H (the paper's Assumption 2);
            a number ``c >= 0`` means C = c·H; a ``(d, d)`` symmetric positive semi-definite matrix is used as is,
            whether or not it commutes with H.
        minimum: θ*, default the origin.

    Raises:
        ValueError: when H is not square, symmetric, finite and positive definite, when C is not symmetric positive
            semi-definite of the same shape, or when ``minimum`` has the wrong length.

    Example:
        >>> q = Quadratic.from_spectrum([1.0, 0.5, 0.25])
        >>> float(q.trace), float(q.loss(np.ones(3)))
        (1.75, 0.875)
        >>> bool(q.commutes), q.noise_eigenvalues.tolist()
        (True, [1.0, 0.5, 0.25])
    """

    def __init__(self, hessian, *, noise_covariance=None, minimum=None):
        h = validate.as_square_matrix("hessian", hessian)
        h = validate.check_symmetric("hessian", h)
        validate.check_spd("hessian", h)
        d = h.shape[0]
        if noise_covariance is None:
            c = h.copy()
        elif isinstance(noise_covariance, numbers.Real) and not isinstance(noise_covariance, bool):
            c = validate.nonnegative_float("noise_covariance", noise_covariance) * h
        else:
            c = validate.as_square_matrix("noise_covariance", noise_covariance, size=d)
            c = validate.check_symmetric("noise_covariance", c)
            validate.check_psd("noise_covariance", c)
        theta_star = np.zeros(d) if minimum is None else validate.as_vector("minimum", minimum, size=d)
        self._h = h
        self._c = c
        self._theta_star = theta_star
        self._h.setflags(write=False)
        self._c.setflags(write=False)
        self._theta_star.setflags(write=False)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_spectrum(cls, eigenvalues, *, rotate: bool = False, rng: np.random.Generator | None = None,
                      noise_covariance=None, minimum=None) -> "Quadratic":
        """A quadratic with the given Hessian eigenvalues, diagonal or in a random orthonormal basis.

        Args:
            eigenvalues: the λ_i, all > 0.
            rotate: apply a Haar-random orthogonal basis Q, H = Q diag(λ) Qᵀ (drawn from ``rng``).
            rng: the generator (or seed) for the rotation, required with ``rotate``.
            noise_covariance: ``None`` (C = H), a number c (C = c·H), a vector of the eigenvalues c_i of C in the
                eigenbasis of H (so C commutes with H), or a full matrix in the parameter basis.
            minimum: θ*, default the origin.
        """
        lam = validate.as_vector("eigenvalues", eigenvalues)
        if np.any(lam <= 0):
            raise ValueError(f"eigenvalues must all be > 0 (H positive definite); smallest is {lam.min():.6g}")
        d = lam.size
        q = None
        if rotate:
            rng = validate.generator("rng", rng)  # only a rotation draws
            from scipy.stats import ortho_group  # here, not at the top: scipy.stats costs 0.5 s to import

            q = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
        h = np.diag(lam) if q is None else (q * lam) @ q.T
        if noise_covariance is not None and not isinstance(noise_covariance, numbers.Real):
            cv = np.asarray(noise_covariance, dtype=np.float64)
            if cv.ndim == 1:
                cv = validate.as_vector("noise_covariance", cv, size=d)
                if np.any(cv < 0):
                    raise ValueError(f"noise_covariance eigenvalues must be >= 0; smallest is {cv.min():.6g}")
                noise_covariance = np.diag(cv) if q is None else (q * cv) @ q.T
        return cls(h, noise_covariance=noise_covariance, minimum=minimum)

    # -------------------------------------------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Number of parameters d."""
        return self._h.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """H, read-only ``(d, d)``."""
        return self._h

    @property
    def noise_covariance(self) -> np.ndarray:
        """C, the per-example gradient covariance, read-only ``(d, d)``."""
        return self._c

    @property
    def minimum(self) -> np.ndarray:
        """θ*, read-only ``(d,)``."""
        return self._theta_star

    @property
    def trace(self) -> float:
        """Tr(H)."""
        return float(np.trace(self._h))

    @property
    def noise_trace(self) -> float:
        """Tr(C)."""
        return float(np.trace(self._c))

    @cached_property
    def is_diagonal(self) -> bool:
        """Whether H and C are both exactly diagonal (then the eigenbasis is the parameter basis)."""
        off = ~np.eye(self.dim, dtype=bool)
        return not (np.any(self._h[off]) or np.any(self._c[off]))

    @cached_property
    def commutes(self) -> bool:
        """Whether HC = CH (to ``COMMUTE_RTOL``): then one orthonormal basis diagonalises both."""
        if self.is_diagonal:
            return True
        comm = self._h @ self._c - self._c @ self._h
        scale = np.linalg.norm(self._h) * np.linalg.norm(self._c)
        return bool(np.linalg.norm(comm) <= COMMUTE_RTOL * max(scale, np.finfo(float).tiny))

    @cached_property
    def _eig(self):
        # Eigen-decomposition H = V diag(λ) Vᵀ with V chosen, when C commutes with H, to diagonalise C too: inside
        # each degenerate eigenspace of H the block of VᵀCV is diagonalised as well.
        if self.is_diagonal:
            return np.diag(self._h).copy(), np.eye(self.dim)
        lam, v = np.linalg.eigh(self._h)
        if self.commutes:
            ct = v.T @ self._c @ v
            tol = DEGENERACY_RTOL * lam[-1]
            start = 0
            for end in range(1, self.dim + 1):
                if end == self.dim or lam[end] - lam[end - 1] > tol:
                    if end - start > 1:
                        _, u = np.linalg.eigh(ct[start:end, start:end])
                        v[:, start:end] = v[:, start:end] @ u
                    start = end
        return lam, v

    @property
    def eigenvalues(self) -> np.ndarray:
        """λ_i of H, in the order of the columns of ``eigenvectors`` (the given order for a diagonal H)."""
        return self._eig[0]

    @property
    def eigenvectors(self) -> np.ndarray:
        """V with H = V diag(λ) Vᵀ; when C commutes with H, VᵀCV is diagonal too."""
        return self._eig[1]

    @property
    def lambda_max(self) -> float:
        """The largest eigenvalue of H."""
        return float(np.max(self.eigenvalues))

    @cached_property
    def noise_in_eigenbasis(self) -> np.ndarray:
        """VᵀCV, the noise covariance in the eigenbasis of H."""
        v = self.eigenvectors
        return np.diag(np.diag(self._c)) if self.is_diagonal else v.T @ self._c @ v

    @property
    def noise_eigenvalues(self) -> np.ndarray:
        """c_i, the diagonal of VᵀCV: the eigenvalues of C when it commutes with H.

        Raises:
            ValueError: when C does not commute with H (it has no eigenvalues in the eigenbasis of H).
        """
        if not self.commutes:
            raise ValueError("noise_covariance does not commute with the hessian: no common eigenbasis")
        return np.clip(np.diag(self.noise_in_eigenbasis), 0.0, None)

    # --------------------------------------------------------------------------------------------------- functions
    def _delta(self, theta) -> np.ndarray:
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim == 0 or t.shape[-1] != self.dim:
            raise ValueError(f"theta must have last axis of length {self.dim}, got shape {t.shape}")
        return t - self._theta_star

    def loss(self, theta) -> np.ndarray:
        """L(θ) − L(θ*) = ½ (θ−θ*)ᵀH(θ−θ*), batched over the leading axes of ``theta``."""
        delta = self._delta(theta)
        return 0.5 * np.sum((delta @ self._h) * delta, axis=-1)

    def grad(self, theta) -> np.ndarray:
        """∇L(θ) = H(θ−θ*), batched over the leading axes of ``theta``."""
        return self._delta(theta) @ self._h

    def __repr__(self) -> str:
        kind = "diagonal" if self.is_diagonal else ("commuting" if self.commutes else "non-commuting")
        return (f"Quadratic(dim={self.dim}, trace_h={self.trace:.6g}, lambda_max={self.lambda_max:.6g}, "
                f"trace_c={self.noise_trace:.6g}, {kind})")
