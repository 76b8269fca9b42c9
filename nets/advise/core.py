"""The advisor's library: measure a model where it stands, predict SGD at (βη, βS) for each β, and verify by
training (``nets.advise``'s package docstring says what and how)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from nets.basin import linearised_law, projected_curvatures
from nets.curvature import HessianOperator, batch_sharpness, gradient_noise, top_eigenvalues
from nets.curvature.lanczos import slq
from quadratic import Quadratic
from quadratic.sampling import batch_noise_factor, finite_data_factor
from sde.theory import expected_loss, learning_curve
from sgd_noise_common import validate
from sgd_noise_common.results import Result
from sgd_noise_common.seeds import spawn_seeds

__all__ = ["advise", "verify", "Advice", "AdviceRow", "AdviceMeasurements", "default_betas", "MECHANISMS",
           "ADVICE_STREAMS"]

#: What makes a β depart from β = 1 (``Advice.mechanism``).
MECHANISMS = ("stability", "discreteness", "finite data", "batch > N")
#: The random streams of one advice, children of its seed: the measurement examples, the Hessian's Lanczos start,
#: the density's probes, the noise, batch sharpness' batches, and the verification's batch orders.
ADVICE_STREAMS = ("examples", "eigen", "density", "noise", "sharpness", "verify")


def default_betas(batch_size: int, dataset_size: int) -> tuple[int, ...]:
    """1, 2, 4, … up to N/S (the last β whose batch fits in the data; at least (1,))."""
    out, b = [], 1
    while b * batch_size <= dataset_size:
        out.append(b)
        b *= 2
    return tuple(out) or (1,)


def check_betas(betas) -> tuple[float, ...]:
    """``betas`` as floats: every β >= 1, strictly increasing, starting at 1 (the reference)."""
    try:
        vals = tuple(float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be numbers >= 1, got {betas!r}") from None
    if not vals:
        raise ValueError("betas must hold at least one value (1, the run itself)")
    if any(not math.isfinite(b) or b < 1 for b in vals):
        raise ValueError(f"every beta must be a finite number >= 1, got {list(vals)}")
    if any(b2 <= b1 for b1, b2 in zip(vals, vals[1:])):
        raise ValueError(f"betas must be strictly increasing, got {list(vals)}")
    if vals[0] != 1:
        raise ValueError(f"betas must start at 1 (the run itself, the reference), got {list(vals)}")
    return vals


@dataclass(frozen=True)
class AdviceMeasurements(Result):
    """What the advisor measured at the model's parameters.

    Attributes:
        eta, batch_size, momentum, weight_decay, dataset_size: the run's η, S, μ, γ and N.
        examples: the measurement set (drawn from the N); bn_mode, bn_statistics: the batch-norm mode of the
            measured loss and its statistics in words ("no batch norm" without it).
        loss: L(θ) on the measurement set (data loss plus (γ/2)‖θ‖²), the curves' starting point; train_accuracy:
            its accuracy there (eval mode).
        lambda_max, top_eigenvalues: the Hessian's (weight decay included) top-k, descending; eig_converged.
        trace_h, trace_h_stderr: Tr(H) by stochastic Lanczos quadrature (P · its first moment), weight decay
            included (γP).
        trace_c, trace_c_stderr, grad_sq, grad_sq_stderr, b_simple, b_simple_stderr: ``gradient_noise`` (data loss;
            train-mode batch norm: McCandlish's two-batch estimators). ``b_simple_lower_bound``: ‖G‖²'s estimate
            was <= 0, and B_simple is Tr(C)/‖ḡ‖² with the measurement set's mean gradient, a lower bound.
        batch_sharpness, batch_sharpness_stderr: E_B[g_BᵀH_Bg_B]/E_B[‖g_B‖²] at batches of S.
        top_noise: v_iᵀCv_i along the top-k; curvature_spread: (1/N)Σ_n (v_iᵀ(H_n − H)v_i)².
        bulk_nodes, bulk_multiplicities: the bulk's surrogate spectrum; surrogate_trace_c: the Tr(C) it shares out
            (``trace_c``, or with train-mode batch norm the same batches' Tr(C) as the top-k's spread, so that
            both describe one loss); notes: what was approximated.
    """

    eta: float
    batch_size: int
    momentum: float
    weight_decay: float
    dataset_size: int
    examples: int
    bn_mode: str
    bn_statistics: str
    loss: float
    train_accuracy: float
    lambda_max: float
    top_eigenvalues: tuple
    eig_converged: bool
    trace_h: float
    trace_h_stderr: float
    trace_c: float
    trace_c_stderr: float
    grad_sq: float
    grad_sq_stderr: float
    b_simple: float
    b_simple_stderr: float
    b_simple_lower_bound: bool
    batch_sharpness: float
    batch_sharpness_stderr: float
    top_noise: tuple
    curvature_spread: tuple
    bulk_nodes: tuple
    bulk_multiplicities: tuple
    surrogate_trace_c: float
    num_params: int
    seconds: float
    notes: tuple = ()


@dataclass(frozen=True)
class AdviceRow(Result):
    """One β: its setting and what is predicted (and measured) there.

    Attributes:
        beta, eta, batch_size: β, βη and βS.
        impossible: βS > N (no such batch); the predictions are then NaN.
        stable: mean-square stability of the linearised law along the top-k at (βη, βS) (ρ < 1).
        stability_margin: ρ, the second-moment recursion's spectral radius; additive_margin: the same without the
            batch Hessian's fluctuation.
        kappa_factor: κ(βS)·β/κ(S) = (N − βS)/(N − S): how far the noise departs from η/S-invariance (1: none).
        discrete_correction: the discrete-time excess of the stationary loss along λ_max over the SDE's at the same
            η/S, (SGD / SDE) − 1 (inf where βηλ_max leaves the stable range).
        noise_over_signal: βS / B_simple (the SDE picture needs it below about 1: Li, Malladi & Arora 2021).
        predicted_curve: L_β at the checkpoints (``Advice.checkpoints``); predicted_deviation: max over them of
            |L_β − L_1| / L_1; deviation_invariant_noise: the same with κ_1/β (finite data switched off).
        mechanism: the largest departure's cause ("" when within tolerance).
        measured_curve, measured_curve_stderr, measured_deviation, measured_diverged, measured_val_accuracy:
            ``verify``'s (the mean over seeds; NaN/() until verified).
    """

    beta: float
    eta: float
    batch_size: int
    impossible: bool
    stable: bool
    stability_margin: float
    additive_margin: float
    kappa_factor: float
    discrete_correction: float
    noise_over_signal: float
    predicted_curve: tuple
    predicted_deviation: float
    deviation_invariant_noise: float
    mechanism: str
    measured_curve: tuple = ()
    measured_curve_stderr: tuple = ()
    measured_deviation: float = math.nan
    measured_diverged: int = 0
    measured_val_accuracy: float = math.nan


@dataclass(frozen=True)
class Advice(Result):
    """The advice for one model and setting (``advise``), and its verification (``verify``).

    Attributes:
        measurements: ``AdviceMeasurements``.
        rows: one ``AdviceRow`` per β.
        checkpoints: the examples seen at which the curves are compared; horizon: the last.
        tol: the relative deviation that counts as a departure.
        beta_star: the smallest β predicted to depart (NaN when none does); mechanism: why.
        beta_star_measured: by ``verify``, the same criterion on the measured curves (NaN: none departs, or not
            verified); verified_seeds: how many batch orders per β (0: not verified).
        mccandlish_beta: B_simple/S, the β at which βS reaches the noise scale (McCandlish et al. 2018's critical
            batch size estimate).
        top_k, seconds, notes: the surrogate's k, the wall time and what was approximated.
        seed: the advice's seed (its measurement set; ``verify`` measures on the same examples).
    """

    measurements: AdviceMeasurements
    rows: tuple
    checkpoints: tuple
    horizon: int
    tol: float
    beta_star: float
    mechanism: str
    mccandlish_beta: float
    top_k: int
    seconds: float
    beta_star_measured: float = math.nan
    verified_seeds: int = 0
    notes: tuple = ()
    seed: int = 0

    def to_dict(self) -> dict:
        """``advice.json``'s data: the issue's summary keys first, then every field."""
        d = super().to_dict()
        d["beta_star"] = {"predicted": self.beta_star, "mechanism": self.mechanism,
                          "measured": self.beta_star_measured if self.verified_seeds else None}
        d["b_simple"] = self.measurements.b_simple
        d["lambda_max"] = self.measurements.lambda_max
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Advice:
        """The advice from ``to_dict``'s data (``advice.json``)."""
        d = dict(data)
        star = d.pop("beta_star")
        d.pop("b_simple", None)
        d.pop("lambda_max", None)
        d["beta_star"] = star["predicted"]
        out = super(Advice, cls).from_dict(d)
        return replace(out, rows=tuple(AdviceRow.from_dict(r) for r in out.rows))


# ----------------------------------------------------------------------------------------------- measuring
def _measurement_set(x, y, examples: int, seed):
    """The measurement set: ``examples`` of the N drawn by ``seed``, in their order in the data (all when
    ``examples`` >= N)."""
    n_all = int(x.shape[0])
    if examples >= n_all:
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(n_all, size=examples, replace=False))
    sel = torch.as_tensor(idx, device=x.device)
    return x[sel], y[sel]


def measured_operator(model, loss_fn, xm, ym, *, bn_mode, batch_size, weight_decay, chunk):
    """The advisor's measured loss: eval mode (passes of ``chunk``) or train-mode batch norm with the statistics
    of consecutive batches of the run's S (the loss SGD descends), float64."""
    return HessianOperator(model, loss_fn, xm, ym, batch_size=batch_size if bn_mode == "train" else chunk,
                           bn_mode=bn_mode, weight_decay=weight_decay, dtype=torch.float64)


def _batch_projections(model, loss_fn, x, y, v, *, batch_size, batches, kappa, rng):
    """Pseudo-examples for ``linearised_law`` from whole batches, for train-mode batch norm, where an example's
    loss is not defined apart from its batch: ``batches`` batches of S drawn without replacement from the N, each
    with its projected gradient d_B = Vᵀ∇L_B and curvature VᵀH_BV (reverse-over-reverse HVPs, the operator's
    trusted arithmetic), spread about their mean by 1/√κ(S): their covariance is then Cov over batches / κ(S),
    the per-example covariance that κ(βS) scales for the other batch sizes. (Forward-mode derivatives through
    train-mode batch norm disagree with the HVPs here, so ``projected_curvatures(within_batch=True)`` is not used.)
    The examples of a batch normalised together are not independent, so κ's scaling to βS is an approximation."""
    n = int(x.shape[0])
    vt = torch.as_tensor(v, dtype=torch.float64)
    d = np.empty((batches, v.shape[1]))
    h = np.empty((batches, v.shape[1], v.shape[1]))
    sq, total = 0.0, None
    for r in range(batches):
        idx = torch.as_tensor(np.sort(rng.choice(n, size=batch_size, replace=False)), device=x.device)
        op = HessianOperator(model, loss_fn, x[idx], y[idx], batch_size=batch_size, bn_mode="train",
                             dtype=torch.float64)
        g = op.gradient()
        sq += float(g @ g)
        total = g.clone() if total is None else total + g
        d[r] = v.T @ g.cpu().numpy()
        hv = op.matmat_tensor(vt.to(op.device)).cpu().numpy()
        h[r] = 0.5 * (v.T @ hv + (v.T @ hv).T)
    mean = total / batches
    # Tr Cov over batches (unbiased over the draws) / κ(S): the per-example Tr(C) of the same loss as d and h.
    trace_c = (sq / batches - float(mean @ mean)) * batches / (batches - 1) / kappa
    spread = 1.0 / math.sqrt(kappa)
    d = d.mean(axis=0) + (d - d.mean(axis=0)) * spread
    h = h.mean(axis=0) + (h - h.mean(axis=0)) * spread
    return d, h, trace_c


def _measure(model, loss_fn, x, y, *, eta, batch_size, momentum, weight_decay, dataset_size, top_k, examples,
             density_runs, density_steps, sharpness_batches, bn_mode, streams, chunk, say):
    """The measurements and the per-example projections along the top-k (``AdviceMeasurements``, d, h, Vᵀθ)."""
    t0 = time.perf_counter()
    notes = []
    xm, ym = _measurement_set(x, y, examples, streams["examples"])
    op = measured_operator(model, loss_fn, xm, ym, bn_mode=bn_mode, batch_size=batch_size, weight_decay=weight_decay,
                   chunk=chunk)
    loss = op.loss()
    with torch.no_grad():
        correct = 0
        step = op.batch_size
        for a in range(0, int(xm.shape[0]), step):
            correct += int((op.model(op.inputs[a:a + step]).argmax(dim=1) == op.targets[a:a + step]).sum())
    acc = correct / int(xm.shape[0])
    say(f"loss at the run's end {loss:.5g} (accuracy {acc:.4f} on {xm.shape[0]} examples; {op.bn_statistics})")
    eig = top_eigenvalues(model, loss_fn, xm, ym, k=top_k, batch_size=op.batch_size, bn_mode=bn_mode,
                          weight_decay=weight_decay, rng=streams["eigen"], tol=1e-6, dtype=torch.float64)
    lam = np.asarray(eig.eigenvalues, dtype=np.float64)
    v = np.asarray(eig.eigenvectors, dtype=np.float64)
    if not eig.converged:
        notes.append(f"the top-{top_k} eigenpairs did not reach relative accuracy 1e-6 ({eig.matvecs} HVPs)")
    say(f"top-{top_k} Hessian eigenvalues {', '.join(f'{a:.4g}' for a in lam)} ({eig.seconds:.1f} s)")
    dens = slq(op.matvec_tensor, op.dim, num_runs=density_runs, num_steps=density_steps, rng=streams["density"],
               device=op.device)
    m1, m1_se = dens.moment(1)
    trace_h, trace_h_se = op.dim * m1, op.dim * m1_se
    if bn_mode == "train":
        noise = gradient_noise(model, loss_fn, xm, ym, batch_size=min(batch_size, int(xm.shape[0])),
                               method="two_batch", bn_mode="train", rng=streams["noise"])
    else:
        noise = gradient_noise(model, loss_fn, xm, ym, batch_size=min(chunk, int(xm.shape[0])),
                               method="per_example", rng=streams["noise"])
    say(f"Tr(H) {trace_h:.4g}, Tr(C) {noise.trace_c:.4g}, |grad L|^2 {noise.grad_sq:.4g}, B_simple "
        f"{noise.noise_scale:.4g}")
    bs = batch_sharpness(model, loss_fn, xm, ym, batch_size=min(batch_size, int(xm.shape[0])), bn_mode=bn_mode,
                         rng=streams["sharpness"], batches=sharpness_batches, weight_decay=weight_decay)
    if bn_mode == "train":
        kappa = batch_noise_factor(batch_size, dataset_size, sampling="without")
        d, h, surrogate_trace_c = _batch_projections(model, loss_fn, x, y, v, batch_size=batch_size,
                                                     batches=sharpness_batches, kappa=kappa,
                                                     rng=np.random.default_rng(streams["sharpness"]))
        notes.append(f"batch norm in train mode: the per-example spread along the top-k, and the Tr(C) the "
                     f"surrogate's bulk uses ({surrogate_trace_c:.4g}), are inferred from {sharpness_batches} "
                     f"batches of S = {batch_size} (covariance over batches / kappa(S)), and scaled to other batch "
                     "sizes by kappa as if the examples were independent")
    else:
        d, h = projected_curvatures(op, v)
        surrogate_trace_c = float(noise.trace_c)
    flat_theta = op.flatten([p.detach().double() for p in op.params]).cpu().numpy()
    op_theta = v.T @ flat_theta
    grad = op.gradient().cpu().numpy()
    b_simple, b_simple_se, b_bound = float(noise.noise_scale), float(noise.noise_scale_stderr), False
    if not noise.grad_sq > 0:
        # ‖G‖² not resolved (its unbiased estimate <= 0): Tr(C)/‖ḡ‖² with the measurement set's own mean gradient
        # ‖ḡ‖² >= ‖G‖² in expectation (plus the noise Tr(C)/M): a lower bound on B_simple.
        data_grad = grad - weight_decay * flat_theta
        b_simple, b_simple_se, b_bound = float(noise.trace_c / float(data_grad @ data_grad)), math.nan, True
        notes.append(f"|G|^2 is not resolved by the {xm.shape[0]} measurement examples (estimate "
                     f"{noise.grad_sq:.3g}); B_simple is the lower bound Tr(C)/|mean gradient|^2 = {b_simple:.4g}")
    scale = 1.0 / d.shape[0]
    hbar = h.mean(axis=0)
    spread = np.einsum("nii->ni", h - hbar)
    dc = d - d.mean(axis=0)
    top_noise = np.einsum("ni,ni->i", dc, dc) * scale
    # The bulk: SLQ's nodes below λ_k, multiplicities (P − k)·weight (the top-k's own share of the density, ~k/P,
    # falls above λ_k); nodes <= 0 carry no dynamics in a quadratic surrogate and are left out.
    nodes = dens.nodes.ravel()
    weights = dens.weights.ravel() / dens.nodes.shape[0]
    keep = (nodes < lam[-1]) & (nodes > 0) & (op.dim > top_k)
    if np.any(nodes <= 0):
        notes.append(f"the density's nodes <= 0 (weight {weights[nodes <= 0].sum():.3f}) are left out of the bulk "
                     "(no restoring force in a quadratic surrogate)")
    mult = weights[keep] * (op.dim - top_k) / max(weights[keep].sum(), np.finfo(float).tiny)
    meas = AdviceMeasurements(
        eta=eta, batch_size=int(batch_size), momentum=momentum, weight_decay=weight_decay, dataset_size=dataset_size,
        examples=int(xm.shape[0]), bn_mode=bn_mode, bn_statistics=op.bn_statistics, loss=loss, train_accuracy=acc,
        lambda_max=float(lam[0]), top_eigenvalues=tuple(map(float, lam)), eig_converged=bool(eig.converged),
        trace_h=float(trace_h), trace_h_stderr=float(trace_h_se), trace_c=float(noise.trace_c),
        trace_c_stderr=float(noise.trace_c_stderr), grad_sq=float(noise.grad_sq),
        grad_sq_stderr=float(noise.grad_sq_stderr), b_simple=b_simple, b_simple_stderr=b_simple_se,
        b_simple_lower_bound=b_bound, batch_sharpness=float(bs.estimate),
        batch_sharpness_stderr=float(bs.stderr), top_noise=tuple(map(float, top_noise)),
        curvature_spread=tuple(map(float, (spread ** 2).sum(axis=0) * scale)),
        bulk_nodes=tuple(map(float, nodes[keep])), bulk_multiplicities=tuple(map(float, mult)),
        surrogate_trace_c=surrogate_trace_c, num_params=op.dim,
        seconds=time.perf_counter() - t0, notes=tuple(notes))
    bulk_grad_sq = max(float(grad @ grad) - float(np.sum((v.T @ grad) ** 2)), 0.0)
    return meas, d, h, op_theta, bulk_grad_sq


# ------------------------------------------------------------------------------------------------ predicting
def _bulk_curve(meas: AdviceMeasurements, bulk_grad_sq: float, *, eta, kappa, steps) -> np.ndarray:
    """ΔL of the bulk over ``steps`` steps at (η, κ): each node j a group of m_j identical directions of curvature
    a_j = λ_j (γ included: the density is of the objective's Hessian), noise c_j ∝ a_j, start offset z equal in
    every direction with Σ m_j a_j² z² = the bulk's gradient energy (``sde.theory.learning_curve`` on one direction
    per group, scaled: offset √m_j z and noise m_j c_j give m_j times one direction's loss)."""
    a = np.asarray(meas.bulk_nodes, dtype=np.float64)
    m = np.asarray(meas.bulk_multiplicities, dtype=np.float64)
    if a.size == 0 or not np.sum(m * a) > 0:
        return np.zeros(steps + 1)
    bulk_c = max(meas.surrogate_trace_c - float(np.sum(meas.top_noise)), 0.0)
    c = a * bulk_c / float(np.sum(m * a))
    z = math.sqrt(bulk_grad_sq / float(np.sum(m * a * a)))
    q = Quadratic.from_spectrum(a, noise_covariance=m * c)
    start = q.minimum + q.eigenvectors @ (np.sqrt(m) * z * np.ones(a.size))
    curve = learning_curve(q, np.full(steps, eta), np.full(steps, kappa), theta0=start, momentum=meas.momentum)
    return curve - curve[0]


def _discrete_correction(meas: AdviceMeasurements, eta: float, batch_size: int) -> float:
    """(SGD / SDE) − 1 of the stationary loss along λ_max at (η, S) with C = H there (``sde.theory``)."""
    q = Quadratic.from_spectrum([meas.lambda_max])
    try:
        sgd = expected_loss(q, eta, batch_size, momentum=meas.momentum)
    except ValueError:  # outside the stable range: no stationary loss
        return math.inf
    return sgd / expected_loss(q, eta, batch_size, process="sde", momentum=meas.momentum) - 1.0


def _predict(meas, d, h, theta, bulk_grad_sq, beta, checkpoints, *, kappa=None) -> dict:
    """One β's predicted curve at the checkpoints and its linearised stability (κ: default that of βS of N)."""
    s = int(round(beta * meas.batch_size))
    eta = beta * meas.eta
    if kappa is None:
        kappa = batch_noise_factor(s, meas.dataset_size, sampling="epoch")
    steps = [int(e // s) for e in checkpoints]
    law = linearised_law(d, h, theta, dataset_size=meas.dataset_size, eta=eta, kappa=kappa,
                         momentum=meas.momentum, gamma=meas.weight_decay, transient_steps=max(steps))
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.asarray(law["transient_loss"], dtype=np.float64)
        bulk = _bulk_curve(meas, bulk_grad_sq, eta=eta, kappa=kappa, steps=max(steps))
        curve = meas.loss + top[steps] + bulk[steps]
    curve = np.where(np.isfinite(curve), curve, math.inf)
    return {"curve": curve, "rho": float(law["spectral_radius"]), "rho_additive": float(law["additive_radius"])}


def _deviation(curve, reference) -> float:
    """max over the checkpoints of |L_β − L_1| / L_1 (inf where L_β is not finite)."""
    c = np.asarray(curve, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.size == 0 or not np.all(np.isfinite(c)):
        return math.inf
    return float(np.max(np.abs(c - r) / np.abs(r)))


def _checkpoints(meas, betas, horizon) -> tuple[int, ...]:
    """Every B examples up to the horizon (at least 4 checkpoints), B the least common multiple of the possible
    batches βS, so that every β has whole steps at each checkpoint (``check_betas_for``)."""
    big = math.lcm(*[int(round(b * meas.batch_size)) for b in betas if b * meas.batch_size <= meas.dataset_size])
    count = max(4, math.ceil(horizon / big))
    return tuple(big * j for j in range(1, count + 1))


def check_betas_for(betas, batch_size: int, dataset_size: int) -> None:
    """Every βS a whole number, and the possible ones with a common multiple of at most N (the checkpoints'
    spacing: every β compared at the same examples with whole steps)."""
    sizes = []
    for b in betas:
        s = b * batch_size
        if abs(s - round(s)) > 1e-9:
            raise ValueError(f"beta {b:g} times S = {batch_size} is {s:g}, not a whole batch; choose betas with "
                             "integer beta*S")
        if round(s) <= dataset_size:
            sizes.append(int(round(s)))
    common = math.lcm(*sizes)
    if common > dataset_size:
        raise ValueError(f"the batches beta*S ({', '.join(map(str, sizes))}) have no common multiple within N = "
                         f"{dataset_size} (theirs is {common}); the curves are compared at multiples of it: choose "
                         "betas whose batches divide the largest (1, 2, 4, ... do)")


def advise(model: nn.Module, loss_fn, inputs, targets, *, eta: float, batch_size: int,
           dataset_size: int | None = None, momentum: float = 0.0, weight_decay: float = 0.0, betas=None,
           top_k: int = 8, tol: float = 0.05, horizon: int | None = None, examples: int = 2000,
           density_runs: int = 4, density_steps: int = 40, sharpness_batches: int = 128, chunk: int = 500,
           bn_mode: str | None = None, seed=0, say=None) -> Advice:
    """Predict, for this model at its current parameters, how SGD at (βη, βS) departs from (η, S) (module
    docstring).

    Args:
        model: the network (not changed; eval mode for the measurements, batch norm's running statistics
            recomputed on the measurement set).
        loss_fn: ``loss_fn(outputs, targets, reduction=...)`` (a torch loss, the mean by default).
        inputs, targets: the training set SGD samples (its N examples; the measurements use ``examples`` of them).
        eta, batch_size, momentum, weight_decay: the run's η, S, μ (torch's, no dampening) and γ.
        dataset_size: N (default ``len(inputs)``).
        betas: the βs, 1 first and increasing (default ``default_betas``: 1, 2, 4, … up to N/S).
        top_k: the surrogate's exact directions; tol: the relative deviation of the loss curve that counts.
        horizon: examples over which the curves are compared (default 2 epochs, 2N).
        examples: the measurement set's size (at most N); density_runs, density_steps: the SLQ's;
        sharpness_batches: batch sharpness' batches (and, with train-mode batch norm, the batches the spread
            along the top-k is inferred from); chunk: examples per forward pass.
        bn_mode: the measured loss's batch norm: ``"train"`` (default for a model with batch norm: the statistics
            of batches of S, the loss SGD descends; in eval mode the curvature can be several times larger than
            the one SGD feels) or ``"eval"`` (running statistics recomputed on the measurement set).
        seed: the advice's seed (``ADVICE_STREAMS`` are spawned from it); say: a callable for progress lines.

    Returns:
        An ``Advice`` (not yet verified: ``verify`` does that).

    Raises:
        ValueError: bad arguments, before any measurement.
    """
    t0 = time.perf_counter()
    say = say or (lambda text: None)
    n = int(inputs.shape[0])
    if int(targets.shape[0]) != n:
        raise ValueError(f"inputs and targets must hold the same number of examples, got {n} and "
                         f"{int(targets.shape[0])}")
    dataset_size = n if dataset_size is None else validate.positive_int("dataset_size", dataset_size)
    eta = validate.positive_float("eta", eta)
    batch_size = validate.positive_int("batch_size", batch_size)
    if batch_size > dataset_size:
        raise ValueError(f"batch_size must lie in [1, dataset_size = {dataset_size}], got {batch_size}")
    momentum = validate.float_in("momentum", momentum, 0.0, 1.0)
    weight_decay = validate.nonnegative_float("weight_decay", weight_decay)
    betas = check_betas(default_betas(batch_size, dataset_size) if betas is None else betas)
    check_betas_for(betas, batch_size, dataset_size)
    top_k = validate.positive_int("top_k", top_k)
    tol = validate.positive_float("tol", tol)
    horizon = 2 * dataset_size if horizon is None else validate.positive_int("horizon", horizon)
    examples = min(validate.positive_int("examples", examples, minimum=2), n)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if top_k > num_params:
        raise ValueError(f"top_k must be at most the model's number of parameters ({num_params}), got {top_k}")
    from nets.curvature.operator import batch_norm_layers

    has_bn = bool(batch_norm_layers(model))
    if bn_mode is None:
        bn_mode = "train" if has_bn else "eval"
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    if not has_bn:
        bn_mode = "eval"
    if bn_mode == "train" and batch_size < 2:
        raise ValueError("train-mode batch norm needs batch_size >= 2")
    if bn_mode == "train" and batch_size >= dataset_size:
        raise ValueError(f"batch_size = N = {dataset_size} with train-mode batch norm: every batch is the whole "
                         "set, so there is no batch-to-batch spread to measure; use bn_mode='eval'")
    if bn_mode == "train" and dataset_size != n:
        raise ValueError(f"dataset_size ({dataset_size}) must be len(inputs) ({n}) with train-mode batch norm: the "
                         "batches are drawn from the inputs")
    if bn_mode == "train":
        examples -= examples % batch_size  # whole batches of S
        if examples < batch_size:
            raise ValueError(f"examples must hold at least one batch of S = {batch_size} with train-mode batch norm")
    streams = spawn_seeds(seed, ADVICE_STREAMS)
    meas, d, h, theta, bulk_grad_sq = _measure(
        model, loss_fn, inputs, targets, eta=eta, batch_size=batch_size, momentum=momentum,
        weight_decay=weight_decay, dataset_size=dataset_size, top_k=top_k, examples=examples,
        density_runs=density_runs, density_steps=density_steps, sharpness_batches=sharpness_batches,
        bn_mode=bn_mode, streams=streams, chunk=chunk, say=say)
    checkpoints = _checkpoints(meas, betas, horizon)
    kappa1 = batch_noise_factor(batch_size, dataset_size, sampling="epoch")
    ref = _predict(meas, d, h, theta, bulk_grad_sq, 1.0, checkpoints)
    rows = []
    for beta in betas:
        s = int(round(beta * batch_size))
        common = dict(beta=beta, eta=beta * eta, batch_size=s,
                      noise_over_signal=s / meas.b_simple if meas.b_simple > 0 else math.inf)
        if s > dataset_size:
            rows.append(AdviceRow(**common, impossible=True, stable=False, stability_margin=math.nan,
                                  additive_margin=math.nan, kappa_factor=math.nan, discrete_correction=math.nan,
                                  predicted_curve=(), predicted_deviation=math.inf,
                                  deviation_invariant_noise=math.nan, mechanism="batch > N"))
            continue
        p = ref if beta == 1 else _predict(meas, d, h, theta, bulk_grad_sq, beta, checkpoints)
        inv = ref if beta == 1 else _predict(meas, d, h, theta, bulk_grad_sq, beta, checkpoints,
                                             kappa=kappa1 / beta)
        dev = _deviation(p["curve"], ref["curve"])
        dev_inv = _deviation(inv["curve"], ref["curve"])
        mech = ""
        if dev > tol:
            mech = "stability" if p["rho"] >= 1 else "discreteness" if dev_inv > tol else "finite data"
        rows.append(AdviceRow(**common, impossible=False, stable=p["rho"] < 1, stability_margin=p["rho"],
                              additive_margin=p["rho_additive"],
                              kappa_factor=float(finite_data_factor(s, dataset_size)
                                                 / finite_data_factor(batch_size, dataset_size))
                              if batch_size < dataset_size else math.nan,
                              discrete_correction=_discrete_correction(meas, beta * eta, s),
                              predicted_curve=tuple(map(float, p["curve"])), predicted_deviation=dev,
                              deviation_invariant_noise=dev_inv, mechanism=mech))
        say(f"beta {beta:g}: rho {p['rho']:.4g}, predicted deviation {dev:.3g}" + (f" ({mech})" if mech else ""))
    star = next((r for r in rows if r.predicted_deviation > tol), None)
    notes = ["the surrogate: top-k linearised law (exact for per-example quadratic losses) plus an SLQ bulk with "
             "C proportional to H and an isotropic start offset in the bulk; third and higher derivatives "
             "neglected"]
    return Advice(measurements=meas, rows=tuple(rows), checkpoints=checkpoints, horizon=int(checkpoints[-1]),
                  tol=tol, beta_star=star.beta if star else math.nan, mechanism=star.mechanism if star else "",
                  mccandlish_beta=meas.b_simple / batch_size if meas.b_simple > 0 else math.nan, top_k=top_k,
                  seconds=time.perf_counter() - t0, notes=tuple(notes) + meas.notes,
                  seed=int(seed) if isinstance(seed, (int, np.integer)) else 0)


# ------------------------------------------------------------------------------------------------ verifying
def _measured_loss(model, loss_fn, xm, ym, meas: AdviceMeasurements, *, chunk) -> tuple[float, bool]:
    """The advisor's loss (``measured_operator``: the same examples, batch-norm mode and L2 term as the advice's) at the
    model's parameters; (inf, True) when the parameters are not finite."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return math.inf, True
    op = measured_operator(model, loss_fn, xm, ym, bn_mode=meas.bn_mode, batch_size=meas.batch_size,
                   weight_decay=meas.weight_decay, chunk=chunk)
    value = op.loss()
    return (value, False) if math.isfinite(value) else (math.inf, True)


def verify(advice: Advice, model: nn.Module, loss_fn, inputs, targets, *, seeds: int = 3, val_inputs=None,
           val_targets=None, dampening: float = 0.0, chunk: int = 500, seed=0, say=None) -> Advice:
    """Train from the model's parameters at each possible β for the advice's horizon, ``seeds`` batch orders
    each (epochs reshuffled as ``nets.train`` draws them), and measure the same loss at the same checkpoints:
    the measured curves (mean over seeds, with its standard error), deviations and β* by the same ``tol``. A run
    that diverges is a result: its curve is inf from there on and it counts as departed.

    Args:
        advice: from ``advise`` on this model and data (same ``inputs``/``targets``).
        model, loss_fn, inputs, targets: as given to ``advise`` (the model is not changed: copies train).
        seeds: batch orders per β (>= 1); val_inputs, val_targets: a validation set for each run's final accuracy.
        dampening: torch's momentum dampening of the run; chunk, seed, say: as for ``advise``.

    Returns:
        The advice with the measured fields filled in.
    """
    import copy

    from nets.data import BatchSampler
    from nets.evaluation import evaluate
    from nets.sgd import make_optimizer, sgd_step

    say = say or (lambda text: None)
    seeds = validate.positive_int("seeds", seeds)
    meas = advice.measurements
    n = int(inputs.shape[0])
    if n != meas.dataset_size:
        raise ValueError(f"verify trains on the inputs, {n} examples, but the advice is for N = {meas.dataset_size}")
    if dampening:
        raise ValueError(f"dampening must be 0 (the advice's law is torch's momentum without dampening), got "
                         f"{dampening}")
    # The measurement set is the advice's (its seed); ``seed`` draws the batch orders.
    xm, ym = _measurement_set(inputs, targets, meas.examples, spawn_seeds(advice.seed, ADVICE_STREAMS)["examples"])
    streams = spawn_seeds(seed, ADVICE_STREAMS)
    run_seeds = spawn_seeds(streams["verify"], tuple(f"seed{i}" for i in range(seeds)))
    curves = {}
    for row in advice.rows:
        if row.impossible:
            continue
        per_seed, diverged, accs = [], 0, []
        for i in range(seeds):
            m = copy.deepcopy(model)
            m.train()
            opt = make_optimizer(m, eta=row.eta, momentum=meas.momentum, dampening=dampening,
                                 weight_decay=meas.weight_decay)
            sampler = BatchSampler(n, seed=run_seeds[f"seed{i}"], device=inputs.device)
            values, seen, dead = [], 0, False
            for target in advice.checkpoints:
                while not dead and seen + row.batch_size <= target:
                    b = sampler.next(row.batch_size)
                    sgd_step(m, opt, inputs[b], targets[b], loss_fn=loss_fn)
                    seen += row.batch_size
                value, dead_now = (math.inf, True) if dead else _measured_loss(m, loss_fn, xm, ym, meas,
                                                                              chunk=chunk)
                dead = dead or dead_now
                values.append(value)
            diverged += dead
            per_seed.append(values)
            if val_inputs is not None and not dead:
                accs.append(evaluate(m, loss_fn, val_inputs, val_targets, batch_size=chunk)[1])
        arr = np.array(per_seed, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            mean = arr.mean(axis=0)
            se = arr.std(axis=0, ddof=1) / math.sqrt(seeds) if seeds > 1 else np.full(arr.shape[1], math.nan)
        curves[row.beta] = (mean, se, diverged, float(np.mean(accs)) if accs else math.nan)
        say(f"verify beta {row.beta:g}: final loss {mean[-1]:.5g}" + (f", {diverged} diverged" if diverged else ""))
    ref = curves[advice.rows[0].beta][0]
    rows = []
    for row in advice.rows:
        if row.beta not in curves:
            rows.append(row)
            continue
        mean, se, diverged, acc = curves[row.beta]
        rows.append(replace(row, measured_curve=tuple(map(float, mean)), measured_curve_stderr=tuple(map(float, se)),
                            measured_deviation=math.inf if diverged else _deviation(mean, ref),
                            measured_diverged=int(diverged), measured_val_accuracy=acc))
    star = next((r for r in rows if r.impossible or r.measured_deviation > advice.tol), None)
    return replace(advice, rows=tuple(rows), beta_star_measured=star.beta if star else math.nan,
                   verified_seeds=seeds)


def advise_run(run_dir, *, betas=None, tol: float = 0.05, top_k: int = 8, examples: int = 2000,
               epochs: float = 2.0, bn_mode: str | None = None, verify_seeds: int = 0, seed: int = 0,
               device: str | None = None, say=None) -> Advice:
    """``advise`` (and ``verify`` with ``verify_seeds`` > 0) on a finished ``nets.train`` run folder (read, never
    written), at the run's (η, S, μ, γ) over its training set with cross-entropy; the horizon is ``epochs`` of
    it. ``device``: where it runs (``None``: the run's own). The sweep's ``advise`` stage."""
    from torch.nn import functional as F

    from nets.train import load_run

    cfg, model, data = load_run(run_dir, device=device)
    if cfg.dampening:
        raise ValueError(f"the run uses momentum dampening {cfg.dampening:g}; the advisor's law is torch's momentum "
                         "without dampening")
    n = int(data.x_train.shape[0])
    a = advise(model, F.cross_entropy, data.x_train, data.y_train, eta=cfg.eta, batch_size=cfg.batch_size,
               momentum=cfg.momentum, weight_decay=cfg.weight_decay, betas=betas, top_k=top_k, tol=tol,
               horizon=max(1, int(epochs * n)), examples=examples, bn_mode=bn_mode, seed=seed, say=say)
    if verify_seeds:
        a = verify(a, model, F.cross_entropy, data.x_train, data.y_train, seeds=verify_seeds,
                   val_inputs=data.x_test, val_targets=data.y_test, seed=seed, say=say)
    return a
