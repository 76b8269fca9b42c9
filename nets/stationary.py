r"""The stationary phase of SGD on a trained network, and the paper's OU picture tested on it direction by direction.

``examine_basin`` continues SGD at a fixed (η, S) and, in order:

1. **burn-in**, watched by the fluctuation–dissipation ratio ⟨O_L⟩/⟨O_R⟩ (``sde.diagnostics.FDRMonitor``) in
   windows;
2. **the stationary mean** θ̄ and spread √⟨‖θ − θ̄‖²⟩ over ``mean_steps`` steps;
3. **the certified minimum** θ_min of the full-batch objective from θ̄ (``nets.basin.find_minimum``);
4. at θ_min, **the top-k eigenpairs** (λ_i, v_i) of the objective's Hessian (residual-stopped Lanczos), a few random
   directions orthogonal to them, **the noise** u_iᵀCu_j on all of them (``nets.basin.projected_noise``), Tr(H)
   (Hutchinson deflated by the top-k, to a stated accuracy) and Tr(C);
5. **the recorded phase**: SGD continues; every step (θ − θ_min)·u_j is recorded, and every ``eval_every`` steps
   the full-batch objective; the variance along each v_i (batch means) is compared with the exact discrete
   prediction (``nets.basin.predicted_variances``), and the excess loss ⟨L⟩ − L(θ_min) with Eq. (7) and with the
   quadratic control (``nets.basin.quadratic_control``); along each direction, also the gradient, which gives the
   **effective curvature** λ_eff = ⟨x ∂_uL⟩/⟨x²⟩ and Yaida's fluctuation–dissipation relation direction by
   direction (``DirectionRow``);
6. **the profile** of the basin along every direction at ±1, 2, 3 stationary s.d. (``nets.basin.quadratic_profile``);
7. optionally **the anneal**: η linearly to 0 from the last state, to compare the bottom it reaches with θ_min;
8. **the mechanisms of issue 20**, each a prediction beside the same measured variances and excess loss: (ii) the
   linearised law with the batch Hessian's fluctuation (``nets.basin.linearised_covariance``) along the top-k
   eigenvectors at θ̄ and at θ_min, with its mean-square stability margin ρ at both; (iii) the exact discrete
   prediction with the effective curvature λ_eff in place of λ_i; batch sharpness at θ̄
   (``nets.curvature.batch_sharpness``); and **the escape**: short SGD chains started at θ_min, whose measured
   growth per step of the top-k distance² is compared with ρ there.

Batches are drawn as the theory assumes (``sampling="without"``: each batch S distinct examples drawn afresh, so
consecutive batches are independent and Cov(g_B) = κC with κ = (N−S)/(S(N−1))), not by the epoch reshuffling of
training, whose consecutive batches are dependent and which has no closed form (``sde.theory``). ``basin_phase``
runs it on a finished ``nets.train`` run folder (the ``stationary`` stage of the experiments).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace

import numpy as np
import torch
from torch.nn import functional as F

from nets.basin import (
    Minimum,
    QuadraticControl,
    directional_variances,
    find_minimum,
    predicted_variances,
    projected_noise,
    quadratic_control,
    quadratic_profile,
    set_flat_parameters,
)
from nets.curvature import HessianOperator, adaptive_trace, gradient_noise, noise_hessian_alignment
from nets.curvature.lanczos import extreme_eigenpairs
from nets.data import BatchSampler
from nets.evaluation import evaluate
from nets.sgd import make_optimizer, sgd_step
from quadratic import finite_data_factor
from sde.diagnostics import FDRMonitor, fdr_right_factor
from sgd_noise_common.files import json_float
from sgd_noise_common.results import Result
from sgd_noise_common.seeds import spawn_seeds
from sgd_noise_common.stats import batch_means, block_means, ratio_of_means

__all__ = ["BasinSettings", "BasinResult", "DirectionRow", "StationaryDiverged", "IndependentBatches", "examine_basin",
           "basin_phase", "batch_means", "result_from_dict", "SAMPLINGS", "BASIN_STREAMS"]

SAMPLINGS = ("without", "epoch")
#: Steps between the SGD chain's divergence checks, its only read-back of the loss: on a GPU a read-back every step
#: would stall the queue; the step of a divergence is still exact, at the cost of up to this many wasted steps.
CHECK_EVERY = 64
#: The escape's window closes, at the latest, when a chain is this many stationary spreads from θ_min (``BasinResult``).
ESCAPE_SPREADS = 3.0
#: The random streams of one basin examination, children of its seed in this order (``examine_basin``).
BASIN_STREAMS = ("batches", "local", "alignment", "geometry", "control", "linearised", "sharpness", "escape")


class IndependentBatches:
    """Batches of ``batch_size`` distinct examples drawn uniformly afresh every step (independent across steps):
    the sampling under which Cov(g_B) = κC with κ = (N−S)/(S(N−1)) holds step by step.

    The indices are drawn on ``device`` by a generator of that device (the first ``batch_size`` of a permutation
    drawn there), so a step on a GPU does no host work and no copy for its batch. On the CPU the numbers are those
    of a CPU generator seeded with ``seed``, as before; a GPU's generator draws other (equally valid) batches."""

    def __init__(self, n: int, *, seed: int = 0, device="cpu"):
        if n < 1:
            raise ValueError(f"dataset size must be >= 1, got {n}")
        self.n = int(n)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def next(self, batch_size: int) -> torch.Tensor:
        """The indices of the next batch (on ``device``)."""
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must lie in [1, {self.n}] (the training-set size), got {batch_size}")
        return torch.randperm(self.n, generator=self.generator, device=self.device)[:batch_size]


@dataclass(frozen=True)
class BasinSettings:
    """How ``examine_basin`` samples and measures (steps are SGD steps at the fixed (η, S)).

    Attributes:
        burn_in: steps before anything is averaged (the FDR ratio is recorded in windows of ``window``).
        mean_steps: steps over which the stationary mean θ̄ (the minimum finder's start) is averaged.
        record_steps: steps over which the projections and the objective are recorded.
        eval_every: steps between evaluations of the full-batch objective in the recorded phase.
        window: steps per FDR window.
        top_k: Hessian eigenpairs at θ_min; ``random_directions``: random unit directions orthogonal to them.
        eig_tol: relative residual tolerance of the eigenpairs; ``grad_tol``: the minimum's certificate ‖∇L‖;
            ``trace_rtol``: Tr(H)'s half-width at 95 %, relative.
        batches: batch-means blocks; ``anneal_steps``: steps of the anneal (0: none).
        control_steps: steps of the simulated quadratic control (0: exact value only).
        measure_batch: examples per pass of the full-batch measurements.
        sampling: ``"without"`` (independent batches, the theory's) or ``"epoch"`` (training's reshuffling).
        alignment_examples: C against H beyond traces at the stationary mean (``noise_hessian_alignment``: the
            cosine Tr(CH)/(‖C‖_F‖H‖_F) and the top-5 eigenspace overlap) on this many examples; 0 skips it.
        min_method: ``nets.basin.find_minimum``'s method; ``max_iter`` its iterations.
        linearised: compute the linearised law with multiplicative noise (``nets.basin.linearised_covariance``)
            along the top-k eigenvectors at θ̄ and at θ_min; ``linearised_examples``: on this many examples drawn
            at random (with its jackknife error), 0 for all N (exact for the linearisation).
        sharpness_batches: batches of batch sharpness at θ̄ (``nets.curvature.batch_sharpness``); 0 skips it.
        escape_steps, escape_chains: SGD chains started at θ_min, each this many steps (0 skips the escape).
    """

    burn_in: int = 2000
    mean_steps: int = 2000
    record_steps: int = 4000
    eval_every: int = 50
    window: int = 500
    top_k: int = 10
    random_directions: int = 4
    eig_tol: float = 1e-4
    grad_tol: float = 1e-5
    trace_rtol: float = 0.05
    batches: int = 20
    anneal_steps: int = 0
    control_steps: int = 20000
    measure_batch: int = 2000
    sampling: str = "without"
    alignment_examples: int = 0
    min_method: str = "trust-krylov"
    max_iter: int = 200
    linearised: bool = True
    linearised_examples: int = 0
    sharpness_batches: int = 256
    escape_steps: int = 50
    escape_chains: int = 4

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for name in ("burn_in", "mean_steps", "record_steps", "eval_every", "window", "top_k", "measure_batch",
                     "batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("random_directions", "anneal_steps", "control_steps", "alignment_examples",
                     "linearised_examples", "sharpness_batches", "escape_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.record_steps < 2 * self.batches:
            raise ValueError(f"record_steps ({self.record_steps}) must be >= 2 * batches ({self.batches})")
        if self.window < 2 or self.batches < 2:
            raise ValueError(f"window and batches must be >= 2, got {self.window} and {self.batches}")
        if self.record_steps < 2 * self.eval_every:
            raise ValueError(f"record_steps ({self.record_steps}) must be >= 2 * eval_every ({self.eval_every}) for "
                             "an error bar on the loss")
        if self.sharpness_batches == 1:
            raise ValueError("sharpness_batches must be 0 (skip) or >= 2 (an error bar), got 1")
        if self.linearised_examples == 1:
            raise ValueError("linearised_examples must be 0 (all) or >= 2, got 1")
        if self.escape_chains < 1:
            raise ValueError(f"escape_chains must be >= 1, got {self.escape_chains}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        for name in ("eig_tol", "grad_tol", "trace_rtol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DirectionRow(Result):
    """One direction u of the per-direction table: the OU picture's prediction beside what SGD did along it.

    Attributes:
        kind: ``"eigenvector"`` (a top eigenvector at θ_min), ``"random"`` (a random unit direction orthogonal to
            them, at θ_min) or ``"eigenvector-at-mean"`` (a top eigenvector at the stationary mean θ̄).
        curvature: uᵀHu (the eigenvalue λ_i for an eigenvector); ``noise``: uᵀCu.
        variance, variance_stderr: Var((θ − θ_min)·u) over the recorded steps, with its batch-means error.
        mean, mean_stderr: the mean offset (from θ_min; from θ̄ along the directions taken there).
        relaxation_steps: the variance's relaxation time at this curvature (``sde.theory.relaxation_steps``; NaN
            where there is no stationary law); ``block_over_relaxation``: the batch-means block length over it
            (below ~10 the error bar is not reliable).
        profile_ratio: the loss's rise over ½ a r² at ``BasinResult.profile_multiples`` stationary s.d.
        residual: the eigenpair's residual ‖Hv − λv‖ (NaN for a random direction).
        predicted: the exact discrete variance η c κ/(λ(2 − ηλ)) (``nets.basin.predicted_variances``; NaN where ηλ
            ≥ 2, and for a random direction); ``ratio``, ``ratio_stderr``: variance / predicted, with its error.
        effective_curvature, effective_curvature_stderr: the curvature SGD feels along u over its path,
            λ_eff = ⟨x ∂_uL⟩/⟨x²⟩ with x = (θ − θ̄)·u (θ̄ the mean of the recorded iterates) and ∂_uL = u·∇L(θ) at the
            same iterate, with its batch-means error (the delta method over ``BasinSettings.batches`` blocks). ∂_uL
            is the step's own minibatch gradient (weight decay γθ included): unbiased for the full-batch one given θ,
            for each batch is drawn afresh independently of θ (``sampling="without"``; with ``"epoch"`` only
            approximately), and free, for SGD computes it, whereas a full-batch gradient every step would cost N/S
            steps. On a quadratic, along an eigenvector, λ_eff = λ; a random direction mixes curvatures weighted by
            the covariance (uᵀHΣu/uᵀΣu). NaN in files written before these fields.
        fdr_ratio, fdr_ratio_stderr: Yaida's first fluctuation–dissipation relation along u, ⟨x ∂_uL_B⟩/⟨O_R,u⟩ with
            O_R,u = ½η(1+μ)/(1−d)·(u·b')² (b' the step's update direction, as ``sde.diagnostics.FDRMonitor``'s
            O_R projected on u), and its batch-means error: 1 at any stationary state, whatever the loss's shape.
            The two together give the variance a stationary SGD has along u, ⟨x²⟩ = ⟨O_R,u⟩/λ_eff.
        linearised_predicted, linearised_ratio, linearised_ratio_stderr: law (ii), the diagonal of the linearised
            law with the batch Hessian's fluctuation (``nets.basin.linearised_covariance``) along the top-k
            eigenvectors where they were taken (θ_min or θ̄), and variance / it, with its error (the variance's,
            and the law's jackknife error when its examples were subsampled); NaN for a random direction and where
            the law has no stationary state (ρ ≥ 1).
        effective_predicted, effective_ratio, effective_ratio_stderr: law (iii), the exact discrete prediction
            with λ_eff in place of the curvature (the same noise), and variance / it, with its error (the delta
            method over the batch-means blocks of x² and x ∂_uL jointly, λ_eff's error included); NaN where
            λ_eff ≤ 0 or η λ_eff ≥ 2(1 + μ), and for a random direction. All of laws (ii) and (iii) are NaN in
            files written before these fields.
    """

    kind: str
    curvature: float
    noise: float
    variance: float
    variance_stderr: float
    mean: float
    mean_stderr: float
    relaxation_steps: float
    block_over_relaxation: float
    profile_ratio: tuple
    residual: float = math.nan
    predicted: float = math.nan
    ratio: float = math.nan
    ratio_stderr: float = math.nan
    effective_curvature: float = math.nan
    effective_curvature_stderr: float = math.nan
    fdr_ratio: float = math.nan
    fdr_ratio_stderr: float = math.nan
    linearised_predicted: float = math.nan
    linearised_ratio: float = math.nan
    linearised_ratio_stderr: float = math.nan
    effective_predicted: float = math.nan
    effective_ratio: float = math.nan
    effective_ratio_stderr: float = math.nan

    @property
    def tested(self) -> bool:
        """Whether the direction has a prediction to test (a stationary law, and an error bar)."""
        return math.isfinite(self.ratio) and math.isfinite(self.ratio_stderr)

    def to_dict(self) -> dict:
        """JSON-ready data (NaN stays NaN here; ``sgd_noise_common.files.jsonable`` writes it as null)."""
        return dict(asdict(self), profile_ratio=list(self.profile_ratio))

    @classmethod
    def from_dict(cls, d: dict) -> DirectionRow:
        """The row from ``to_dict``'s data, read back from JSON (a field missing from an earlier file is NaN)."""
        numbers = {f.name: json_float(d.get(f.name)) for f in fields(cls) if f.name not in ("kind", "profile_ratio")}
        return cls(kind=str(d["kind"]), profile_ratio=tuple(json_float(x) for x in d["profile_ratio"]), **numbers)


@dataclass(frozen=True)
class StationaryDiverged(Result):
    """SGD diverged during the stationary phase: a result, as in training (the paper's ``*``)."""

    step: int
    loss: float
    eta: float
    batch_size: int
    phase: str = "stationary"

    def to_dict(self) -> dict:
        """``{"diverged": {...}}``, the shape every stage and run uses for a divergence."""
        return {"diverged": asdict(self)}


@dataclass(frozen=True)
class BasinResult(Result):
    """What ``examine_basin`` found: the stationary phase, the minimum, and the OU picture's predictions beside the
    measurements (module docstring). Losses are of the full-batch objective (data loss plus (γ/2)‖θ‖²).

    Attributes:
        directions: the per-direction table (``DirectionRow``): the top eigenvectors and random directions at
            θ_min, then the top eigenvectors at θ̄; ``profile_multiples``: the ± multiples of the stationary s.d.
            at which each row's ``profile_ratio`` is taken.
        minimum: the certified (or not) minimum θ_min (``nets.basin.Minimum``, without θ).
        grad_norm_at_mean, lambda_max_at_mean: ‖∇L‖ and λ_max at θ̄; ``alignment_at_mean``: C against H there
            (``noise_hessian_alignment``'s result as data), or None.
        distance_mean_to_minimum: ‖θ̄ − θ_min‖; ``stationary_spread``: √⟨‖θ − θ̄‖²⟩; ``distance_in_spreads``
            their ratio.
        loss_min: L(θ_min); ``mean_loss`` ± ``mean_loss_stderr``: ⟨L⟩ over the recorded phase (batch means);
            ``excess`` ± ``excess_stderr``: ⟨L⟩ − L(θ_min), the measured E(l).
        e_fdr, e_fdr_stderr: ½⟨O_R⟩, which equals E(l) on a quadratic at stationarity.
        bottom_loss: the objective reached by the anneal (NaN without one); ``anneal_minus_min``: its excess.
        trace_h ± trace_h_halfwidth (95 %): Tr of the objective's Hessian at θ_min; ``trace_h_data``: without the
            L2 term's γP; ``trace_c`` ± ``trace_c_stderr``: Tr(C); ``num_params``: P.
        pred_h, pred_c, pred_h_data, pred_c_kappa: Eq. (7)'s η/(4S)·Tr(H), ·Tr(C), ·Tr(H_data), and ·κN·Tr(C)
            with the finite-data factor.
        lambda_max: λ_max at θ_min; ``eig_converged``: whether its eigenpairs met the tolerance.
        control: the quadratic control (``nets.basin.QuadraticControl`` as data).
        fdr_recorded: the FDR ratio over the recorded phase; ``fdr_ratios``: per burn-in window;
            ``fdr_ratio_last`` the last; ``stationary``: whether it is within 0.1 of 1.
        hvps: Hessian-vector products spent at θ_min; ``seconds``: the whole examination's wall time.
        dataset_size, eta, batch_size, momentum, weight_decay: the setting; ``settings``: the ``BasinSettings``.
        batch_sharpness_at_mean, batch_sharpness_at_mean_stderr: batch sharpness E_B[g_BᵀH_Bg_B]/E_B[‖g_B‖²] at θ̄
            (compare η/2 times it, and η/2·``lambda_max_at_mean``, with 1: the edge of stochastic stability).
        stability_margin_at_mean, stability_margin_at_min (each with ``_stderr``): ρ, the spectral radius of the
            linearised second-moment recursion along the top-k eigenvectors at θ̄ and at θ_min (mean-square stable
            iff ρ < 1; above 1, E[zzᵀ]'s growth per step); ``additive_radius_at_mean``/``_at_min``: the same without
            the batch Hessian's fluctuation; ``linearised_notes``: what the law could not compute.
        excess_pred_mean, excess_pred_linearised, excess_pred_effective: the excess loss predicted by each law at
            θ̄, top-k plus the bulk (``nets.basin.quadratic_control``, whose bulk comes from Tr H and Tr C at θ_min):
            (i) the Hessian's eigenpairs at θ̄ with their noise; (ii) ½Tr(GΣ) of the linearised law plus (i)'s
            bulk; (iii) (i) with λ_eff in place of λ_i. They predict ⟨L⟩ − L(θ̄) (on a quadratic exactly
            ½Tr(HΣ) about the mean, whatever the gradient there), measured as ``excess_over_mean`` (± the same
            ``excess_stderr``, L(θ̄) being exact) from ``loss_at_mean`` = L(θ̄); ``excess`` is over L(θ_min) instead.
        escape_growth, escape_growth_stderr: the measured growth per step of the mean (over ``escape_chains``
            chains) squared top-k distance ‖V_minᵀ(θ − θ_min)‖² of SGD started at θ_min, while it grows (from step
            1 until it stops growing, or a chain is ``ESCAPE_SPREADS`` (3) × ``stationary_spread`` from θ_min or
            diverges), with a delete-a-chain jackknife error (``_escape_growth``). ``escape_predicted_growth``: the
            linearised law's over the same steps, from its transient at θ_min (``escape_predicted_distances``, per
            step; ``stability_margin_at_min`` is the long-run rate). ``escape_fitted_steps``: the ratios in the
            window; ``escape_distances``: the measured mean squared distance per step. NaN, 0 and () when not
            measured (and in files written before these fields).
    """

    directions: tuple
    profile_multiples: tuple
    minimum: Minimum
    grad_norm_at_mean: float
    lambda_max_at_mean: float
    alignment_at_mean: dict | None
    distance_mean_to_minimum: float
    stationary_spread: float
    distance_in_spreads: float
    loss_min: float
    mean_loss: float
    mean_loss_stderr: float
    excess: float
    excess_stderr: float
    e_fdr: float
    e_fdr_stderr: float
    bottom_loss: float
    anneal_minus_min: float
    trace_h: float
    trace_h_halfwidth: float
    trace_c: float
    trace_c_stderr: float
    num_params: int
    trace_h_data: float
    pred_h: float
    pred_c: float
    pred_h_data: float
    pred_c_kappa: float
    lambda_max: float
    eig_converged: bool
    control: QuadraticControl
    fdr_recorded: float
    hvps: int
    dataset_size: int
    eta: float
    batch_size: int
    momentum: float
    fdr_ratios: tuple
    fdr_ratio_last: float
    stationary: bool
    weight_decay: float
    settings: BasinSettings
    seconds: float
    batch_sharpness_at_mean: float = math.nan
    batch_sharpness_at_mean_stderr: float = math.nan
    stability_margin_at_mean: float = math.nan
    stability_margin_at_mean_stderr: float = math.nan
    stability_margin_at_min: float = math.nan
    stability_margin_at_min_stderr: float = math.nan
    additive_radius_at_mean: float = math.nan
    additive_radius_at_min: float = math.nan
    linearised_notes: tuple = ()
    loss_at_mean: float = math.nan
    excess_over_mean: float = math.nan
    excess_pred_mean: float = math.nan
    excess_pred_linearised: float = math.nan
    excess_pred_effective: float = math.nan
    escape_growth: float = math.nan
    escape_growth_stderr: float = math.nan
    escape_fitted_steps: int = 0
    escape_distances: tuple = ()
    escape_predicted_growth: float = math.nan
    escape_predicted_distances: tuple = ()

    @property
    def ratio(self) -> float:
        """η/S."""
        return self.eta / self.batch_size

    def rows(self, kind: str) -> list[DirectionRow]:
        """The directions of ``kind`` (``DirectionRow.kind``), in order."""
        return [d for d in self.directions if d.kind == kind]

    def to_dict(self) -> dict:
        """JSON-ready data: the stage's ``stationary.json`` (pass it through ``jsonable``: NaN becomes null)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(directions=[r.to_dict() for r in self.directions], profile_multiples=list(self.profile_multiples),
                 minimum=self.minimum.to_dict(), control=self.control.to_dict(), fdr_ratios=list(self.fdr_ratios),
                 settings=asdict(self.settings), linearised_notes=list(self.linearised_notes),
                 escape_distances=list(self.escape_distances),
                 escape_predicted_distances=list(self.escape_predicted_distances))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BasinResult:
        """The result from ``to_dict``'s data, read back from JSON (null is NaN again)."""
        kw = {}
        for f in fields(cls):
            if f.name not in d and f.default is not MISSING:  # a field added since the file was written
                continue
            v = d[f.name]
            if f.name == "directions":
                v = tuple(DirectionRow.from_dict(r) for r in v)
            elif f.name in ("profile_multiples", "fdr_ratios", "escape_distances", "escape_predicted_distances"):
                v = tuple(json_float(x) for x in v)
            elif f.name == "settings":
                v = BasinSettings(**v)  # a field added since: its default
            elif f.name == "minimum":
                v = Minimum.from_dict(v)
            elif f.name == "control":
                v = QuadraticControl.from_dict(v)
            elif f.name == "linearised_notes":
                v = tuple(str(x) for x in v)
            elif f.name in ("num_params", "hvps", "dataset_size", "batch_size", "escape_fitted_steps"):
                v = int(v)
            elif f.name in ("eig_converged", "stationary"):
                v = bool(v)
            elif f.name != "alignment_at_mean":
                v = json_float(v)
            kw[f.name] = v
        return cls(**kw)


def result_from_dict(d: dict) -> BasinResult | StationaryDiverged:
    """A basin examination's result read back from its JSON (``stationary.json``)."""
    if d.get("diverged"):
        v = d["diverged"]
        return StationaryDiverged(step=int(v["step"]), loss=json_float(v["loss"]), eta=float(v["eta"]),
                                  batch_size=int(v["batch_size"]), phase=str(v.get("phase", "stationary")))
    return BasinResult.from_dict(d)


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).double()


class _Chain:
    """SGD at fixed (η, S) on a model, one step at a time, with the FDR observables and divergence check."""

    def __init__(self, model, loss_fn, x, y, *, eta, batch_size, momentum, dampening, weight_decay, sampling, seed):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.batch_size = int(batch_size)
        self.hyper = dict(eta=eta, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        self.opt = make_optimizer(model, **self.hyper)
        cls = IndependentBatches if sampling == "without" else BatchSampler
        self.sampler = cls(int(x.shape[0]), seed=seed, device=x.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0
        self._pending: list = []  # the losses of the steps not yet checked, as device tensors

    def monitor(self) -> FDRMonitor:
        return FDRMonitor(**self.hyper)

    def step(self, monitor=None, lr=None):
        """One SGD step; nothing is read back to the host but every ``CHECK_EVERY`` steps (``check``)."""
        idx = self.sampler.next(self.batch_size)
        loss, obs = sgd_step(self.model, self.opt, self.x[idx], self.y[idx], loss_fn=self.loss_fn, lr=lr,
                             observe=monitor is not None)
        self.steps += 1
        if monitor is not None:
            monitor.record(obs.o_left, obs.o_right)
        self._pending.append(loss.detach() if torch.is_tensor(loss) else torch.tensor(float(loss)))
        if len(self._pending) >= CHECK_EVERY:
            self.check()
        return obs

    def check(self) -> None:
        """Raise ``_Diverged`` at the first step since the last check whose loss is not finite (one read-back);
        every phase ends with a check, so no result is computed from a diverged state."""
        if not self._pending:
            return
        losses = torch.stack([v.to(torch.float64) for v in self._pending]).cpu().numpy()
        first = self.steps - len(self._pending)
        self._pending = []
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise _Diverged(first + int(bad[0]) + 1, float(losses[bad[0]]))


class _Diverged(Exception):
    def __init__(self, step, loss):
        super().__init__(f"SGD diverged at step {step} (loss {loss})")
        self.step, self.loss = step, loss


def _objective(model, loss_fn, x, y, gamma, batch_size) -> float:
    """The full-batch data loss plus (γ/2)‖θ‖², in float64 accumulation."""
    l2 = 0.5 * gamma * sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    return evaluate(model, loss_fn, x, y, batch_size=batch_size)[0] + l2


def examine_basin(model, loss_fn, x, y, *, eta: float, batch_size: int, momentum: float = 0.0,
                  dampening: float = 0.0, weight_decay: float = 0.0, settings: BasinSettings = BasinSettings(),
                  seed: int = 0, log=None) -> BasinResult | StationaryDiverged:
    """Run the stationary phase on ``model`` (changed in place: it ends where SGD ends) and test the OU picture.

    Args:
        model: the network, at the end of training (train mode is set for the SGD steps).
        loss_fn: ``loss_fn(outputs, targets, reduction=...)``, a torch loss (the mean by default).
        x, y: the training set SGD samples (N examples); every full-batch quantity is taken over it.
        eta, batch_size, momentum, dampening, weight_decay: SGD's setting (torch's conventions).
        settings: a ``BasinSettings``.
        seed: an integer, or a tuple of them, whose children (``sgd_noise_common.seeds.spawn_seeds``, in the order
            of ``BASIN_STREAMS``) seed the batches, the eigenpairs at the mean, the alignment's probes, the
            geometry at the minimum (eigenpairs, random directions, probes) and the simulated control.
        log: a callable for progress lines, or ``None``.

    Returns:
        A ``BasinResult`` (its ``directions`` hold the per-direction table), or a ``StationaryDiverged`` when SGD
        diverged (a result, as in training).
    """
    settings.check()
    if momentum and dampening:
        raise ValueError("dampening with momentum has no closed form in sde.theory (the per-direction prediction); "
                         "use dampening=0")
    from nets.curvature.operator import batch_norm_layers

    if batch_norm_layers(model):
        raise ValueError("examine_basin needs a network without batch norm: SGD runs it in train mode (batch "
                         "statistics) while every full-batch quantity needs one fixed function of the parameters")
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    n = int(x.shape[0])
    streams = spawn_seeds(seed, BASIN_STREAMS)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in [1, {n}] (the training-set size), got {batch_size}")
    chain = _Chain(model, loss_fn, x, y, eta=eta, batch_size=batch_size, momentum=momentum, dampening=dampening,
                   weight_decay=weight_decay, sampling=settings.sampling, seed=streams["batches"])
    st = settings
    try:
        ratios, mon = [], chain.monitor()
        sum_theta, sq = None, []
        for k in range(st.burn_in + st.mean_steps):
            chain.step(mon)
            if (k + 1) % st.window == 0:
                chain.check()
                ratios.append(mon.summary().ratio)
                mon = chain.monitor()
            if k >= st.burn_in:
                th = _flat(chain.params)
                sum_theta = th.clone() if sum_theta is None else sum_theta + th
                sq.append(th @ th)
        chain.check()
        sum_sq = 0.0
        for v in torch.stack(sq).cpu().numpy():  # summed in order, as a running float64 sum would be
            sum_sq += float(v)
        say(f"burn-in and mean: {st.burn_in + st.mean_steps} steps, FDR ratios {np.round(ratios, 3).tolist()}")
        theta_bar = (sum_theta / st.mean_steps).cpu().numpy()
        spread = math.sqrt(max(sum_sq / st.mean_steps - float(theta_bar @ theta_bar), 0.0))
        op = HessianOperator(model, loss_fn, x, y, batch_size=min(st.measure_batch, n), weight_decay=weight_decay,
                             dtype=torch.float64)
        local = _local(op, theta_bar, st, streams["local"])
        if st.alignment_examples:
            m = min(st.alignment_examples, n)
            local["alignment"] = noise_hessian_alignment(_at(model, theta_bar), loss_fn, x[:m], y[:m], batch_size=m,
                                                         k=min(5, m - 1, op.dim - 1), rng=streams["alignment"],
                                                         dtype=torch.float64)
        say(f"at the stationary mean: |grad| {local['grad_norm']:.2e}, top-{st.top_k} eigenvalues "
            f"{np.round(local['eigenvalues'], 4).tolist()}")
        minimum = find_minimum(model, loss_fn, x, y, batch_size=min(st.measure_batch, n), weight_decay=weight_decay,
                               start=theta_bar, grad_tol=st.grad_tol, method=st.min_method, max_iter=st.max_iter,
                               operator=op)
        theta_min = minimum.theta
        say(f"minimum: |grad| {minimum.grad_norm:.2e} (tol {st.grad_tol:g}) after {minimum.iterations} iterations, "
            f"{minimum.hvps} HVPs, {minimum.seconds:.0f} s")
        geo = _geometry(op, model, loss_fn, x, y, theta_min, st, streams["geometry"])
        say(f"top-{st.top_k} eigenvalues {np.round(geo['eigenvalues'], 4).tolist()}; Tr(H) {geo['trace_h']:.4g}, "
            f"Tr(C) {geo['trace_c']:.4g}")
        rec = _record(chain, np.hstack([geo["directions"], local["directions"]]), theta_min, model, loss_fn, x, y,
                      weight_decay, st)
        anneal = _anneal(chain, model, loss_fn, x, y, weight_decay, st, eta) if st.anneal_steps else math.nan
    except _Diverged as e:
        return StationaryDiverged(step=e.step, loss=e.loss, eta=eta, batch_size=batch_size)
    l_min = _objective(_at(model, theta_min), loss_fn, x, y, weight_decay, st.measure_batch)
    l_bar = _objective(_at(model, theta_bar), loss_fn, x, y, weight_decay, st.measure_batch)
    setting = dict(eta=eta, batch_size=batch_size, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    mech = _mechanisms(model, loss_fn, x, y, theta_bar, theta_min, local["directions"],
                       geo["directions"][:, :geo["eigenvalues"].size], spread, st, streams, say, **setting)
    summary = _summarise(geo, local, rec, minimum, theta_bar, spread, l_min, anneal, op, theta_min, eta=eta,
                         batch_size=batch_size, n=n, momentum=momentum, dampening=dampening, settings=st,
                         seed=streams["control"], mech=mech)
    summary.update(loss_at_mean=l_bar, excess_over_mean=summary["mean_loss"] - l_bar)
    return BasinResult(**summary, fdr_ratios=tuple(ratios), fdr_ratio_last=ratios[-1] if ratios else math.nan,
                       stationary=bool(ratios) and abs(ratios[-1] - 1.0) < 0.1, weight_decay=weight_decay,
                       settings=st, seconds=time.perf_counter() - t_start)


def _at(model, theta):
    m = copy.deepcopy(model)
    set_flat_parameters(m, theta)
    return m


def _local(op, theta, st: BasinSettings, seed: int) -> dict:
    """The local OU picture where SGD lives: ∇L, the top-k eigenpairs and their noise at θ (op is moved there)."""
    set_flat_parameters(op.params, theta)
    grad = op.gradient().cpu().numpy()
    eig = extreme_eigenpairs(op.matvec, op.dim, k=st.top_k, tol=st.eig_tol, rng=np.random.default_rng(seed))
    noise = projected_noise(op, eig.eigenvectors, batch_size=st.measure_batch)
    return {"grad": grad, "grad_norm": float(np.linalg.norm(grad)), "eigenvalues": np.asarray(eig.eigenvalues),
            "residuals": np.asarray(eig.residuals), "directions": eig.eigenvectors, "noise_cov": noise["cov"]}


def _geometry(op, model, loss_fn, x, y, theta_min, st: BasinSettings, seed: int) -> dict:
    """Eigenpairs, random directions, their curvatures and noise, Tr(H) and Tr(C) at θ_min (op is at θ_min)."""
    set_flat_parameters(op.params, theta_min)
    grad = op.gradient().cpu().numpy()
    rng = np.random.default_rng(seed)
    eig = extreme_eigenpairs(op.matvec, op.dim, k=st.top_k, tol=st.eig_tol, rng=rng)
    v = eig.eigenvectors
    r = rng.standard_normal((op.dim, st.random_directions))
    r -= v @ (v.T @ r)
    r, _ = np.linalg.qr(r) if st.random_directions else (r, None)
    curv_r = np.array([float(r[:, j] @ op.matvec(r[:, j])) for j in range(r.shape[1])])
    u = np.hstack([v, r])
    noise = projected_noise(op, u, batch_size=st.measure_batch)
    tr = adaptive_trace(op, rtol=st.trace_rtol, deflate=(eig.eigenvalues, v), rng=rng)
    gn = gradient_noise(_at(model, theta_min), loss_fn, x, y, batch_size=min(st.measure_batch, op.num_examples),
                        rng=rng)
    return {"eigenvalues": np.asarray(eig.eigenvalues), "residuals": np.asarray(eig.residuals),
            "eig_converged": bool(eig.converged), "directions": u, "grad": grad,
            "curvatures": np.concatenate([eig.eigenvalues, curv_r]), "noise_cov": noise["cov"],
            "trace_h": tr.estimate, "trace_h_halfwidth": tr.halfwidth, "trace_h_reached": tr.reached,
            "trace_c": gn.trace_c, "trace_c_stderr": gn.trace_c_stderr, "hvps": op.matvecs}


def _record(chain: _Chain, u, theta_min, model, loss_fn, x, y, gamma, st: BasinSettings) -> dict:
    """The recorded phase: projections every step, the objective every ``eval_every`` steps, ‖g‖² every step; and
    along each direction the step's minibatch gradient of the data loss and its update direction b' (momentum's
    buffer after the step; b' is g + γθ without momentum, formed at the end), for ``_effective``.

    ``projections[k]`` is the iterate after step k; ``before`` the one before the first step, so that step k's
    gradient was taken at ``before`` for k = 0 and at ``projections[k − 1]`` after."""
    ut = torch.as_tensor(u.T, dtype=torch.float64, device=x.device)
    centre = ut @ torch.as_tensor(theta_min, dtype=torch.float64, device=x.device)
    proj, gsq, o_right, grads, bufs = [], [], [], [], []  # device tensors, read back once at the end
    losses = []
    momentum = chain.hyper["momentum"]
    before = ut @ _flat(chain.params) - centre
    mon = chain.monitor()
    for k in range(st.record_steps):
        obs = chain.step(mon)
        gsq.append(torch.as_tensor(obs.grad_sq, dtype=torch.float64))
        o_right.append(torch.as_tensor(obs.o_right, dtype=torch.float64))
        proj.append(ut @ _flat(chain.params) - centre)
        # The gradient SGD just used (torch's SGD leaves p.grad as the data loss's gradient at the step's start).
        grads.append(ut @ _flat([p.grad for p in chain.params]))
        if momentum:
            bufs.append(ut @ _flat([chain.opt.state[p]["momentum_buffer"] for p in chain.params]))
        if (k + 1) % st.eval_every == 0:
            chain.check()
            losses.append(_objective(model, loss_fn, x, y, gamma, st.measure_batch))
    chain.check()
    proj = torch.stack(proj)
    at = torch.cat([before.unsqueeze(0), proj[:-1]])  # the projection of the iterate each gradient was taken at
    g = torch.stack(grads) + gamma * (at + centre)
    b = torch.stack(bufs) if momentum else g
    return {"projections": proj.cpu().numpy(), "grad_sq": torch.stack(gsq).cpu().numpy(),
            "o_right": torch.stack(o_right).cpu().numpy(), "losses": np.array(losses), "fdr": mon.summary().ratio,
            "at": at.cpu().numpy(), "grad_proj": g.cpu().numpy(),
            "o_right_proj": (fdr_right_factor(chain.hyper["eta"], momentum, chain.hyper["dampening"]) * b * b)
            .cpu().numpy()}


def _effective(rec: dict, blocks: int) -> dict:
    """Per direction: λ_eff = ⟨x ∂_uL⟩/⟨x²⟩ with x centred on the recorded iterates' mean, and Yaida's ratio
    ⟨x ∂_uL⟩/⟨O_R,u⟩, each with its batch-means error over ``blocks`` blocks (``DirectionRow``)."""
    xs = rec["at"] - rec["at"].mean(axis=0)
    xg = xs * rec["grad_proj"]
    lam, lam_se = ratio_of_means(xg, xs * xs, blocks=blocks)
    fdr, fdr_se = ratio_of_means(xg, rec["o_right_proj"], blocks=blocks)
    return {"lambda": lam, "lambda_stderr": lam_se, "fdr": fdr, "fdr_stderr": fdr_se}


def _mechanisms(model, loss_fn, x, y, theta_bar, theta_min, v_mean, v_min, spread, st: BasinSettings, streams,
                say, *, eta, batch_size, momentum, dampening, weight_decay) -> dict:
    """Issue 20's mechanisms, each on a copy of the model (the chain and every earlier stream untouched): the
    linearised law at θ̄ and θ_min along the top-k eigenvectors taken there, batch sharpness at θ̄, and the escape
    from θ_min (``BasinResult``)."""
    from nets.basin import linearised_covariance
    from nets.curvature import batch_sharpness

    out = {"lin_mean": None, "lin_min": None, "sharpness": None, "escape": None}
    if st.linearised:
        for name, theta, v in (("lin_mean", theta_bar, v_mean), ("lin_min", theta_min, v_min)):
            sub = st.linearised_examples if 0 < st.linearised_examples < int(x.shape[0]) else None
            # At θ_min also the transient: the escape's prediction (``_escape``), along the same V_min.
            out[name] = linearised_covariance(_at(model, theta), loss_fn, x, y, eta=eta, batch_size=batch_size,
                                              momentum=momentum, weight_decay=weight_decay, directions=v,
                                              sampling="without", examples=sub, rng=streams["linearised"],
                                              chunk=min(st.measure_batch, int(x.shape[0])),
                                              transient_steps=st.escape_steps if name == "lin_min" else 0)
            say(f"linearised law at the {name[4:]}: rho {out[name].spectral_radius:.4g} (additive "
                f"{out[name].additive_radius:.4g}), {out[name].seconds:.1f} s")
    if st.sharpness_batches:
        out["sharpness"] = batch_sharpness(_at(model, theta_bar), loss_fn, x, y, batch_size=batch_size,
                                           rng=streams["sharpness"], batches=st.sharpness_batches,
                                           weight_decay=weight_decay)
        say(f"batch sharpness at the mean: {out['sharpness'].estimate:.4g} (eta/2 times it: "
            f"{eta / 2 * out['sharpness'].estimate:.3g})")
    if st.escape_steps:
        predicted = out["lin_min"].transient if out["lin_min"] is not None else None
        out["escape"] = _escape(model, loss_fn, x, y, theta_min, v_min, spread, st, streams["escape"], eta=eta,
                                batch_size=batch_size, momentum=momentum, dampening=dampening,
                                weight_decay=weight_decay, predicted=predicted)
        say(f"escape from the minimum: growth {out['escape']['growth']:.4g} per step (the linearised law: "
            f"{out['escape']['predicted_growth']:.4g}) over {out['escape']['fitted']} steps")
    return out


def _escape(model, loss_fn, x, y, theta_min, v, spread, st: BasinSettings, seed, *, eta, batch_size, momentum,
            dampening, weight_decay, predicted=None) -> dict:
    """SGD started at θ_min, ``escape_chains`` chains of ``escape_steps`` steps (fresh optimiser state, batches as
    in the stationary phase): the squared distance along the top-k V, ‖Vᵀ(θ_t − θ_min)‖², per step and chain, and
    its growth per step against the linearised law's ``predicted`` E‖ζ_t‖² (``_escape_growth``)."""
    n = int(x.shape[0])
    chains, steps = st.escape_chains, st.escape_steps
    seeds = spawn_seeds(seed, tuple(f"chain{c}" for c in range(chains)))
    vt = torch.as_tensor(v.T, dtype=torch.float64, device=x.device)
    start = torch.as_tensor(theta_min, dtype=torch.float64, device=x.device)
    top, full = [], []
    for c in range(chains):
        m = _at(model, theta_min)
        opt = make_optimizer(m, eta=eta, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        cls = IndependentBatches if st.sampling == "without" else BatchSampler
        sampler = cls(n, seed=seeds[f"chain{c}"], device=x.device)
        params = [p for p in m.parameters() if p.requires_grad]
        t_top, t_full = [], []
        for _ in range(steps):
            idx = sampler.next(batch_size)
            sgd_step(m, opt, x[idx], y[idx], loss_fn=loss_fn)
            dz = _flat(params) - start
            z = vt @ dz
            t_top.append(z @ z)
            t_full.append(dz @ dz)
        top.append(torch.stack(t_top))
        full.append(torch.stack(t_full))
    top = torch.stack(top).cpu().numpy()
    full = torch.stack(full).cpu().numpy()
    return dict(_escape_growth(top, full, spread, predicted), distances=top.mean(axis=0),
                predicted_distances=() if predicted is None else np.asarray(predicted)[1:])


def _escape_growth(top, full, spread, predicted=None) -> dict:
    """The escape's growth per step, measured and predicted over the same steps.

    ``top`` (chains × steps) holds the squared top-k distance after steps 1..T, D_t its mean over the chains. The
    window is steps 1..t_e: the escape while it lasts, ending at the last step before D stops growing (the chains
    leave the linearised region, where higher derivatives turn them back) or any chain's ``full`` squared distance
    reaches (``ESCAPE_SPREADS``·``spread``)² or is not finite. Step 1 is kept: it is the gradient noise injected at
    θ_min, which the prediction also starts from. Growth = (D_{t_e}/D_1)^{1/(t_e − 1)}, at least one ratio; the
    same over the same steps of ``predicted`` (E‖ζ_t‖², t = 0..T, ``nets.basin.LinearisedCovariance.transient``);
    a delete-a-chain jackknife error for the measured one (NaN with one chain).

    The law predicts the *mean* over chains, and a mean-square unstable walk's distances are heavy-tailed (products
    of random matrices): a few chains' mean falls short of it more often than not, so the measured growth is biased
    low when the fluctuation, not the mean curvature, drives the escape (``tests/test_escape_transient.py``)."""
    none = {"growth": math.nan, "growth_stderr": math.nan, "fitted": 0, "predicted_growth": math.nan}
    ok = np.all(np.isfinite(full) & np.isfinite(top) & (full < (ESCAPE_SPREADS * spread) ** 2), axis=0)
    d = top.mean(axis=0)
    end = 0  # the window is steps 1..end+1 (0-based index end)
    while end + 1 < d.size and ok[end + 1] and d[end + 1] > d[end]:
        end += 1
    if end < 1 or not ok[0] or not d[0] > 0:
        return none
    fitted = end

    def growth(series):
        return float((series[end] / series[0]) ** (1.0 / fitted)) if series[0] > 0 else math.nan

    g = growth(d)
    c = top.shape[0]
    se = math.nan
    if c > 1:
        reps = np.array([growth(np.delete(top, i, axis=0).mean(axis=0)) for i in range(c)])
        se = float(np.sqrt((c - 1) / c * np.sum((reps - reps.mean()) ** 2)))
    pg = math.nan
    if predicted is not None and len(predicted) > end + 1:
        pg = growth(np.asarray(predicted, dtype=np.float64)[1:])
    return {"growth": g, "growth_stderr": se, "fitted": fitted, "predicted_growth": pg}


def _effective_prediction(rec: dict, cols, noises, blocks: int, setting: dict) -> dict:
    """Law (iii) per direction ``cols``: the exact discrete prediction with λ_eff, and the error of
    variance / prediction by the delta method over the blocks of x² and x ∂_uL jointly (x as in ``_effective``);
    the variance in the ratio's error is ⟨x²⟩ over the same iterates."""
    xs = rec["at"][:, cols] - rec["at"][:, cols].mean(axis=0)
    b1 = block_means(xs * xs, blocks)
    b2 = block_means(xs * rec["grad_proj"][:, cols], blocks)
    m1, m2 = b1.mean(axis=0), b2.mean(axis=0)
    lam = m2 / m1
    pred = np.full(lam.size, math.nan)
    log_se = np.full(lam.size, math.nan)
    for j in range(lam.size):
        if not (lam[j] > 0 and noises[j] >= 0):
            continue
        pred[j] = predicted_variances([lam[j]], [noises[j]], **setting)[0]
        h = 1e-6 * lam[j]
        up, down = predicted_variances([lam[j] + h, lam[j] - h], [noises[j]] * 2, **setting)
        if not (pred[j] > 0 and up > 0 and down > 0):
            continue
        d = (math.log(up) - math.log(down)) / (2 * h)  # d log p / d lambda
        g1, g2 = 1.0 / m1[j] + d * m2[j] / m1[j] ** 2, -d / m1[j]
        log_se[j] = float(np.std(g1 * b1[:, j] + g2 * b2[:, j], ddof=1) / math.sqrt(blocks))
    return {"predicted": pred, "log_stderr": log_se}


def _anneal(chain: _Chain, model, loss_fn, x, y, gamma, st: BasinSettings, eta: float) -> float:
    """The objective reached by annealing η linearly to 0 from a copy of the current state."""
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(chain.opt.state_dict())
    try:
        for k in range(st.anneal_steps):
            chain.step(lr=eta * (1.0 - k / st.anneal_steps))
        chain.check()
        return _objective(model, loss_fn, x, y, gamma, st.measure_batch)
    finally:
        model.load_state_dict(saved[0])
        chain.opt.load_state_dict(saved[1])


def _relaxation(eta: float, momentum: float):
    """a ↦ the relaxation time in steps of the variance along a direction of curvature a
    (``sde.theory.relaxation_steps``); NaN where there is no stationary law or a ≤ 0. For a random direction, whose
    variance mixes many curvatures, uᵀHu gives only a rough figure."""
    from sde.theory import relaxation_steps

    def relax(a: float) -> float:
        t = relaxation_steps(eta, a, momentum) if a > 0 else math.nan
        return math.nan if math.isinf(t) else t

    return relax


def _rows(kinds, a, c, var, cols, pred, profile, residuals, relax_of, eff) -> list[DirectionRow]:
    """One ``DirectionRow`` per direction: curvature, noise, measured variance and mean, prediction, profile, and
    the effective curvature and Yaida's ratio along it (``_effective``)."""
    rows = []
    for j, i in enumerate(cols):
        relax = relax_of(a[j])
        row = dict(kind=kinds[j], curvature=float(a[j]), noise=float(c[j]),
                   variance=float(var["variance"][i]), variance_stderr=float(var["variance_stderr"][i]),
                   mean=float(var["mean"][i]), mean_stderr=float(var["mean_stderr"][i]),
                   relaxation_steps=float(relax),
                   block_over_relaxation=(float(var["block_length"] / relax) if relax > 0
                                          else (math.inf if relax == 0 else math.nan)),
                   profile_ratio=tuple(float(r) for r in profile["ratio"][j]),
                   effective_curvature=float(eff["lambda"][i]),
                   effective_curvature_stderr=float(eff["lambda_stderr"][i]),
                   fdr_ratio=float(eff["fdr"][i]), fdr_ratio_stderr=float(eff["fdr_stderr"][i]))
        if j < len(pred):
            p = pred[j]
            row.update(residual=float(residuals[j]), predicted=float(p),
                       ratio=float(var["variance"][i] / p) if p > 0 else math.nan,
                       ratio_stderr=float(var["variance_stderr"][i] / p) if p > 0 else math.nan)
        rows.append(DirectionRow(**row))
    return rows


def _summarise(geo, local, rec, minimum, theta_bar, spread, l_min, anneal, op, theta_min, *, eta, batch_size, n,
               momentum, dampening, settings: BasinSettings, seed, mech=None) -> dict:
    """Predictions beside measurements: the per-direction tables (at θ_min and at θ̄), the excess loss, Eq. (7) and
    the control (``BasinResult``'s fields but the FDR record, the settings and the time)."""
    st = settings
    k = geo["eigenvalues"].size
    m = geo["directions"].shape[1]
    proj = rec["projections"].copy()
    # Along the directions taken at the mean, offsets are reported from θ̄ (the variance does not depend on it).
    proj[:, m:] -= local["directions"].T @ (theta_bar - theta_min)
    var = directional_variances(proj, batches=st.batches)
    eff = _effective(rec, st.batches)
    sd = np.sqrt(var["variance"])
    setting = dict(eta=eta, batch_size=batch_size, dataset_size=n, momentum=momentum, dampening=dampening)
    relax = _relaxation(eta, momentum)
    c = np.clip(np.diag(geo["noise_cov"]), 0.0, None)
    a = geo["curvatures"]
    pred = predicted_variances(a[:k], c[:k], **setting)
    profile = quadratic_profile(op, theta_min, geo["directions"], a, sd[:m], gradient=geo["grad"])
    rows = _rows(["eigenvector"] * k + ["random"] * (m - k), a, c, var, range(m), pred, profile, geo["residuals"],
                 relax, eff)
    c_bar = np.clip(np.diag(local["noise_cov"]), 0.0, None)
    a_bar = local["eigenvalues"]
    pred_bar = predicted_variances(a_bar, c_bar, **setting)
    profile_bar = quadratic_profile(op, theta_bar, local["directions"], a_bar, sd[m:], gradient=local["grad"])
    rows += _rows(["eigenvector-at-mean"] * a_bar.size, a_bar, c_bar, var, range(m, m + a_bar.size), pred_bar,
                  profile_bar, local["residuals"], relax, eff)
    mech = mech or {}
    rows, laws = _laws(rows, rec, mech, k, m, c[:k], c_bar, st, setting)
    set_flat_parameters(op.params, theta_min)
    mean_l, se_l = batch_means(rec["losses"], st.batches)
    # ½⟨O_R⟩ = E(l) on a quadratic at stationarity, momentum and dampening included (η/4·⟨‖g‖²⟩ when μ = 0).
    mean_r, se_r = batch_means(rec["o_right"], st.batches)
    control = quadratic_control(geo["eigenvalues"], c[:k], trace_h=geo["trace_h"], trace_c=geo["trace_c"],
                                num_params=op.dim, eta=eta, batch_size=batch_size, dataset_size=n,
                                momentum=momentum, simulate_steps=st.control_steps or None, rng=seed)
    kappa_n = finite_data_factor(batch_size, n)
    pref = eta / (4.0 * batch_size)
    excess = mean_l - l_min
    return dict(
        directions=tuple(rows), profile_multiples=tuple(float(m) for m in profile["multiples"]), minimum=minimum,
        grad_norm_at_mean=local["grad_norm"], lambda_max_at_mean=float(local["eigenvalues"][0]),
        alignment_at_mean=local["alignment"].to_dict() if "alignment" in local else None,
        distance_mean_to_minimum=float(np.linalg.norm(theta_bar - theta_min)), stationary_spread=spread,
        distance_in_spreads=float(np.linalg.norm(theta_bar - theta_min) / spread) if spread > 0 else math.nan,
        loss_min=l_min, mean_loss=mean_l, mean_loss_stderr=se_l, excess=excess, excess_stderr=se_l,
        e_fdr=0.5 * mean_r, e_fdr_stderr=0.5 * se_r,
        bottom_loss=anneal, anneal_minus_min=anneal - l_min if math.isfinite(anneal) else math.nan,
        trace_h=geo["trace_h"], trace_h_halfwidth=geo["trace_h_halfwidth"], trace_c=geo["trace_c"],
        trace_c_stderr=geo["trace_c_stderr"], num_params=op.dim,
        trace_h_data=geo["trace_h"] - op.weight_decay * op.dim,
        pred_h=pref * geo["trace_h"], pred_c=pref * geo["trace_c"],
        pred_h_data=pref * (geo["trace_h"] - op.weight_decay * op.dim), pred_c_kappa=pref * kappa_n * geo["trace_c"],
        lambda_max=float(geo["eigenvalues"][0]), eig_converged=geo["eig_converged"],
        control=control, fdr_recorded=rec["fdr"], hvps=geo["hvps"],
        dataset_size=n, eta=eta, batch_size=batch_size, momentum=momentum,
        **_mechanism_summary(mech, laws, a_bar, c_bar, geo, op, setting))


def _laws(rows, rec, mech, k, m, c_min, c_bar, st: BasinSettings, setting) -> tuple[list, dict]:
    """The rows with laws (ii) and (iii) filled in along the top-k eigenvectors at θ_min (columns 0..k−1) and at
    θ̄ (columns m..m+k'−1), and λ_eff at θ̄ for the excess loss."""
    out = list(rows)
    laws = {}
    for (start, count, noises, lin) in ((0, k, c_min, mech.get("lin_min")),
                                        (m, len(c_bar), c_bar, mech.get("lin_mean"))):
        cols = list(range(start, start + count))
        eff = _effective_prediction(rec, cols, noises, st.batches, setting)
        if start == m:
            laws["lambda_eff_at_mean"] = np.array([out[i].effective_curvature for i in cols])
        for j, i in enumerate(cols):
            row = out[i]
            upd = {}
            p = eff["predicted"][j]
            if p > 0:
                r = row.variance / p
                upd.update(effective_predicted=float(p), effective_ratio=float(r),
                           effective_ratio_stderr=float(r * eff["log_stderr"][j]))
            if lin is not None and lin.stable:
                pl = float(lin.covariance[j, j])
                pl_se = float(lin.covariance_stderr[j, j])
                if pl > 0:
                    r = row.variance / pl
                    rel = (row.variance_stderr / row.variance) ** 2 if row.variance > 0 else math.nan
                    if math.isfinite(pl_se):
                        rel += (pl_se / pl) ** 2
                    upd.update(linearised_predicted=pl, linearised_ratio=float(r),
                               linearised_ratio_stderr=float(r * math.sqrt(rel)))
            out[i] = replace(row, **upd)
    return out, laws


def _mechanism_summary(mech, laws, a_bar, c_bar, geo, op, setting) -> dict:
    """``BasinResult``'s fields of issue 20 (module docstring, step 8)."""
    out = {}
    kw = dict(trace_h=geo["trace_h"], trace_c=geo["trace_c"], num_params=op.dim, eta=setting["eta"],
              batch_size=setting["batch_size"], dataset_size=setting["dataset_size"], momentum=setting["momentum"])
    if op.dim > a_bar.size:
        ctrl_mean = quadratic_control(a_bar, c_bar, **kw)
        out["excess_pred_mean"] = ctrl_mean.exact_loss
        lam = laws.get("lambda_eff_at_mean")
        if lam is not None and np.all(np.isfinite(lam)):
            out["excess_pred_effective"] = quadratic_control(lam, c_bar, **kw).exact_loss
        lin = mech.get("lin_mean")
        if lin is not None and lin.stable:
            out["excess_pred_linearised"] = float(0.5 * np.trace(lin.curvature @ lin.covariance)
                                                  + ctrl_mean.bulk_loss)
    notes = []
    for where in ("mean", "min"):
        lin = mech.get(f"lin_{where}")
        if lin is None:
            continue
        out[f"stability_margin_at_{where}"] = float(lin.spectral_radius)
        out[f"stability_margin_at_{where}_stderr"] = float(lin.spectral_radius_stderr)
        out[f"additive_radius_at_{where}"] = float(lin.additive_radius)
        notes += [f"at the {where}: {note}" for note in lin.notes]
    out["linearised_notes"] = tuple(notes)
    bs = mech.get("sharpness")
    if bs is not None:
        out.update(batch_sharpness_at_mean=float(bs.estimate), batch_sharpness_at_mean_stderr=float(bs.stderr))
    esc = mech.get("escape")
    if esc is not None:
        out.update(escape_growth=float(esc["growth"]), escape_growth_stderr=float(esc["growth_stderr"]),
                   escape_fitted_steps=int(esc["fitted"]),
                   escape_distances=tuple(float(v) for v in esc["distances"]),
                   escape_predicted_growth=float(esc["predicted_growth"]),
                   escape_predicted_distances=tuple(float(v) for v in esc["predicted_distances"]))
    return out


def basin_phase(run_dir, *, device: str | None = None, seed: int = 0, **settings) -> dict:
    """``examine_basin`` on a finished ``nets.train`` run folder (read, never written), at the run's (η, S, μ, d,
    γ), over its training set with cross-entropy; ``settings`` are ``BasinSettings`` fields. The run's seed and
    ``seed`` together seed the examination (``(run seed, seed)``, so that runs and stage seeds never collide).
    ``device``: where it runs (``nets.train.resolve_device``'s names); ``None``, the run's own ``TrainConfig.device``
    (the sweep passes its runs' device)."""
    from nets.train import load_run

    st = BasinSettings(**settings)
    st.check()
    cfg, model, data = load_run(run_dir, device=device)
    return examine_basin(model, F.cross_entropy, data.x_train, data.y_train, eta=cfg.eta,
                         batch_size=cfg.batch_size, momentum=cfg.momentum, dampening=cfg.dampening,
                         weight_decay=cfg.weight_decay, settings=st, seed=(cfg.seed, seed))
