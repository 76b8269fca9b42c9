r"""A finite-data problem whose minibatch noise is the genuine article: least squares on N examples.

.. math:: L(\theta) = \frac{1}{2N}\sum_{n=1}^N (x_n^\top\theta - y_n)^2,\qquad
          g_n(\theta) = x_n (x_n^\top\theta - y_n),\qquad
          g_B(\theta) = \frac1S \sum_{n\in B} g_n(\theta).

The Hessian is the empirical H = XᵀX/N and θ* the least-squares solution, so the problem *is* a ``Quadratic``; its
``noise_covariance`` is the per-example gradient covariance at θ*, Σ* = (1/N) Σ_n e_n² x_n x_nᵀ with residuals
e_n = y_n − x_nᵀθ*. Away from θ* the covariance grows with δ = θ − θ*:

.. math:: \Sigma_{pop}(\theta) = \Sigma^* + \frac1N\sum_n a_n\delta\delta^\top a_n
          - \frac1N\sum_n e_n (a_n \delta x_n^\top + x_n\delta^\top a_n),\qquad a_n = x_n x_n^\top - H,

(multiplicative noise), which ``sde.stationary_covariance(..., noise="minibatch")`` accounts for exactly.
A batch of S drawn with replacement has covariance Σ_pop/S; drawn without replacement, (N−S)/(S(N−1))·Σ_pop.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from quadratic.problem import Quadratic
from quadratic.sampling import batch_noise_factor
from sgd_noise_common import validate

__all__ = ["LeastSquares"]


class LeastSquares(Quadratic):
    """Least squares on a fixed dataset (``inputs`` of shape ``(N, d)``, ``targets`` of shape ``(N,)``).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> p = LeastSquares.sample(200, [1.0, 0.1], noise_std=0.5, rng=rng)
        >>> p.dataset_size, p.dim
        (200, 2)
        >>> bool(np.allclose(p.per_example_grads(p.minimum).mean(axis=0), 0.0, atol=1e-12))
        True
    """

    def __init__(self, inputs, targets):
        x = np.array(inputs, dtype=np.float64)
        y = np.array(targets, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"inputs must have shape (N, d), got {x.shape}")
        n, d = x.shape
        if y.shape != (n,):
            raise ValueError(f"targets must have shape ({n},) to match inputs, got {y.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("inputs and targets must be finite (found NaN or infinity)")
        if n < d:
            raise ValueError(f"inputs: need at least as many examples as parameters (N={n} < d={d})")
        h = x.T @ x / n
        try:
            theta_star = np.linalg.solve(h, x.T @ y / n)
        except np.linalg.LinAlgError:
            raise ValueError("inputs: X^T X is singular, so the least-squares minimum is not unique") from None
        residuals = y - x @ theta_star
        sigma_star = (x * residuals[:, None] ** 2).T @ x / n
        super().__init__(h, noise_covariance=0.5 * (sigma_star + sigma_star.T), minimum=theta_star)
        self._x = x
        self._y = y
        self._e = residuals
        for a in (self._x, self._y, self._e):
            a.setflags(write=False)

    @classmethod
    def sample(cls, n: int, input_spectrum, *, rng: np.random.Generator | int, noise_std: float = 1.0,
               rotate: bool = False, weights=None) -> "LeastSquares":
        """Draw a dataset: x_n ~ N(0, A) with A's eigenvalues ``input_spectrum``, y_n = x_nᵀw + σ ε_n.

        Args:
            n: the dataset size N (>= d).
            input_spectrum: eigenvalues of the input covariance A (> 0).
            noise_std: the label-noise standard deviation σ (>= 0).
            rotate: put A in a Haar-random orthonormal basis.
            rng: the generator for the data (and the rotation).
            weights: the true w, default drawn N(0, I/d).
        """
        n = validate.positive_int("n", n)
        lam = validate.as_vector("input_spectrum", input_spectrum)
        if np.any(lam <= 0):
            raise ValueError(f"input_spectrum must be > 0; smallest is {lam.min():.6g}")
        noise_std = validate.nonnegative_float("noise_std", noise_std)
        d = lam.size
        if n < d:
            raise ValueError(f"n must be >= the dimension {d}, got {n}")
        rng = validate.generator("rng", rng)
        x = rng.standard_normal((n, d)) * np.sqrt(lam)
        if rotate and d > 1:
            from scipy.stats import ortho_group  # here, not at the top: scipy.stats costs 0.5 s to import

            x = x @ ortho_group.rvs(d, random_state=rng).T
        w = rng.standard_normal(d) / np.sqrt(d) if weights is None else validate.as_vector("weights", weights, size=d)
        y = x @ w + noise_std * rng.standard_normal(n)
        return cls(x, y)

    # --------------------------------------------------------------------------------------------------- data
    @property
    def inputs(self) -> np.ndarray:
        """X, ``(N, d)``."""
        return self._x

    @property
    def targets(self) -> np.ndarray:
        """y, ``(N,)``."""
        return self._y

    @property
    def residuals(self) -> np.ndarray:
        """e_n = y_n − x_nᵀθ*."""
        return self._e

    @property
    def dataset_size(self) -> int:
        """N."""
        return self._x.shape[0]

    def full_loss(self, theta) -> np.ndarray:
        """The training loss L(θ) itself (not relative to L(θ*)), batched over leading axes."""
        t = np.asarray(theta, dtype=np.float64)
        r = t @ self._x.T - self._y
        return 0.5 * np.mean(r * r, axis=-1)

    def per_example_grads(self, theta) -> np.ndarray:
        """g_n(θ) for every example, ``(N, d)``."""
        t = validate.as_vector("theta", theta, size=self.dim)
        return self._x * (self._x @ t - self._y)[:, None]

    def minibatch_grad(self, theta, indices) -> np.ndarray:
        """g_B(θ), the mean of g_n over the examples ``indices``."""
        idx = np.asarray(indices)
        xb = self._x[idx]
        t = validate.as_vector("theta", theta, size=self.dim)
        return xb.T @ (xb @ t - self._y[idx]) / idx.size

    def population_noise_covariance(self, theta) -> np.ndarray:
        """Σ_pop(θ) = (1/N) Σ_n (g_n − ḡ)(g_n − ḡ)ᵀ at θ."""
        g = self.per_example_grads(theta)
        g = g - g.mean(axis=0)
        return g.T @ g / self.dataset_size

    def batch_noise_factor(self, batch_size: int, sampling: str = "with") -> float:
        """κ with Cov(g_B) = κ Σ_pop for a batch of this dataset: ``quadratic.sampling.batch_noise_factor`` with
        N = ``dataset_size`` (default with replacement, as the minibatch sampler's default draw)."""
        return batch_noise_factor(batch_size, self.dataset_size, sampling=sampling)

    def multiplicative_noise(self, second_moment: np.ndarray, *, in_eigenbasis: bool = False) -> np.ndarray:
        """M(P) = (1/N) Σ_n a_n P a_n with a_n = x_n x_nᵀ − H: the noise that E[δδᵀ] = P adds to Σ*.

        With ``in_eigenbasis=True``, P and the result are in the eigenbasis V of H (P̃ = VᵀPV): the same formula
        with x̃_n = Vᵀx_n and H̃ = diag(λ), which is how the exact minibatch theory iterates on it.
        """
        if in_eigenbasis:
            x, h = self._inputs_in_eigenbasis, np.diag(self.eigenvalues)
        else:
            x, h = self._x, self.hessian
        q = np.einsum("ni,ij,nj->n", x, second_moment, x)
        m = (x * q[:, None]).T @ x / self.dataset_size
        m -= h @ second_moment @ h
        return 0.5 * (m + m.T)

    @cached_property
    def _inputs_in_eigenbasis(self) -> np.ndarray:
        return self._x @ self.eigenvectors

    def cross_noise(self, mean_offset: np.ndarray) -> np.ndarray:
        """−(1/N) Σ_n e_n (a_n m x_nᵀ + x_n mᵀ a_n), the noise a mean offset m = E[δ] adds.

        g_n − ḡ = a_n δ − x_n e_n, so the cross term carries a minus sign; with Σ_n e_n x_n = 0 (normal equations)
        it reduces to −(2/N) Xᵀ diag(e ⊙ Xm) X.
        """
        u = self._x @ mean_offset
        k = (self._x * (self._e * u)[:, None]).T @ self._x / self.dataset_size
        return -(k + k.T)

    def __repr__(self) -> str:
        return (f"LeastSquares(N={self.dataset_size}, dim={self.dim}, trace_h={self.trace:.6g}, "
                f"lambda_max={self.lambda_max:.6g}, trace_c={self.noise_trace:.6g})")
