r"""``python -m verification.invariance``: equal η/S gives equal learning dynamics (the paper's Figs. 1 and 2).

On a quadratic (C = H) started away from its minimum, the loss is followed against *examples seen* for:

* runs with the same ratio η/S but η and S up to 8× apart (Fig. 1, right), a control with twice and half the
  ratio, and a must-fail case at equal ratio but ηλ_max = 1.6, where the discrete dynamics leave the SDE;
* a cyclic learning rate against the cyclic batch size with the same η/S at every example seen (Fig. 1, left);
* growing the batch 8× with η scaled like S, like √S, or fixed (Fig. 2): which matches the small-batch curve.

Beside each simulated curve (mean over chains) is the exact expected curve from the moment recursion
(``sde.learning_curve``). The distance between two curves is the RMS over a log-spaced grid of examples of
ln L_A − ln L_B, with the noise bias removed (the squared relative standard errors subtracted); its standard error
is a bootstrap over chains. A pair "gives equal curves" when distance + z·stderr < ``--tolerance`` (default 0.1,
i.e. 10 % RMS), with z the Bonferroni critical value over the pairs tested. Each simulated curve must also agree
with its exact curve (z-test per grid point, Bonferroni over all points).

Exit status: 0 when every claim is as expected, 1 otherwise, 2 on bad input.

From Python, without the command line::

    from verification.invariance import InvarianceSettings, check
    result = check(InvarianceSettings(chains=128, spectrum="logspace:0.05:1:20"))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quadratic import SPECTRUM_HELP, Quadratic, batch_noise_factor, parse_spectrum
from sde import learning_curve, simulate
from sde.schedules import Explicit, by_examples, triangular_wave
from sgd_noise_common import validate
from sgd_noise_common.claims import CheckResult, Claim
from sgd_noise_common.cli import Parser, from_args, options_dict, setting
from sgd_noise_common.files import save_figure_atomic
from verification import budget
from verification.budget import NS, Cost, spectrum_of
from verification.cli import (
    ROUNDOFF,
    bonferroni_z,
    check_confidence,
    check_parser,
    confidence_setting,
    output_folder,
    plan,
    run_main,
    seed_setting,
    spectrum_setting,
    table_stream,
    writing,
)

__all__ = ["InvarianceSettings", "InvarianceResult", "Run", "Curve", "build_parser", "settings_from_args", "check",
           "estimate", "plot", "run", "main", "curve_distance", "exact_distance"]

DEFAULT_SPECTRUM = "logspace:0.02:1:50"
GRID_POINTS = 40
BOOTSTRAP = 200
#: ηλ_max of the must-fail run at equal ratio: well inside the stable range (< 2), far from the SDE's limit.
LARGE_ETA_LAMBDA = 1.6
TITLE = "equal eta/S gives equal dynamics (Figs. 1 and 2)"
#: The figures ``plot`` writes, by file name (without ``.png``).
FIGURES = ("invariance_equal_ratio", "invariance_cyclic", "invariance_rescaling")


@dataclass(frozen=True, kw_only=True)
class InvarianceSettings:
    """What ``invariance`` simulates: the problem, the common ratio, the batch sizes, the schedules and the budget.

    The defaults are those of the command line. Checks that need the problem (the spectrum is parsed in ``check``:
    a Marchenko–Pastur spectrum draws from the seed's stream) are made by ``check`` before any simulation: every
    run must be stable (ηλ_max < 2), and ``examples`` must cover 20 batches of the largest batch.

    Attributes:
        spectrum: Hessian spectrum, C = H (``--spectrum``).
        ratio: the common η/S (``--ratio``), > 0.
        batch_sizes: batch sizes of the equal-ratio runs (``--batch-size``), η = ratio·S; kept sorted and unique,
            at least two.
        examples: examples seen per run (``--examples``); ``None`` (or 0): five relaxation times of the slowest
            mode.
        cycle_low: lowest factor of the cyclic schedules (``--cycle-low``), in (0, 1).
        cycles: cycles per run of the cyclic schedules (``--cycles``), > 0.
        tolerance: largest RMS log-distance of curves called equal (``--tolerance``), > 0.
        chains: chains per run (``--chains``), >= 2.
        seed: seed of the one random stream that every draw comes from, in a fixed order.
        confidence: family-wise confidence of the verdicts, in (0, 1).

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--ratio must be > 0, got -1.0``.
    """

    spectrum: str = spectrum_setting(DEFAULT_SPECTRUM, f"Hessian spectrum (C = H): {SPECTRUM_HELP}")
    ratio: float = setting(0.005, help="the common eta/S", range="> 0")
    batch_sizes: tuple[int, ...] = setting((5, 10, 20, 40), help="batch sizes of the equal-ratio runs, eta = ratio*S",
                                           range=">= 1", option="--batch-size")
    examples: int | None = setting(None, help="examples seen per run (default: 5 relaxation times of the slowest "
                                              "mode)", range=">= 1")
    cycle_low: float = setting(0.2, help="cyclic schedules: lowest factor", range="(0, 1)")
    cycles: float = setting(3.0, help="cyclic schedules: cycles per run", range="> 0")
    tolerance: float = setting(0.1, help="largest RMS log-distance of curves called equal", range="> 0")
    chains: int = setting(512, help="chains per run", range=">= 2")
    seed: int = seed_setting()
    confidence: float = confidence_setting()

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        check_confidence(self.confidence)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "ratio", validate.positive_float("--ratio", self.ratio))
        set_(self, "batch_sizes", tuple(sorted({validate.positive_int("--batch-size", s) for s in self.batch_sizes})))
        if len(self.batch_sizes) < 2:
            raise ValueError("--batch-size needs at least two different batch sizes")
        set_(self, "tolerance", validate.positive_float("--tolerance", self.tolerance))
        set_(self, "chains", validate.positive_int("--chains", self.chains, minimum=2))
        set_(self, "cycle_low", validate.float_in("--cycle-low", self.cycle_low, 0.0, 1.0))
        if self.cycle_low == 0.0:
            raise ValueError("--cycle-low must be > 0")
        set_(self, "cycles", validate.positive_float("--cycles", self.cycles))
        if self.examples:  # None or 0: chosen from the spectrum by ``check``
            set_(self, "examples", validate.positive_int("--examples", self.examples))
        set_(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))


def build_parser() -> Parser:
    """The command line of ``python -m verification.invariance``: an option per field of ``InvarianceSettings``
    (its defaults, ranges and help), and the common options."""
    return check_parser("python -m verification.invariance", __doc__, InvarianceSettings)


def settings_from_args(args) -> InvarianceSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(InvarianceSettings, args)


@dataclass(frozen=True)
class Curve:
    """A run's curves at every step, for the figures.

    Attributes:
        examples: examples seen before each recorded point.
        mean: mean loss over chains.
        stderr: its standard error.
        exact: the exact expected loss (moment recursion).
    """

    examples: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    exact: np.ndarray


@dataclass
class Run:
    """One simulated run and its exact curve, both on the examples grid.

    Attributes:
        label: what the run is, for the tables and figures.
        eta: its largest learning rate.
        batch_size: its mean batch size.
        schedule: its per-step η and S.
        chain_curves: loss of every chain on the grid, (chains, grid).
        exact: the exact expected loss on the grid, (grid,).
        full: the curves at every step, for the figures.
    """

    label: str
    eta: float
    batch_size: float
    schedule: Explicit
    chain_curves: np.ndarray
    exact: np.ndarray
    full: Curve

    @property
    def mean(self) -> np.ndarray:
        """The mean loss over chains on the grid."""
        return self.chain_curves.mean(axis=0)

    @property
    def stderr(self) -> np.ndarray:
        """The standard error of ``mean`` (over independent chains)."""
        return self.chain_curves.std(axis=0, ddof=1) / math.sqrt(self.chain_curves.shape[0])


@dataclass
class InvarianceResult(CheckResult):
    """``check``'s result, with the runs that ``plot`` draws (not part of the JSON).

    Attributes:
        runs: every simulated run by key (``eq<S>``, ``x2``, ``x05``, ``bigeta``, ``clr``, ``cbs``, ``sqrt``,
            ``fixed``).
        grid: the examples grid the curves are compared on.
        config: the settings the check ran with.
    """

    runs: dict = field(default_factory=dict, repr=False)
    grid: np.ndarray | None = field(default=None, repr=False)
    config: InvarianceSettings | None = None


@dataclass(frozen=True)
class _Plan:
    """What the settings imply on the problem: run length, comparison grid, start, must-fail and cyclic runs."""

    examples: int
    grid: np.ndarray
    theta0: np.ndarray
    big_eta_batch: int   # S of the must-fail run at eta lambda_max = LARGE_ETA_LAMBDA
    cyclic_eta: float    # the crest of the cyclic schedules
    period: float        # examples per cycle


@dataclass(frozen=True)
class _Comparisons:
    """The pairs of runs compared (each a row: distance, bootstrap stderr, exact distance) and the critical z."""

    equal_pairs: list
    controls: list
    large_eta: dict
    cyclic: dict
    rules: dict           # growing the batch: "linear", "sqrt", "fixed"
    se_sqrt_gap: float    # bootstrap stderr of distance(sqrt) - distance(linear)
    z: float

    def is_equal(self, p: dict, tol: float) -> bool:
        """Whether the pair's curves count as equal: distance + z·stderr < tol."""
        return p["distance"] + self.z * p["stderr"] < tol


def _interp_rows(x_new, x, y):
    """Linear interpolation of every row of ``y`` (chains, len(x)) at ``x_new``."""
    j = np.clip(np.searchsorted(x, x_new, side="right") - 1, 0, x.size - 2)
    w = (x_new - x[j]) / (x[j + 1] - x[j])
    return y[..., j] * (1.0 - w) + y[..., j + 1] * w


def _simulate_run(problem, label, schedule: Explicit, grid, theta0, chains, rng) -> Run:
    """Simulate one schedule and compute its exact curve, both interpolated on the grid."""
    res = simulate(problem, float(schedule.etas[0]), int(schedule.batch_sizes[0]), steps=schedule.steps,
                   chains=chains, schedule=schedule, record_every=1, theta0=theta0, rng=rng, burn_in=0)
    ex = schedule.examples.astype(np.float64)
    curves = _interp_rows(grid, ex, res.chain_curves)
    kappas = np.array([batch_noise_factor(int(b)) for b in schedule.batch_sizes])
    exact_full = learning_curve(problem, schedule.etas, kappas, theta0=theta0)
    exact = _interp_rows(grid, ex, exact_full)
    eta = float(schedule.etas.max())
    return Run(label, eta, float(schedule.batch_sizes.mean()), schedule, curves, exact,
               Curve(ex, res.curve, res.curve_stderr, exact_full))


def curve_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of ln a − ln b over the columns of chain curves ``a`` and ``b`` (chains × grid), noise bias removed.

    E[(ln ā − ln b̄)²] ≈ (ln A − ln B)² + (se_a/ā)² + (se_b/b̄)², so the squared relative standard errors are
    subtracted before the square root (clipped at 0).

    Returns:
        The debiased RMS log-distance of the two mean curves.
    """
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va = a.var(axis=0, ddof=1) / a.shape[0] / ma**2
    vb = b.var(axis=0, ddof=1) / b.shape[0] / mb**2
    d2 = np.mean((np.log(ma) - np.log(mb)) ** 2 - va - vb)
    return math.sqrt(max(d2, 0.0))


def exact_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of ln a − ln b for exact curves ``a`` and ``b`` (same grid)."""
    return float(np.sqrt(np.mean((np.log(a) - np.log(b)) ** 2)))


def _bootstrap(fn, runs, rng, reps=BOOTSTRAP):
    """Standard deviation of ``fn(*chain_curves)`` over bootstrap resamples of each run's chains."""
    vals = []
    for _ in range(reps):
        res = [r.chain_curves[rng.integers(0, r.chain_curves.shape[0], r.chain_curves.shape[0])] for r in runs]
        vals.append(fn(*res))
    return float(np.std(vals, ddof=1))


def _pair(a: Run, b: Run, rng) -> dict:
    """The distance of two runs' curves, its bootstrap standard error and the distance of their exact curves."""
    d = curve_distance(a.chain_curves, b.chain_curves)
    se = _bootstrap(curve_distance, [a, b], rng)
    return dict(a=a.label, b=b.label, distance=d, stderr=se, exact_distance=exact_distance(a.exact, b.exact))


def check(settings: InvarianceSettings, *, out=None) -> InvarianceResult:
    """Simulate runs of equal and different η/S against examples seen, and judge which curves coincide.

    Claims (a pair of curves is equal when distance + z·stderr < tolerance, z Bonferroni over the pairs):

    * ``equal-ratio`` (holds): equal η/S with η and S up to 8× apart gives equal curves (Fig. 1 right);
    * ``different-ratio-control`` (expected to fail): curves at 2× and ½ the ratio are called equal, so the check
      is sensitive;
    * ``equal-ratio-large-eta`` (expected to fail): equal ratio still gives equal curves at ηλ_max = 1.6;
    * ``cyclic-lr-vs-cyclic-batch`` (holds): a cyclic batch size with the same η/S at every example seen follows
      the cyclic learning rate (Fig. 1 left);
    * ``linear-scaling-rule`` (holds): growing the batch, η ∝ S keeps the small-batch curve, and it is closer
      than η ∝ √S, which is closer than a fixed η (Fig. 2);
    * ``simulation-matches-exact-curve`` (holds): every simulated mean curve agrees with the exact moment
      recursion (z-test per grid point, Bonferroni over all points).

    Args:
        settings: what to simulate.
        out: text stream for the header and the table of compared pairs (default: none; the command line passes
            stdout).

    Returns:
        An ``InvarianceResult``: the claims, one row per compared pair, and the runs for ``plot``.

    Raises:
        ValueError: when a run would diverge or ``examples`` is too short for the largest batch; raised before
            any simulation.
    """
    out = table_stream(out)
    rng = np.random.default_rng(settings.seed)
    try:
        spectrum = parse_spectrum(settings.spectrum, rng=rng)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None
    problem = Quadratic.from_spectrum(spectrum)
    plan = _plan(problem, float(spectrum.min()), settings)
    out.write(f"invariance: {problem!r}; ratio eta/S = {settings.ratio:g}; {plan.examples} examples per run; "
              f"{settings.chains} chains\n")
    runs = _simulate_runs(problem, plan, settings, rng)
    comp = _compare(runs, settings, rng)
    claims = _pair_claims(runs, comp, settings) + [_simulation_claim(runs, plan.grid, settings.confidence)]
    rows = []
    for group, pairs in (("equal-ratio", comp.equal_pairs), ("control", comp.controls),
                         ("large-eta", [comp.large_eta]), ("cyclic", [comp.cyclic]),
                         ("rescaling", list(comp.rules.values()))):
        for p in pairs:
            rows.append(dict(group=group, **p, equal=comp.is_equal(p, settings.tolerance), z_critical=comp.z,
                             tolerance=settings.tolerance))
    _print_rows(rows, out)
    return InvarianceResult("invariance", TITLE, claims, rows,
                            settings=dict(options_dict(settings), examples=plan.examples),  # examples as run
                            runs=runs, grid=plan.grid, config=settings)


def estimate(settings: InvarianceSettings) -> Cost:
    """The memory and time of ``check(settings)`` and its figures, from its sizes, before any work.

    Every run records every step of every chain (chains x steps doubles, three copies at the peak); per-unit costs
    measured on the 2-core development VM and rounded up: 8 ns per chain, step and dimension of the simulation,
    3 ns per step and dimension squared of the exact curve (the moment recursion).

    Raises:
        ValueError: a bad ``--spectrum`` (named).
    """
    info = spectrum_of(settings.spectrum)
    d, c, sizes, ratio = info.dim, settings.chains, settings.batch_sizes, settings.ratio
    examples = settings.examples or int(math.ceil(5.0 / (2.0 * ratio * info.low)))
    big = max(1, int(math.ceil(LARGE_ETA_LAMBDA / (ratio * info.high))))
    s0, s_mid, s_big = sizes[0], sizes[len(sizes) // 2], sizes[-1]
    per_run = [*(1.0 / s for s in sizes), 2.0 / s_mid, 1.0 / big, 2.0 / s0, 2.0 / s_big]
    total_steps = examples * math.fsum(per_run) + len(per_run)
    longest = examples / min(s0, big) + 1
    what = (f"--examples={examples}" if settings.examples else
            f"--ratio={ratio:g} ({examples} examples per run by default)")
    cost = Cost()
    spec = f"--spectrum={settings.spectrum} (dimension {d})"
    cost.memory(spec, info.build_bytes + 10 * 8.0 * d * d)
    cost.time(spec, NS * (info.build_flops + 40.0 * d**3))
    cost.memory(f"{what} with --chains={c}", 3 * 8.0 * c * longest + 8.0 * 6 * longest + 8.0 * c * (4 * d + 22))
    cost.time(f"{what} with --chains={c}", NS * total_steps * (8.0 * c * d + 3.0 * d * d + 20.0 * c))
    cost.time(f"--chains={c}", NS * 14 * BOOTSTRAP * c * GRID_POINTS * 20)
    return cost


def _plan(problem: Quadratic, lam_min: float, settings: InvarianceSettings) -> _Plan:
    """Run length, grid, start and the must-fail and cyclic runs, after checking every run is stable."""
    ratio, sizes, lam_max = settings.ratio, settings.batch_sizes, problem.lambda_max
    for s in sizes:
        if ratio * s * lam_max >= 2.0:
            raise ValueError(f"--ratio * --batch-size = {ratio * s:g} gives eta*lambda_max >= 2 at S={s}: "
                             f"SGD diverges; need ratio*S < {2.0 / lam_max:g}")
    # Start at distance 1 along every eigendirection: L(θ0) = Tr(H)/2.
    theta0 = problem.minimum + problem.eigenvectors @ np.ones(problem.dim)
    # Relaxation of the slowest mode takes 1/(2 ratio λ_min) examples (variance); follow five of them.
    examples = settings.examples or int(math.ceil(5.0 / (2.0 * ratio * lam_min)))
    examples = validate.positive_int("--examples", examples)
    big_eta_s = int(math.ceil(LARGE_ETA_LAMBDA / (ratio * lam_max)))
    longest = max(big_eta_s, sizes[-1])
    if examples < 20 * longest:
        raise ValueError(f"--examples must be >= {20 * longest} (20 batches of the largest batch)")
    grid = np.unique(np.geomspace(longest, examples, GRID_POINTS).round())
    # The cycle runs between ratio (at the trough) and ratio/low (at the crest), from the smallest batch.
    eta_c = ratio * sizes[0] / settings.cycle_low
    if eta_c * lam_max >= 2.0:
        raise ValueError(f"--ratio / --cycle-low gives a cyclic-LR peak eta*lambda_max = {eta_c * lam_max:g} >= 2")
    return _Plan(examples, grid, theta0, big_eta_s, eta_c, examples / settings.cycles)


def _simulate_runs(problem: Quadratic, plan: _Plan, settings: InvarianceSettings, rng) -> dict[str, Run]:
    """Every run of the check, simulated in a fixed order from ``rng``."""
    ratio, sizes, low = settings.ratio, settings.batch_sizes, settings.cycle_low
    runs: dict[str, Run] = {}

    def const(eta, s):
        steps = int(math.ceil(plan.examples / s))
        return Explicit(np.full(steps, eta), np.full(steps, s))

    todo = []

    def add(key, label, schedule):
        todo.append((key, label, schedule))

    for s in sizes:
        add(f"eq{s}", f"eta={ratio * s:g}, S={s}", const(ratio * s, s))
    s_mid = sizes[len(sizes) // 2]
    add("x2", f"control: eta={2 * ratio * s_mid:g}, S={s_mid} (2x ratio)", const(2 * ratio * s_mid, s_mid))
    add("x05", f"control: eta={0.5 * ratio * s_mid:g}, S={s_mid} (ratio/2)", const(0.5 * ratio * s_mid, s_mid))
    big = plan.big_eta_batch
    add("bigeta", f"eta={ratio * big:g}, S={big} (eta lambda_max = 1.6)", const(ratio * big, big))
    # Fig. 1 left: cyclic LR against cyclic batch size, same eta/S at every example seen.
    s0, eta_c = sizes[0], plan.cyclic_eta
    wave = lambda e: float(triangular_wave(e, plan.period, low))  # noqa: E731
    add("clr", f"cyclic LR: eta in [{eta_c * low:.3g}, {eta_c:.3g}], S={s0}",
        by_examples(wave, eta_c, s0, plan.examples, target="eta"))
    add("cbs", f"cyclic batch: eta={eta_c:.3g}, S in [{s0}, {round(s0 / low)}]",
        by_examples(wave, eta_c, s0, plan.examples, target="batch_size"))
    # Fig. 2: from S0 to S_big with eta scaled like S, like sqrt(S), or fixed.
    s_big = sizes[-1]
    k = s_big / s0
    eta0 = ratio * s0
    add("sqrt", f"eta={eta0 * math.sqrt(k):.3g} (sqrt rule), S={s_big}", const(eta0 * math.sqrt(k), s_big))
    add("fixed", f"eta={eta0:g} (fixed), S={s_big}", const(eta0, s_big))
    for key, label, schedule in budget.progress(todo, desc="invariance runs"):
        runs[key] = _simulate_run(problem, label, schedule, plan.grid, plan.theta0, settings.chains, rng)
    return runs


def _compare(runs: dict[str, Run], settings: InvarianceSettings, rng) -> _Comparisons:
    """The compared pairs with their bootstrap errors (drawn from ``rng`` in a fixed order), and the critical z."""
    sizes = settings.batch_sizes
    s0, s_mid, s_big = sizes[0], sizes[len(sizes) // 2], sizes[-1]
    ref = runs[f"eq{s0}"]
    equal_pairs = [_pair(ref, runs[f"eq{s}"], rng) for s in sizes[1:]]
    controls = [_pair(runs[f"eq{s_mid}"], runs[key], rng) for key in ("x2", "x05")]
    big = _pair(ref, runs["bigeta"], rng)
    cyc = _pair(runs["clr"], runs["cbs"], rng)
    rules = {"linear": _pair(ref, runs[f"eq{s_big}"], rng), "sqrt": _pair(ref, runs["sqrt"], rng),
             "fixed": _pair(ref, runs["fixed"], rng)}
    # Tests: the equal pairs, the controls, the large-eta and cyclic pairs, the three rules and the two gaps.
    n_tests = len(equal_pairs) + len(controls) + 1 + 1 + 3 + 2
    z = bonferroni_z(settings.confidence, n_tests)
    se_sq = _bootstrap(lambda a, b, c: curve_distance(a, c) - curve_distance(a, b),
                       [ref, runs[f"eq{s_big}"], runs["sqrt"]], rng)
    return _Comparisons(equal_pairs, controls, big, cyc, rules, se_sq, z)


def _fmt(p: dict) -> str:
    """A pair's distance, its standard error and the exact distance, for a claim's summary."""
    return f"{p['distance']:.4f} ± {p['stderr']:.4f} (exact {p['exact_distance']:.4f})"


def _pair_claims(runs: dict[str, Run], comp: _Comparisons, settings: InvarianceSettings) -> list[Claim]:
    """The claims about pairs of curves: equal ratio, the controls, large η, cyclic schedules, rescaling rules."""
    tol, sizes = settings.tolerance, settings.batch_sizes
    s0, s_big = sizes[0], sizes[-1]
    equal = lambda p: comp.is_equal(p, tol)  # noqa: E731
    big, cyc = comp.large_eta, comp.cyclic
    claims = [
        Claim("equal-ratio", "equal eta/S gives equal learning curves against examples seen (Fig. 1 right)",
              holds=all(equal(p) for p in comp.equal_pairs),
              summary="; ".join(f"S={runs[f'eq{s}'].batch_size:g} vs S={s0}: {_fmt(p)}"
                                for s, p in zip(sizes[1:], comp.equal_pairs)) + f"; tolerance {tol:g}",
              numbers=dict(distances=[p["distance"] for p in comp.equal_pairs], tolerance=tol)),
        Claim("different-ratio-control", "curves with 2x and 1/2 the ratio are told apart (the check is sensitive)",
              holds=all(equal(p) for p in comp.controls), expected=False,
              summary="; ".join(f"{p['b']}: {_fmt(p)}" for p in comp.controls),
              numbers=dict(distances=[p["distance"] for p in comp.controls])),
        Claim("equal-ratio-large-eta", "equal ratio still gives equal curves at eta*lambda_max = 1.6",
              holds=equal(big), expected=False, summary=f"{big['b']} vs {big['a']}: {_fmt(big)}",
              numbers=dict(distance=big["distance"], exact_distance=big["exact_distance"])),
        Claim("cyclic-lr-vs-cyclic-batch", "a cyclic batch size with the same eta/S at every example seen follows "
              "the cyclic learning rate (Fig. 1 left)", holds=equal(cyc), summary=f"{_fmt(cyc)}",
              numbers=dict(distance=cyc["distance"], exact_distance=cyc["exact_distance"])),
    ]
    lin, sq, fx = comp.rules["linear"], comp.rules["sqrt"], comp.rules["fixed"]
    lin_best = (equal(lin) and (sq["distance"] - lin["distance"] > comp.z * comp.se_sqrt_gap)
                and fx["distance"] > sq["distance"])
    claims.append(Claim(
        "linear-scaling-rule", f"growing the batch {s_big / s0:g}x, eta proportional to S keeps the small-batch "
        "curve; sqrt(S) and fixed eta do not (Fig. 2)", holds=lin_best,
        summary=f"distance to the S={s0} curve: eta~S {_fmt(lin)}; eta~sqrt(S) {_fmt(sq)}; fixed {_fmt(fx)}",
        numbers={f"distance_{k_}": v["distance"] for k_, v in comp.rules.items()}))
    return claims


def _simulation_claim(runs: dict[str, Run], grid: np.ndarray, confidence: float) -> Claim:
    """The claim that every simulated mean curve agrees with its exact curve at every grid point."""
    z_pts = bonferroni_z(confidence, len(runs) * grid.size)
    worst, worst_label = 0.0, ""
    for r in runs.values():
        # Where the standard error is at round-off level (no noise to speak of), z is 0 when the curves agree to
        # that level and infinite otherwise: never a huge z from a difference of 1e-35.
        atol = ROUNDOFF * np.abs(r.exact)
        diff = np.abs(r.mean - r.exact)
        noisy = r.stderr > atol
        zz = np.where(noisy, diff / np.where(noisy, r.stderr, 1.0), np.where(diff <= atol + r.stderr, 0.0, np.inf))
        if zz.max() > worst:
            worst, worst_label = float(zz.max()), r.label
    return Claim(
        "simulation-matches-exact-curve", "every simulated mean curve agrees with the exact moment recursion",
        holds=worst <= z_pts, summary=f"max |z| over {len(runs)} runs x {grid.size} points = {worst:.2f} "
                                      f"({worst_label}) <= {z_pts:.2f}?",
        numbers=dict(max_abs_z=worst, z_critical=z_pts))


def _print_rows(rows: list[dict], out) -> None:
    """The table of compared pairs."""
    out.write(f"{'group':<12} {'run':<48} {'vs':<24} {'distance':>9} {'+-':>7} {'exact':>8}  equal?\n")
    for r in rows:
        out.write(f"{r['group']:<12} {r['b'][:48]:<48} {r['a'][:24]:<24} {r['distance']:>9.4f} {r['stderr']:>7.4f} "
                  f"{r['exact_distance']:>8.4f}  {'yes' if r['equal'] else 'no'}\n")


def _band(ax, grid, r: Run, color, ls="-", label=None):
    """A run's mean curve with a ±1 s.e. band and its exact curve (dotted)."""
    c = r.full
    keep = c.examples >= grid[0] / 2  # from the first grid point on (the first batch of the largest run)
    ax.plot(c.examples[keep], c.mean[keep], ls, color=color, lw=1.3, label=label)
    ax.fill_between(c.examples[keep], (c.mean - c.stderr)[keep], (c.mean + c.stderr)[keep], color=color,
                    alpha=0.25, lw=0)
    ax.plot(c.examples[keep], c.exact[keep], ":", color="k", lw=0.8)


def plot(result: InvarianceResult, directory) -> list[str]:
    """Draw the three figures of ``check``'s result into ``directory`` (``FIGURES``, PNG).

    Fig. 1 right (equal ratio, the controls and the large-η run), Fig. 1 left (cyclic learning rate against
    cyclic batch size) and Fig. 2 (growing the batch with three learning-rate rules).

    Returns:
        The paths written, in the order of ``FIGURES``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, grid, sizes = result.runs, result.grid, result.config.batch_sizes
    paths = [str(Path(directory) / f"{name}.png") for name in FIGURES]
    # Fig. 1 right analogue.
    fig, ax = plt.subplots(figsize=(6.6, 4.6), constrained_layout=True)
    for i, s in enumerate(sizes):
        _band(ax, grid, runs[f"eq{s}"], f"C{i}", label=runs[f"eq{s}"].label)
    _band(ax, grid, runs["x2"], "C4", "--", runs["x2"].label)
    _band(ax, grid, runs["x05"], "C5", "--", runs["x05"].label)
    _band(ax, grid, runs["bigeta"], "C7", "-.", runs["bigeta"].label)
    ax.plot([], [], ":", color="k", lw=0.8, label="exact (moment recursion)")
    ax.set(xscale="log", yscale="log", xlabel="examples seen", ylabel=r"$E[L] - L^*$",
           title=f"Equal $\\eta/S$ = {result.config.ratio:g}: equal curves (bands: ±1 s.e.)")
    ax.legend(fontsize=7)
    save_figure_atomic(fig, paths[0], dpi=120, kind="verification.invariance")
    # Fig. 1 left analogue.
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(6.6, 6), sharex=True, constrained_layout=True,
                                 gridspec_kw={"height_ratios": [3, 1.3]})
    for key, color in (("clr", "C0"), ("cbs", "C3")):
        r = runs[key]
        _band(ax, grid, r, color, label=r.label)
        ex = r.schedule.examples[:-1]
        rx.plot(ex, r.schedule.etas / r.schedule.batch_sizes, color=color, lw=1, label=r.label)
    ax.set(yscale="log", ylabel=r"$E[L] - L^*$", title="Cyclic learning rate vs cyclic batch size")
    ax.legend(fontsize=7)
    rx.set(xlabel="examples seen", ylabel=r"$\eta_k/S_k$")
    save_figure_atomic(fig, paths[1], dpi=120, kind="verification.invariance")
    # Fig. 2 analogue.
    fig, ax = plt.subplots(figsize=(6.6, 4.6), constrained_layout=True)
    s0, s_big = sizes[0], sizes[-1]
    _band(ax, grid, runs[f"eq{s0}"], "k", label=f"small batch: {runs[f'eq{s0}'].label}")
    for key, color, name in ((f"eq{s_big}", "C0", "eta ~ S"), ("sqrt", "C1", "eta ~ sqrt(S)"),
                             ("fixed", "C3", "fixed eta")):
        _band(ax, grid, runs[key], color, "--", f"{name}: {runs[key].label}")
    ax.set(xscale="log", yscale="log", xlabel="examples seen", ylabel=r"$E[L] - L^*$",
           title=f"Growing the batch {s_big // s0}x: which learning-rate rule keeps the curve")
    ax.legend(fontsize=7)
    save_figure_atomic(fig, paths[2], dpi=120, kind="verification.invariance")
    return paths


def run(args, out=None) -> CheckResult:
    """The check behind the command line: ``check`` plus the figures into ``--out DIR``.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the table (default stdout).

    Returns:
        ``check``'s result, with the figures' paths when ``--out`` was given.
    """
    settings = settings_from_args(args)
    plan(args, estimate(settings), "python -m verification.invariance")
    result = check(settings, out=sys.stdout if out is None else out)
    folder = output_folder(args)
    if folder is not None:
        with writing(folder, "--out"):
            result.figures += plot(result, folder)
    return result


def main(argv=None, out=None) -> int:
    """``python -m verification.invariance``; returns the exit status (0 pass, 1 a claim fails, 2 bad input)."""
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
