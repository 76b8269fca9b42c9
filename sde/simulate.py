r"""Fast simulation of SGD, of its SDE (Euler–Maruyama and the exact OU transition) and of minibatch SGD.

``simulate`` chooses the kernel: the eigenbasis kernel when H and C commute (the noise is diagonal there too),
the dense-noise kernel otherwise (each chain draws a block of steps' normals and correlates them by one small
matrix product that stays in cache), and the minibatch kernel for ``noise="minibatch"``. What each path
converges to, and how fast:

* ``dt=None``: SGD itself, θ ← θ − η g_B; its stationary loss is ``expected_loss(..., process="sgd")`` exactly.
* ``dt`` given: Euler–Maruyama for dθ = −∇L dt + √(ηκ) R dW; weak order 1, so the stationary loss approaches
  ``expected_loss(..., process="sde")`` with an error O(dt) (``EULER_WEAK_ORDER``).
* ``method="exact"``: the OU transition in closed form, exact for every dt (weak order ∞).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from quadratic.least_squares import LeastSquares
from quadratic.linalg import psd_sqrt
from quadratic.problem import Quadratic
from quadratic.sampling import batch_noise_factor
from sde import _kernels, _random
from sde.schedules import Constant, Schedule
from sde.theory import (
    check_sgd_stable,
    make_setting,
    relaxation_from_radius,
    spectral_radius,
    transfer_matrix,
)
from sgd_noise_common import validate
from sgd_noise_common.environment import available_memory

__all__ = ["simulate", "minibatch_indices", "SimulationResult", "SimulationDiverged", "RunTooShort",
           "EULER_WEAK_ORDER", "METHODS", "KERNELS"]

#: Weak order of Euler–Maruyama for additive noise: the bias of the stationary loss is O(dt).
EULER_WEAK_ORDER = 1
METHODS = ("euler", "exact")
KERNELS = ("auto", "eigen", "dense")
_SAMPLING_CODES = {"with": 0, "without": 1, "epoch": 2}
# Steps per kernel call: about 2^24 chain-coordinate updates (tens of milliseconds), so that Ctrl-C is honoured
# between calls.
_BLOCK_ELEMENTS = 2**24
# The default burn-in lets the slowest mode's variance relax to within this fraction of its stationary value.
_BURN_IN_RESIDUAL = 1e-4
#: The same for a run without noise, which is deterministic: what is left of the start must be at round-off level.
_NOISELESS_RESIDUAL = 1e-13
# Time average split into this many consecutive batches per chain (batch means when there is a single chain).
_N_BATCHES = 20


class SimulationDiverged(RuntimeError):
    """A chain's loss became non-finite or exceeded 1e150: the run has no stationary law at these settings."""


class RunTooShort(ValueError):
    """``steps`` cannot cover the burn-in the problem needs (the slowest modes' relaxation) and a measurement after
    it; ``needed_steps`` is the least number of steps that can (twice the needed burn-in)."""

    def __init__(self, message: str, needed_steps: float):
        super().__init__(message)
        self.needed_steps = needed_steps


@dataclass
class SimulationResult:
    """What ``simulate`` measured.

    Attributes:
        mean_loss: time- and chain-averaged L(θ) − L(θ*) over the steps after ``burn_in``.
        stderr: its standard error, from the spread of independent chain means (``stderr_method="chains"``) or,
            with one chain, from batch means (``"batch-means"``).
        process: ``"sgd"`` (discrete SGD) or ``"sde"`` (the continuous process, by ``method``).
        method: ``"sgd"``, ``"euler"``, ``"exact"`` or ``"minibatch"``.
        chain_means: each chain's time average.
        curve_steps, curve, curve_stderr: the learning curve averaged over chains (with ``record_every``).
        chain_curves: every chain's learning curve, ``(chains, len(curve_steps))`` (for bootstrap errors of
            statistics of whole curves).
        final_theta: the last state of every chain, ``(chains, d)``.
        relaxation_steps: 1/(−2 ln ρ), the slowest variance relaxation time in steps (ρ the slowest contraction).
    """

    mean_loss: float
    stderr: float
    process: str
    method: str
    eta: float
    batch_size: int
    dt: float | None
    steps: int
    chains: int
    burn_in: int
    kernel: str
    stderr_method: str
    chain_means: np.ndarray
    final_theta: np.ndarray
    relaxation_steps: float
    seconds: float
    curve_steps: np.ndarray | None = None
    curve: np.ndarray | None = None
    curve_stderr: np.ndarray | None = None
    chain_curves: np.ndarray | None = None

    def z_score(self, reference: float) -> float:
        """(mean_loss − reference)/stderr."""
        if self.stderr == 0.0:
            return 0.0 if self.mean_loss == reference else math.copysign(math.inf, self.mean_loss - reference)
        return (self.mean_loss - reference) / self.stderr


def simulate(problem: Quadratic, eta, batch_size, *, steps, chains, momentum=0.0, weight_decay=0.0, dt=None,
             noise="gaussian", dataset_size=None, schedule: Schedule | None = None, record_every=None, rng,
             method="euler", sampling="without", burn_in=None, theta0=None, kernel="auto") -> SimulationResult:
    r"""Run ``chains`` independent chains of SGD (or of its SDE) on ``problem`` for ``steps`` steps.

    Args:
        problem: a ``Quadratic`` (a ``LeastSquares`` for ``noise="minibatch"``).
        eta: learning rate η > 0 (the base value of a schedule).
        batch_size: S >= 1 (<= N with a dataset size).
        steps: number of updates taken, each of size ``dt`` (η for SGD).
        chains: number of independent chains (>= 1), run in parallel.
        momentum: μ in [0, 1). For the SDE paths (``dt`` or ``method="exact"``) momentum means its small-η limit,
            the OU process with learning rate η/(1−μ).
        weight_decay: γ >= 0.
        dt: ``None`` for SGD (dt = η); otherwise the Euler–Maruyama step of the SDE.
        noise: ``"gaussian"`` (ξ ~ N(0, κC)) or ``"minibatch"`` (real minibatches of a ``LeastSquares``).
        dataset_size: N for Gaussian noise with the without-replacement factor (N−S)/(S(N−1)).
        schedule: a ``sde.schedules.Schedule`` for η_k and S_k (default constant).
        record_every: record the chain-averaged loss every this many steps (and at step 0).
        rng: a ``numpy.random.Generator`` (or a seed): the chains' streams are drawn from it, so a seed gives
            the same numbers whatever the thread count.
        method: ``"euler"`` (SGD, or Euler–Maruyama with ``dt``) or ``"exact"`` (the exact OU transition over
            ``dt``, default η; constant schedule only).
        sampling: minibatch sampling, ``"with"``, ``"without"`` (default) or ``"epoch"``.
        burn_in: steps discarded before averaging; default: until what remains of every mode's relaxation,
            weighted by its share of the loss, is below 1e-4 of the stationary loss, at most half the run.
        theta0: start, ``(d,)`` or ``(chains, d)``; default θ*.
        kernel: ``"auto"``, ``"eigen"`` (needs commuting H and C) or ``"dense"``.

    Returns:
        A ``SimulationResult``.

    Raises:
        ValueError: bad arguments, or no stationary law (η(λ_max+γ) >= 2(1+μ) at some step, S > N).
        SimulationDiverged: when a chain blows up anyway (possible with multiplicative minibatch noise).

    Example:
        >>> from quadratic import Quadratic
        >>> q = Quadratic.from_spectrum([1.0, 0.5, 0.25])
        >>> r = simulate(q, 0.1, 10, steps=4000, chains=64, rng=np.random.default_rng(0))
        >>> from sde import expected_loss
        >>> abs(r.z_score(expected_loss(q, 0.1, 10))) < 4.0
        True
    """
    # Every matrix product here is small (d x d); run them on one BLAS thread. Multi-threaded OpenBLAS leaves its
    # workers spinning for a while after each call, and on a machine with few cores they then steal about 15% of
    # the time from the numba kernels that follow (measured: benchmarks/simulate_speed.py).
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(problem, eta, batch_size, steps=steps, chains=chains, momentum=momentum,
                         weight_decay=weight_decay, dt=dt, noise=noise, dataset_size=dataset_size,
                         schedule=schedule, record_every=record_every, rng=rng, method=method, sampling=sampling,
                         burn_in=burn_in, theta0=theta0, kernel=kernel)


def _simulate(problem, eta, batch_size, *, steps, chains, momentum, weight_decay, dt, noise, dataset_size,
              schedule, record_every, rng, method, sampling, burn_in, theta0, kernel) -> SimulationResult:
    t_start = time.perf_counter()
    if rng is None:
        raise ValueError("rng is required: pass a numpy.random.Generator (or an integer seed)")
    try:
        rng = np.random.default_rng(rng)
    except (TypeError, ValueError):
        raise ValueError(f"rng must be a numpy.random.Generator or an integer seed >= 0, got {rng!r}") from None
    steps = validate.positive_int("steps", steps)
    chains = validate.positive_int("chains", chains)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "eigen" and noise == "gaussian" and isinstance(problem, Quadratic) and not problem.commutes:
        raise ValueError("kernel='eigen' needs a noise covariance that commutes with the hessian")
    schedule = Constant() if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a sde.schedules.Schedule, got {type(schedule).__name__}")
    process = "sgd" if (dt is None and method == "euler") else "sde"
    setting = make_setting(problem, eta, batch_size, process=process, momentum=momentum, weight_decay=weight_decay,
                     dataset_size=dataset_size, noise=noise, sampling=sampling, check_stability=False)
    etas, sizes = schedule.values(setting.eta, setting.batch_size, steps)
    etas = np.ascontiguousarray(etas, dtype=np.float64)
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    if etas.shape != (steps,) or sizes.shape != (steps,):
        raise ValueError(f"schedule must give {steps} values of eta and of batch_size")
    if not (np.all(etas > 0) and np.all(np.isfinite(etas))):
        raise ValueError("schedule gives a learning rate <= 0 or non-finite; eta must be > 0 at every step")
    if np.any(sizes < 1):
        raise ValueError("schedule gives a batch size < 1")
    n_data = setting.dataset_size
    if n_data is not None and sizes.max() > n_data:
        raise ValueError(f"batch_size must be <= dataset_size N = {n_data}; the schedule reaches S = {sizes.max()}")
    if record_every is not None:
        record_every = validate.positive_int("record_every", record_every)
    _check_memory(chains, problem.dim, steps // record_every + 1 if record_every else 1, problem)
    if dt is not None:
        if method == "euler" and noise == "minibatch":
            raise ValueError("dt applies to the Gaussian SDE; noise='minibatch' runs SGD itself (dt=None)")
        dt = validate.positive_float("dt", dt)
    if method == "exact":
        if noise == "minibatch":
            raise ValueError("method='exact' samples the OU process, which has Gaussian noise: use noise='gaussian'")
        if not getattr(schedule, "constant", False):
            raise ValueError("method='exact' needs a constant schedule")
        dt = setting.eta if dt is None else dt

    gamma = setting.weight_decay
    v, lam = problem.eigenvectors, problem.eigenvalues
    a = lam + gamma
    d = problem.dim
    if theta0 is None:
        theta_start = np.broadcast_to(problem.minimum, (chains, d))
    else:
        t0 = np.asarray(theta0, dtype=np.float64)
        if t0.shape not in ((d,), (chains, d)) or not np.all(np.isfinite(t0)):
            raise ValueError(f"theta0 must be finite with shape ({d},) or ({chains}, {d}), got {t0.shape}")
        theta_start = np.broadcast_to(t0, (chains, d))

    h, amp, contraction = _step_arrays(setting, etas, sizes, a, dt, method, n_data)
    relax = relaxation_from_radius(float(np.max(contraction)))
    if burn_in is None:
        c_diag = np.clip(np.diag(problem.noise_in_eigenbasis), 0.0, None)
        z0 = (theta_start - problem.minimum) @ v
        # The chains relax towards the stationary mean, which weight decay moves off the minimum, to z = −γ(vᵀθ*)/a
        # per direction; its offset loss is part of the stationary loss (all of it when there is no noise, S = N).
        z_mean = -gamma * (v.T @ problem.minimum) / a
        # Each part of the stationary loss on one scale (twice the loss per direction): the fluctuation, about
        # λ η κ c/(a(2 − ηa)) with κ the noise of the batches actually drawn, and under weight decay the mean's
        # offset λ z̄²; the start's excess is measured from that mean.
        eta_bar = float(np.mean(etas)) / (1.0 - setting.momentum)
        n_kappa = n_data if (noise == "gaussian" or sampling != "with") else None
        kappa_bar = float(np.mean([batch_noise_factor(int(b), n_kappa) for b in np.unique(sizes)]))
        fluctuation = lam * eta_bar * kappa_bar * c_diag / (a * np.clip(2.0 - eta_bar * a, 1e-3, None))
        # Without noise (S = N without replacement) the run is deterministic: no standard error hides what is left
        # of the start, so the burn-in goes on until it is at round-off level.
        target = _BURN_IN_RESIDUAL if np.any(fluctuation > 0) else _NOISELESS_RESIDUAL
        offset = lam * np.mean((z0 - z_mean) ** 2, axis=0)
        # Off the data minimum the loss is linear in the distance from the mean: that part decays as ρ^B, not ρ^{2B}.
        linear = 2.0 * np.sqrt(lam * z_mean * z_mean * offset)
        burn_in = _default_burn_in(contraction, fluctuation + lam * z_mean * z_mean, offset, steps, relax,
                                   target=target, linear=linear)
    else:
        burn_in = validate.positive_int("burn_in", burn_in, minimum=0)
        if burn_in >= steps:
            raise ValueError(f"burn_in must be < steps = {steps}, got {burn_in}")

    n_rec = steps // record_every + 1 if record_every else 1
    curve = np.zeros((chains, n_rec))
    status = np.zeros(chains, dtype=np.int64)
    batch_sums = np.zeros((chains, _N_BATCHES))

    if noise == "minibatch":
        kernel_used = "minibatch"
        theta, n_meas = _run_minibatch(problem, setting, etas, sizes, theta_start, steps, burn_in, record_every,
                                       curve, status, _random.seed_states(rng, chains), batch_sums)
    else:
        z = np.ascontiguousarray((theta_start - problem.minimum) @ v)
        curve[:, 0] = 0.5 * np.sum(lam * z * z, axis=1)
        force = gamma * (v.T @ problem.minimum)
        commuting = problem.commutes
        kernel_used = "eigen" if (kernel == "eigen" or (kernel == "auto" and commuting)) else "dense"
        if method == "exact":
            # Exact OU transition over dt: z' = e^{-a dt} z − (1 − e^{-a dt}) f/a + N(0, Σ∞ − EΣ∞E).
            decay = np.exp(-a * dt)
            a_step, f_step = 1.0 - decay, (1.0 - decay) * force / a
            sig_inf = transfer_matrix(a, setting) * setting.kappa * problem.noise_in_eigenbasis
            cov = sig_inf * (1.0 - np.outer(decay, decay))
        else:
            a_step, f_step = a, force
            cov = problem.noise_in_eigenbasis
        mu = setting.momentum if process == "sgd" else 0.0
        lam_half = 0.5 * lam
        n_meas = steps - burn_in
        bm = np.zeros((chains, d))
        block = max(1, _BLOCK_ELEMENTS // (chains * d))
        streams = _random.seed_streams(rng, chains)
        if kernel_used == "eigen":
            scale = np.sqrt(np.clip(np.diag(cov), 0.0, None))
            factor_t = np.empty((0, 0))
        else:
            scale = np.ones(d)
            # The symmetric square root F = Fᵀ (defined for a singular Q too); the kernel takes Fᵀ = F.
            factor_t = np.ascontiguousarray(psd_sqrt(cov))
        # (The dense path is parallel over chains and calls BLAS inside: BLAS is on one thread, see simulate.)
        for start in range(0, steps, block):
            stop = min(steps, start + block)
            _kernels.gaussian_kernel(z, bm, a_step, f_step, scale, factor_t, lam_half, h[start:stop], amp[start:stop],
                                     mu, start, burn_in, n_meas, batch_sums, record_every or 0, curve, status,
                                     streams)
            _raise_if_diverged(status, setting, problem)
        theta = problem.minimum + z @ v.T

    _raise_if_diverged(status, setting, problem)
    counts = np.bincount((np.arange(n_meas) * _N_BATCHES) // n_meas, minlength=_N_BATCHES).astype(np.float64)
    chain_means = batch_sums.sum(axis=1) / n_meas
    mean_loss = float(chain_means.mean())
    if chains >= 2:
        stderr = float(chain_means.std(ddof=1) / math.sqrt(chains))
        stderr_method = "chains"
    else:
        means = batch_sums[0] / counts
        stderr = float(means.std(ddof=1) / math.sqrt(_N_BATCHES))
        stderr_method = "batch-means"
    result = SimulationResult(
        mean_loss=mean_loss, stderr=stderr, process=process,
        method="minibatch" if noise == "minibatch" else ("exact" if method == "exact" else
                                                          ("sgd" if dt is None else "euler")),
        eta=setting.eta, batch_size=setting.batch_size, dt=dt, steps=steps, chains=chains, burn_in=burn_in,
        kernel=kernel_used, stderr_method=stderr_method, chain_means=chain_means, final_theta=theta,
        relaxation_steps=relax, seconds=time.perf_counter() - t_start,
    )
    if record_every:
        result.curve_steps = np.arange(n_rec) * record_every
        result.curve = curve.mean(axis=0)
        result.chain_curves = curve
        result.curve_stderr = (curve.std(axis=0, ddof=1) / math.sqrt(chains) if chains > 1
                               else np.full(n_rec, np.nan))
    return result


def minibatch_indices(dataset_size: int, batch_size: int, *, draws: int, streams: int = 1, sampling="without",
                      rng) -> np.ndarray:
    """Batches as the minibatch kernel draws them: ``(streams, draws, batch_size)`` example indices."""
    n = validate.positive_int("dataset_size", dataset_size)
    sb = validate.positive_int("batch_size", batch_size)
    if sb > n:
        raise ValueError(f"batch_size must be <= dataset_size N = {n}, got S = {sb}")
    if sampling not in _SAMPLING_CODES:
        raise ValueError(f"sampling must be one of {tuple(_SAMPLING_CODES)}, got {sampling!r}")
    states = _random.seed_states(np.random.default_rng(rng), validate.positive_int("streams", streams))
    out = np.empty((streams, validate.positive_int("draws", draws), sb), dtype=np.int64)
    _kernels.draw_batches(states, n, sb, _SAMPLING_CODES[sampling], draws, out)
    return out


def _step_arrays(setting, etas, sizes, a, dt, method, n_data):
    """Per-step h_k and noise amplitude amp_k for the eigen kernel, and the slowest contraction factor."""
    n_for_kappa = n_data if setting.noise == "gaussian" else None
    kappas = np.array([batch_noise_factor(int(b), n_for_kappa) for b in np.unique(sizes)])
    kappa_of = dict(zip(np.unique(sizes).tolist(), kappas.tolist()))
    kappa = np.array([kappa_of[int(b)] for b in sizes]) if len(kappa_of) > 1 else np.full(sizes.size, kappas[0])
    a_max = float(a.max())
    mu = setting.momentum
    if method == "exact":
        h = np.ones_like(etas)
        amp = np.ones_like(etas)
        return h, amp, np.exp(-a * dt)
    if dt is None:  # SGD
        check_sgd_stable(float(etas.max()), a_max - setting.weight_decay, momentum=mu,
                         weight_decay=setting.weight_decay)
        h = etas
        amp = np.sqrt(kappa) if (mu > 0.0 and setting.noise == "gaussian") else etas * np.sqrt(kappa)
        eta_ref = float(np.mean(etas))
        rho = spectral_radius(eta_ref, a, mu)
        return h, amp, rho
    # Euler–Maruyama of the first-order SDE with learning rate η/(1−μ).
    if dt * a_max >= 2.0:
        raise ValueError(f"dt*(lambda_max+weight_decay) = {dt * a_max:.6g} >= 2: Euler-Maruyama diverges; "
                         f"need dt < {2.0 / a_max:.6g}")
    h = np.full_like(etas, dt)
    amp = np.sqrt(etas / (1.0 - mu) * kappa * dt)
    return h, amp, np.abs(1.0 - dt * a)


def _default_burn_in(rho, weights, offsets, steps, relax, *, target=None, linear=None):
    """Smallest B after which the modes' remaining relaxation, Σ_i (w_i + o_i) ρ_i^{2B}, is at most
    ``target`` (default ``_BURN_IN_RESIDUAL``) of the stationary loss Σ_i w_i (w_i the fluctuation, plus the
    stationary mean's offset under weight decay; o_i the start's offset from that mean), with ``linear`` terms
    l_i ρ_i^B besides (the loss's part linear in the distance from a mean off the data minimum).

    Raises:
        RunTooShort: when B > steps // 2, so that fewer steps would be averaged than discarded.
    """
    target = _BURN_IN_RESIDUAL if target is None else target
    total = float(np.sum(weights))
    if total <= 0.0:
        return 0
    amp = weights + offsets
    rho2 = np.clip(rho, 0.0, 1.0) ** 2

    rho1 = np.clip(rho, 0.0, 1.0)
    lin = np.zeros_like(amp) if linear is None else linear

    def residual(b):
        return float(np.sum(amp * rho2**b + lin * rho1**b)) / total

    hi = 1
    while residual(hi) > target:  # exponential search: residual falls geometrically in b
        hi *= 2
        if hi > 2**62:
            raise RunTooShort("no burn-in is long enough: a mode does not relax (contraction factor 1)", math.inf)
    lo = 0 if residual(0) > target else -1
    if lo < 0:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if residual(mid) > target:
            lo = mid
        else:
            hi = mid
    if hi > steps // 2:
        raise RunTooShort(
            f"steps={steps} is too short: need steps >= {2 * hi} (the slowest mode relaxes in {relax:.4g} steps; "
            f"the default burn-in of {hi} steps lets the start's excess fall to {target:g} of the "
            "stationary loss, and as many steps again are averaged); or pass burn_in explicitly", 2 * hi)
    return hi


def _check_memory(chains: int, d: int, n_rec: int, problem) -> None:
    """Refuse, before allocating, a run whose per-chain arrays would not fit in memory."""
    per_chain = 8 * (4 * d + _N_BATCHES + n_rec + 2)  # state, buffers, batch sums, the learning curve
    if isinstance(problem, LeastSquares):
        per_chain += 8 * problem.dataset_size  # the permutation of the without-replacement sampler
    need = chains * per_chain
    available = available_memory()
    if available is None:
        return
    if need > available:
        raise ValueError(f"chains={chains} needs about {need / 2**30:.3g} GiB for the chains' state, more than the "
                         f"{available / 2**30:.3g} GiB of free memory; use fewer chains (or a coarser record_every)")


def _raise_if_diverged(status, setting, problem):
    bad = np.flatnonzero(status)
    if bad.size:
        step = int(status[bad].min())
        raise SimulationDiverged(
            f"{bad.size} chain(s) diverged (loss above 1e150 or NaN), the first at step {step}: no stationary law "
            f"at eta={setting.eta}, S={setting.batch_size} (eta*lambda_max = {setting.eta * problem.lambda_max:.4g}); "
            "lower eta or raise S"
        )


def _run_minibatch(problem: LeastSquares, setting, etas, sizes, theta_start, steps, burn_in, record_every, curve,
                   status, states, batch_sums):
    check_sgd_stable(float(etas.max()), problem.lambda_max, momentum=setting.momentum,
                     weight_decay=setting.weight_decay)
    chains, d = theta_start.shape
    n = problem.dataset_size
    # The loss ½δᵀHδ costs d² against 2Sd for a gradient: take it every `thin` steps so it costs no more than
    # the gradients. Averaging a thinned series leaves the mean unbiased; the chain-based stderr stays honest.
    thin = max(1, int(math.ceil(d / (2.0 * float(np.mean(sizes))))))
    n_meas = (steps - burn_in) // thin
    if n_meas < 1:
        raise ValueError(f"steps - burn_in = {steps - burn_in} leaves nothing to average with thinning {thin}")
    theta = np.ascontiguousarray(theta_start, dtype=np.float64).copy()
    bm = np.zeros_like(theta)
    perm = np.tile(np.arange(n, dtype=np.int64), (chains, 1))
    pos = np.full(chains, n, dtype=np.int64)
    delta0 = theta - problem.minimum
    curve[:, 0] = 0.5 * np.sum((delta0 @ problem.hessian) * delta0, axis=1)
    block = max(1, _BLOCK_ELEMENTS // (chains * d * int(max(1, np.mean(sizes)))))
    x = np.ascontiguousarray(problem.inputs)
    for start in range(0, steps, block):
        stop = min(steps, start + block)
        _kernels.minibatch_kernel(theta, bm, x, np.ascontiguousarray(problem.targets), problem.minimum.copy(),
                                  np.ascontiguousarray(problem.hessian), etas[start:stop], sizes[start:stop],
                                  setting.momentum, setting.weight_decay, _SAMPLING_CODES[setting.sampling], perm,
                                  pos, start, burn_in, thin, n_meas, batch_sums, record_every or 0, curve, status,
                                  states)
        _raise_if_diverged(status, setting, problem)
    return theta, n_meas
