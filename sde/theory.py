r"""Exact stationary statistics of SGD and of its SDE on a quadratic, in closed form.

Conventions (``docs/theory.md``): the minibatch gradient is g_B = H(θ−θ*) + γθ + ξ, ξ ~ N(0, κC) with
κ = 1/S, or κ = (N−S)/(S(N−1)) when S examples are drawn without replacement from N; momentum is torch's
(b ← μb + g_B, θ ← θ − ηb). With H_γ = H + γI:

* ``process="sde"``, the OU process dθ = −∇L_γ dt + √(η_eff κ) R dW, η_eff = η/(1−μ):
  :math:`H_\gamma\Sigma + \Sigma H_\gamma = \eta_{\rm eff}\,\kappa C`;
* ``process="sgd"``, discrete SGD: :math:`\Sigma = (I-\eta H_\gamma)\Sigma(I-\eta H_\gamma) + \eta^2\kappa C`, and
  with momentum the same equation for the state (θ, b) with
  :math:`A=\begin{pmatrix}I-\eta H_\gamma & -\eta\mu I\\ H_\gamma & \mu I\end{pmatrix}`,
  :math:`B=\begin{pmatrix}-\eta I\\ I\end{pmatrix}`.

How it is solved: the drift matrix is always H_γ, symmetric, so in the eigenbasis V of H every one of these
Lyapunov equations decouples into one small equation per pair (i, j) of eigendirections, and the solution is
:math:`\tilde\Sigma = T \odot \tilde Q` with :math:`\tilde Q = \kappa V^\top C V` and a transfer matrix T that depends
only on (λ_i + γ, λ_j + γ, η, μ). That is exact and costs O(d²) after the eigendecomposition, which matters for the
minibatch problem, whose noise depends on Σ and is solved by iteration. ``solver="scipy"`` solves the same equations
with ``scipy.linalg.solve_discrete_lyapunov`` / ``solve_continuous_lyapunov`` in the parameter basis; the tests hold
the two to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from quadratic.least_squares import LeastSquares
from quadratic.problem import Quadratic
from quadratic.sampling import batch_noise_factor, check_batch_size
from sgd_noise_common import validate

__all__ = [
    "PROCESSES",
    "NOISES",
    "Setting",
    "make_setting",
    "momentum_blocks",
    "spectral_radius",
    "relaxation_steps",
    "relaxation_from_radius",
    "stability_bound",
    "stationary_mean",
    "stationary_covariance",
    "second_moment_radius",
    "multiplicative_covariance",
    "multiplicative_transient",
    "expected_loss",
    "eq7_loss",
    "learning_curve",
]

PROCESSES = ("sgd", "sde")
NOISES = ("gaussian", "minibatch")


@dataclass(frozen=True)
class Setting:
    """Validated hyper-parameters of one SGD/SDE run on a quadratic."""

    eta: float
    batch_size: int
    process: str
    momentum: float
    weight_decay: float
    dataset_size: int | None
    noise: str
    sampling: str

    @property
    def kappa(self) -> float:
        """κ: the factor with Cov(g_B) = κ C."""
        return batch_noise_factor(self.batch_size, self.dataset_size,
                                  sampling=self.sampling if self.noise == "minibatch" else "without")

    @property
    def eta_effective(self) -> float:
        """η/(1−μ), the learning rate of the OU limit of momentum SGD."""
        return self.eta / (1.0 - self.momentum)


def make_setting(problem, eta, batch_size, *, process="sgd", momentum=0.0, weight_decay=0.0, dataset_size=None,
                 noise="gaussian", sampling="without", check_stability=True) -> Setting:
    """Validate the arguments shared by the closed forms and the simulators (raises ``ValueError``)."""
    if not isinstance(problem, Quadratic):
        raise ValueError(f"problem must be a quadratic.Quadratic, got {type(problem).__name__}")
    eta = validate.positive_float("eta", eta)
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    momentum = validate.float_in("momentum", momentum, 0.0, 1.0)
    weight_decay = validate.nonnegative_float("weight_decay", weight_decay)
    if noise == "minibatch":
        if not isinstance(problem, LeastSquares):
            raise ValueError("noise='minibatch' needs a finite-data problem (quadratic.LeastSquares)")
        if dataset_size is not None and dataset_size != problem.dataset_size:
            raise ValueError(f"dataset_size ({dataset_size}) must equal the problem's N = {problem.dataset_size} "
                             "with noise='minibatch'")
        dataset_size = problem.dataset_size
        if sampling not in ("with", "without", "epoch"):
            raise ValueError(f"sampling must be 'with', 'without' or 'epoch', got {sampling!r}")
    elif dataset_size is not None:
        dataset_size = validate.positive_int("dataset_size", dataset_size)
    batch_size = check_batch_size(batch_size, dataset_size)
    setting = Setting(eta, batch_size, process, momentum, weight_decay, dataset_size, noise, sampling)
    if check_stability and process == "sgd":
        _check_stable(problem, setting)
    return setting


def stability_bound(problem: Quadratic, *, momentum: float = 0.0, weight_decay: float = 0.0) -> float:
    """The largest stable learning rate: SGD has a stationary law iff η < 2(1+μ)/(λ_max+γ).

    >>> stability_bound(Quadratic.from_spectrum([4.0, 1.0]))
    0.5
    """
    return 2.0 * (1.0 + momentum) / (problem.lambda_max + weight_decay)


def check_sgd_stable(eta: float, lambda_max: float, *, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
    """Raise ``ValueError`` (with the bound) when η(λ_max + γ) >= 2(1 + μ): SGD has no stationary law there.
    ``eta`` is the largest learning rate of a schedule. One message for the theory and every simulator."""
    a_max = lambda_max + weight_decay
    rate = eta * a_max
    limit = 2.0 * (1.0 + momentum)
    if rate >= limit:
        what = "eta*(lambda_max+weight_decay)" if weight_decay else "eta*lambda_max"
        bound = "2(1+momentum)" if momentum else "2"
        raise ValueError(
            f"no stationary distribution: {what} = {rate:.6g} >= {bound} = {limit:.6g}, where SGD diverges; "
            f"need eta < {limit / a_max:.6g}"
        )


def _check_stable(problem: Quadratic, setting: Setting) -> None:
    check_sgd_stable(setting.eta, problem.lambda_max, momentum=setting.momentum, weight_decay=setting.weight_decay)


def stationary_mean(problem: Quadratic, *, weight_decay: float = 0.0) -> np.ndarray:
    """E[θ] at stationarity: (H+γI)⁻¹Hθ* (θ* itself without weight decay)."""
    gamma = validate.nonnegative_float("weight_decay", weight_decay)
    if gamma == 0.0:
        return problem.minimum.copy()
    v, lam = problem.eigenvectors, problem.eigenvalues
    u = v.T @ problem.minimum
    return v @ (lam / (lam + gamma) * u)


def momentum_blocks(eta: float, momentum: float, a: np.ndarray) -> np.ndarray:
    r"""The 2×2 transition matrix of momentum SGD in each eigendirection, shape ``(d, 2, 2)``.

    With torch's momentum, b' = μb + a z + ξ and z' = z − ηb' for the offset z along an eigendirection of
    curvature a = λ + γ, so (z', b') = A (z, b) + noise with

    .. math:: A = \begin{pmatrix} 1-\eta a & -\eta\mu \\ a & \mu \end{pmatrix}.

    SGD is stable in that direction iff the spectral radius of A is < 1, i.e. 0 < ηa < 2(1+μ).

    >>> momentum_blocks(0.1, 0.9, np.array([1.0]))[0].tolist()
    [[0.9, -0.09000000000000001], [1.0, 0.9]]
    """
    a = np.asarray(a, dtype=np.float64)
    blocks = np.empty((a.size, 2, 2))
    blocks[:, 0, 0] = 1.0 - eta * a
    blocks[:, 0, 1] = -eta * momentum
    blocks[:, 1, 0] = a
    blocks[:, 1, 1] = momentum
    return blocks


def spectral_radius(eta: float, a, momentum: float = 0.0):
    """ρ, the spectral radius of SGD's update along a direction of curvature ``a`` = λ + γ: |1 − ηa| without
    momentum, that of the 2×2 block (``momentum_blocks``) with it (at least √μ: heavy momentum is slow whatever
    the curvature). A scalar for a scalar ``a``.

    >>> float(spectral_radius(0.1, 1.0)), round(float(spectral_radius(0.1, 1.0, 0.9)), 6)
    (0.9, 0.948683)
    """
    arr = np.atleast_1d(np.asarray(a, dtype=np.float64))
    if momentum == 0.0:
        rho = np.abs(1.0 - eta * arr)
    else:
        rho = np.max(np.abs(np.linalg.eigvals(momentum_blocks(eta, momentum, arr))), axis=1)
    return float(rho[0]) if np.ndim(a) == 0 else rho


def relaxation_steps(eta: float, a, momentum: float = 0.0):
    """The relaxation time in steps of the variance along a direction of curvature ``a``, −1/(2 ln ρ) with ρ the
    ``spectral_radius``: 0 where ρ = 0, ``inf`` where ρ >= 1 (no stationary law). The one home of this time: the
    simulators' burn-in, the checks' run lengths and the network basin stage all count in it.

    >>> round(float(relaxation_steps(0.1, 1.0)), 4), relaxation_steps(0.1, 25.0)
    (4.7456, inf)
    """
    return relaxation_from_radius(spectral_radius(eta, a, momentum))


def relaxation_from_radius(rho):
    """−1/(2 ln ρ) for a contraction factor ρ per step (of SGD, or of the SDE's exact or Euler steps): 0 where
    ρ = 0, ``inf`` where ρ >= 1.

    >>> relaxation_from_radius(0.0), relaxation_from_radius(1.0), round(relaxation_from_radius(0.5), 6)
    (0.0, inf, 0.721348)
    """
    r = np.asarray(rho, dtype=np.float64)
    safe = np.clip(r, 1e-300, 1.0 - 1e-16)
    out = np.where(r <= 0.0, 0.0, np.where(r >= 1.0, np.inf, -1.0 / (2.0 * np.log(safe))))
    return float(out) if out.ndim == 0 else out


def transfer_matrix(a: np.ndarray, setting: Setting) -> np.ndarray:
    """T with Σ̃ = T ⊙ Q̃ in the eigenbasis of the drift (eigenvalues ``a`` = λ + γ), for unit noise Q̃."""
    if setting.process == "sde":
        return setting.eta_effective / (a[:, None] + a[None, :])
    return _sgd_transfer(a, setting.eta, setting.momentum)


def _sgd_transfer(a: np.ndarray, eta: float, momentum: float) -> np.ndarray:
    """``transfer_matrix`` of discrete SGD: T_ij is the z-block of the solution of P − A_i P A_jᵀ = B Bᵀ."""
    ai, aj = a[:, None], a[None, :]
    if momentum == 0.0:
        # η²/(1 − (1−ηa_i)(1−ηa_j)) without the cancellation of the subtraction (it loses ~log10(1/(ηa)) digits).
        return eta / (ai + aj - eta * ai * aj)
    # Momentum: for each pair (i, j), P − A_i P A_jᵀ = B Bᵀ with 2×2 blocks A_i, solved as a 4×4 system
    # (I − A_j ⊗ A_i) vec P = vec(B Bᵀ) (column-major vec), batched over all pairs.
    d = a.size
    blocks = momentum_blocks(eta, momentum, a)
    kron = np.einsum("jab,icd->ijacbd", blocks, blocks).reshape(d, d, 4, 4)
    system = np.eye(4) - kron
    bb = np.array([eta * eta, -eta, -eta, 1.0])  # vec of B Bᵀ with B = (−η, 1)ᵀ
    sol = np.linalg.solve(system, np.broadcast_to(bb, (d, d, 4))[..., None])[..., 0]
    return sol[..., 0]


def _noise_in_eigenbasis(problem: Quadratic, setting: Setting) -> np.ndarray:
    return setting.kappa * problem.noise_in_eigenbasis


def stationary_covariance(problem: Quadratic, eta, batch_size, *, process="sgd", momentum=0.0, weight_decay=0.0,
                          dataset_size=None, noise="gaussian", sampling="without", solver="eigen") -> np.ndarray:
    r"""Covariance of θ around its mean under the stationary law of SGD (``"sgd"``) or of its SDE (``"sde"``).

    With C = H and no momentum or weight decay, the SDE gives the paper's :math:`\Sigma = \frac{\eta}{2S} I`.

    Args:
        problem: the quadratic (a ``LeastSquares`` problem for ``noise="minibatch"``).
        eta: learning rate η > 0.
        batch_size: S, 1 <= S (<= N when a dataset size applies).
        process: ``"sgd"`` (discrete, exact) or ``"sde"`` (continuous OU limit, with η/(1−μ) under momentum).
        momentum: μ in [0, 1), torch's convention.
        weight_decay: γ >= 0, added to the drift.
        dataset_size: N; applies the without-replacement factor (N−S)/(S(N−1)) to the Gaussian noise.
        noise: ``"gaussian"`` (additive ξ ~ N(0, κC)) or ``"minibatch"`` (the real minibatch noise of a
            ``LeastSquares`` problem, multiplicative in θ, solved exactly).
        sampling: for ``noise="minibatch"``, ``"with"`` or ``"without"`` replacement.
        solver: ``"eigen"`` (default) or ``"scipy"`` (scipy's Lyapunov solvers; Gaussian noise only).

    Returns:
        Σ, ``(d, d)``.

    Raises:
        ValueError: on bad arguments, or when no stationary distribution exists (ηλ_max ≥ 2(1+μ), S > N).

    Example:
        >>> q = Quadratic.from_spectrum([1.0, 0.1])
        >>> stationary_covariance(q, 0.1, 10, process="sde").round(6).tolist()
        [[0.005, 0.0], [0.0, 0.005]]
    """
    setting = make_setting(problem, eta, batch_size, process=process, momentum=momentum, weight_decay=weight_decay,
                     dataset_size=dataset_size, noise=noise, sampling=sampling)
    return _covariance_and_offset(problem, setting, solver)[0]


def _covariance_and_offset(problem: Quadratic, setting: Setting, solver: str = "eigen"):
    """(Σ, m) with m = E[θ] − θ* at stationarity."""
    if solver not in ("eigen", "scipy"):
        raise ValueError(f"solver must be 'eigen' or 'scipy', got {solver!r}")
    theta_bar = stationary_mean(problem, weight_decay=setting.weight_decay)
    offset = theta_bar - problem.minimum
    v, lam = problem.eigenvectors, problem.eigenvalues
    if setting.noise == "minibatch":
        if setting.sampling == "epoch":
            raise ValueError("no closed-form stationary law for sampling='epoch' (consecutive batches are "
                             "dependent); use 'with' or 'without'")
        sig = _minibatch_covariance(problem, setting, offset)
        return v @ sig @ v.T, offset
    if solver == "scipy":
        return _scipy_covariance(problem, setting), offset
    t = transfer_matrix(lam + setting.weight_decay, setting)
    sig = t * _noise_in_eigenbasis(problem, setting)
    sig = 0.5 * (sig + sig.T)
    return (np.diag(np.diag(sig)) if problem.is_diagonal else v @ sig @ v.T), offset


def _scipy_covariance(problem: Quadratic, setting: Setting) -> np.ndarray:
    # The reference path: scipy's Lyapunov solvers in the parameter basis, as in the module docstring.
    d = problem.dim
    hg = problem.hessian + setting.weight_decay * np.eye(d)
    q = setting.kappa * problem.noise_covariance
    if setting.process == "sde":
        sig = scipy.linalg.solve_continuous_lyapunov(hg, setting.eta_effective * q)
    elif setting.momentum == 0.0:
        a = np.eye(d) - setting.eta * hg
        sig = scipy.linalg.solve_discrete_lyapunov(a, setting.eta**2 * q)
    else:
        eta, mu = setting.eta, setting.momentum
        a = np.block([[np.eye(d) - eta * hg, -eta * mu * np.eye(d)], [hg, mu * np.eye(d)]])
        b = np.vstack([-setting.eta * np.eye(d), np.eye(d)])
        sig = scipy.linalg.solve_discrete_lyapunov(a, b @ q @ b.T)[:d, :d]
    return 0.5 * (sig + sig.T)


def _minibatch_covariance(problem: LeastSquares, setting: Setting, offset: np.ndarray) -> np.ndarray:
    # Σ̃ = T ⊙ κ Vᵀ(Σ* + K(m) + M(Σ + mmᵀ))V: the noise at the stationary mean is Σ* + K(m) + M(mmᵀ), and the
    # fluctuation of the batch's curvature adds M(Σ) (``multiplicative_covariance``).
    v = problem.eigenvectors

    def m_op(p):  # M(P) in the eigenbasis
        return problem.multiplicative_noise(p, in_eigenbasis=True)

    mt = v.T @ offset
    base = problem.noise_in_eigenbasis + v.T @ problem.cross_noise(offset) @ v + m_op(np.outer(mt, mt))
    t = transfer_matrix(problem.eigenvalues + setting.weight_decay, setting) * setting.kappa
    try:
        return _solve_multiplicative(t, base, m_op, setting.eta)
    except ValueError:
        raise ValueError(
            f"no stationary distribution: with real minibatches (multiplicative noise) at eta={setting.eta}, "
            f"S={setting.batch_size}, N={problem.dataset_size} the second moments of SGD grow without bound; "
            "lower eta or raise S"
        ) from None


def multiplicative_covariance(a, noise, multiplicative, *, eta: float, kappa: float,
                              momentum: float = 0.0) -> np.ndarray:
    r"""The stationary covariance of SGD whose batch curvature fluctuates, in the eigenbasis of the mean curvature.

    SGD linearised about its fixed point, z' = (I − ηG_B)z − ηξ_B with G_B = G + Δ_B (torch's momentum: the state
    (z, b), as in the module docstring), with E[Δ_B] = 0, Cov(ξ_B) = κ·``noise`` and
    E[Δ_B X Δ_B] = κ·M(X) for the batch's fluctuation Δ_B. Batches independent of the state and E[z] = 0 at the
    fixed point, so the fluctuation adds κM(Σ) to the noise, through the same B as ξ:

    .. math:: 	ilde\Sigma = T \odot \kappa\,(	ilde Q + 	ilde M(	ilde\Sigma))

    with T the ``transfer_matrix`` of discrete SGD at the curvatures ``a``. Linear in Σ̃, solved by GMRES on its k²
    unknowns (each operator application is one M̃). Least squares, ``quadratic.LeastSquares``, is the exact case
    (``stationary_covariance(..., noise="minibatch")``); ``nets.basin.linearised_covariance`` is the general one.

    Args:
        a: the eigenvalues of the mean curvature G (weight decay included), ``(k,)``; the basis is G's eigenbasis.
        noise: Q̃, the per-example gradient covariance at the fixed point in that basis, ``(k, k)``.
        multiplicative: X ↦ M̃(X), ``(k, k)`` → ``(k, k)``, in that basis (``lambda x: 0 * x`` for additive noise).
        eta, kappa, momentum: η, κ (Cov of a batch mean = κ × the per-example covariance) and torch's μ.

    Returns:
        Σ̃, ``(k, k)``.

    Raises:
        ValueError: when the solve does not converge or gives a negative variance (no stationary law:
            ``second_moment_radius`` >= 1 says so directly).
    """
    a = np.asarray(a, dtype=np.float64)
    return _solve_multiplicative(_sgd_transfer(a, eta, momentum) * kappa, noise, multiplicative, eta)


def _solve_multiplicative(t: np.ndarray, noise, multiplicative, eta: float) -> np.ndarray:
    """Σ̃ = t ⊙ (Q̃ + M̃(Σ̃)) for the scaled transfer matrix t = κT (``multiplicative_covariance``)."""
    d = t.shape[0]
    rhs = (t * np.asarray(noise, dtype=np.float64)).ravel()

    def matvec(x):
        p = x.reshape(d, d)
        return (p - t * multiplicative(p)).ravel()

    # GMRES, not Picard iteration: Picard converges at the rate of the spectral radius of T⊙κM̃, which nears 1 close
    # to the multiplicative-noise instability. rtol 1e-12: the answer is compared with simulations to ~1e-3
    # relative, and the operator is well conditioned whenever the second moments are finite.
    op = scipy.sparse.linalg.LinearOperator((d * d, d * d), matvec=matvec, dtype=np.float64)
    sol, info = scipy.sparse.linalg.gmres(op, rhs, rtol=1e-12, atol=0.0, restart=min(d * d, 60), maxiter=200)
    sig = sol.reshape(d, d)
    sig = 0.5 * (sig + sig.T)
    residual = np.linalg.norm(matvec(sig.ravel()) - rhs) / max(np.linalg.norm(rhs), np.finfo(float).tiny)
    # A variance below zero beyond rounding (a direction without noise gives −1e-20) means no stationary law.
    if info != 0 or residual > 1e-8 or np.any(np.diag(sig) < -1e-12 * np.max(np.abs(np.diag(sig)))):
        raise ValueError(f"no stationary distribution: the second moments of SGD with multiplicative noise grow "
                         f"without bound at eta={eta} (GMRES info {info}, residual {residual:.3g})")
    return sig


def multiplicative_transient(curvature, force, noise, multiplicative, cross, *, eta: float, kappa: float,
                             momentum: float = 0.0, steps: int) -> np.ndarray:
    r"""E[ζ_t ζ_tᵀ] for t = 0..``steps`` of SGD whose batch curvature fluctuates, started at ζ = 0 with an empty
    momentum buffer: the transient whose stationary end ``multiplicative_covariance`` gives (the escape from a
    mean-square unstable point grows by ``second_moment_radius`` per step in the long run).

    Per-example gradients linear in ζ, d_n + H_nζ (weight decay γ folded into the curvature and the force); a
    batch B of S examples gives g_B = f + Gζ + δ_B + Δ_Bζ with E[δ_B] = 0, E[Δ_B] = 0 and, for batches drawn
    independently of the state, Cov(δ_B) = κ·``noise``, E[Δ_B X Δ_B] = κ·M(X) and E[Δ_B m δ_Bᵀ] = κ·K(m). With
    torch's momentum the state s = (ζ, b) obeys s' = A_B s + E g-terms, A as in the module docstring and
    E = (−ηI, I)ᵀ, so its mean m and second moment P follow exactly (no Gaussian assumption):

    .. math:: m' = A m + E f, \qquad
              P' = A P A^\top + A m f^\top E^\top + E f m^\top A^\top
                   + E\,[\kappa M(P_{\zeta\zeta}) + \kappa (K(m_\zeta) + K(m_\zeta)^\top) + f f^\top
                   + \kappa Q]\,E^\top .

    Exact for per-example losses quadratic in ζ (least squares); ``nets.basin.linearised_covariance`` feeds it a
    network's per-example projections (its ``transient``). Parameter basis, not the eigenbasis: the force and the
    cross term have no reason to be diagonal there.

    Args:
        curvature: G, ``(k, k)`` symmetric (the mean curvature, γI included).
        force: f, ``(k,)``: the mean gradient at ζ = 0 (γθ₀ included).
        noise: Q, ``(k, k)``: the per-example gradients' covariance at ζ = 0.
        multiplicative: X ↦ M(X), ``(k, k)`` → ``(k, k)``: (1/N)Σ_n (H_n − H) X (H_n − H).
        cross: m ↦ K(m), ``(k,)`` → ``(k, k)``: (1/N)Σ_n (H_n − H) m (d_n − d̄)ᵀ.
        eta, kappa, momentum: η, κ (Cov of a batch mean = κ × the per-example covariance) and torch's μ.
        steps: how many steps.

    Returns:
        ``(mean, second)``: E[ζ_t], ``(steps + 1, k)``, and E[ζ_tζ_tᵀ] (mean and spread together),
        ``(steps + 1, k, k)``, index t after t steps; inf from the step after a second moment passes ``OVERFLOW``.
        (The expected quadratic objective, L₀ + fᵀE[ζ] + ½Tr(G E[ζζᵀ]), follows from both.)
    """
    g = np.asarray(curvature, dtype=np.float64)
    f = np.asarray(force, dtype=np.float64)
    q = np.asarray(noise, dtype=np.float64)
    k = f.size
    if g.shape != (k, k) or q.shape != (k, k):
        raise ValueError(f"curvature and noise must be ({k}, {k}) for a force of {k} entries, got {g.shape} and "
                         f"{q.shape}")
    eta = validate.positive_float("eta", eta)
    kappa = validate.nonnegative_float("kappa", kappa)
    mu = validate.float_in("momentum", momentum, 0.0, 1.0)
    steps = validate.positive_int("steps", steps, minimum=0)
    eye = np.eye(k)
    a = np.block([[eye - eta * g, -eta * mu * eye], [g, mu * eye]])
    e = np.vstack([-eta * eye, eye])
    ef = e @ f
    m = np.zeros(2 * k)
    p = np.zeros((2 * k, 2 * k))
    out = np.empty((steps + 1, k, k))
    means = np.empty((steps + 1, k))
    out[0] = 0.0
    means[0] = 0.0
    for t in range(steps):
        mz = m[:k]
        kk = cross(mz)
        inner = kappa * (multiplicative(p[:k, :k]) + kk + kk.T + q) + np.outer(f, f)
        am = a @ m
        p = a @ p @ a.T + np.outer(am, ef) + np.outer(ef, am) + e @ inner @ e.T
        p = 0.5 * (p + p.T)
        m = am + ef
        out[t + 1] = p[:k, :k]
        means[t + 1] = m[:k]
        if not np.max(np.abs(p)) < OVERFLOW:  # far past any measurable escape: stop before float64 overflows
            out[t + 2:] = np.inf
            means[t + 2:] = np.nan
            break
    return means, out


#: ``multiplicative_transient`` stops iterating once a second moment passes this (inf afterwards).
OVERFLOW = 1e150


#: ``second_moment_radius`` builds the recursion's matrix and takes all its eigenvalues up to this many unknowns;
#: beyond, ARPACK finds the largest.
DENSE_RADIUS_LIMIT = 1600


def second_moment_radius(a, multiplicative, *, eta: float, kappa: float, momentum: float = 0.0) -> float:
    r"""ρ, the spectral radius of the second-moment recursion of SGD whose batch curvature fluctuates: the
    mean-square stability margin (a stationary law exists iff ρ < 1) and, above 1, the growth of E[zzᵀ] per step.

    Same setting as ``multiplicative_covariance``. The additive noise only forces the recursion; its homogeneous
    part, on the second moment P of the state, is

    .. math:: P' = A P A^	op + \kappa\, B\, 	ilde M(P_{zz})\, B^	op,

    plain SGD: Σ' = DΣD + η²κM̃(Σ) with D = diag(1 − ηa). In one direction of curvature a and per-example curvature
    spread s² (M̃(x) = s²x) that is ρ = (1 − ηa)² + η²κs² (Wu, Ma & E 2018; Mulayoff & Michaeli 2024). Without the
    fluctuation ρ = max_i ``spectral_radius``(η, a_i, μ)². The map is positive (it keeps P positive semi-definite),
    so ρ is itself an eigenvalue, with a positive semi-definite eigenvector.

    Args:
        a, multiplicative, eta, kappa, momentum: as for ``multiplicative_covariance``; here ``a`` may hold
            curvatures <= 0 or >= 2(1+μ)/η (then ρ >= 1).

    Returns:
        ρ >= 0 (all eigenvalues of the recursion's matrix up to ``DENSE_RADIUS_LIMIT`` unknowns, ARPACK beyond).
    """
    a = np.asarray(a, dtype=np.float64)
    d = a.size
    if momentum == 0.0:
        dz = 1.0 - eta * a
        shape = (d, d)

        def apply(x):
            p = x.reshape(shape)
            return (dz[:, None] * p * dz[None, :] + eta * eta * kappa * multiplicative(p)).ravel()
    else:
        blocks = momentum_blocks(eta, momentum, a)
        bb = np.array([[eta * eta, -eta], [-eta, 1.0]])  # B Bᵀ with B = (−η, 1)ᵀ
        shape = (d, d, 2, 2)  # P[i, j] = E[s_i s_jᵀ], s_i = (z_i, b_i)

        def apply(x):
            p = x.reshape(shape)
            out = np.einsum("iab,ijbc,jdc->ijad", blocks, p, blocks)
            out += kappa * multiplicative(np.ascontiguousarray(p[:, :, 0, 0]))[:, :, None, None] * bb
            return out.ravel()
    n = int(np.prod(shape))
    if n <= DENSE_RADIUS_LIMIT:
        mat = np.column_stack([apply(e) for e in np.eye(n)])
        return float(np.max(np.abs(np.linalg.eigvals(mat))))
    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=apply, dtype=np.float64)
    vals = scipy.sparse.linalg.eigs(op, k=1, which="LM", tol=1e-10, return_eigenvectors=False,
                                    v0=np.ones(n) / np.sqrt(n))
    return float(np.max(np.abs(vals)))


def expected_loss(problem: Quadratic, eta, batch_size, *, process="sgd", momentum=0.0, weight_decay=0.0,
                  dataset_size=None, noise="gaussian", sampling="without", solver="eigen") -> float:
    r"""E[L(θ)] − L(θ*) at stationarity, ½Tr(HΣ) plus the bias of the mean under weight decay.

    Same arguments as ``stationary_covariance``. For the SDE with C = H this is the paper's Eq. (7),
    :math:`\frac{\eta}{4S}\mathrm{Tr}(H)`; for SGD with C = H it is
    :math:`\frac{\eta}{2S}\sum_i \frac{\lambda_i}{2-\eta\lambda_i}`.

    Example:
        >>> q = Quadratic.from_spectrum([1.0, 0.5])
        >>> round(expected_loss(q, 0.1, 10, process="sde"), 12), round(expected_loss(q, 0.1, 10), 8)
        (0.00375, 0.00391363)
    """
    setting = make_setting(problem, eta, batch_size, process=process, momentum=momentum, weight_decay=weight_decay,
                     dataset_size=dataset_size, noise=noise, sampling=sampling)
    sig, offset = _covariance_and_offset(problem, setting, solver)
    return float(0.5 * np.sum(problem.hessian * sig) + problem.loss(problem.minimum + offset))


def eq7_loss(problem: Quadratic, eta, batch_size) -> float:
    """The paper's Eq. (7), η/(4S)·Tr(H), whatever C is."""
    eta = validate.positive_float("eta", eta)
    s = check_batch_size(batch_size, None)
    return eta / (4.0 * s) * problem.trace


def learning_curve(problem: Quadratic, etas, kappas, *, theta0=None, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> np.ndarray:
    r"""Exact E[L(θ_k)] − L(θ*) for k = 0..K of SGD with Gaussian noise and per-step η_k and κ_k (κ = 1/S_k).

    Moment recursion in the eigenbasis (``docs/theory.md``): mean m_{k+1} = A_k m_k − η_k f,
    covariance Σ_{k+1} = A_k Σ_k A_kᵀ + η_k² κ_k C̃, with momentum on the state (θ, b).

    Args:
        problem: the quadratic.
        etas: η_k for each of the K steps.
        kappas: κ_k for each step (1/S_k, or the without-replacement factor).
        theta0: the deterministic start, default θ*.

    Returns:
        ``(K + 1,)`` expected losses, index k after k steps.
    """
    etas = np.asarray(etas, dtype=np.float64)
    kappas = np.asarray(kappas, dtype=np.float64)
    if etas.shape != kappas.shape or etas.ndim != 1:
        raise ValueError("etas and kappas must be 1-D arrays of the same length")
    mu = validate.float_in("momentum", momentum, 0.0, 1.0)
    gamma = validate.nonnegative_float("weight_decay", weight_decay)
    v, lam = problem.eigenvectors, problem.eigenvalues
    d = problem.dim
    a = lam + gamma
    force = gamma * (v.T @ problem.minimum)  # weight decay pulls towards 0: g = a z + γ u*
    z = np.zeros(d) if theta0 is None else v.T @ (validate.as_vector("theta0", theta0, size=d) - problem.minimum)
    bm = np.zeros(d)
    c = problem.noise_in_eigenbasis
    pzz = np.zeros((d, d))
    pzb = np.zeros((d, d))
    pbb = np.zeros((d, d))
    out = np.empty(etas.size + 1)
    out[0] = 0.5 * np.sum(lam * (z * z + np.diag(pzz)))
    for k, (eta, kap) in enumerate(zip(etas, kappas)):
        q = kap * c
        if mu == 0.0:
            da = 1.0 - eta * a
            z = da * z - eta * force
            pzz = da[:, None] * pzz * da[None, :] + eta * eta * q
        else:
            # b' = μb + a z + f + n ; z' = z − η b', i.e. (z', b') = A (z, b) with A = momentum_blocks
            blocks = momentum_blocks(eta, mu, a)
            d1, d2, d3 = blocks[:, 0, 0], -eta * mu, blocks[:, 1, 0]
            z, bm = d1 * z + d2 * bm - eta * force, d3 * z + mu * bm + force
            o = np.outer
            nzz = (o(d1, d1) * pzz + d2 * (d1[:, None] * pzb) + d2 * (pzb.T * d1[None, :]) + d2 * d2 * pbb
                   + eta * eta * q)
            nzb = (d1[:, None] * pzz * d3[None, :] + mu * d1[:, None] * pzb + d2 * (pzb.T * d3[None, :])
                   + d2 * mu * pbb - eta * q)
            nbb = (o(d3, d3) * pzz + mu * (d3[:, None] * pzb) + mu * (pzb.T * d3[None, :]) + mu * mu * pbb + q)
            pzz, pzb, pbb = nzz, nzb, nbb
        out[k + 1] = 0.5 * np.sum(lam * (z * z + np.diag(pzz)))
    return out
