r"""Estimators that need only what an optimiser sees (θ, the minibatch gradient, the momentum buffer, batch sizes),
so that the same code checks the theory on quadratics (``verification``) and diagnoses real networks (``nets``).

* Fluctuation–dissipation (Yaida 2019). At any stationary state of SGD, for any loss, with torch's momentum
  (b ← μb + (1−d)g, θ ← θ − ηb; g = ∇f_B(θ) + γθ, all evaluated before the update):

  .. math:: \langle O_L\rangle = \langle O_R\rangle,\qquad O_L = \theta\cdot g,\qquad
            O_R = \frac{\eta}{2}\,\frac{1+\mu}{1-d}\,\lVert b'\rVert^2,

  where b' is the buffer after the update (for plain SGD b' = g, and the relation reads ⟨θ·∇f⟩ = (η/2)⟨‖g_B‖²⟩).
  Proof sketch: stationarity of E‖θ‖² gives ⟨θ·b'⟩ = (η/2)⟨‖b'‖²⟩; expanding b' = μb + (1−d)g and using
  θ = θ₋ − ηb once more gives the factor (1+μ)/(1−d). ``FDRMonitor`` accumulates the two observables and reports
  their ratio with a standard error; ``|ratio − 1| < 0.01`` is the equilibrium test of Yaida's public scheduler.
* Gradient noise scale (McCandlish et al. 2018). With f(B) the noise factor of a batch of B (1/B when examples are
  drawn with replacement or the data are unlimited, (N−B)/(B(N−1)) without replacement from N),
  E‖G_B‖² = ‖G‖² + f(B)·Tr(Σ); two batch sizes give unbiased estimates of ‖G‖² and Tr(Σ), and
  B_simple = Tr(Σ)/‖G‖². ``noise_scale`` returns them with standard errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quadratic.sampling import batch_noise_factor
from sgd_noise_common import validate
from sgd_noise_common.stats import block_means

__all__ = ["fdr_observables", "fdr_right_factor", "FDRMonitor", "FDRSummary", "NoiseScale", "noise_scale",
           "smith_le_noise_scale"]


def fdr_right_factor(eta: float, momentum: float = 0.0, dampening: float = 0.0) -> float:
    """The factor ½η(1+μ)/(1−d) that multiplies ‖b'‖² in O_R; without momentum torch keeps no buffer and ignores
    the dampening, so the factor is then ½η."""
    eta = validate.positive_float("eta", eta)
    mu = validate.float_in("momentum", momentum, 0.0, 1.0)
    damp = validate.float_in("dampening", dampening, 0.0, 1.0) if mu else 0.0
    return 0.5 * eta * (1.0 + mu) / (1.0 - damp)


def fdr_observables(theta, grad, buffer=None, *, eta, momentum=0.0, dampening=0.0, weight_decay=0.0):
    """O_L and O_R of one step, from the values before the update.

    Args:
        theta: parameters θ, shape ``(..., P)`` (leading axes are independent chains).
        grad: the minibatch gradient of the data loss ∇f_B(θ), same shape (without the weight-decay term).
        buffer: the momentum buffer *after* the update, b' = μb + (1−d)(grad + γθ); ``None`` for plain SGD, where
            b' = grad + γθ.
        eta, momentum, dampening, weight_decay: the optimiser's η, μ, d, γ.

    Returns:
        ``(o_left, o_right)``, float64 arrays of the leading shape (dot products accumulate in float64).
    """
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    if g.shape != theta.shape:
        raise ValueError(f"grad must have the shape of theta {theta.shape}, got {g.shape}")
    gamma = validate.nonnegative_float("weight_decay", weight_decay)
    g_total = g + gamma * theta if gamma else g
    if buffer is None:
        if momentum:
            raise ValueError("buffer (the momentum buffer after the update) is required when momentum > 0")
        b = g_total
    else:
        b = np.asarray(buffer, dtype=np.float64)
        if b.shape != theta.shape:
            raise ValueError(f"buffer must have the shape of theta {theta.shape}, got {b.shape}")
    o_left = np.einsum("...i,...i->...", theta, g_total)
    o_right = fdr_right_factor(eta, momentum, dampening) * np.einsum("...i,...i->...", b, b)
    return o_left, o_right


@dataclass(frozen=True)
class FDRSummary:
    """⟨O_L⟩ and ⟨O_R⟩ over a stretch of steps, and what they say.

    ``ratio_stderr`` and ``diff_stderr`` come from independent chains when there are at least two, else from
    ``n_batches`` batch means of the time series (which absorb its autocorrelation when each batch is much longer
    than the relaxation time).
    """

    o_left: float
    o_right: float
    ratio: float
    ratio_stderr: float
    diff: float
    diff_stderr: float
    steps: int
    chains: int
    stderr_method: str

    def z_score(self) -> float:
        """(⟨O_L⟩ − ⟨O_R⟩)/stderr: how many standard errors the relation is off."""
        return self.diff / self.diff_stderr if self.diff_stderr > 0 else (0.0 if self.diff == 0 else math.inf)

    def is_stationary(self, tolerance: float = 0.01) -> bool:
        """Yaida's scheduler test: |⟨O_L⟩/⟨O_R⟩ − 1| < tolerance."""
        return abs(self.ratio - 1.0) < tolerance


def _as_array(value) -> np.ndarray:
    """``value`` as a 1-D float64 array; a torch tensor (on any device) is detached and copied to the host first."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
    return np.atleast_1d(np.asarray(value, dtype=np.float64))


def _deferred(value):
    """A torch tensor as it is (read back later by ``_as_array``), anything else as its float64 array now."""
    return value if hasattr(value, "detach") and hasattr(value, "cpu") else _as_array(value)


class FDRMonitor:
    """Collects O_L and O_R step by step and summarises them over any stretch of steps.

    Example (plain SGD on L = ½θ², stationary from the start):
        >>> rng = np.random.default_rng(0)
        >>> eta = 0.1
        >>> mon = FDRMonitor(eta)
        >>> theta = rng.normal(size=(64, 1)) * np.sqrt(eta / (2 - eta))
        >>> for _ in range(2000):
        ...     g = theta + rng.normal(size=theta.shape)
        ...     mon.observe(theta, g)
        ...     theta = theta - eta * g
        >>> s = mon.summary()
        >>> abs(s.z_score()) < 4
        True
    """

    def __init__(self, eta: float, *, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 n_batches: int = 20):
        self.eta = validate.positive_float("eta", eta)
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        fdr_right_factor(eta, momentum, dampening)  # validates
        self.n_batches = validate.positive_int("n_batches", n_batches, minimum=2)
        self._left: list = []  # float64 arrays, or tensors not yet read back (``record``)
        self._right: list = []
        self._chains = 0

    def __len__(self) -> int:
        return len(self._left)

    def observe(self, theta, grad, buffer=None, *, eta=None) -> None:
        """Record one step (values before the update; ``buffer`` after it, ``None`` for plain SGD). ``eta``
        overrides the learning rate for this step (a schedule)."""
        o_l, o_r = fdr_observables(theta, grad, buffer, eta=self.eta if eta is None else eta,
                                   momentum=self.momentum, dampening=self.dampening,
                                   weight_decay=self.weight_decay)
        self.record(o_l, o_r)

    def record(self, o_left, o_right) -> None:
        """Record precomputed observables (scalars, or one value per chain), e.g. from torch tensors.

        A torch tensor (anything with ``detach`` and ``cpu``) is kept as it is and read back only when the numbers
        are needed (``records``, ``summary``): recording a step's observables from a GPU does not wait for the
        GPU. Such a tensor must not be changed in place afterwards."""
        # A tensor's shape, without reading it; a scalar is one chain.
        shape_l, shape_r = tuple(np.shape(o_left)) or (1,), tuple(np.shape(o_right)) or (1,)
        if shape_l != shape_r or len(shape_l) != 1:
            raise ValueError("o_left and o_right must be scalars or equal-length 1-D arrays (one per chain)")
        chains = shape_l[0]
        if self._left and chains != self._chains:
            raise ValueError(f"expected {self._chains} chain(s) per step, got {chains}")
        self._chains = chains
        self._left.append(_deferred(o_left))
        self._right.append(_deferred(o_right))

    def _values(self) -> tuple[list, list]:
        """The recorded O_L and O_R as float64 arrays, tensors recorded so far read back now (once)."""
        for rows in (self._left, self._right):
            for i, v in enumerate(rows):
                if not isinstance(v, np.ndarray):
                    rows[i] = _as_array(v)
        return self._left, self._right

    def records(self) -> tuple[list, list]:
        """The recorded O_L and O_R, step by step (copies; ``record`` them into a new monitor to continue it)."""
        left, right = self._values()
        return [v.copy() for v in left], [v.copy() for v in right]

    def summary(self, start: int = 0, stop: int | None = None) -> FDRSummary:
        """Averages over steps ``start:stop`` (all recorded steps by default)."""
        all_left, all_right = self._values()
        left = np.array(all_left[start:stop])
        right = np.array(all_right[start:stop])
        steps = left.shape[0]
        if steps < 2:
            raise ValueError(f"need at least 2 recorded steps in the stretch, got {steps}")
        chains = left.shape[1]
        if chains >= 2:
            u, v = left.mean(axis=0), right.mean(axis=0)  # per-chain time averages, independent
            method = "chains"
        else:
            k = min(self.n_batches, steps)
            u, v = block_means(left[:, 0], k), block_means(right[:, 0], k)
            method = "batch-means"
        n = u.size
        o_l, o_r = float(left.mean()), float(right.mean())
        diff_se = float(np.std(u - v, ddof=1) / math.sqrt(n))
        ratio = o_l / o_r if o_r != 0 else math.inf
        # Delta method for a ratio of means: Var(ū − r v̄)/v̄².
        ratio_se = float(np.std(u - ratio * v, ddof=1) / math.sqrt(n) / abs(o_r)) if o_r != 0 else math.inf
        return FDRSummary(o_left=o_l, o_right=o_r, ratio=ratio, ratio_stderr=ratio_se, diff=o_l - o_r,
                          diff_stderr=diff_se, steps=steps, chains=chains, stderr_method=method)


@dataclass(frozen=True)
class NoiseScale:
    """Unbiased ‖G‖² and Tr(Σ) from two batch sizes, and B_simple = Tr(Σ)/‖G‖² (a ratio: consistent, not
    unbiased), each with a standard error over the ``pairs`` measurements."""

    grad_sq: float
    grad_sq_stderr: float
    trace_sigma: float
    trace_sigma_stderr: float
    b_simple: float
    b_simple_stderr: float
    pairs: int


def noise_scale(small_sq, big_sq, b_small: int, b_big: int, *, dataset_size: int | None = None) -> NoiseScale:
    """McCandlish et al.'s two-batch estimators from measured squared gradient norms.

    Args:
        small_sq: ‖G_{B_small}‖² measurements (one per pair).
        big_sq: ‖G_{B_big}‖² measurements, as many as ``small_sq``.
        b_small, b_big: the two batch sizes, ``b_small < b_big``.
        dataset_size: N when batches are drawn without replacement from N examples (uses f(B) = (N−B)/(B(N−1)));
            ``None`` for sampling with replacement or unlimited data (f(B) = 1/B, McCandlish's formulas).

    Returns:
        A ``NoiseScale``. With f = 1/B: ‖G‖² = (B_big‖G_big‖² − B_small‖G_small‖²)/(B_big − B_small) and
        Tr(Σ) = (‖G_small‖² − ‖G_big‖²)/(1/B_small − 1/B_big).
    """
    small = np.asarray(small_sq, dtype=np.float64).ravel()
    big = np.asarray(big_sq, dtype=np.float64).ravel()
    if small.size != big.size or small.size < 2:
        raise ValueError(f"small_sq and big_sq must hold the same number (>= 2) of measurements, got "
                         f"{small.size} and {big.size}")
    if not (np.all(np.isfinite(small)) and np.all(np.isfinite(big))):
        raise ValueError("small_sq and big_sq must be finite")
    if not b_small < b_big:
        raise ValueError(f"need b_small < b_big, got b_small={b_small}, b_big={b_big}")
    f_s = batch_noise_factor(b_small, dataset_size)
    f_b = batch_noise_factor(b_big, dataset_size)
    g2 = (f_s * big - f_b * small) / (f_s - f_b)
    tr = (small - big) / (f_s - f_b)
    n = small.size
    g2_m, tr_m = float(g2.mean()), float(tr.mean())
    g2_se = float(g2.std(ddof=1) / math.sqrt(n))
    tr_se = float(tr.std(ddof=1) / math.sqrt(n))
    if g2_m > 0:
        bs = tr_m / g2_m
        bs_se = float(np.std(tr - bs * g2, ddof=1) / math.sqrt(n) / g2_m)
    else:
        bs, bs_se = math.inf, math.inf
    return NoiseScale(grad_sq=g2_m, grad_sq_stderr=g2_se, trace_sigma=tr_m, trace_sigma_stderr=tr_se,
                      b_simple=bs, b_simple_stderr=bs_se, pairs=n)


def smith_le_noise_scale(eta: float, batch_size: int, dataset_size: int, *, momentum: float = 0.0) -> float:
    """Smith & Le's SGD noise scale g = ε(N/B − 1)/(1 − m)."""
    eta = validate.positive_float("eta", eta)
    b = validate.positive_int("batch_size", batch_size)
    n = validate.positive_int("dataset_size", dataset_size)
    if b > n:
        raise ValueError(f"batch_size must be <= dataset_size N = {n}, got {b}")
    m = validate.float_in("momentum", momentum, 0.0, 1.0)
    return eta * (n / b - 1.0) / (1.0 - m)
