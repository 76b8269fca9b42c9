r"""Hypothesis strategies for property-based tests of the theory: spectra, quadratics and stable SGD settings.

Every strategy draws small, well-conditioned cases (d <= 8, Hessian and noise eigenvalues in [1e-2, 10], so a
condition number of at most 1e3) so that a draw takes well under a millisecond and every closed form is accurate
to about machine precision divided by ηλ_min. Randomness that is not a plain number (rotations, random matrices,
minima) comes from a NumPy generator seeded by a Hypothesis-drawn integer, so failures shrink and replay.

This module needs Hypothesis (a test dependency): import it as ``import quadratic.strategies as qst``; the package
``quadratic`` does not import it. A property a user would write, for example that the SDE's stationary loss depends
on η and S only through η/S::

    import math
    from hypothesis import given, settings, strategies as st
    import quadratic.strategies as qst
    from sde import expected_loss

    @settings(max_examples=50, deadline=None)
    @given(case=qst.problems_with_settings(), k=st.integers(2, 10))
    def test_sde_loss_depends_on_ratio_only(case, k):
        q, s = case
        big = s.scaled(k)
        a = expected_loss(q, s.eta, s.batch_size, process="sde", **s.kwargs)
        b = expected_loss(q, big.eta, big.batch_size, process="sde", **big.kwargs)
        assert math.isclose(a, b, rel_tol=1e-12)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from scipy.stats import ortho_group

from quadratic.least_squares import LeastSquares
from quadratic.problem import Quadratic

__all__ = [
    "NOISE_KINDS",
    "SGDSetting",
    "seeds",
    "log_floats",
    "spectra",
    "rotations",
    "noise_covariances",
    "quadratics",
    "sgd_settings",
    "problems_with_settings",
    "least_squares_problems",
]

#: The noise models of ``quadratics``: C = H, C = c·H, C commuting with H (same eigenvectors, other eigenvalues),
#: and a generic PSD C that does not commute with H.
NOISE_KINDS = ("equal", "scaled", "commuting", "noncommuting")

# Eigenvalues of H (and of C) in [1e-2, 10]: a condition number of at most 1e3 keeps the closed forms accurate to
# ~1e-13 relative while still spanning the stiff and the flat directions that the theory distinguishes.
MIN_EIG = 1e-2
MAX_EIG = 10.0
MAX_DIM = 8
# η is drawn as a fraction of the stability bound 2(1+μ)/(λ_max+γ), at most 0.9 of it: the stationary variance of the
# stiffest direction grows like 1/(2 − ηλ/(1+μ)) (docs/theory.md), so at 0.9 it is at most 10× its small-η value and the
# Lyapunov equations stay well conditioned. At least 1e-3 of it: the eigen solver's transfer factor
# 1 − (1−ηa_i)(1−ηa_j) loses digits like eps/(ηa), so smaller η would only measure rounding.
MIN_FRACTION = 1e-3
MAX_FRACTION = 0.9


@dataclass(frozen=True)
class SGDSetting:
    """Hyper-parameters of one stable SGD run: learning rate η, batch size S, momentum μ, weight decay γ."""

    eta: float
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0

    @property
    def kwargs(self) -> dict:
        """``momentum`` and ``weight_decay`` as keyword arguments of ``sde.expected_loss`` and friends."""
        return {"momentum": self.momentum, "weight_decay": self.weight_decay}

    def scaled(self, k: int) -> SGDSetting:
        """The same setting with η and S both multiplied by the integer ``k`` (the paper's linear scaling)."""
        return replace(self, eta=k * self.eta, batch_size=k * self.batch_size)

    def stability_fraction(self, lambda_max: float) -> float:
        """η(λ_max + γ) / (2(1 + μ)): below 1 iff SGD has a stationary law on a Hessian with top eigenvalue λ_max."""
        return self.eta * (lambda_max + self.weight_decay) / (2.0 * (1.0 + self.momentum))


def seeds() -> st.SearchStrategy[int]:
    """Draws an integer seed in [0, 2³² − 1] for ``numpy.random.default_rng``."""
    return st.integers(0, 2**32 - 1)


def log_floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Draws a float in [``low``, ``high``] (both > 0), uniform in its logarithm; shrinks towards 1 when in range.

    Raises:
        ValueError: unless 0 < low <= high.
    """
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low!r}, high={high!r}")
    lo, hi = math.log10(low), math.log10(high)
    # 10**x may round one ulp past a bound: clip back into it.
    return st.floats(lo, hi).map(lambda x: min(max(10.0**x, low), high))


def spectra(min_dim: int = 1, max_dim: int = MAX_DIM, *, min_eig: float = MIN_EIG,
            max_eig: float = MAX_EIG) -> st.SearchStrategy[np.ndarray]:
    """Draws a 1-D float64 array of ``min_dim``…``max_dim`` eigenvalues, each in [``min_eig``, ``max_eig``].

    The eigenvalues are log-uniform and in no particular order; repeated and nearly repeated values (degenerate
    and near-degenerate eigenspaces, the hard cases for eigenbasis solvers) occur on purpose.

    Raises:
        ValueError: unless 1 <= min_dim <= max_dim and 0 < min_eig <= max_eig.
    """
    _check_dims(min_dim, max_dim)
    return st.lists(log_floats(min_eig, max_eig), min_size=min_dim, max_size=max_dim).map(np.array)


def _orthogonal(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ortho_group.rvs(dim, random_state=rng) if dim > 1 else np.ones((1, 1))


def rotations(dim: int) -> st.SearchStrategy[np.ndarray]:
    """Draws a Haar-random ``(dim, dim)`` orthogonal matrix (``scipy.stats.ortho_group``) from a drawn seed."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim!r}")
    return seeds().map(lambda seed: _orthogonal(dim, seed))


@st.composite
def noise_covariances(draw, dim: int, *, min_ridge: float = MIN_EIG, max_scale: float = MAX_EIG) -> np.ndarray:
    """Draws a symmetric PSD ``(dim, dim)`` matrix C = s·AAᵀ/r + ρI in the parameter basis.

    A is a ``(dim, r)`` standard normal matrix from a drawn seed with rank r in [1, dim], s is log-uniform in
    [1e-1, ``max_scale``] and the ridge ρ in [``min_ridge``, max(``min_ridge``, 1)]. With ``min_ridge=0`` a ridge of
    0 and r < dim give a singular C.

    Raises:
        ValueError: when ``dim`` < 1, ``min_ridge`` < 0 or ``max_scale`` < 0.1.
    """
    if dim < 1 or min_ridge < 0 or max_scale < 0.1:
        raise ValueError(f"need dim >= 1, min_ridge >= 0, max_scale >= 0.1; got {dim!r}, {min_ridge!r}, "
                         f"{max_scale!r}")
    rng = np.random.default_rng(draw(seeds()))
    rank = draw(st.integers(1, dim))
    scale = draw(log_floats(0.1, max_scale))
    ridge = draw(st.floats(min_ridge, max(min_ridge, 1.0)))
    a = rng.standard_normal((dim, rank))
    c = scale * (a @ a.T) / rank + ridge * np.eye(dim)
    return 0.5 * (c + c.T)


@st.composite
def quadratics(draw, min_dim: int = 1, max_dim: int = MAX_DIM, *, min_eig: float = MIN_EIG,
               max_eig: float = MAX_EIG, rotated: bool | None = None, noise: str | None = None,
               shifted: bool | None = False) -> Quadratic:
    """Draws a ``quadratic.Quadratic`` with a Hessian spectrum from ``spectra`` and one of the noise models.

    Args:
        min_dim, max_dim: bounds on the dimension d.
        min_eig, max_eig: bounds on the eigenvalues of H, and of C for ``noise="commuting"``.
        rotated: ``False`` for a diagonal H, ``True`` for H = Q diag(λ) Qᵀ with a Haar-random Q (a 1×1 H stays
            diagonal), ``None`` for either.
        noise: one of ``NOISE_KINDS``: ``"equal"`` (C = H), ``"scaled"`` (C = c·H, c log-uniform in
            [1e-1, 10]), ``"commuting"`` (C = Q diag(c_i) Qᵀ in H's eigenbasis, c_i in [``min_eig``, ``max_eig``]),
            ``"noncommuting"`` (C from ``noise_covariances``, and ``problem.commutes`` is False: needs d >= 2, and
            draws where H ∝ I are rejected); ``None`` for any of them.
        shifted: ``False`` puts the minimum θ* at the origin, ``True`` draws it standard normal, ``None`` either.

    Raises:
        ValueError: on bad bounds or an unknown ``noise``, or ``noise="noncommuting"`` with ``max_dim`` < 2.
    """
    _check_dims(min_dim, max_dim)
    kind = draw(st.sampled_from(NOISE_KINDS)) if noise is None else noise
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS} or None, got {noise!r}")
    if kind == "noncommuting":
        if max_dim < 2:
            raise ValueError("noise='noncommuting' needs max_dim >= 2 (every 1×1 C commutes with H)")
        min_dim = max(min_dim, 2)
    lam = draw(spectra(min_dim, max_dim, min_eig=min_eig, max_eig=max_eig))
    d = lam.size
    rotate = draw(st.booleans()) if rotated is None else bool(rotated)
    shift = draw(st.booleans()) if shifted is None else bool(shifted)
    rng = np.random.default_rng(draw(seeds()))
    minimum = rng.standard_normal(d) if shift else None
    if kind == "equal":
        return Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, minimum=minimum)
    if kind == "scaled":
        return Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, minimum=minimum,
                                       noise_covariance=draw(log_floats(0.1, 10.0)))
    if kind == "commuting":
        c = draw(spectra(d, d, min_eig=min_eig, max_eig=max_eig))
        return Quadratic.from_spectrum(lam, rotate=rotate, rng=rng, minimum=minimum, noise_covariance=c)
    h = Quadratic.from_spectrum(lam, rotate=rotate, rng=rng).hessian
    q = Quadratic(h, noise_covariance=draw(noise_covariances(d)), minimum=minimum)
    assume(not q.commutes)  # H ∝ I commutes with every C
    return q


def _maybe_zero(high: float) -> st.SearchStrategy[float]:
    # Exactly 0 half the time: μ = 0 and γ = 0 take their own code paths, which a continuous draw would rarely hit.
    return st.just(0.0) if high == 0.0 else st.one_of(st.just(0.0), st.floats(0.0, high))


@st.composite
def sgd_settings(draw, lambda_max: float, *, max_batch_size: int = 1000, max_momentum: float = 0.95,
                 max_weight_decay: float = 1.0, min_fraction: float = MIN_FRACTION,
                 max_fraction: float = MAX_FRACTION) -> SGDSetting:
    """Draws an ``SGDSetting`` under which SGD on a Hessian with top eigenvalue ``lambda_max`` is stable.

    S is in [1, ``max_batch_size``]; μ in [0, ``max_momentum``] and γ in [0, ``max_weight_decay``], each exactly 0
    half the time; η = f · 2(1+μ)/(λ_max+γ) with f log-uniform in [``min_fraction``, ``max_fraction``], so that
    η(λ_max+γ) <= 2·``max_fraction``·(1+μ) = 1.8(1+μ) by default: a margin of 10 % below the edge of stability
    (the bound is ``sde.stability_bound``, restated here because ``quadratic`` may not import ``sde``).

    Raises:
        ValueError: on bounds outside λ_max > 0, S >= 1, 0 <= μ < 1, γ >= 0, 0 < f_min <= f_max < 1.
    """
    if not (lambda_max > 0 and max_batch_size >= 1 and 0.0 <= max_momentum < 1.0 and max_weight_decay >= 0.0
            and 0.0 < min_fraction <= max_fraction < 1.0):
        raise ValueError("need lambda_max > 0, max_batch_size >= 1, 0 <= max_momentum < 1, max_weight_decay >= 0 "
                         "and 0 < min_fraction <= max_fraction < 1")
    mu = draw(_maybe_zero(max_momentum))
    gamma = draw(_maybe_zero(max_weight_decay))
    fraction = draw(log_floats(min_fraction, max_fraction))
    eta = fraction * 2.0 * (1.0 + mu) / (lambda_max + gamma)
    return SGDSetting(eta, draw(st.integers(1, max_batch_size)), mu, gamma)


@st.composite
def problems_with_settings(draw, *, max_batch_size: int = 1000, max_momentum: float = 0.95,
                           max_weight_decay: float = 1.0, min_fraction: float = MIN_FRACTION,
                           max_fraction: float = MAX_FRACTION, **quadratic_kwargs) -> tuple[Quadratic, SGDSetting]:
    """Draws ``(problem, setting)``: a problem from ``quadratics(**quadratic_kwargs)`` and a setting from
    ``sgd_settings`` that is stable for it (same keyword arguments as those two)."""
    q = draw(quadratics(**quadratic_kwargs))
    s = draw(sgd_settings(q.lambda_max, max_batch_size=max_batch_size, max_momentum=max_momentum,
                          max_weight_decay=max_weight_decay, min_fraction=min_fraction, max_fraction=max_fraction))
    return q, s


@st.composite
def least_squares_problems(draw, min_dim: int = 1, max_dim: int = 4, *, max_examples: int = 200,
                           min_eig: float = MIN_EIG, max_eig: float = MAX_EIG,
                           rotated: bool | None = None) -> LeastSquares:
    """Draws a ``quadratic.LeastSquares`` problem (``LeastSquares.sample``) with real minibatch noise.

    The input covariance has a spectrum from ``spectra(min_dim, max_dim, ...)``, N is in [max(2d, 8),
    ``max_examples``] and the label noise σ in [0.1, 2]; the data come from a drawn seed.

    Raises:
        ValueError: on bad dimension bounds, or ``max_examples`` < max(2·``max_dim``, 8).
    """
    _check_dims(min_dim, max_dim)
    if max_examples < max(2 * max_dim, 8):
        raise ValueError(f"max_examples must be >= max(2*max_dim, 8) = {max(2 * max_dim, 8)}, got {max_examples}")
    lam = draw(spectra(min_dim, max_dim, min_eig=min_eig, max_eig=max_eig))
    # N >= 2d keeps XᵀX/N comfortably invertible (its smallest eigenvalue is ~ (1 − √(d/N))² λ_min).
    n = draw(st.integers(max(2 * lam.size, 8), max_examples))
    rotate = draw(st.booleans()) if rotated is None else bool(rotated)
    return LeastSquares.sample(n, lam, noise_std=draw(st.floats(0.1, 2.0)), rotate=rotate,
                               rng=np.random.default_rng(draw(seeds())))


def _check_dims(min_dim: int, max_dim: int) -> None:
    if not 1 <= min_dim <= max_dim:
        raise ValueError(f"need 1 <= min_dim <= max_dim, got min_dim={min_dim!r}, max_dim={max_dim!r}")
