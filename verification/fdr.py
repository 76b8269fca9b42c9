r"""``python -m verification.fdr``: Yaida's fluctuation–dissipation relation, checked on quadratics.

At any stationary state of SGD, ⟨θ·g⟩ = ½η(1+μ)/(1−d)·⟨‖b'‖²⟩ (plain SGD: ⟨θ·∇L⟩ = (η/2)⟨‖g_B‖²⟩), whatever the
loss, the noise or where the minimum lies. The check runs SGD on a quadratic whose minimum is away from the origin
(so that θ·g is not simply 2L) in five stationary settings: plain SGD, momentum, momentum with dampening, momentum
with weight decay, and real minibatches of a least-squares problem (multiplicative noise). In each the two sides
must agree within their standard error (z-test over independent chains, Bonferroni over the settings). Two more
claims: on a quadratic, (η/4)⟨‖g_B‖²⟩ equals the exact stationary loss (so the loss excess can be read off the
gradient norm alone, as ``nets`` does on real networks), and a run still relaxing from a distant start must *fail*
the relation (a diagnostic that cannot see non-stationarity is no diagnostic). The estimator is
``sde.diagnostics.FDRMonitor``.

Exit status: 0 when every claim is as expected, 1 otherwise, 2 on bad input.

Example::

    python -m verification.fdr --eta 0.1 --batch-size 10 --out figures --json fdr.json

From Python, without the command line::

    from verification.fdr import FDRSettings, check
    result = check(FDRSettings(chains=64, steps=1500, spectrum="logspace:0.1:1:10"))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, parse_spectrum, psd_sqrt
from sde import expected_loss, stability_bound
from sde.diagnostics import FDRMonitor
from sde.optim import sgd_direction
from sde.theory import relaxation_steps
from sgd_noise_common import validate
from sgd_noise_common.claims import CheckResult, Claim
from sgd_noise_common.cli import Parser, from_args, options_dict, setting
from sgd_noise_common.files import save_figure_atomic
from verification import budget
from verification.budget import NS, Cost, spectrum_of
from verification.cli import (
    bonferroni_z,
    check_confidence,
    check_parser,
    check_with_figure,
    confidence_setting,
    format_z,
    generator_from_state,
    plan,
    run_main,
    seed_setting,
    spectrum_setting,
    table_stream,
    z_test,
)

__all__ = ["FDRSettings", "FDRCase", "FDRResult", "build_parser", "settings_from_args", "fdr_cases", "check",
           "estimate", "plot", "transient_ratio", "run", "main", "run_sgd"]

DEFAULT_SPECTRUM = "logspace:0.05:1:20"
TITLE = "fluctuation-dissipation relation at stationarity (Yaida 2019)"
#: Steps of the relaxing run drawn in the figure (its windowed ratio reaches 1 well before).
TRANSIENT_STEPS = 3000


@dataclass(frozen=True, kw_only=True)
class FDRSettings:
    """What ``fdr`` simulates: the problem, the learning rate and batch size, the momentum settings and the budget.

    The defaults are those of the command line. The spectrum is parsed in ``check`` (a Marchenko–Pastur spectrum
    draws from the seed's stream), which also checks, before any simulation, that η is below the stability bound
    of every setting.

    Attributes:
        spectrum: Hessian spectrum (``--spectrum``); also the input spectrum of the least-squares setting.
        eta: learning rate η (``--eta``), > 0.
        batch_size: batch size S (``--batch-size``), >= 1.
        momentum: μ of the momentum settings (``--momentum``), in [0, 1).
        dampening: dampening of that setting (``--dampening``), in [0, 1).
        weight_decay: weight decay of that setting (``--weight-decay``), >= 0.
        chains: independent chains per setting (``--chains``), >= 2.
        steps: measured steps after the burn-in (``--steps``), >= 2.
        seed: seed of the one random stream that every draw comes from, in a fixed order.
        confidence: family-wise confidence of the verdicts, in (0, 1).

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--momentum must lie in [0.0, 1.0), got 1.0``.
    """

    spectrum: str = spectrum_setting(DEFAULT_SPECTRUM, f"Hessian spectrum: {SPECTRUM_HELP}")
    eta: float = setting(0.1, help="learning rate", range="> 0")
    batch_size: int = setting(10, help="batch size S", range=">= 1")
    momentum: float = setting(0.9, help="momentum of the momentum settings", range="[0, 1)")
    dampening: float = setting(0.5, help="dampening of that setting", range="[0, 1)")
    weight_decay: float = setting(0.01, help="weight decay of that setting", range=">= 0")
    chains: int = setting(128, help="independent chains per setting", range=">= 2")
    steps: int = setting(4000, help="measured steps after the burn-in", range=">= 2")
    seed: int = seed_setting()
    confidence: float = confidence_setting()

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        check_confidence(self.confidence)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "eta", validate.positive_float("--eta", self.eta))
        set_(self, "batch_size", validate.positive_int("--batch-size", self.batch_size))
        set_(self, "momentum", validate.float_in("--momentum", self.momentum, 0.0, 1.0))
        set_(self, "dampening", validate.float_in("--dampening", self.dampening, 0.0, 1.0))
        set_(self, "weight_decay", validate.nonnegative_float("--weight-decay", self.weight_decay))
        set_(self, "chains", validate.positive_int("--chains", self.chains, minimum=2))
        set_(self, "steps", validate.positive_int("--steps", self.steps, minimum=2))
        set_(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))


def build_parser() -> Parser:
    """The command line of ``python -m verification.fdr``: an option per field of ``FDRSettings`` (its defaults,
    ranges and help), and the common options."""
    return check_parser("python -m verification.fdr", __doc__, FDRSettings)


def settings_from_args(args) -> FDRSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(FDRSettings, args)


@dataclass(frozen=True)
class FDRCase:
    """One stationary setting in which the relation is tested: its label and the SGD options it sets.

    An option left at ``None`` is not set by the case (``run_sgd``'s default applies) and is not a column of its
    row.

    Attributes:
        label: the setting in words.
        momentum: μ.
        dampening: d.
        weight_decay: γ.
        noise: ``"minibatch"`` for real minibatches of the least-squares problem.
    """

    label: str
    momentum: float | None = None
    dampening: float | None = None
    weight_decay: float | None = None
    noise: str | None = None

    def options(self) -> dict:
        """The options the case sets, as keyword arguments of ``run_sgd`` (in field order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "label" and getattr(self, f.name) is not None}


def fdr_cases(settings: FDRSettings) -> list[FDRCase]:
    """The five stationary settings: plain SGD, momentum, momentum with dampening, momentum with weight decay, and
    real minibatches of least squares."""
    mu, damp, wd = settings.momentum, settings.dampening, settings.weight_decay
    return [
        FDRCase("plain SGD"),
        FDRCase(f"momentum {mu:g}", momentum=mu),
        FDRCase(f"momentum {mu:g}, dampening {damp:g}", momentum=mu, dampening=damp),
        FDRCase(f"momentum {mu:g}, weight decay {wd:g}", momentum=mu, weight_decay=wd),
        FDRCase("least squares, real minibatches", noise="minibatch"),
    ]


@dataclass
class FDRResult(CheckResult):
    """``check``'s result, with what ``plot`` needs (not part of the JSON).

    Attributes:
        problem: the quadratic of the Gaussian settings (minimum away from the origin).
        rng_state: the state of the check's stream after its last draw; the figure's relaxing run continues it.
        config: the settings the check ran with.
    """

    problem: Quadratic | None = field(default=None, repr=False)
    rng_state: dict | None = field(default=None, repr=False)
    config: FDRSettings | None = None


# 63 lines, 36 of them code: its docstring names every option; the loop is one SGD step, kept whole to read in order.
def run_sgd(problem: Quadratic, eta, batch_size, *, steps, chains, rng, momentum=0.0, dampening=0.0,
            weight_decay=0.0, theta0=None, burn_in=0, noise="gaussian", monitor: FDRMonitor | None = None):
    """torch-convention SGD on ``problem`` (numpy, chains in parallel), feeding ``monitor`` after ``burn_in``.

    Gaussian noise: g_B = H(θ − θ*) + ξ, ξ ~ N(0, C/S). ``noise="minibatch"`` (a ``LeastSquares``): the mean
    gradient of S examples drawn with replacement. Momentum follows torch: the first step sets the buffer to the
    gradient, later steps b ← μb + (1 − d)g.

    Args:
        problem: a ``Quadratic`` (a ``LeastSquares`` for ``noise="minibatch"``).
        eta: learning rate η.
        batch_size: S.
        steps: measured steps after the burn-in.
        chains: independent chains.
        rng: a ``numpy.random.Generator`` (or a seed).
        momentum: μ.
        dampening: d.
        weight_decay: γ, added to the gradient as γθ.
        theta0: the start (default the minimum).
        burn_in: steps taken before measuring.
        noise: ``"gaussian"`` or ``"minibatch"``.
        monitor: an ``FDRMonitor`` fed θ, g and the buffer at every measured step.

    Returns:
        ``(loss, grad_sq)``: per-chain time averages of L(θ) − L(θ*) and of ‖g_B‖² over the measured steps.

    Raises:
        ValueError: when SGD diverges, or ``noise="minibatch"`` without a ``LeastSquares``.
    """
    d = problem.dim
    rng = np.random.default_rng(rng)
    theta = np.array(np.broadcast_to(problem.minimum if theta0 is None else theta0, (chains, d)), dtype=np.float64)
    buf = np.zeros_like(theta)
    if noise == "gaussian":
        factor_t = psd_sqrt(problem.noise_covariance) / math.sqrt(batch_size)  # symmetric: F = Fᵀ
    elif not isinstance(problem, LeastSquares):
        raise ValueError("noise='minibatch' needs a LeastSquares problem")
    loss_sum = np.zeros(chains)
    gsq_sum = np.zeros(chains)
    for k in range(burn_in + steps):
        if noise == "gaussian":
            g = (theta - problem.minimum) @ problem.hessian + rng.standard_normal((chains, d)) @ factor_t
        else:
            idx = rng.integers(0, problem.dataset_size, size=(chains, batch_size))
            xb = problem.inputs[idx]
            resid = np.einsum("csd,cd->cs", xb, theta) - problem.targets[idx]
            g = np.einsum("cs,csd->cd", resid, xb) / batch_size
        step, buf = sgd_direction(g, theta, buf, momentum=momentum, dampening=dampening,
                                  weight_decay=weight_decay, first=k == 0)
        if k >= burn_in:
            if monitor is not None:
                monitor.observe(theta, g, buf if momentum else None)
            loss_sum += problem.loss(theta)
            gsq_sum += np.einsum("cd,cd->c", g, g)
        theta = theta - eta * step
        if not np.all(np.isfinite(theta)):
            raise ValueError(f"SGD diverged at step {k} (eta={eta}, momentum={momentum})")
    return loss_sum / steps, gsq_sum / steps


def check(settings: FDRSettings, *, out=None) -> FDRResult:
    """Run SGD to stationarity in five settings and test Yaida's relation and the loss-from-gradient identity.

    Claims (z-tests over independent chains, Bonferroni over the settings and the two further tests):

    * ``fdr-stationary`` (holds): at stationarity ⟨θ·g⟩ = η(1+μ)/(2(1−d))⟨‖b'‖²⟩ in every setting of
      ``fdr_cases`` (plain SGD: ⟨θ·∇L⟩ = (η/2)⟨‖g_B‖²⟩);
    * ``loss-from-gradient-norm`` (holds): on a quadratic, (η/4)⟨‖g_B‖²⟩ equals the exact stationary loss excess;
    * ``detects-non-stationarity`` (expected to fail): the relation holds for a run still relaxing from a distant
      start (the first tenth of a burn-in), so a diagnostic that cannot see non-stationarity is caught.

    Args:
        settings: what to simulate.
        out: text stream for the per-setting table (default: none; the command line passes stdout).

    Returns:
        An ``FDRResult``: the claims, one row per setting (both sides of the relation, their ratio, z) and what
        ``plot`` needs.

    Raises:
        ValueError: when η is not below the stability bound of a setting; raised before any simulation.
    """
    out = table_stream(out)
    rng = np.random.default_rng(settings.seed)
    try:
        spectrum = parse_spectrum(settings.spectrum, rng=rng)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None
    d = spectrum.size
    minimum = rng.standard_normal(d)  # away from the origin, so θ·g ≠ 2L
    quad = Quadratic.from_spectrum(spectrum, rotate=True, rng=rng, minimum=minimum)
    lsq = LeastSquares.sample(max(20 * d, 200), spectrum, noise_std=1.0, rotate=True, rng=rng)
    cases = fdr_cases(settings)
    for case in cases:
        problem = lsq if case.noise == "minibatch" else quad
        bound = stability_bound(problem, momentum=case.momentum or 0.0, weight_decay=case.weight_decay or 0.0)
        if not settings.eta < bound:
            raise ValueError(f"--eta must be < {bound:.6g} for the setting '{case.label}' (no stationary law above)")
    z_crit = bonferroni_z(settings.confidence, len(cases) + 2)
    out.write(f"fdr: {quad!r}, minimum away from the origin; eta={settings.eta} S={settings.batch_size} "
              f"chains={settings.chains} steps={settings.steps}\n")
    out.write(f"{'setting':<40} {'<O_L>':>11} {'<O_R>':>11} {'ratio':>9} {'+-':>8} {'z':>7}\n")
    rows = [_stationary_row(lsq if case.noise == "minibatch" else quad, case, settings, z_crit, rng, out)
            for case in budget.progress(cases, desc="fdr")]
    ratios = ", ".join(f"{r['ratio']:.4f}±{r['ratio_stderr']:.4f}" for r in rows)
    # As a running maximum from 0: a NaN z is skipped, and a z of None (no noise, see z_test) too.
    worst = max(0.0, *(abs(r["z"]) for r in rows if r["z"] is not None))
    claims = [Claim(
        "fdr-stationary", "at stationarity <theta.g> = eta(1+mu)/(2(1-d)) <|b'|^2> (plain SGD: <theta.grad L> = "
        "(eta/2)<|g_B|^2>), with momentum, dampening, weight decay and real minibatches",
        holds=all(r["ok"] for r in rows),
        summary=f"<O_L>/<O_R> = {ratios}; max |z| = {worst:.2f} <= {z_crit:.2f}?",
        numbers=dict(ratios=[r["ratio"] for r in rows], max_abs_z=worst, z_critical=z_crit))]
    claims.append(_loss_claim(quad, settings, rows[0]["burn_in"], z_crit, rng, out))
    claims.append(_transient_claim(quad, settings, rows[0]["burn_in"], z_crit, rng, out))
    return FDRResult("fdr", TITLE, claims, rows,
                     settings=options_dict(settings),
                     problem=quad, rng_state=rng.bit_generator.state, config=settings)


def _stationary_row(problem: Quadratic, case: FDRCase, settings: FDRSettings, z_crit: float, rng, out) -> dict:
    """Run one setting after its burn-in, print and return its row: both sides of the relation, ratio and z."""
    eta, s = settings.eta, settings.batch_size
    mu, wd = case.momentum or 0.0, case.weight_decay or 0.0
    a_min = float(problem.eigenvalues.min()) + wd
    # Burn-in: 20 relaxation times of the slowest mode's variance.
    burn = _burn_in(eta, mu, a_min)
    mon = FDRMonitor(eta, momentum=mu, dampening=case.dampening or 0.0, weight_decay=wd)
    run_sgd(problem, eta, s, steps=settings.steps, chains=settings.chains, rng=rng, burn_in=burn, monitor=mon,
            **case.options())
    sm = mon.summary()
    z, ok = z_test(sm.diff, sm.diff_stderr, 0.0, max(abs(sm.o_left), abs(sm.o_right)), z_crit)
    out.write(f"{case.label:<40} {sm.o_left:>11.5g} {sm.o_right:>11.5g} {sm.ratio:>9.5f} {sm.ratio_stderr:>8.2g} "
              f"{format_z(z)}\n")
    return dict(setting=case.label, **case.options(), eta=eta, batch_size=s, burn_in=burn, o_left=sm.o_left,
                o_right=sm.o_right, ratio=sm.ratio, ratio_stderr=sm.ratio_stderr, z=z, z_critical=z_crit,
                ok=bool(ok), yaida_stationary=sm.is_stationary())


def _burn_in(eta: float, mu: float, a_min: float) -> int:
    """Burn-in: 20 relaxation times of the slowest mode's variance (``sde.theory.relaxation_steps``, the momentum
    block's own spectral radius: with heavy momentum at least √μ, which the effective learning rate η/(1−μ) that
    this once used misses)."""
    return int(math.ceil(20.0 * relaxation_steps(eta, a_min, mu)))


def estimate(settings: FDRSettings) -> Cost:
    """The memory and time of ``check(settings)`` and its figure, from its sizes, before any work.

    The monitor keeps two numbers per chain and step (and about 200 bytes of bookkeeping per step), twice at its
    summary; every step of the numpy loop costs 150 µs plus, per chain, 2 ns per dimension squared (Gaussian noise)
    or 5 ns per example and dimension (real minibatches): measured on the 2-core development VM, rounded up.

    Raises:
        ValueError: a bad ``--spectrum`` (named).
    """
    info = spectrum_of(settings.spectrum)
    d, c, t, s, eta = info.dim, settings.chains, settings.steps, settings.batch_size, settings.eta
    n = max(20 * d, 200)
    cost = Cost()
    spec = f"--spectrum={settings.spectrum} (dimension {d})"
    cost.memory(spec, info.build_bytes + 12 * 8.0 * d * d + 8.0 * 3 * n * d)
    cost.time(spec, NS * (info.build_flops + 60.0 * d**3))
    gauss_step = 150e-6 + NS * c * (2.0 * d * d + 10.0 * d)
    mini_step = 150e-6 + NS * c * (5.0 * s * d + 2.0 * d * d + 10.0 * d)
    burns = [_burn_in(eta, case.momentum or 0.0, info.low + (case.weight_decay or 0.0))
             for case in fdr_cases(settings)]
    slow = f"--eta={eta:g} (burn-in of {max(burns)} steps)"
    for case, burn in zip(fdr_cases(settings), burns):
        step = mini_step if case.noise == "minibatch" else gauss_step
        cost.time(f"--steps={t} with --chains={c}", t * step)
        cost.time(slow, burn * step)
    cost.time(f"--steps={t} with --chains={c}", t * gauss_step)
    cost.time(slow, (burns[0] + max(10, burns[0] // 10)) * gauss_step)
    cost.time("the figure", TRANSIENT_STEPS * gauss_step)
    cost.memory(f"--steps={t} with --chains={c}", 2 * t * (16.0 * c + 250.0))
    cost.memory(f"--chains={c} with --batch-size={s}", 8.0 * c * (3 * s * d + 6 * d))
    return cost


def _loss_claim(quad: Quadratic, settings: FDRSettings, burn: int, z_crit: float, rng, out) -> Claim:
    """(η/4)⟨‖g_B‖²⟩ against the exact stationary loss, plain SGD on the quadratic."""
    eta, s, chains = settings.eta, settings.batch_size, settings.chains
    loss_c, gsq_c = run_sgd(quad, eta, s, steps=settings.steps, chains=chains, rng=rng, burn_in=burn)
    est = eta / 4.0 * gsq_c
    exact = expected_loss(quad, eta, s)
    est_m, est_se = float(est.mean()), float(est.std(ddof=1) / math.sqrt(chains))
    loss_m, loss_se = float(loss_c.mean()), float(loss_c.std(ddof=1) / math.sqrt(chains))
    z_id, ok = z_test(est_m, est_se, exact, max(abs(exact), abs(est_m)), z_crit)
    out.write(f"(eta/4)<|g_B|^2> = {est_m:.5g} ± {est_se:.2g} against exact E(l) = {exact:.5g}: "
              f"z = {format_z(z_id, 0)}\n")
    return Claim(
        "loss-from-gradient-norm", "on a quadratic, (eta/4)<|g_B|^2> equals the stationary loss excess E(l)",
        holds=bool(ok),
        summary=f"(eta/4)<|g_B|^2> = {est_m:.5g} ± {est_se:.2g}, exact E(l) = {exact:.5g} (z = {format_z(z_id, 0)}); "
                f"measured <L - L*> = {loss_m:.5g} ± {loss_se:.2g}",
        numbers=dict(estimate=est_m, stderr=est_se, exact=exact, z=z_id, measured_loss=loss_m))


def _transient_claim(quad: Quadratic, settings: FDRSettings, burn: int, z_crit: float, rng, out) -> Claim:
    """Not stationary: from a distant start, averaged over the first tenth of a burn-in only (must fail)."""
    far = quad.minimum + 3.0 * rng.standard_normal(quad.dim)
    early = max(10, burn // 10)
    mon_far = FDRMonitor(settings.eta)
    run_sgd(quad, settings.eta, settings.batch_size, steps=early, chains=settings.chains, rng=rng, theta0=far,
            monitor=mon_far)
    sm_far = mon_far.summary()
    z_far, agrees = z_test(sm_far.diff, sm_far.diff_stderr, 0.0, max(abs(sm_far.o_left), abs(sm_far.o_right)),
                           z_crit)
    out.write(f"transient (first {early} steps from afar): ratio {sm_far.ratio:.3f}, z = {format_z(z_far, 0, 1)}\n")
    return Claim(
        "detects-non-stationarity", f"the relation flags a run still relaxing (first {early} steps from a distant "
        "start)", holds=bool(agrees), expected=False,
        summary=f"<O_L>/<O_R> = {sm_far.ratio:.3f} ± {sm_far.ratio_stderr:.2g}, z = {format_z(z_far, 0, 1)}",
        numbers=dict(ratio=sm_far.ratio, z=z_far, steps=early))


def transient_ratio(quad: Quadratic, eta: float, batch_size: int, *, chains: int, rng,
                    steps: int = TRANSIENT_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windowed ratio ⟨O_L⟩/⟨O_R⟩ along plain SGD started 3 from the minimum in every coordinate.

    Args:
        quad: the problem.
        eta: learning rate.
        batch_size: S.
        chains: independent chains.
        rng: the stream the run draws from.
        steps: length of the run.

    Returns:
        ``(centres, ratios, stderrs)`` over log-spaced windows of steps (geometric window centres).
    """
    mon = FDRMonitor(eta)
    run_sgd(quad, eta, batch_size, steps=steps, chains=chains, rng=rng, theta0=quad.minimum + 3.0, monitor=mon)
    edges = np.unique(np.geomspace(1, steps, 30).astype(int))
    mids, rat, err = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a < 2:
            continue
        sm = mon.summary(a, b)
        mids.append(np.sqrt(a * b))
        rat.append(sm.ratio)
        err.append(sm.ratio_stderr)
    return np.array(mids), np.array(rat), np.array(err)


def plot(result: FDRResult, path) -> None:
    """Draw ``check``'s result into ``path`` (PNG): each setting's ratio with its error, and a relaxing run.

    The right panel simulates (``transient_ratio``) from the stream where the check left it, so the figure is the
    same on every call.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = result.rows, result.config
    fig, (ax, tr) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    y = np.arange(len(rows))
    ax.errorbar([r["ratio"] for r in rows], y, xerr=[r["ratio_stderr"] for r in rows], fmt="o", capsize=3)
    ax.axvline(1.0, color="k", lw=1)
    ax.axvspan(0.99, 1.01, color="0.85", label="Yaida's equilibrium band |ratio - 1| < 0.01")
    ax.set_yticks(y, [r["setting"] for r in rows], fontsize=8)
    ax.set_xlabel(r"$\langle O_L\rangle / \langle O_R\rangle$ (± 1 s.e.)")
    ax.set_title("Stationary SGD: the two sides agree", fontsize=10)
    lo = min(0.985, min(r["ratio"] - 2 * r["ratio_stderr"] for r in rows))
    hi = max(1.015, max(r["ratio"] + 2 * r["ratio_stderr"] for r in rows))
    ax.set_xlim(lo, hi)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    # The diagnostic in use: windowed ratio along a run from a distant start.
    mids, rat, err = transient_ratio(result.problem, cfg.eta, cfg.batch_size, chains=cfg.chains,
                                     rng=generator_from_state(result.rng_state))
    tr.plot(mids, rat, "o-", ms=3)
    tr.fill_between(mids, rat - err, rat + err, alpha=0.3)
    tr.axhline(1.0, color="k", lw=1)
    tr.set_xscale("log")
    tr.set_yscale("log")
    tr.set_xlabel("step (window centre)")
    tr.set_ylabel(r"windowed $\langle O_L\rangle / \langle O_R\rangle$")
    tr.set_title("From a distant start: the ratio reaches 1 at equilibrium", fontsize=10)
    save_figure_atomic(fig, path, dpi=120, kind="verification.fdr")


def run(args, out=None) -> CheckResult:
    """The check behind the command line: ``check`` plus the figure ``--out DIR/fdr.png``.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the table (default stdout).

    Returns:
        ``check``'s result, with the figure's path when ``--out`` was given.
    """
    settings = settings_from_args(args)
    plan(args, estimate(settings), "python -m verification.fdr")
    return check_with_figure(check(settings, out=sys.stdout if out is None else out), args, "fdr", plot)


def main(argv=None, out=None) -> int:
    """``python -m verification.fdr``; returns the exit status (0 pass, 1 a claim fails, 2 bad input)."""
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
