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
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from quadratic import SPECTRUM_HELP, Quadratic, parse_spectrum
from common import validate
from quadratic import batch_noise_factor
from sde import learning_curve, simulate
from sde.schedules import Explicit, by_examples, triangular_wave
from common.cli import Parser, int_list
from verification.cli import bonferroni_z
from common.files import save_figure_atomic
from common.claims import CheckResult, Claim
from verification.cli import add_common_options, figure_path, run_main

__all__ = ["main", "run", "build_parser", "Run", "curve_distance"]

DEFAULT_SPECTRUM = "logspace:0.02:1:50"
GRID_POINTS = 40
BOOTSTRAP = 200


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.invariance", description=__doc__.split("\n\n")[0])
    p.add_argument("--spectrum", default=DEFAULT_SPECTRUM, help=f"Hessian spectrum (C = H): {SPECTRUM_HELP}")
    p.add_argument("--ratio", type=float, default=0.005, help="the common eta/S (default 0.005)")
    p.add_argument("--batch-size", type=int_list, default=[5, 10, 20, 40],
                   help="batch sizes of the equal-ratio runs, eta = ratio*S (default 5,10,20,40)")
    p.add_argument("--examples", type=int, default=None,
                   help="examples seen per run (default: 5 relaxation times of the slowest mode)")
    p.add_argument("--cycle-low", type=float, default=0.2, help="cyclic schedules: lowest factor (default 0.2)")
    p.add_argument("--cycles", type=float, default=3.0, help="cyclic schedules: cycles per run (default 3)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="largest RMS log-distance of curves called equal (default 0.1)")
    p.add_argument("--chains", type=int, default=512, help="chains per run (default 512)")
    add_common_options(p)
    return p


@dataclass
class Run:
    """One simulated run and its exact curve, both on the examples grid."""

    label: str
    eta: float
    batch_size: float
    schedule: Explicit
    chain_curves: np.ndarray  # (chains, grid)
    exact: np.ndarray         # (grid,)
    full: tuple               # (examples, mean, stderr, exact) at every step, for the figures

    @property
    def mean(self) -> np.ndarray:
        return self.chain_curves.mean(axis=0)

    @property
    def stderr(self) -> np.ndarray:
        return self.chain_curves.std(axis=0, ddof=1) / math.sqrt(self.chain_curves.shape[0])


def _interp_rows(x_new, x, y):
    """Linear interpolation of every row of ``y`` (chains, len(x)) at ``x_new``."""
    j = np.clip(np.searchsorted(x, x_new, side="right") - 1, 0, x.size - 2)
    w = (x_new - x[j]) / (x[j + 1] - x[j])
    return y[..., j] * (1.0 - w) + y[..., j + 1] * w


def _simulate_run(problem, label, schedule: Explicit, grid, theta0, chains, rng) -> Run:
    res = simulate(problem, float(schedule.etas[0]), int(schedule.batch_sizes[0]), steps=schedule.steps,
                   chains=chains, schedule=schedule, record_every=1, theta0=theta0, rng=rng, burn_in=0)
    ex = schedule.examples.astype(np.float64)
    curves = _interp_rows(grid, ex, res.chain_curves)
    kappas = np.array([batch_noise_factor(int(b)) for b in schedule.batch_sizes])
    exact_full = learning_curve(problem, schedule.etas, kappas, theta0=theta0)
    exact = _interp_rows(grid, ex, exact_full)
    eta = float(schedule.etas.max())
    return Run(label, eta, float(schedule.batch_sizes.mean()), schedule, curves, exact,
               (ex, res.curve, res.curve_stderr, exact_full))


def curve_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of ln a − ln b over the columns of chain curves ``a`` and ``b`` (chains × grid), noise bias removed.

    E[(ln ā − ln b̄)²] ≈ (ln A − ln B)² + (se_a/ā)² + (se_b/b̄)², so the squared relative standard errors are
    subtracted before the square root (clipped at 0).
    """
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va = a.var(axis=0, ddof=1) / a.shape[0] / ma**2
    vb = b.var(axis=0, ddof=1) / b.shape[0] / mb**2
    d2 = np.mean((np.log(ma) - np.log(mb)) ** 2 - va - vb)
    return math.sqrt(max(d2, 0.0))


def exact_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of ln a − ln b for exact curves."""
    return float(np.sqrt(np.mean((np.log(a) - np.log(b)) ** 2)))


def _bootstrap(fn, runs, rng, reps=BOOTSTRAP):
    """Standard deviation of ``fn(*chain_curves)`` over bootstrap resamples of each run's chains."""
    vals = []
    for _ in range(reps):
        res = [r.chain_curves[rng.integers(0, r.chain_curves.shape[0], r.chain_curves.shape[0])] for r in runs]
        vals.append(fn(*res))
    return float(np.std(vals, ddof=1))


def _pair(a: Run, b: Run, rng) -> dict:
    d = curve_distance(a.chain_curves, b.chain_curves)
    se = _bootstrap(curve_distance, [a, b], rng)
    return dict(a=a.label, b=b.label, distance=d, stderr=se, exact_distance=exact_distance(a.exact, b.exact))


def run(args, out=None) -> CheckResult:
    out = sys.stdout if out is None else out
    ratio = validate.positive_float("--ratio", args.ratio)
    sizes = sorted({validate.positive_int("--batch-size", s) for s in args.batch_size})
    if len(sizes) < 2:
        raise ValueError("--batch-size needs at least two different batch sizes")
    tol = validate.positive_float("--tolerance", args.tolerance)
    chains = validate.positive_int("--chains", args.chains, minimum=2)
    low = validate.float_in("--cycle-low", args.cycle_low, 0.0, 1.0)
    if low == 0.0:
        raise ValueError("--cycle-low must be > 0")
    cycles = validate.positive_float("--cycles", args.cycles)
    rng = np.random.default_rng(args.seed)
    spectrum = parse_spectrum(args.spectrum, rng=rng)
    problem = Quadratic.from_spectrum(spectrum)
    lam_max, lam_min = problem.lambda_max, float(spectrum.min())
    for s in sizes:
        if ratio * s * lam_max >= 2.0:
            raise ValueError(f"--ratio * --batch-size = {ratio * s:g} gives eta*lambda_max >= 2 at S={s}: "
                             f"SGD diverges; need ratio*S < {2.0 / lam_max:g}")
    # Start at distance 1 along every eigendirection: L(θ0) = Tr(H)/2.
    theta0 = problem.minimum + problem.eigenvectors @ np.ones(problem.dim)
    # Relaxation of the slowest mode takes 1/(2 ratio λ_min) examples (variance); follow five of them.
    examples = args.examples or int(math.ceil(5.0 / (2.0 * ratio * lam_min)))
    examples = validate.positive_int("--examples", examples)
    s0, s_big = sizes[0], sizes[-1]
    big_eta_s = int(math.ceil(1.6 / (ratio * lam_max)))  # the must-fail pair: eta*lambda_max = 1.6
    if examples < 20 * max(big_eta_s, s_big):
        raise ValueError(f"--examples must be >= {20 * max(big_eta_s, s_big)} (20 batches of the largest batch)")
    grid = np.unique(np.geomspace(max(big_eta_s, s_big), examples, GRID_POINTS).round())

    def const(eta, s):
        steps = int(math.ceil(examples / s))
        return Explicit(np.full(steps, eta), np.full(steps, s))

    out.write(f"invariance: {problem!r}; ratio eta/S = {ratio:g}; {examples} examples per run; {chains} chains\n")
    runs: dict[str, Run] = {}

    def add(key, label, schedule):
        runs[key] = _simulate_run(problem, label, schedule, grid, theta0, chains, rng)

    for s in sizes:
        add(f"eq{s}", f"eta={ratio * s:g}, S={s}", const(ratio * s, s))
    s_mid = sizes[len(sizes) // 2]
    add("x2", f"control: eta={2 * ratio * s_mid:g}, S={s_mid} (2x ratio)", const(2 * ratio * s_mid, s_mid))
    add("x05", f"control: eta={0.5 * ratio * s_mid:g}, S={s_mid} (ratio/2)", const(0.5 * ratio * s_mid, s_mid))
    add("bigeta", f"eta={ratio * big_eta_s:g}, S={big_eta_s} (eta lambda_max = 1.6)",
        const(ratio * big_eta_s, big_eta_s))
    # Fig. 1 left: cyclic LR against cyclic batch size, same eta/S at every example seen.
    period = examples / cycles
    # The cycle runs between ratio (at the trough) and ratio/low (at the crest), from the smallest batch.
    eta_c = ratio * s0 / low
    if eta_c * lam_max >= 2.0:
        raise ValueError(f"--ratio / --cycle-low gives a cyclic-LR peak eta*lambda_max = {eta_c * lam_max:g} >= 2")
    wave = lambda e: float(triangular_wave(e, period, low))  # noqa: E731
    add("clr", f"cyclic LR: eta in [{eta_c * low:.3g}, {eta_c:.3g}], S={s0}",
        by_examples(wave, eta_c, s0, examples, target="eta"))
    add("cbs", f"cyclic batch: eta={eta_c:.3g}, S in [{s0}, {round(s0 / low)}]",
        by_examples(wave, eta_c, s0, examples, target="batch_size"))
    # Fig. 2: from S0 to S_big with eta scaled like S, like sqrt(S), or fixed.
    k = s_big / s0
    eta0 = ratio * s0
    add("sqrt", f"eta={eta0 * math.sqrt(k):.3g} (sqrt rule), S={s_big}", const(eta0 * math.sqrt(k), s_big))
    add("fixed", f"eta={eta0:g} (fixed), S={s_big}", const(eta0, s_big))

    ref = runs[f"eq{s0}"]
    equal_pairs = [_pair(ref, runs[f"eq{s}"], rng) for s in sizes[1:]]
    controls = [_pair(runs[f"eq{s_mid}"], runs[key], rng) for key in ("x2", "x05")]
    big = _pair(ref, runs["bigeta"], rng)
    cyc = _pair(runs["clr"], runs["cbs"], rng)
    rules = {"linear": _pair(ref, runs[f"eq{s_big}"], rng), "sqrt": _pair(ref, runs["sqrt"], rng),
             "fixed": _pair(ref, runs["fixed"], rng)}
    n_tests = len(equal_pairs) + len(controls) + 1 + 1 + 3 + 2
    z = bonferroni_z(args.confidence, n_tests)

    def equal(p):
        return p["distance"] + z * p["stderr"] < tol

    def fmt(p):
        return f"{p['distance']:.4f} ± {p['stderr']:.4f} (exact {p['exact_distance']:.4f})"

    claims = [
        Claim("equal-ratio", "equal eta/S gives equal learning curves against examples seen (Fig. 1 right)",
              holds=all(equal(p) for p in equal_pairs),
              summary="; ".join(f"S={runs[f'eq{s}'].batch_size:g} vs S={s0}: {fmt(p)}"
                                for s, p in zip(sizes[1:], equal_pairs)) + f"; tolerance {tol:g}",
              numbers=dict(distances=[p["distance"] for p in equal_pairs], tolerance=tol)),
        Claim("different-ratio-control", "curves with 2x and 1/2 the ratio are told apart (the check is sensitive)",
              holds=all(equal(p) for p in controls), expected=False,
              summary="; ".join(f"{p['b']}: {fmt(p)}" for p in controls),
              numbers=dict(distances=[p["distance"] for p in controls])),
        Claim("equal-ratio-large-eta", "equal ratio still gives equal curves at eta*lambda_max = 1.6",
              holds=equal(big), expected=False, summary=f"{big['b']} vs {big['a']}: {fmt(big)}",
              numbers=dict(distance=big["distance"], exact_distance=big["exact_distance"])),
        Claim("cyclic-lr-vs-cyclic-batch", "a cyclic batch size with the same eta/S at every example seen follows "
              "the cyclic learning rate (Fig. 1 left)", holds=equal(cyc), summary=f"{fmt(cyc)}",
              numbers=dict(distance=cyc["distance"], exact_distance=cyc["exact_distance"])),
    ]
    lin, sq, fx = rules["linear"], rules["sqrt"], rules["fixed"]
    se_sq = _bootstrap(lambda a, b, c: curve_distance(a, c) - curve_distance(a, b),
                       [ref, runs[f"eq{s_big}"], runs["sqrt"]], rng)
    lin_best = equal(lin) and (sq["distance"] - lin["distance"] > z * se_sq) and fx["distance"] > sq["distance"]
    claims.append(Claim(
        "linear-scaling-rule", f"growing the batch {k:g}x, eta proportional to S keeps the small-batch curve; "
        "sqrt(S) and fixed eta do not (Fig. 2)", holds=lin_best,
        summary=f"distance to the S={s0} curve: eta~S {fmt(lin)}; eta~sqrt(S) {fmt(sq)}; fixed {fmt(fx)}",
        numbers={f"distance_{k_}": v["distance"] for k_, v in rules.items()}))

    # The simulations themselves against the exact recursion.
    z_pts = bonferroni_z(args.confidence, len(runs) * grid.size)
    worst, worst_label = 0.0, ""
    for r in runs.values():
        zz = np.abs(r.mean - r.exact) / r.stderr
        if zz.max() > worst:
            worst, worst_label = float(zz.max()), r.label
    claims.append(Claim(
        "simulation-matches-exact-curve", "every simulated mean curve agrees with the exact moment recursion",
        holds=worst <= z_pts, summary=f"max |z| over {len(runs)} runs x {grid.size} points = {worst:.2f} "
                                      f"({worst_label}) <= {z_pts:.2f}?",
        numbers=dict(max_abs_z=worst, z_critical=z_pts)))

    rows = []
    for group, pairs in (("equal-ratio", equal_pairs), ("control", controls), ("large-eta", [big]),
                         ("cyclic", [cyc]), ("rescaling", list(rules.values()))):
        for p in pairs:
            rows.append(dict(group=group, **p, equal=equal(p), z_critical=z, tolerance=tol))
    out.write(f"{'group':<12} {'run':<48} {'vs':<24} {'distance':>9} {'+-':>7} {'exact':>8}  equal?\n")
    for r in rows:
        out.write(f"{r['group']:<12} {r['b'][:48]:<48} {r['a'][:24]:<24} {r['distance']:>9.4f} {r['stderr']:>7.4f} "
                  f"{r['exact_distance']:>8.4f}  {'yes' if r['equal'] else 'no'}\n")
    result = CheckResult("invariance", "equal eta/S gives equal dynamics (Figs. 1 and 2)", claims, rows,
                         settings=dict(spectrum=args.spectrum, ratio=ratio, batch_sizes=sizes, examples=examples,
                                       chains=chains, tolerance=tol, seed=args.seed, confidence=args.confidence,
                                       cycle_low=low, cycles=cycles))
    if figure_path(args, "x") is not None:
        result.figures += _plot(runs, grid, sizes, args, ratio)
    return result


def _band(ax, grid, r: Run, color, ls="-", label=None):
    ex, m, se, exact = r.full
    keep = ex >= grid[0] / 2  # from the first grid point on (the first batch of the largest run)
    ax.plot(ex[keep], m[keep], ls, color=color, lw=1.3, label=label)
    ax.fill_between(ex[keep], (m - se)[keep], (m + se)[keep], color=color, alpha=0.25, lw=0)
    ax.plot(ex[keep], exact[keep], ":", color="k", lw=0.8)


def _plot(runs, grid, sizes, args, ratio) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # Fig. 1 right analogue.
    fig, ax = plt.subplots(figsize=(6.6, 4.6), constrained_layout=True)
    for i, s in enumerate(sizes):
        _band(ax, grid, runs[f"eq{s}"], f"C{i}", label=runs[f"eq{s}"].label)
    _band(ax, grid, runs["x2"], "C4", "--", runs["x2"].label)
    _band(ax, grid, runs["x05"], "C5", "--", runs["x05"].label)
    _band(ax, grid, runs["bigeta"], "C7", "-.", runs["bigeta"].label)
    ax.plot([], [], ":", color="k", lw=0.8, label="exact (moment recursion)")
    ax.set(xscale="log", yscale="log", xlabel="examples seen", ylabel=r"$E[L] - L^*$",
           title=f"Equal $\\eta/S$ = {ratio:g}: equal curves (bands: ±1 s.e.)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, figure_path(args, "invariance_equal_ratio")))
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
    paths.append(_save(fig, figure_path(args, "invariance_cyclic")))
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
    paths.append(_save(fig, figure_path(args, "invariance_rescaling")))
    return paths


def _save(fig, path) -> str:
    save_figure_atomic(fig, path, dpi=120)
    return str(path)


def main(argv=None, out=None) -> int:
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
