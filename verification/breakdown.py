r"""``python -m verification.breakdown``: where η/S-invariance breaks (the paper's Fig. 5), exactly.

Scale (η, S) → (βη₀, βS₀) at a fixed ratio on a least-squares problem with N examples and real minibatches (drawn
without replacement), for several N. The SDE predicts a stationary loss that depends only on η/S,
E_inv = (η/S)·Tr(Σ*)/4 (Eq. 7 with C = Σ*, the per-example gradient covariance at the minimum). Two mechanisms
break it as β grows, and the exact theory separates them:

* discreteness, ηλ_max → 2: the exact SGD loss with Gaussian noise over E_inv, F_η(β) > 1 (it diverges at 2);
* finite data, S → N: drawing S of N without replacement scales the noise by (N−S)/(N−1), F_N(β) < 1 (it
  vanishes at S = N);
* together, with the multiplicative noise of real minibatches: F(β) = exact minibatch loss / E_inv
  (``sde.expected_loss(..., noise="minibatch")``).

The predicted breaking point β* of each mechanism is the smallest β where its factor leaves [1 − tol, 1 + tol]
(``--tolerance``, default 0.2); the figure draws them. Simulated SGD (``sde.simulate(..., noise="minibatch")``)
gives the measured loss at each β. Claims: every measurement agrees with the exact value (z-test, Bonferroni);
where the exact deviation is below tol/2 the measured loss is invariant, and where it is above 1.5·tol the measured
loss has left the band (points in between are reported, not judged); and the two mechanisms act as predicted: the
smallest N breaks first and downwards (less noise as S → N), the largest N breaks upwards (ηλ_max → 2).

Exit status: 0 when every claim is as expected, 1 otherwise, 2 on bad input.

From Python, without the command line::

    from verification.breakdown import BreakdownSettings, check
    result = check(BreakdownSettings(chains=32, dataset_sizes=(50, 400), spectrum="logspace:0.1:1:10"))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, finite_data_factor, parse_spectrum
from sde import RunTooShort, SimulationDiverged, expected_loss, simulate
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
    plan,
    run_main,
    seed_setting,
    spectrum_setting,
    table_stream,
    z_test,
)

__all__ = ["BreakdownSettings", "BreakdownResult", "FactorCurves", "build_parser", "settings_from_args", "check",
           "estimate", "plot", "run", "main", "factors", "factor_curves", "break_point"]

TITLE = "where eta/S invariance breaks: large eta and S near N (Fig. 5)"
#: Points of the fine β grid of the exact factors (the curves of the figure and the predicted break points).
FINE_POINTS = 40
#: The measured β: powers of two up to 2^11 (with βS₀ <= N − 1).
MEASURED_POWERS = 12


@dataclass(frozen=True, kw_only=True)
class BreakdownSettings:
    """What ``breakdown`` scales and simulates: the problem, the dataset sizes, the base (η₀, S₀) and the budget.

    The defaults are those of the command line. The spectrum is parsed in ``check`` (a Marchenko–Pastur spectrum
    draws from the seed's stream), which also checks that the smallest N is at least the dimension and 2·S₀.

    Attributes:
        spectrum: input covariance spectrum of the least-squares problems (``--spectrum``).
        dataset_sizes: the dataset sizes N (``--dataset-size``), kept sorted and unique.
        eta: base learning rate η₀ at β = 1 (``--eta``), > 0.
        batch_size: base batch size S₀ at β = 1 (``--batch-size``), >= 1.
        tolerance: relative deviation from E_inv that counts as broken (``--tolerance``), in (0, 1).
        chains: chains per measured point (``--chains``), >= 2.
        seed: seed of the one random stream that every draw comes from, in a fixed order.
        confidence: family-wise confidence of the verdicts, in (0, 1).

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--tolerance must be > 0``.
    """

    spectrum: str = spectrum_setting("logspace:0.05:1:20", f"input covariance spectrum: {SPECTRUM_HELP}")
    dataset_sizes: tuple[int, ...] = setting((50, 200, 1000), help="dataset sizes N, comma-separated", range=">= 2",
                                             option="--dataset-size")
    eta: float = setting(0.02, help="base learning rate eta0", range="> 0")
    batch_size: int = setting(2, help="base batch size S0", range=">= 1")
    tolerance: float = setting(0.2, help="relative deviation from E_inv that counts as broken", range="(0, 1)")
    chains: int = setting(64, help="chains per point", range=">= 2")
    seed: int = seed_setting()
    confidence: float = confidence_setting()

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        check_confidence(self.confidence)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "eta", validate.positive_float("--eta", self.eta))
        set_(self, "batch_size", validate.positive_int("--batch-size", self.batch_size))
        set_(self, "tolerance", validate.float_in("--tolerance", self.tolerance, 0.0, 1.0))
        if self.tolerance == 0.0:
            raise ValueError("--tolerance must be > 0")
        set_(self, "chains", validate.positive_int("--chains", self.chains, minimum=2))
        sizes = sorted({validate.positive_int("--dataset-size", n, minimum=2) for n in self.dataset_sizes})
        if not sizes:
            raise ValueError("--dataset-size needs at least one dataset size")
        set_(self, "dataset_sizes", tuple(sizes))
        set_(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))

    @property
    def ratio(self) -> float:
        """The fixed ratio η₀/S₀ = η/S along the scaling."""
        return self.eta / self.batch_size


def build_parser() -> Parser:
    """The command line of ``python -m verification.breakdown``: an option per field of ``BreakdownSettings`` (its
    defaults, ranges and help), and the common options."""
    return check_parser("python -m verification.breakdown", __doc__, BreakdownSettings)


def settings_from_args(args) -> BreakdownSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(BreakdownSettings, args)


def factors(problem: LeastSquares, eta0: float, s0: int, beta: float) -> dict:
    """The exact factors at β: ``eta`` (discreteness alone), ``data`` (finite data alone), ``total`` (real
    minibatches, both and multiplicative noise), each relative to E_inv; ``inf`` where no stationary law exists.

    Returns:
        ``beta``, ``eta`` = βη₀, ``batch_size`` = round(βS₀), ``e_inv`` = (η/S) Tr(Σ*)/4, and the factors
        ``eta_factor``, ``data_factor`` = (N − S)/(N − 1) and ``total``.
    """
    eta, s = beta * eta0, int(round(beta * s0))
    n = problem.dataset_size
    e_inv = eta / s * problem.noise_trace / 4.0
    out = {"beta": beta, "eta": eta, "batch_size": s, "e_inv": e_inv}
    out["eta_factor"] = (expected_loss(problem, eta, s) / e_inv if eta * problem.lambda_max < 2.0 else math.inf)
    out["data_factor"] = finite_data_factor(s, n)
    try:
        out["total"] = expected_loss(problem, eta, s, noise="minibatch", sampling="without") / e_inv
    except ValueError:  # no stationary law with multiplicative noise
        out["total"] = math.inf
    return out


def break_point(betas, values, tol) -> float:
    """The smallest β at which ``values`` leaves [1 − tol, 1 + tol] (linear in log β between grid points);
    ``inf`` if it never does."""
    betas = np.asarray(betas, dtype=np.float64)
    dev = np.abs(np.asarray(values, dtype=np.float64) - 1.0)
    over = np.flatnonzero(~(dev <= tol))
    if over.size == 0:
        return math.inf
    i = over[0]
    if i == 0 or not np.isfinite(dev[i]):
        return float(betas[i])
    w = (tol - dev[i - 1]) / (dev[i] - dev[i - 1])
    return float(math.exp(math.log(betas[i - 1]) + w * (math.log(betas[i]) - math.log(betas[i - 1]))))


@dataclass(frozen=True)
class FactorCurves:
    """The exact factors of one dataset size on a fine β grid, and where each leaves the band.

    Attributes:
        beta: the β grid, 1 to (N − 1)/S₀.
        total: real minibatches (both mechanisms), relative to E_inv.
        eta: discreteness alone.
        data: finite data alone, (N − S)/(N − 1).
        break_total: predicted break β* of ``total`` (``inf``: none).
        break_eta: of ``eta``.
        break_data: of ``data``.
    """

    beta: np.ndarray
    total: np.ndarray
    eta: np.ndarray
    data: np.ndarray
    break_total: float
    break_eta: float
    break_data: float


def factor_curves(problem: LeastSquares, eta0: float, s0: int, tol: float) -> FactorCurves:
    """The exact factors (``factors``) of ``problem`` on a log grid of β from 1 to (N − 1)/S₀, and their breaks."""
    fine = np.geomspace(1.0, (problem.dataset_size - 1) / s0, FINE_POINTS)
    fine_f = [factors(problem, eta0, s0, b) for b in fine]
    total = np.array([f["total"] for f in fine_f])
    eta = np.array([f["eta_factor"] for f in fine_f])
    data = np.array([f["data_factor"] for f in fine_f])
    return FactorCurves(fine, total, eta, data, break_point(fine, total, tol), break_point(fine, eta, tol),
                        break_point(fine, data, tol))


@dataclass
class BreakdownResult(CheckResult):
    """``check``'s result, with the exact factor curves that ``plot`` draws (not part of the JSON).

    Attributes:
        curves: the ``FactorCurves`` of each dataset size N, in increasing N.
        config: the settings the check ran with.
    """

    curves: dict = field(default_factory=dict, repr=False)
    config: BreakdownSettings | None = None


def _steps_for(problem, eta, s0_beta) -> int:
    """Steps of a measured run: 60 relaxation times of the slowest mode (variance), at least 2000."""
    return int(max(2000, math.ceil(60.0 * relaxation_steps(eta, float(problem.eigenvalues.min())))))


def check(settings: BreakdownSettings, *, out=None) -> BreakdownResult:
    """Scale (η, S) = β(η₀, S₀) on least squares with several N, and see where and why η/S invariance breaks.

    Claims, all expected to hold:

    * ``measured-matches-exact``: simulated SGD with real minibatches reaches the exact stationary loss at every
      (N, β) that has a stationary law (z-test, Bonferroni over the points);
    * ``invariant-before-break``: where the exact loss is within tol/2 of E_inv, the measured loss is within tol;
    * ``breaks-where-predicted``: where the exact loss is beyond 1.5·tol of E_inv, the measured loss has left the
      band (or there is no stationary law);
    * ``two-mechanisms``: the smallest N breaks first by S → N (the loss falls), the largest N by ηλ_max → 2 (the
      loss rises).

    Args:
        settings: what to scale and simulate.
        out: text stream for the per-point table (default: none; the command line passes stdout).

    Returns:
        A ``BreakdownResult``: the claims, one row per measured (N, β) (factors, measured loss/E_inv, z, status)
        and the exact factor curves for ``plot``.

    Raises:
        ValueError: when the smallest N is below the dimension or 2·S₀; raised before any simulation.
    """
    out = table_stream(out)
    eta0, s0, tol, sizes = settings.eta, settings.batch_size, settings.tolerance, list(settings.dataset_sizes)
    rng = np.random.default_rng(settings.seed)
    try:
        spectrum = parse_spectrum(settings.spectrum, rng=rng)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None
    d = spectrum.size
    if sizes[0] < max(d, 2 * s0):
        raise ValueError(f"--dataset-size must be >= max(dimension {d}, 2 x --batch-size {2 * s0}), got {sizes[0]}")
    problems = {n: LeastSquares.sample(n, spectrum, noise_std=1.0, rng=rng) for n in sizes}
    rows, curves = [], {}
    out.write(f"breakdown: d={d}, base eta0={eta0:g}, S0={s0} (ratio {settings.ratio:g}), N in {sizes}, "
              f"tolerance {tol:g}\n")
    out.write(f"{'N':>6} {'beta':>6} {'eta':>7} {'S':>5} {'measured/E_inv':>15} {'+-':>7} {'exact':>8} "
              f"{'F_eta':>7} {'F_N':>7} {'z':>7}\n")
    points = [(n, b) for n in sizes for b in _measured_betas(n, s0)]
    for n, b in budget.progress(points, desc="breakdown"):
        prob = problems[n]
        if n not in curves:
            curves[n] = factor_curves(prob, eta0, s0, tol)
        row = _measure(prob, n, b, settings, rng)
        rows.append(row)
        status = row["status"] if row["status"] != "ok" else ""
        out.write(f"{n:>6} {b:>6g} {row['eta']:>7.4g} {row['batch_size']:>5d} {row['measured']:>15.4f} "
                  f"{row['stderr']:>7.4f} {row['total']:>8.4f} {row['eta_factor']:>7.4f} "
                  f"{row['data_factor']:>7.4f} {format_z(row['z'])}  {status}\n")
    measured = [r for r in rows if r["status"] == "ok"]
    z_crit = bonferroni_z(settings.confidence, max(1, len(measured)))
    for r in measured:  # the verdict of each point at the family-wise critical value (z is None at round-off level)
        r["z"], r["agrees"] = z_test(r["measured"], r["stderr"], r["total"], 1.0, z_crit)
    claims = [_agreement_claim(rows, measured, z_crit), *_band_claims(rows, measured, curves, settings, z_crit),
              _mechanisms_claim(measured, curves, settings)]
    return BreakdownResult("breakdown", TITLE, claims, rows,
                           settings=options_dict(settings),
                           curves=curves, config=settings)


def _measure(prob: LeastSquares, n: int, beta: float, settings: BreakdownSettings, rng) -> dict:
    """One row: the exact factors at β and, where a stationary law exists, the simulated loss relative to E_inv."""
    f = factors(prob, settings.eta, settings.batch_size, beta)
    row = dict(dataset_size=n, **f, measured=math.nan, stderr=math.nan, z=math.nan, status="ok")
    if not math.isfinite(f["total"]):
        row["status"] = "no stationary law"
        return row
    try:
        res = simulate(prob, f["eta"], f["batch_size"], steps=_steps_for(prob, f["eta"], beta),
                       chains=settings.chains, noise="minibatch", sampling="without", rng=rng)
        row.update(measured=res.mean_loss / f["e_inv"], stderr=res.stderr / f["e_inv"])
        row["z"], _ = z_test(row["measured"], row["stderr"], f["total"], 1.0, math.inf)
    except RunTooShort as exc:
        row["status"] = f"too short: {exc}"[:120]
    except (SimulationDiverged, ValueError) as exc:
        row["status"] = f"diverged: {exc}"[:120]
    return row


def _measured_betas(n: int, s0: int) -> list[float]:
    """The measured β of dataset size N: powers of two with βS₀ <= N − 1."""
    return [float(b) for b in 2.0 ** np.arange(0, MEASURED_POWERS) if b * s0 <= n - 1]


def estimate(settings: BreakdownSettings) -> Cost:
    """The memory and time of ``check(settings)`` and its figure, from its sizes, before any work.

    Per-unit costs measured on the 2-core development VM and rounded up: 0.5 ns per chain, step and multiply of
    the minibatch kernel (S·d per step, and the loss every few steps), 30 ns per chain and step besides; the exact
    minibatch loss (GMRES on d² unknowns) 50 ns per N·d², 2 per fine-grid point and per measured point.

    Raises:
        ValueError: a bad ``--spectrum`` (named).
    """
    info = spectrum_of(settings.spectrum)
    d, c, s0 = info.dim, settings.chains, settings.batch_size
    cost = Cost()
    spec = f"--spectrum={settings.spectrum} (dimension {d})"
    cost.memory(spec, info.build_bytes + 64 * 8.0 * d * d)  # the problem, GMRES's Krylov basis of d² unknowns
    cost.time(spec, NS * (info.build_flops + 40.0 * d**3))
    for n in settings.dataset_sizes:
        cost.memory(f"--dataset-size={n}", 8.0 * 4 * n * d)
        betas = _measured_betas(n, s0)
        cost.time(f"--dataset-size={n}", (2 * FINE_POINTS + 2 * len(betas)) * 50 * NS * n * d * d)
        for b in betas:
            eta, s = b * settings.eta, int(round(b * s0))
            rate = -2.0 * math.log(max(1e-300, abs(1.0 - eta * info.low)))
            steps = max(2000.0, 60.0 / rate) if rate > 0 else math.inf
            thin = max(1, math.ceil(d / (2.0 * s)))
            cost.time(f"--eta={settings.eta:g} with --chains={c}", c * steps * NS * (30 + 0.5 * (s * d + d * d / thin)))
    biggest = max(settings.dataset_sizes)
    cost.memory(f"--chains={c} with --dataset-size={biggest}", 8.0 * c * (4 * d + 22 + biggest))
    return cost


def _agreement_claim(rows: list[dict], measured: list[dict], z_crit: float) -> Claim:
    """Every point with a stationary law was measured and agrees with the exact loss."""
    worst = max((abs(r["z"]) for r in measured if r["z"] is not None), default=0.0)
    return Claim(
        "measured-matches-exact", "simulated minibatch SGD reaches the exact stationary loss at every (N, beta)",
        holds=all(r["agrees"] for r in measured)
        and len(measured) == len(rows) - sum(r["status"] == "no stationary law" for r in rows),
        summary=f"max |z| = {worst:.2f} over {len(measured)} points (<= {z_crit:.2f}?)",
        numbers=dict(max_abs_z=worst, z_critical=z_crit, points=len(measured)))


def _band_claims(rows, measured, curves: dict, settings: BreakdownSettings, z_crit: float) -> list[Claim]:
    """Inside tol/2 the measured loss stays within the band; beyond 1.5·tol it has left it."""
    tol = settings.tolerance
    inside = [r for r in measured if abs(r["total"] - 1.0) < 0.5 * tol]
    outside = [r for r in rows if abs(r["total"] - 1.0) > 1.5 * tol]
    held = all(abs(r["measured"] - 1.0) + z_crit * r["stderr"] < tol for r in inside)
    broke = all((not math.isfinite(r["total"])) or r["status"] != "ok"
                or abs(r["measured"] - 1.0) - z_crit * r["stderr"] > tol for r in outside)
    return [Claim(
        "invariant-before-break", "where the exact loss is within tol/2 of E_inv, the measured loss is within tol "
        "(eta/S invariance holds)", holds=held and bool(inside),
        summary=f"{len(inside)} points; largest |measured/E_inv - 1| = "
                f"{max((abs(r['measured'] - 1) for r in inside), default=math.nan):.3f}",
        numbers=dict(points=len(inside))), Claim(
        "breaks-where-predicted", "where the exact loss is beyond 1.5 tol of E_inv, the measured loss has left the "
        "band (or there is no stationary law)", holds=broke and bool(outside),
        summary=f"{len(outside)} points; predicted break beta*: " + ", ".join(
            f"N={n}: {c.break_total:.3g} (eta: {c.break_eta:.3g}, data: {c.break_data:.3g})"
            for n, c in curves.items()),
        numbers={f"break_N{n}": c.break_total for n, c in curves.items()})]


def _mechanisms_claim(measured: list[dict], curves: dict, settings: BreakdownSettings) -> Claim:
    """The smallest N breaks first by finite data (loss falls), the largest by discreteness (loss rises)."""
    tol, sizes = settings.tolerance, settings.dataset_sizes
    small, large = sizes[0], sizes[-1]
    cs, cl = curves[small], curves[large]
    last = {n: [r for r in measured if r["dataset_size"] == n] for n in sizes}
    mech_ok = (cs.break_data < cs.break_eta and cl.break_eta < cl.break_data
               and bool(last[small]) and last[small][-1]["measured"] < 1.0 - tol
               and any(r["measured"] > 1.0 + tol for r in last[large]))
    return Claim(
        "two-mechanisms", f"N={small} breaks first by S -> N (loss falls); N={large} by eta lambda_max -> 2 "
        "(loss rises)", holds=mech_ok,
        summary=f"N={small}: data break {cs.break_data:.3g} < eta break {cs.break_eta:.3g}, last measured "
                f"{last[small][-1]['measured']:.3f}; N={large}: eta break {cl.break_eta:.3g} < data break "
                f"{cl.break_data:.3g}, max measured "
                f"{max((r['measured'] for r in last[large]), default=math.nan):.3f}" if last[small] else "no data",
        numbers=dict(small=small, large=large))


def plot(result: BreakdownResult, path) -> None:
    """Draw ``check``'s result into ``path`` (PNG): loss/E_inv against β for each N, exact and measured.

    Per N: the exact factor with real minibatches (solid), discreteness alone (dashed), finite data alone
    (dotted), the predicted break β* (vertical line) and the measured points with their standard errors.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tol, rows = result.config.tolerance, result.rows
    fig, ax = plt.subplots(figsize=(7.2, 5), constrained_layout=True)
    ax.axhspan(1 - tol, 1 + tol, color="0.9", label=f"invariant band ±{tol:g}")
    ax.axhline(1.0, color="k", lw=0.8)
    for i, (n, c) in enumerate(result.curves.items()):
        color = f"C{i}"
        ok_total = np.isfinite(c.total)
        ax.plot(c.beta[ok_total], c.total[ok_total], "-", color=color, lw=1.4,
                label=f"N={n}: exact (real minibatches)")
        ax.plot(c.beta, c.eta, "--", color=color, lw=0.8, alpha=0.7)
        ax.plot(c.beta, c.data, ":", color=color, lw=1.0, alpha=0.9)
        if math.isfinite(c.break_total):
            ax.axvline(c.break_total, color=color, lw=1.0, alpha=0.6)
        rs = [r for r in rows if r["dataset_size"] == n and r["status"] == "ok"]
        ax.errorbar([r["beta"] for r in rs], [r["measured"] for r in rs], yerr=[r["stderr"] for r in rs], fmt="o",
                    color=color, ms=4, capsize=2)
    ax.plot([], [], "--", color="0.3", lw=0.8, label=r"discreteness alone, $F_\eta$")
    ax.plot([], [], ":", color="0.3", lw=1.0, label=r"finite data alone, $F_N=(N-S)/(N-1)$")
    ax.plot([], [], "o", color="0.3", ms=4, label="measured (SGD, real minibatches)")
    ax.plot([], [], "-", color="0.3", lw=1.0, alpha=0.6, label=r"predicted break $\beta^*$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.02, 20)
    ax.set_xlabel(r"$\beta$: $(\eta, S) = (\beta\eta_0, \beta S_0)$, $\eta/S$ = " + f"{result.config.ratio:g}")
    ax.set_ylabel(r"stationary loss / $E_{inv}$ = $(\eta/S)\,\mathrm{Tr}(\Sigma^*)/4$")
    ax.set_title("Where the eta/S invariance breaks (Fig. 5 analogue)")
    ax.legend(fontsize=7, loc="lower left")
    save_figure_atomic(fig, path, dpi=120, kind="verification.breakdown")


def run(args, out=None) -> CheckResult:
    """The check behind the command line: ``check`` plus the figure ``--out DIR/breakdown.png``.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the table (default stdout).

    Returns:
        ``check``'s result, with the figure's path when ``--out`` was given.
    """
    settings = settings_from_args(args)
    plan(args, estimate(settings), "python -m verification.breakdown")
    return check_with_figure(check(settings, out=sys.stdout if out is None else out), args, "breakdown", plot)


def main(argv=None, out=None) -> int:
    """``python -m verification.breakdown``; returns the exit status (0 pass, 1 a claim fails, 2 bad input)."""
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
