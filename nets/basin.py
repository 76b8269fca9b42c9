r"""The basin SGD samples, examined the way the paper's OU picture describes it: direction by direction.

The pieces, each usable on its own (``nets.stationary.basin_phase`` runs them in order on a trained run):

* ``find_minimum``: descend the full-batch objective (the data loss plus the L2 term SGD minimises) from a start
  such as the stationary mean to a *certified* minimum θ_min: ‖∇L(θ_min)‖ below a stated tolerance, with batch norm
  a fixed function throughout (eval mode, running statistics frozen when the operator is built).
* ``projected_noise``: the per-example gradient covariance C projected on a few directions, u_iᵀ C u_j, from
  forward-mode directional derivatives of the per-example losses (no per-example gradient is ever formed).
* ``predicted_variances``: the exact discrete stationary variance of (θ − θ_min)·v_i along an eigenpair (λ_i, v_i) of
  the objective's Hessian with c_i = v_iᵀ C v_i, from ``sde.theory.stationary_covariance`` (the formula ``ou_check``
  tests): η c_i κ / (λ_i (2 − η λ_i)) for plain SGD with κ = (N−S)/(S(N−1)) for S of N examples drawn without
  replacement, and the 2×2 momentum block's solution with momentum. In the eigenbasis of H every direction
  decouples, so the diagonal needs only c_i = v_iᵀCv_i, whatever C's off-diagonal part is.
* ``directional_variances``: the measured variance of a recorded projection, with a batch-means standard error.
* ``quadratic_profile``: L(θ_min + r u) − L(θ_min) against ½ (uᵀHu) r² at r = ±1, 2, 3 stationary s.d.
* ``quadratic_control``: the quadratic problem with the measured top-k curvatures and noises plus the bulk, its exact
  stationary loss (``sde.theory.expected_loss``) and a simulation of it (``sde.simulate``).
* ``linearised_covariance``: the stationary law of SGD linearised at a point with the batch Hessian's fluctuation
  (multiplicative noise) as well as the gradient noise, and its mean-square stability margin, from the per-example
  curvatures along a few directions (``projected_curvatures``).

Weight decay γ enters as SGD applies it: the objective is L_data + (γ/2)‖θ‖², its Hessian H_data + γI, and the
noise C that of the data loss alone. On a quadratic, SGD on that objective is SGD on a quadratic with Hessian
H_data + γI centred on θ_min, so the predictions take the objective's eigenvalues with no further weight decay;
this is the same algebra as ``sde.theory``'s own a_i = λ_i + γ.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from nets.curvature import HessianOperator
from nets.evaluation import batch_slices, measurement_precision
from sgd_noise_common import validate
from sgd_noise_common.files import json_float as _json_float
from sgd_noise_common.results import Result
from sgd_noise_common.stats import block_means

__all__ = ["Minimum", "find_minimum", "flat_parameters", "set_flat_parameters", "projected_noise",
           "predicted_variances", "directional_variances", "quadratic_profile", "QuadraticControl",
           "quadratic_control", "METHODS", "linearised_covariance", "LinearisedCovariance", "linearised_law",
           "projected_curvatures",
           "MAX_FULL_DIM"]

#: Minimisers of ``find_minimum`` (scipy.optimize names): L-BFGS with its line search, or Newton's method on
#: the HVP operator inside a trust region solved by the Krylov method of Gould et al. (``trust-krylov``).
METHODS = ("trust-krylov", "L-BFGS-B")


def flat_parameters(model: nn.Module) -> np.ndarray:
    """The trainable parameters of ``model`` in order, concatenated into one float64 numpy vector."""
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters() if p.requires_grad]).numpy()


def set_flat_parameters(model_or_params, vec) -> None:
    """Write a flat vector (``flat_parameters``'s order) into a model's trainable parameters (or a parameter list),
    converting to each parameter's dtype and device."""
    params = [p for p in (model_or_params.parameters() if isinstance(model_or_params, nn.Module)
                          else model_or_params) if p.requires_grad]
    vec = torch.as_tensor(np.array(vec, dtype=np.float64))
    total = sum(p.numel() for p in params)
    if vec.numel() != total:
        raise ValueError(f"the vector has {vec.numel()} entries, the model {total} parameters")
    a = 0
    with torch.no_grad():
        for p in params:
            p.copy_(vec[a:a + p.numel()].reshape(p.shape).to(dtype=p.dtype, device=p.device))
            a += p.numel()


@dataclass
class Minimum:
    """A minimum of the full-batch objective, and what certifies it.

    Attributes:
        theta: θ_min, flat float64 (``flat_parameters``'s order).
        loss: the objective there (data loss + (γ/2)‖θ‖²); ``start_loss`` at the start.
        grad_norm: ‖∇L(θ_min)‖₂, recomputed after the minimiser stopped; ``grad_tol`` the tolerance asked for;
            ``certified``: ``grad_norm <= grad_tol``.
        distance: ‖θ_min − θ_start‖.
        loss_bound, distance_bound: *if* the data loss is locally convex, the objective's curvature is at least
            m = ``weight_decay`` near θ_min, and then L(θ_min) − L* ≤ ‖∇L‖²/(2m) and ‖θ_min − θ*‖ ≤ ‖∇L‖/m (the
            convexity is not checked: a small gradient certifies a stationary point, and these bounds hold for a
            minimum); NaN without weight decay.
        method, iterations, gradients, hvps, seconds: how it was found; ``message`` the minimiser's own.
        bn_statistics: which batch-norm statistics the (fixed) objective used.
    """

    theta: np.ndarray | None
    loss: float
    start_loss: float
    grad_norm: float
    grad_tol: float
    certified: bool
    distance: float
    loss_bound: float
    distance_bound: float
    method: str
    iterations: int
    gradients: int
    hvps: int
    seconds: float
    message: str
    bn_statistics: str
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Every field but ``theta``, as JSON data."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "theta"}
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Minimum:
        """The minimum from ``to_dict``'s data (read back from JSON: ``theta`` is None, null is NaN)."""
        ints, texts = ("iterations", "gradients", "hvps"), ("method", "message", "bn_statistics")
        kw = {f.name: (int(d[f.name]) if f.name in ints else str(d[f.name]) if f.name in texts
                       else bool(d[f.name]) if f.name == "certified" else _json_float(d[f.name]))
              for f in fields(cls) if f.name not in ("theta", "notes")}
        return cls(theta=None, notes=list(d.get("notes", [])), **kw)


def find_minimum(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, weight_decay: float = 0.0,
                 start=None, grad_tol: float = 1e-6, max_iter: int = 200, method: str = "trust-krylov",
                 operator: HessianOperator | None = None, **operator_kwargs) -> Minimum:
    """Descend the full-batch objective from ``start`` until ‖∇L‖ ≤ ``grad_tol``, and say whether it got there.

    The objective is ``HessianOperator``'s measured loss (weight decay included), evaluated in float64 unless
    ``dtype`` says otherwise; batch norm is in eval mode with the running statistics fixed when the operator is
    built (recomputed on the inputs, or the model's own with ``recalibrate=False``), so it is one fixed function of
    θ throughout. The minimiser is scipy's (``scipy.optimize.minimize``): ``trust-krylov`` is Newton's method with
    Hessian-vector products in a trust region, which on a network's ill-conditioned but near-quadratic basin
    converges in a few dozen products where L-BFGS needs hundreds of gradients (see ``benchmarks``'s note in the
    module ``nets.stationary``); ``L-BFGS-B`` needs only gradients.

    Args:
        model, loss_fn, inputs, targets, batch_size, weight_decay: as for ``HessianOperator`` (the model is not
            changed).
        start: the flat start θ_0 (default the parameters of ``operator`` when one is given, else the model's).
        grad_tol: the certificate: ‖∇L‖₂ ≤ ``grad_tol`` at the returned point.
        max_iter: the minimiser's most iterations.
        method: one of ``METHODS``.
        operator: an existing float64 ``HessianOperator`` of the same objective to reuse (its parameters are moved).
        operator_kwargs: ``dtype`` (default float64), ``recalibrate``, ``bn_inputs``, ``device``, ``hvp_method``.

    Returns:
        A ``Minimum``; ``certified`` says whether the tolerance was reached.

    Raises:
        ValueError: for an unknown method, ``grad_tol <= 0``, ``max_iter < 1``, a start of the wrong length, or
            (from ``HessianOperator``) a bad measurement set.
    """
    import scipy.optimize

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not grad_tol > 0:
        raise ValueError(f"grad_tol must be > 0, got {grad_tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    t0 = time.perf_counter()
    if operator is None:
        operator_kwargs.setdefault("dtype", torch.float64)
        operator = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode="eval",
                                   weight_decay=weight_decay, **operator_kwargs)
    op = operator
    x0 = flat_parameters(op.model) if start is None else np.asarray(start, dtype=np.float64)
    if x0.shape != (op.dim,):
        raise ValueError(f"start must be a flat vector of {op.dim} parameters, got shape {x0.shape}")
    counts = {"grad": 0}
    current = {"x": None}

    def move(x):
        if current["x"] is None or not np.array_equal(current["x"], x):
            set_flat_parameters(op.params, x)
            current["x"] = np.array(x, copy=True)

    def fun(x):
        move(x)
        counts["grad"] += 1
        return op.loss(), op.gradient().cpu().numpy()

    def hessp(x, p):
        move(x)
        return op.matvec(p)

    move(x0)
    start_loss = op.loss()
    hvps0 = op.matvecs
    options = {"maxiter": int(max_iter), "gtol": float(grad_tol)}
    if method == "L-BFGS-B":
        # L-BFGS-B's gtol is on the largest component; the certificate below is on the 2-norm.
        options.update(gtol=float(grad_tol) / math.sqrt(op.dim), ftol=0.0, maxcor=30)
        res = scipy.optimize.minimize(fun, x0, jac=True, method=method, options=options)
    else:
        with np.errstate(invalid="ignore"):  # trust-krylov's 0·inf once the model's decrease underflows; polished
            res = scipy.optimize.minimize(fun, x0, jac=True, hessp=hessp, method=method, options=options)
    theta, grad, newton = _polish(op, res.x, grad_tol, move)
    move(theta)
    loss = op.loss()
    gnorm = float(np.linalg.norm(grad))
    m = float(op.weight_decay)
    notes = []
    if gnorm > grad_tol:
        notes.append(f"not certified: |grad L| = {gnorm:.3g} > grad_tol = {grad_tol:.3g} after {res.nit} "
                     f"iterations ({res.message})")
    return Minimum(theta=np.array(theta, dtype=np.float64), loss=float(loss), start_loss=float(start_loss),
                   grad_norm=gnorm, grad_tol=float(grad_tol), certified=gnorm <= grad_tol,
                   distance=float(np.linalg.norm(theta - x0)),
                   loss_bound=gnorm ** 2 / (2 * m) if m > 0 else math.nan,
                   distance_bound=gnorm / m if m > 0 else math.nan, method=method, iterations=int(res.nit) + newton,
                   gradients=counts["grad"] + newton + 1, hvps=op.matvecs - hvps0, seconds=time.perf_counter() - t0,
                   message=str(res.message), bn_statistics=op.bn_statistics, notes=notes)


#: Newton steps taken after the minimiser stops, at most.
POLISH_STEPS = 8


def _polish(op, theta, grad_tol, move):
    """Newton steps judged by the gradient alone, after the minimiser stopped short of ``grad_tol``.

    Written by hand because scipy's minimisers judge a step by the decrease of L, which rounding hides once
    ‖∇L‖²/λ falls below L·1e-16 (trust-krylov then stops with "a bad approximation caused failure to predict
    improvement"); near a minimum the Newton step δ = −H⁻¹∇L (by conjugate gradients, scipy's ``cg``) is
    accepted while it lowers ‖∇L‖. Returns (θ, ∇L(θ), steps taken)."""
    import scipy.sparse.linalg

    move(theta)
    grad = op.gradient().cpu().numpy()
    gnorm = float(np.linalg.norm(grad))
    loss = op.loss()
    steps = 0
    while gnorm > grad_tol and steps < POLISH_STEPS:
        step, _ = scipy.sparse.linalg.cg(op.as_linear_operator(), -grad, rtol=1e-3, maxiter=100)
        trial = theta + step
        move(trial)
        g_new, l_new = op.gradient().cpu().numpy(), op.loss()
        # A step must lower ‖∇L‖ and must not raise L beyond rounding (CG on an indefinite H can aim at a saddle).
        if not (float(np.linalg.norm(g_new)) < gnorm and l_new <= loss + 1e-12 * max(abs(loss), 1.0)):
            move(theta)
            break
        steps += 1
        theta, grad, gnorm, loss = trial, g_new, float(np.linalg.norm(g_new)), l_new
    return theta, grad, steps


def _per_example_directions(op: HessianOperator, directions, who: str, cols: str, *,
                            within_batch: bool = False) -> np.ndarray:
    """``directions`` as a float64 ``(P, cols)`` array, for a per-example computation on ``op``: refused (naming
    ``who``) in train-mode batch norm, where an example's loss depends on the rest of its batch, unless
    ``within_batch`` asks for exactly that."""
    if op.bn_mode != "eval" and not within_batch:
        raise ValueError(f"{who} needs bn_mode='eval' (per-example losses of a train-mode batch-norm network depend "
                         "on the other examples of the batch)")
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != op.dim:
        raise ValueError(f"directions must have shape ({op.dim}, {cols}), got {d.shape}")
    return d


def projected_noise(op: HessianOperator, directions, *, batch_size: int | None = None) -> dict:
    r"""The per-example gradient covariance C projected on the columns u_j of ``directions``: u_iᵀ C u_j.

    With d_nj = ∇ℓ_n(θ)·u_j (a forward-mode directional derivative of the per-example losses, one pass over the
    set per direction), u_iᵀ C u_j = (1/N) Σ_n d_ni d_nj − ḡ_i ḡ_j with ḡ_j = (1/N) Σ_n d_nj: the population
    covariance over the operator's N examples at its parameters, data loss only (weight decay is deterministic and
    adds no noise). ``loss_fn`` must accept ``reduction="none"`` (torch's losses do).

    Args:
        op: the operator (its model copy, parameters, data and batch-norm policy are used; eval mode only).
        directions: ``(dim, m)`` array.
        batch_size: examples per pass (default the operator's).

    Returns:
        ``cov`` ``(m, m)``, ``mean`` ``(m,)`` (ḡ, the projected mean gradient of the data loss), ``num_examples``.
    """
    from torch.func import jvp

    u = _per_example_directions(op, directions, "projected_noise", "m")
    m = u.shape[1]
    names, params, loss_of = op.functional()
    tangents = [dict(zip(names, op.to_list(u[:, j]))) for j in range(m)]
    s1, s2 = np.zeros(m), np.zeros((m, m))
    with torch.no_grad(), measurement_precision():
        for a, b in batch_slices(op.num_examples, batch_size or op.batch_size):
            xb, yb = op.inputs[a:b], op.targets[a:b]

            raw = loss_of(xb, yb, reduction="none")

            def losses(p, raw=raw):  # ℓ_n: the mean over any non-batch dimensions of the unreduced loss
                out = raw(p)
                return out.reshape(out.shape[0], -1).mean(dim=1)

            d = np.column_stack([jvp(losses, (params,), (t,))[1].double().cpu().numpy() for t in tangents])
            s1 += d.sum(axis=0)
            s2 += d.T @ d
    n = op.num_examples
    mean = s1 / n
    return {"cov": s2 / n - np.outer(mean, mean), "mean": mean, "num_examples": n}


def predicted_variances(curvatures, noises, *, eta: float, batch_size: int, dataset_size: int | None = None,
                        momentum: float = 0.0, dampening: float = 0.0) -> np.ndarray:
    r"""The exact stationary variance of discrete SGD along each eigendirection of the objective's Hessian.

    For a direction with curvature a_i (an eigenvalue of H_data + γI) and noise c_i = v_iᵀCv_i, SGD's stationary
    variance of (θ − θ_min)·v_i is ``sde.theory.stationary_covariance`` of the one-dimensional quadratic (a_i, c_i):
    η c_i κ / (a_i (2 − η a_i)) without momentum, κ = (N−S)/(S(N−1)) (S of N examples without replacement; 1/S
    without ``dataset_size``), and the momentum block's exact solution with momentum. It is the full prediction for
    the diagonal in H's eigenbasis: the directions decouple there. NaN where no stationary law exists (a_i ≤ 0 or
    η a_i ≥ 2(1 + μ)).

    >>> v = predicted_variances([1.0, 10.0], [2.0, 5.0], eta=0.1, batch_size=10)
    >>> [round(float(x), 12) for x in v]  # 0.1*c/(10*a*(2-0.1*a))
    [0.010526315789, 0.005]

    Args:
        curvatures: a_i, the objective's eigenvalues (weight decay included).
        noises: c_i = v_iᵀCv_i of the data loss's per-example gradients.
        eta, batch_size, dataset_size, momentum: SGD's setting (torch's momentum).
        dampening: torch's dampening; only 0 is covered by ``sde.theory`` when momentum > 0.

    Raises:
        ValueError: for mismatched lengths, negative noise, or dampening with momentum.
    """
    from quadratic import Quadratic
    from sde.theory import stationary_covariance

    a = np.atleast_1d(np.asarray(curvatures, dtype=np.float64))
    c = np.atleast_1d(np.asarray(noises, dtype=np.float64))
    if a.shape != c.shape:
        raise ValueError(f"curvatures and noises must have the same length, got {a.size} and {c.size}")
    if np.any(c < 0):
        raise ValueError(f"noises must be >= 0 (they are variances), smallest is {c.min():.3g}")
    if momentum and dampening:
        raise ValueError("dampening with momentum has no closed form in sde.theory; use dampening=0")
    out = np.full(a.size, math.nan)
    for i, (ai, ci) in enumerate(zip(a, c)):
        if not (ai > 0 and eta * ai < 2.0 * (1.0 + momentum)):
            continue
        q = Quadratic.from_spectrum([ai], noise_covariance=[ci])
        out[i] = float(stationary_covariance(q, eta, batch_size, momentum=momentum, dataset_size=dataset_size)[0, 0])
    return out


def directional_variances(series, *, batches: int = 20) -> dict:
    """Mean and variance of each column of a recorded time series, with batch-means standard errors.

    The series is cut into ``batches`` consecutive blocks; the standard error of the variance is that of the
    blocks' mean squared deviations (from the overall mean), which absorbs the autocorrelation when each block is
    much longer than the correlation time (the caller states the block length against the relaxation time).

    Args:
        series: ``(T, m)`` (or ``(T,)``) projections, one row per step.
        batches: the number of blocks (at least 2, at most T).

    Returns:
        ``mean``, ``mean_stderr``, ``variance``, ``variance_stderr`` (arrays of length m), ``block_length``.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    t = x.shape[0]
    if not 2 <= batches <= t:
        raise ValueError(f"batches must lie in [2, {t}] (the series' length), got {batches}")
    mean = x.mean(axis=0)
    bm = block_means(x, batches)
    bv = block_means((x - mean) ** 2, batches)
    return {"mean": mean, "mean_stderr": bm.std(axis=0, ddof=1) / math.sqrt(batches),
            "variance": ((x - mean) ** 2).mean(axis=0), "variance_stderr": bv.std(axis=0, ddof=1) / math.sqrt(batches),
            "block_length": t // batches}


def quadratic_profile(op: HessianOperator, theta_min, directions, curvatures, spreads, *,
                      multiples=(-3, -2, -1, 1, 2, 3), gradient=None) -> dict:
    r"""How far out the basin stays quadratic: L(θ_min + r u) − L(θ_min) against ½ a r² along each direction.

    At a point that is not a minimum (``gradient`` given), the linear term r ∇L·u is subtracted from the rise, so
    the ratio measures what the second-order model misses (third order and beyond), not the slope.

    Args:
        op: the operator of the objective (its parameters are moved, and restored to θ_min at the end).
        theta_min: the flat minimum.
        directions: ``(dim, m)`` unit columns u_j.
        curvatures: a_j = u_jᵀ H u_j (the eigenvalue for an eigenvector).
        spreads: the stationary s.d. along each direction; r = multiple × spread.
        multiples: the multiples of the spread.
        gradient: ∇L at ``theta_min`` (flat), or ``None`` (taken as 0).

    Returns:
        ``multiples``, ``radii`` ``(m, r)``, ``delta`` (the measured rise) and ``quadratic`` (½ a r²) ``(m, r)`` and
        ``ratio`` = delta / quadratic.
    """
    u = np.asarray(directions, dtype=np.float64)
    a = np.asarray(curvatures, dtype=np.float64)
    sd = np.asarray(spreads, dtype=np.float64)
    mult = np.asarray(multiples, dtype=np.float64)
    theta_min = np.asarray(theta_min, dtype=np.float64)
    set_flat_parameters(op.params, theta_min)
    base = op.loss()
    radii = sd[:, None] * mult[None, :]
    delta = np.empty_like(radii)
    try:
        for j in range(u.shape[1]):
            for k, r in enumerate(radii[j]):
                set_flat_parameters(op.params, theta_min + r * u[:, j])
                delta[j, k] = op.loss() - base
    finally:
        set_flat_parameters(op.params, theta_min)
    if gradient is not None:
        delta -= (u.T @ np.asarray(gradient, dtype=np.float64))[:, None] * radii
    quad = 0.5 * a[:, None] * radii ** 2
    return {"multiples": mult, "radii": radii, "delta": delta, "quadratic": quad, "ratio": delta / quad}


@dataclass
class QuadraticControl:
    """The quadratic model of the basin built from measured numbers, and its stationary loss.

    Attributes:
        curvatures, noises: the problem's eigenvalues and the noise along each (the top-k, then the bulk as one
            direction with the mean bulk curvature and the whole bulk noise).
        exact_loss: ``sde.theory.expected_loss`` of the problem at the setting; ``top_loss``/``bulk_loss`` its parts.
        simulated_loss, simulated_stderr: SGD simulated on it (``sde.simulate``), NaN when not simulated.
        notes: what was clipped.
    """

    curvatures: np.ndarray
    noises: np.ndarray
    exact_loss: float
    top_loss: float
    bulk_loss: float
    simulated_loss: float
    simulated_stderr: float
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON data."""
        d = asdict(self)
        d["curvatures"], d["noises"] = self.curvatures.tolist(), self.noises.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuadraticControl:
        """The control from ``to_dict``'s data (read back from JSON: null is NaN)."""
        arrays = {k: np.array([_json_float(x) for x in d[k]]) for k in ("curvatures", "noises")}
        return cls(**arrays, notes=list(d.get("notes", [])),
                   **{k: _json_float(d[k]) for k in ("exact_loss", "top_loss", "bulk_loss", "simulated_loss",
                                                    "simulated_stderr")})


def quadratic_control(curvatures, noises, *, trace_h: float, trace_c: float, num_params: int, eta: float,
                      batch_size: int, dataset_size: int | None = None, momentum: float = 0.0,
                      simulate_steps: int | None = None, chains: int = 64, rng=None) -> QuadraticControl:
    r"""The quadratic control: a ``quadratic.Quadratic`` with the measured top-k (a_i, c_i) and the bulk.

    The bulk, the P − k other directions, is one direction with the mean bulk curvature a_b = (Tr H − Σa_i)/(P − k)
    and all the bulk noise c_b = Tr C − Σc_i. Its stationary loss ½ a_b·Var_b = η c_b κ/(2(2 − η a_b)) equals the
    sum over the bulk's directions whenever their η a_j are close to η a_b (for ηa ≪ 1 it is ηκ c_b/4 whatever the
    bulk's spectrum): the bulk's noise, not its spectrum, sets its share.

    Args:
        curvatures, noises: the top-k a_i (eigenvalues of the objective's Hessian) and c_i = v_iᵀCv_i.
        trace_h, trace_c: Tr of the objective's Hessian (weight decay included) and of C.
        num_params: P.
        eta, batch_size, dataset_size, momentum: the setting.
        simulate_steps: simulate SGD on the problem for this many steps (``None``: only the exact loss).
        chains, rng: the simulation's chains and seed.
    """
    from quadratic import Quadratic
    from sde.simulate import RunTooShort, simulate
    from sde.theory import expected_loss

    a = np.asarray(curvatures, dtype=np.float64)
    c = np.asarray(noises, dtype=np.float64)
    notes = []
    k = a.size
    if num_params <= k:
        raise ValueError(f"num_params ({num_params}) must exceed the number of top directions ({k})")
    a_b = (trace_h - a.sum()) / (num_params - k)
    c_b = trace_c - c.sum()
    if not a_b > 0:
        notes.append(f"the bulk's mean curvature (Tr H - sum of the top-k = {trace_h - a.sum():.4g}) is not > 0; "
                     "set to the smallest top-k curvature / 1e3")
        a_b = float(a.min()) * 1e-3
    if c_b < 0:
        notes.append(f"Tr C - sum of the top-k noises = {c_b:.4g} < 0 (estimation error); the bulk noise set to 0")
        c_b = 0.0
    curv, noise = np.append(a, a_b), np.append(c, c_b)
    ok = (curv > 0) & (eta * curv < 2.0 * (1.0 + momentum))
    if not ok.all():
        notes.append(f"{int((~ok).sum())} direction(s) have no stationary law at eta={eta:g} (curvature <= 0 or "
                     "eta*a >= 2(1+mu)); left out of the control")
        curv, noise = curv[ok], noise[ok]
    q = Quadratic.from_spectrum(curv, noise_covariance=noise)
    exact = expected_loss(q, eta, batch_size, momentum=momentum, dataset_size=dataset_size)
    per_dir = 0.5 * curv * predicted_variances(curv, noise, eta=eta, batch_size=batch_size,
                                               dataset_size=dataset_size, momentum=momentum)
    sim, sim_se = math.nan, math.nan
    if simulate_steps:
        kw = dict(chains=chains, momentum=momentum, dataset_size=dataset_size)
        try:
            r = simulate(q, eta, batch_size, steps=int(simulate_steps), rng=validate.generator("rng", rng), **kw)
        except RunTooShort as e:  # a slow bulk direction: run as long as its relaxation needs (measured, stated)
            notes.append(f"simulated for {int(e.needed_steps)} steps, not {int(simulate_steps)}: the slowest "
                         "direction needs that long")
            r = simulate(q, eta, batch_size, steps=int(e.needed_steps), rng=validate.generator("rng", rng), **kw)
        sim, sim_se = r.mean_loss, r.stderr
    return QuadraticControl(curvatures=curv, noises=noise, exact_loss=float(exact),
                            top_loss=float(per_dir[:-1].sum()) if ok[-1] else float(per_dir.sum()),
                            bulk_loss=float(per_dir[-1]) if ok[-1] else 0.0, simulated_loss=float(sim),
                            simulated_stderr=float(sim_se), notes=notes)


# ------------------------------------------------------------------------------ the linearised law (issue 20)
#: ``linearised_covariance`` with ``directions=None`` works in the parameter basis up to this many parameters.
MAX_FULL_DIM = 128


@dataclass(frozen=True)
class LinearisedCovariance(Result):
    r"""The stationary law of SGD linearised at θ₀, with the batch Hessian's fluctuation (``linearised_covariance``).

    Coordinates: θ = θ₀ + Vζ with V the ``directions`` (the identity when none were given), k of them.

    Attributes:
        covariance: Σ, ``(k, k)``: the stationary covariance of ζ about the linearised fixed point ζ*; all NaN when
            ``stable`` is False (no stationary law).
        covariance_stderr: its standard error from subsampling the examples (a delete-a-group jackknife), NaN when
            every example was used (then Σ is exact for the linearisation, up to rounding).
        stable: ``spectral_radius < 1``: a stationary law exists.
        spectral_radius, spectral_radius_stderr: ρ of the second-moment recursion, the mean-square stability margin
            (``sde.theory.second_moment_radius``); above 1, E[zzᵀ]'s growth factor per step.
        additive_radius: the same without the curvature's fluctuation, max_i ρ_i² of the mean update.
        additive_covariance: Σ without the fluctuation (the gradient noise at ζ* alone), NaN where
            ``additive_radius`` >= 1.
        curvature: G = VᵀHV + γI, the objective's curvature at θ₀; ``gradient``: f = Vᵀ∇L(θ₀) + γVᵀθ₀.
        fixed_point: ζ* = −G⁻¹f (θ* = θ₀ + Vζ*; 0 at a minimum), NaN where G is singular.
        noise: C̃, the per-example gradient covariance at the fixed point, ``(k, k)``.
        curvature_spread: s_i² = (1/N)Σ_n (v_iᵀ(H_n − H)v_i)², the per-example curvature's spread along each v_i.
        kappa: κ with Cov(batch mean) = κ × the per-example covariance.
        eta, batch_size, momentum, weight_decay, sampling: SGD's setting; dataset_size: N.
        examples: the examples whose curvature was computed (N, or fewer when subsampled); directions: k.
        seconds: the wall time; notes: what could not be computed, and why.
        transient, transient_stderr: with ``transient_steps`` = T, E‖ζ_t‖² for t = 0..T of SGD started at θ₀
            (ζ = 0, an empty momentum buffer) under the same linearised law (``sde.theory.multiplicative_transient``:
            the mean's drift, the gradient noise and the fluctuation together), and its jackknife error when
            subsampled; ``()`` when not asked. Where θ₀ is mean-square unstable, its growth per step tends to
            ``spectral_radius``; the first steps depend on where the noise enters (the escape, ``nets.stationary``).
        transient_loss: E[L(θ_t)] − L(θ₀) of the quadratic model (fᵀE[ζ] + ½Tr(G E[ζζᵀ]), the objective's change,
            weight decay included) over the same steps.
    """

    covariance: np.ndarray
    covariance_stderr: np.ndarray
    stable: bool
    spectral_radius: float
    spectral_radius_stderr: float
    additive_radius: float
    additive_covariance: np.ndarray
    curvature: np.ndarray
    gradient: np.ndarray
    fixed_point: np.ndarray
    noise: np.ndarray
    curvature_spread: np.ndarray
    kappa: float
    eta: float
    batch_size: int
    momentum: float
    weight_decay: float
    sampling: str
    dataset_size: int
    examples: int
    directions: int
    seconds: float
    notes: tuple = ()
    transient: np.ndarray = ()
    transient_stderr: np.ndarray = ()
    transient_loss: np.ndarray = ()


def projected_curvatures(op: HessianOperator, directions, *, indices=None, chunk: int = 1000,
                         pair_block: int = 64, within_batch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    r"""Each example's gradient and Hessian projected on a few directions: d_nj = ∇ℓ_n·v_j and v_iᵀH_n v_j.

    Forward-over-forward mode (``torch.func.jvp`` of a ``jvp``, under ``vmap`` over the k(k+1)/2 pairs i <= j):
    for the pair (v_i, v_j) one pass gives ∇ℓ_n·v_j (the inner derivative) and v_iᵀH_nv_j (the outer one) for
    every example of a chunk at once; no per-example gradient or Hessian-vector product in parameter space is
    formed. Data loss only (weight decay adds γI, the same for every example); eval mode (the operator's fixed
    batch-norm statistics); ``loss_fn`` must accept ``reduction="none"``.

    Args:
        op: the operator (its model copy, dtype and device).
        directions: ``(dim, k)``.
        indices: the examples (default all N, in order).
        chunk: examples per pass; pair_block: pairs per vmap (together they bound the memory).
        within_batch: allow a train-mode batch-norm operator: ℓ_n is then example n's loss within its pass of
            ``op.batch_size`` examples (``chunk`` is set to that), normalised by the pass's statistics, which
            depend on θ: d_n and H̃_n include that coupling, and their mean over a pass is the batch loss's. The
            examples of a pass are not independent, so the spread over them stands for SGD's batch-to-batch
            fluctuation only approximately (``nets.advise`` states it).

    Returns:
        ``(d, h)``: float64 numpy arrays ``(n, k)`` and ``(n, k, k)`` (symmetric in the last two axes).
    """
    from torch.func import jvp, vmap

    v = _per_example_directions(op, directions, "projected_curvatures", "k", within_batch=within_batch)
    if op.bn_mode == "train":
        chunk = op.batch_size
    k = v.shape[1]
    idx = np.arange(op.num_examples) if indices is None else np.asarray(indices)
    names, params, loss_of = op.functional()
    vt = torch.as_tensor(np.ascontiguousarray(v.T)).to(device=op.device, dtype=op.dtype)  # (k, dim)
    ii, jj = np.triu_indices(k)
    blocks = [(ii[a:a + pair_block], jj[a:a + pair_block]) for a in range(0, ii.size, pair_block)]

    def tangents(rows):
        t = vt[torch.as_tensor(rows, device=op.device)]
        return {n: c.reshape(t.shape[0], *s) for n, c, s in zip(names, torch.split(t, op.sizes, dim=1), op.shapes)}

    block_tangents = [(tangents(bi), tangents(bj)) for bi, bj in blocks]
    d = np.empty((idx.size, k))
    h = np.empty((idx.size, k, k))
    sel = torch.as_tensor(idx, device=op.device)
    with torch.no_grad(), measurement_precision():
        for a, b in batch_slices(idx.size, chunk):
            xb, yb = op.inputs[sel[a:b]], op.targets[sel[a:b]]
            raw = loss_of(xb, yb, reduction="none")

            def losses(p, raw=raw):  # ℓ_n: the mean over any non-batch dimensions of the unreduced loss
                out = raw(p)
                return out.reshape(out.shape[0], -1).mean(dim=1)

            def pair(t1, t2, losses=losses):
                return jvp(lambda p: jvp(losses, (p,), (t2,))[1], (params,), (t1,))

            for (bi, bj), (t1, t2) in zip(blocks, block_tangents):
                first, second = vmap(pair)(t1, t2)
                first, second = first.double().cpu().numpy(), second.double().cpu().numpy()
                h[a:b, bi, bj] = second.T
                h[a:b, bj, bi] = second.T
                diag = bi == bj
                d[a:b, bj[diag]] = first[diag].T
    return d, h


def linearised_law(d, h, theta, *, dataset_size: int, eta: float, kappa: float, momentum: float,
                    gamma: float, transient_steps: int = 0) -> dict:
    """The linearised law from the per-example projections d ``(n, k)`` and h ``(n, k, k)``
    (``projected_curvatures``) at θ₀ (``theta``: Vᵀθ₀, for the weight decay's force): ``linearised_covariance``'s
    algebra, one home, also for ``nets.advise``, which evaluates it at many (η, κ) from one set of projections.
    Returns a dict of ``LinearisedCovariance``'s computed fields (``curvature``, ``gradient``, ``spectral_radius``,
    ``additive_radius``, ``curvature_spread``, ``fixed_point``, ``noise``, ``covariance``, ``additive_covariance``,
    ``transient``, ``transient_loss``) and ``notes``. ``n < dataset_size``: the examples stand for the N as in
    ``linearised_covariance(examples=...)``."""
    from sde.theory import multiplicative_covariance, multiplicative_transient, second_moment_radius, spectral_radius

    n, k = d.shape
    big_n = dataset_size
    # Population moments over N from n examples drawn without replacement: (N−1)/(N(n−1)) Σ over the n centred
    # (exactly 1/N when n = N).
    scale = 1.0 / big_n if n == big_n else (big_n - 1) / (big_n * (n - 1))
    hbar = h.mean(axis=0)
    hbar = 0.5 * (hbar + hbar.T)
    curvature = hbar + gamma * np.eye(k)
    force = d.mean(axis=0) + gamma * theta
    a, w = np.linalg.eigh(curvature)
    fluct = np.einsum("ia,nij,jb->nab", w, h - hbar, w)  # ã_n = Wᵀ(H̃_n − H̃)W
    if k ** 4 <= 2_000_000:
        f = fluct.reshape(n, k * k)
        # M̃(X)_il = scale Σ_n ã_n[i,j] X[j,m] ã_n[m,l]: the matrix acting on vec X, from the Gram of vec ã_n.
        gram = (f.T @ f * scale).reshape(k, k, k, k)  # [i, j, m, l]
        mmat = gram.transpose(0, 3, 1, 2).reshape(k * k, k * k)

        def mult(x):
            return (mmat @ x.reshape(-1)).reshape(k, k)
    else:
        def mult(x):
            return np.einsum("nij,jm,nml->il", fluct, x, fluct, optimize=True) * scale

    rho = second_moment_radius(a, mult, eta=eta, kappa=kappa, momentum=momentum)
    rho_add = float(np.max(np.atleast_1d(spectral_radius(eta, a, momentum))) ** 2)
    spread = np.einsum("nii->ni", h - hbar)
    out = dict(curvature=curvature, gradient=force, spectral_radius=rho, additive_radius=rho_add,
               curvature_spread=(spread ** 2).sum(axis=0) * scale,
               fixed_point=np.full(k, math.nan), noise=np.full((k, k), math.nan),
               covariance=np.full((k, k), math.nan), additive_covariance=np.full((k, k), math.nan), notes=[],
               transient=(), transient_loss=())
    if transient_steps:
        # The same moments in the V basis (not G's eigenbasis): ζ starts at 0, so the force, the gradient noise
        # about θ₀ and their cross term with the fluctuation enter (``sde.theory.multiplicative_transient``).
        dc = d - d.mean(axis=0)
        h0 = h - hbar

        if k ** 4 <= 2_000_000:  # as ``mult`` above, in the V basis
            f0 = h0.reshape(n, k * k)
            mmat0 = (f0.T @ f0 * scale).reshape(k, k, k, k).transpose(0, 3, 1, 2).reshape(k * k, k * k)

            def mult0(x):
                return (mmat0 @ x.reshape(-1)).reshape(k, k)
        else:
            def mult0(x):
                return np.einsum("nij,jm,nml->il", h0, x, h0, optimize=True) * scale

        def cross0(m):
            return (h0 @ m).T @ dc * scale

        means, moments = multiplicative_transient(curvature, force, dc.T @ dc * scale, mult0, cross0, eta=eta,
                                                  kappa=kappa, momentum=momentum, steps=transient_steps)
        out["transient"] = np.einsum("tii->t", moments)
        with np.errstate(invalid="ignore", over="ignore"):  # inf past OVERFLOW
            out["transient_loss"] = means @ force + 0.5 * np.einsum("ij,tji->t", curvature, moments)
    if np.min(np.abs(a)) <= 1e-12 * max(np.max(np.abs(a)), np.finfo(float).tiny):
        out["notes"].append("the curvature G is singular: no linearised fixed point")
        return out
    zeta = -w @ ((w.T @ force) / a)
    u = d + h @ zeta  # the per-example gradients at the fixed point
    u -= u.mean(axis=0)
    noise = u.T @ u * scale
    out.update(fixed_point=zeta, noise=noise)
    q = w.T @ noise @ w
    if rho_add < 1.0:
        out["additive_covariance"] = w @ multiplicative_covariance(a, q, lambda x: np.zeros_like(x), eta=eta,
                                                                   kappa=kappa, momentum=momentum) @ w.T
    if rho < 1.0:
        try:
            out["covariance"] = w @ multiplicative_covariance(a, q, mult, eta=eta, kappa=kappa,
                                                              momentum=momentum) @ w.T
        except ValueError as e:  # rounding at rho within ~1e-8 of 1
            out["notes"].append(str(e))
    return out


def linearised_covariance(model: nn.Module, loss_fn, inputs, targets, *, eta: float, batch_size: int,
                          momentum: float = 0.0, weight_decay: float = 0.0, directions=None,
                          sampling: str = "without", examples: int | None = None, rng=None,
                          jackknife_groups: int = 20, chunk: int = 1000, transient_steps: int = 0,
                          dtype=torch.float64, device=None) -> LinearisedCovariance:
    r"""The stationary covariance of SGD linearised at the model's parameters θ₀, gradient noise and the batch
    Hessian's fluctuation (multiplicative noise) included, and its mean-square stability margin.

    **The linearisation.** In the coordinates θ = θ₀ + Vζ (V = ``directions``, k orthonormal columns; the identity
    when ``None``), each example's loss is replaced by its second-order expansion at θ₀: its gradient is
    d_n + H̃_nζ with d_n = Vᵀ∇ℓ_n(θ₀) and H̃_n = VᵀH_n(θ₀)V (``projected_curvatures``). With H̃ = mean H̃_n, the
    objective (data loss plus (γ/2)‖θ‖², γ = ``weight_decay``) has curvature G = H̃ + γI and gradient
    f = d̄ + γVᵀθ₀ at θ₀, and its linearised **fixed point** is ζ* = −G⁻¹f (a Newton step: θ* = θ₀ + Vζ*, which is
    θ₀ itself at a minimum). The law is that of z = ζ − ζ*, i.e. **about the fixed point**, not about θ₀
    (E[(ζ)(ζ)ᵀ] = Σ + ζ*ζ*ᵀ).

    **The recursion.** A step on a batch B of S examples is z' = (I − ηG_B)z − ηξ_B, with G_B = H̃_B + γI and ξ_B
    the batch mean of u_n − ū, u_n = d_n + H̃_nζ* (each example's gradient at the fixed point); torch's momentum
    acts on the state (z, b): b' = μb + G_Bz + ξ_B, z' = z − ηb'. Batches are drawn afresh each step (independent
    of z) and E[z] = 0, so with Δ_B = H̃_B − H̃

      Σ = (I − ηG)Σ(I − ηG) + η²κ (C̃ + M(Σ)),  C̃ = (1/N)Σ_n (u_n − ū)(u_n − ū)ᵀ,
      M(Σ) = (1/N)Σ_n (H̃_n − H̃) Σ (H̃_n − H̃),

    (with momentum the same noise κ(C̃ + M(Σ_zz)) enters the state's discrete Lyapunov equation through B), where
    κ = (N − S)/(S(N − 1)) for S of N examples drawn without replacement (E[Δ_B ⊗ Δ_B] = κ (1/N)Σ_n
    (H̃_n − H̃)⊗(H̃_n − H̃), the same factor as for the gradients), or 1/S with ``sampling="with"``. It is solved in
    G's eigenbasis by ``sde.theory.multiplicative_covariance``; its homogeneous part's spectral radius ρ
    (``sde.theory.second_moment_radius``) decides: a stationary law exists iff ρ < 1. Where it does not, the result
    says ``stable=False`` and its covariance is NaN; ρ, above 1, is E[zzᵀ]'s growth per step. In one direction of
    curvature a with spread s² = (1/N)Σ(h_n − a)², ρ = (1 − ηa)² + η²κs².

    **Exact** for a model whose per-example losses are quadratic in θ (a linear model with the half-squared loss:
    ``sde.theory.stationary_covariance(..., noise="minibatch")``) when V spans the parameter space, in any
    orthonormal basis, with or without momentum and weight decay, at any θ₀ (the fixed point is then the
    minimum). For a network it is the law of the linearised dynamics: third and higher derivatives of the loss,
    over the region SGD explores, are neglected.

    **k < P directions.** The complement w = Uᵀ(θ − θ*) (UUᵀ = I − VVᵀ) is held at 0. Neglected: (i) the mean
    coupling VᵀHU w, zero when span V is invariant under H (V eigenvectors of the Hessian at θ₀, the intended use);
    (ii) the fluctuation coupling: with a_n = H_n − H, a batch moves z by −ηVᵀ(H_B − H)U w, which adds to C̃ the
    noise (1/N)Σ_n [Vᵀa_nU Σ_ww Uᵀa_nV + Vᵀa_nV Σ_zw Uᵀa_nV + its transpose] (Σ_ww, Σ_zw: the complement's
    covariance and its covariance with z), to be propagated through the same law; (iii) the fixed point is the
    Newton step within span V. The gradient noise itself is projected exactly (VᵀCV). Along eigenvectors that is
    all (``tests/test_linearised.py`` adds (ii) back and recovers the exact law to 1e-10): the result is the law
    given a complement at rest, low by about the ratio of (ii) to C̃. That ratio is not small when every example
    couples every pair of directions (isotropic inputs of a linear model: (ii) is 28 % of C̃ and the top-2
    variances 20 % low); for a network it is not known in advance.

    **Subsampled examples** (``examples`` = n < N): d_n and H̃_n of n examples drawn uniformly without replacement
    (``rng``) stand for the N: the means from them, the covariances C̃ and M by the unbiased finite-population
    estimator (N − 1)/(N(n − 1))·Σ over the n; κ keeps the real N. The error is the sampling error of these second
    and fourth moments (relative ~ √(excess kurtosis/n), larger for heavy-tailed per-example curvatures), amplified
    by 1/(1 − ρ) near the threshold, where the plug-in value is also biased (O(1/n)). ``covariance_stderr`` and
    ``spectral_radius_stderr`` give it by a delete-a-group jackknife over ``jackknife_groups`` random groups
    (``jackknife_groups`` − 1 degrees of freedom; no finite-population correction). It is approximate for these
    heavy-tailed moments: on least squares with 400 of 2 000 examples the z-scores of 16 draws had standard
    deviations 0.8–1.5 (``tests/test_linearised.py``).

    Args:
        model: the network at θ₀ (not changed; batch norm is refused, as SGD runs it in train mode where an
            example's loss depends on its batch); dropout is switched off.
        loss_fn: ``loss_fn(outputs, targets, reduction=...)``, the mean by default (a torch loss).
        inputs, targets: the N examples SGD samples.
        eta, batch_size, momentum, weight_decay: SGD's setting (torch's conventions; no dampening or Nesterov).
        directions: ``(P, k)`` with orthonormal columns, or ``None`` for the parameter basis (P <= ``MAX_FULL_DIM``).
        sampling: ``"without"`` (default) or ``"with"`` replacement.
        examples: compute the curvature of this many examples (default all N); ``rng`` (required then) draws them.
        jackknife_groups: groups of the jackknife when subsampled (>= 2).
        chunk: examples per forward pass; dtype: the measurement's dtype (float64 default); device: the model's.
        transient_steps: also predict E‖ζ_t‖² over this many steps from θ₀ (``transient``; 0: not).

    Returns:
        A ``LinearisedCovariance``.

    Raises:
        ValueError: bad arguments, batch norm, directions not orthonormal, P > ``MAX_FULL_DIM`` without directions.
    """
    from nets.curvature.operator import batch_norm_layers
    from quadratic.sampling import batch_noise_factor

    t0 = time.perf_counter()
    eta = validate.positive_float("eta", eta)
    transient_steps = validate.positive_int("transient_steps", transient_steps, minimum=0)
    momentum = validate.float_in("momentum", momentum, 0.0, 1.0)
    gamma = validate.nonnegative_float("weight_decay", weight_decay)
    n_all = int(inputs.shape[0])
    if sampling not in ("with", "without"):
        raise ValueError(f"sampling must be 'with' or 'without', got {sampling!r}")
    kappa = batch_noise_factor(batch_size, n_all, sampling=sampling)
    if batch_norm_layers(model):
        raise ValueError("linearised_covariance needs a network without batch norm: SGD runs it in train mode, "
                         "where an example's loss depends on the other examples of its batch")
    if examples is None or int(examples) >= n_all:
        indices = None
        n_used = n_all
    else:
        n_used = validate.positive_int("examples", examples, minimum=2)
        # In the draw's random order: the jackknife's consecutive groups are then random groups.
        indices = validate.generator("rng", rng).choice(n_all, size=n_used, replace=False)
        jackknife_groups = validate.positive_int("jackknife_groups", jackknife_groups, minimum=2)
        if jackknife_groups > n_used // 2:
            raise ValueError(f"jackknife_groups ({jackknife_groups}) must be at most examples/2 = {n_used // 2}")
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=chunk, bn_mode="eval", dtype=dtype,
                         device=device)
    if directions is None:
        if op.dim > MAX_FULL_DIM:
            raise ValueError(f"directions=None works in the parameter basis, for models of at most {MAX_FULL_DIM} "
                             f"parameters; this one has {op.dim}: pass directions (P x k, orthonormal columns)")
        v = np.eye(op.dim)
    else:
        v = np.asarray(directions, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] != op.dim or not 1 <= v.shape[1] <= op.dim:
            raise ValueError(f"directions must have shape ({op.dim}, k) with 1 <= k <= {op.dim}, got {v.shape}")
        err = float(np.max(np.abs(v.T @ v - np.eye(v.shape[1]))))
        if err > 1e-6:
            raise ValueError(f"directions must have orthonormal columns: |V^T V - I| reaches {err:.3g}")
    k = v.shape[1]
    theta = v.T @ op.flatten([p.detach().double() for p in op.params]).cpu().numpy()
    d, h = projected_curvatures(op, v, indices=indices, chunk=chunk)
    kw = dict(dataset_size=n_all, eta=eta, kappa=kappa, momentum=momentum, gamma=gamma,
              transient_steps=transient_steps)
    law = linearised_law(d, h, theta, **kw)
    cov_se, rho_se = np.full((k, k), math.nan), math.nan
    transient_se = np.full(transient_steps + 1, math.nan) if transient_steps else ()
    if indices is not None:  # delete-a-group jackknife over the subsample
        groups = np.array_split(np.arange(n_used), jackknife_groups)
        reps = []
        for g in groups:
            keep = np.setdiff1d(np.arange(n_used), g)
            reps.append(linearised_law(d[keep], h[keep], theta, **kw))
        factor = (jackknife_groups - 1) / jackknife_groups
        rhos = np.array([r["spectral_radius"] for r in reps])
        rho_se = float(np.sqrt(factor * np.sum((rhos - rhos.mean()) ** 2)))
        if law["spectral_radius"] < 1.0:
            covs = np.array([r["covariance"] for r in reps])
            cov_se = np.sqrt(factor * np.sum((covs - covs.mean(axis=0)) ** 2, axis=0))  # NaN/inf if one diverges
            if not np.all(np.isfinite(covs)):
                cov_se = np.full((k, k), math.inf)
        if transient_steps:
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf past OVERFLOW: NaN there
                ts = np.array([r["transient"] for r in reps])
                transient_se = np.sqrt(factor * np.sum((ts - ts.mean(axis=0)) ** 2, axis=0))
    notes = list(law.pop("notes"))
    stable = bool(law["spectral_radius"] < 1.0 and np.all(np.isfinite(law["covariance"])))
    if not stable and law["spectral_radius"] >= 1.0:
        notes.append(f"no stationary law: the second-moment recursion's spectral radius is "
                     f"{law['spectral_radius']:.6g} >= 1 (mean-square unstable"
                     f"{'' if law['additive_radius'] < 1 else ', the mean update too'}): E[zz^T] grows by that "
                     "factor per step; covariance left NaN")
    return LinearisedCovariance(covariance_stderr=cov_se, stable=stable, spectral_radius_stderr=rho_se, kappa=kappa,
                                eta=eta, batch_size=int(batch_size), momentum=momentum, weight_decay=gamma,
                                sampling=sampling, dataset_size=n_all, examples=n_used, directions=k,
                                seconds=time.perf_counter() - t0, notes=tuple(notes),
                                transient_stderr=transient_se, **law)
