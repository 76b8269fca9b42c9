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
from sgd_noise_common.stats import block_means

__all__ = ["Minimum", "find_minimum", "flat_parameters", "set_flat_parameters", "projected_noise",
           "predicted_variances", "directional_variances", "quadratic_profile", "QuadraticControl",
           "quadratic_control", "METHODS"]

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

    if op.bn_mode != "eval":
        raise ValueError("projected_noise needs bn_mode='eval' (per-example losses of a train-mode batch-norm "
                         "network depend on the other examples of the batch)")
    u = np.asarray(directions, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != op.dim:
        raise ValueError(f"directions must have shape ({op.dim}, m), got {u.shape}")
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
