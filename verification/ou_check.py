r"""``python -m verification.ou_check``: does simulated SGD reach the stationary loss the theory predicts?

For a quadratic (default: 100 eigenvalues log-spaced in [0.01, 1], C = H) and a grid of (η, S) that contains
pairs with equal η/S, it simulates (a) the SDE by the exact OU transition and (b) SGD itself (dt = η), and prints
each measured stationary loss ± its standard error beside the paper's Eq. (7), η/(4S)·Tr(H), and the exact value
for that process (continuous or discrete Lyapunov equation), with the relative size of the discrete-time
correction. A row passes when |z| = |measured − exact|/stderr is below the two-sided Bonferroni critical value for
the stated confidence over all rows.

Exit status: 0 when every row agrees, 1 when one does not, 2 on bad input (one line on stderr).

Example::

    python -m verification.ou_check --eta 0.05,0.1 --batch-size 5,10 --json out/ou.json --plot out/ou.png

From Python, without the command line::

    from verification.ou_check import OUCheckSettings, check
    result = check(OUCheckSettings(etas=(0.1, 0.2), batch_sizes=(5, 10), chains=64, steps=3000))
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, parse_spectrum
from sde import RunTooShort, eq7_loss, expected_loss, simulate
from sgd_noise_common import validate
from sgd_noise_common.claims import CheckResult, Claim
from sgd_noise_common.cli import Parser, add_settings, float_list, from_args, int_list, options_dict, setting
from sgd_noise_common.files import (
    check_output_file,
    jsonable,
    save_figure_atomic,
    stamped_figure_formats,
    write_json_atomic,
)
from sgd_noise_common.lock import output_locks
from verification import budget
from verification.budget import NS, Cost, spectrum_of
from verification.cli import (
    bonferroni_z,
    check_confidence,
    check_outputs,
    check_with_figure,
    confidence_setting,
    format_z,
    parse_or_exit_code,
    plan,
    result_kind,
    seed_setting,
    spectrum_setting,
    table_stream,
    writing,
    z_test,
)

__all__ = ["OUCheckSettings", "build_parser", "settings_from_args", "build_problem", "check", "estimate", "plot",
           "plot_rows", "run", "run_check", "main"]

DEFAULT_SPECTRUM = "logspace:0.01:1:100"
DEFAULT_ETAS = "0.05,0.1,0.2"
DEFAULT_BATCH_SIZES = "5,10,20"
NOISES = ("gaussian", "minibatch")
#: N of the least-squares problem behind ``--noise minibatch`` when ``--dataset-size`` is not given.
DEFAULT_MINIBATCH_DATASET_SIZE = 1000
TITLE = "stationary loss of SGD and its SDE against the exact theory (Eq. 7)"
#: The two claims, one per process: (process, statement).
CLAIMS = (("sde", "the SDE (exact OU sampler) reaches its exact stationary loss; with C = H this is Eq. (7), "
                  "eta Tr(H)/(4S)"),
          ("sgd", "SGD itself reaches the exact discrete-time stationary loss (Eq. (7) plus the discrete "
                  "correction)"))


@dataclass(frozen=True, kw_only=True)
class OUCheckSettings:
    """What ``ou_check`` simulates: the (η, S) grid, the problem, the noise and the Monte Carlo budget.

    The defaults are those of the command line. The spectrum is parsed in ``check``, not here, because a
    Marchenko–Pastur spectrum is drawn from the seed's stream; a dataset size that does not fit the batch sizes or
    an (η, S) without a stationary law are likewise reported by ``check``, before any simulation.

    Attributes:
        etas: learning rates η (``--eta``), each > 0.
        batch_sizes: batch sizes S (``--batch-size``), each >= 1; the grid is etas × batch_sizes.
        spectrum: Hessian spectrum (``--spectrum``), e.g. ``logspace:0.01:1:100``.
        rotate: put H (and C) in a random orthonormal basis (``--rotate``).
        noise: ``"gaussian"`` (ξ ~ N(0, C/S), C = H) or ``"minibatch"`` (real minibatches of least squares).
        dataset_size: N (``--dataset-size``): the without-replacement factor for Gaussian noise (``None``:
            unlimited data), the dataset size for minibatch noise (``None``: 1000).
        momentum: μ in [0, 1).
        weight_decay: γ >= 0.
        chains: independent chains per run, >= 2 (the standard error comes from them).
        steps: steps per run, >= 1.
        burn_in: steps discarded before averaging (``--burn-in``), < steps; ``None``: as many as the slowest mode
            needs to relax (``sde.simulate``'s default).
        seed: seed of the one random stream that every draw comes from, in a fixed order.
        confidence: family-wise confidence of the verdicts, Bonferroni over the rows, in (0, 1).

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--eta must be > 0, got -1.0``.
    """

    etas: tuple[float, ...] = setting(tuple(float_list(DEFAULT_ETAS)), help="learning rates, comma-separated",
                                      range="> 0", option="--eta")
    batch_sizes: tuple[int, ...] = setting(tuple(int_list(DEFAULT_BATCH_SIZES)),
                                           help=f"batch sizes, comma-separated (default {DEFAULT_BATCH_SIZES}); the "
                                                "grid is eta x S", range=">= 1", option="--batch-size")
    spectrum: str = spectrum_setting(DEFAULT_SPECTRUM, f"Hessian spectrum: {SPECTRUM_HELP}")
    rotate: bool = setting(False, help="put H (and C) in a random orthonormal basis")
    noise: str = setting("gaussian", choices=NOISES,
                         help="gaussian: xi ~ N(0, C/S) with C = H; minibatch: real minibatches of least squares")
    dataset_size: int | None = setting(None, range=">= 1",
                                       help="N: without-replacement factor for gaussian noise; dataset size for "
                                            f"minibatch (default {DEFAULT_MINIBATCH_DATASET_SIZE} there)")
    momentum: float = setting(0.0, help="momentum mu in [0, 1)", range="[0, 1)")
    weight_decay: float = setting(0.0, help="weight decay gamma >= 0", range=">= 0")
    chains: int = setting(256, help="independent chains per run", range=">= 2")
    steps: int = setting(8000, help="steps per run", range=">= 1")
    burn_in: int | None = setting(None, range=">= 0", help="steps discarded before averaging, < --steps (default: as "
                                                           "many as the slowest mode needs)")
    seed: int = seed_setting()
    confidence: float = confidence_setting(help_="family-wise confidence of the verdicts, Bonferroni over rows")

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        check_confidence(self.confidence)
        if isinstance(self.chains, bool) or not isinstance(self.chains, (int, np.integer)) or self.chains < 2:
            raise ValueError(f"--chains must be >= 2 (the standard error comes from independent chains), "
                             f"got {self.chains}")
        if len(self.etas) == 0 or len(self.batch_sizes) == 0:
            raise ValueError("--eta and --batch-size need at least one value each")
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "etas", tuple(validate.positive_float("--eta", e) for e in self.etas))
        set_(self, "batch_sizes", tuple(validate.positive_int("--batch-size", s) for s in self.batch_sizes))
        if self.noise not in NOISES:
            raise ValueError(f"--noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        if self.dataset_size is not None:
            set_(self, "dataset_size", validate.positive_int("--dataset-size", self.dataset_size))
        set_(self, "momentum", validate.float_in("--momentum", self.momentum, 0.0, 1.0))
        set_(self, "weight_decay", validate.nonnegative_float("--weight-decay", self.weight_decay))
        set_(self, "steps", validate.positive_int("--steps", self.steps))
        if self.burn_in is not None:
            set_(self, "burn_in", validate.positive_int("--burn-in", self.burn_in, minimum=0))
            if self.burn_in >= self.steps:
                raise ValueError(f"--burn-in must be < --steps = {self.steps}, got {self.burn_in}")
        set_(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))

    def grid(self) -> list[tuple[float, int]]:
        """The (η, S) pairs in the order they are simulated: η outer, S inner."""
        return [(e, s) for e in self.etas for s in self.batch_sizes]

    def cli_options(self) -> dict:
        """The settings under the command line's names (``eta``, ``batch_size``, ...), as the result reports them
        (``sgd_noise_common.cli.options_dict``)."""
        return options_dict(self)


def build_parser() -> Parser:
    """The command line of ``python -m verification.ou_check``: an option per field of ``OUCheckSettings`` (its
    defaults, ranges and help), and the output options."""
    p = Parser(prog="python -m verification.ou_check", description=__doc__.split("\n\n")[0])
    add_settings(p, OUCheckSettings)
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the rows to PATH (a JSON object: check, ok, rows: one object per row)")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a figure of measured vs predicted loss")
    p.add_argument("--out", default=None, metavar="DIR", help="write the figure as DIR/ou_check.png")
    budget.add_budget_option(p)
    return p


def settings_from_args(args) -> OUCheckSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(OUCheckSettings, args)


def build_problem(settings, *, rng: np.random.Generator) -> Quadratic:
    """The problem the settings describe: a ``Quadratic`` with C = H, or a ``LeastSquares`` for minibatch noise.

    Args:
        settings: ``OUCheckSettings`` (or a parsed command line with the same names: ``spectrum``, ``noise``,
            ``dataset_size``, ``rotate``).
        rng: the check's stream; the spectrum (when random), the data and the rotation are drawn from it.

    Returns:
        The problem.

    Raises:
        ValueError: on a bad spectrum, or a dataset smaller than the dimension for minibatch noise.
    """
    try:
        spectrum = parse_spectrum(settings.spectrum, rng=rng)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None
    if settings.noise == "minibatch":
        n = DEFAULT_MINIBATCH_DATASET_SIZE if settings.dataset_size is None else settings.dataset_size
        if n < spectrum.size:
            raise ValueError(f"--dataset-size must be >= the dimension {spectrum.size} for minibatch noise, got {n}")
        return LeastSquares.sample(n, spectrum, noise_std=1.0, rotate=settings.rotate, rng=rng)
    return Quadratic.from_spectrum(spectrum, rotate=settings.rotate, rng=rng)


def check(settings: OUCheckSettings, *, out=None) -> CheckResult:
    """Simulate the (η, S) grid with the SDE and with SGD, and judge each stationary loss against its exact value.

    Claims, both expected to hold:

    * ``stationary-loss-sde``: the SDE, sampled by its exact OU transition, reaches the exact continuous-time
      stationary loss at every (η, S); with C = H that is Eq. (7), η Tr(H)/(4S), a function of η/S only;
    * ``stationary-loss-sgd``: SGD itself (dt = η) reaches the exact discrete-time stationary loss, Eq. (7) plus
      the discrete-time correction.

    A row agrees when |measured − exact|/stderr is at most the two-sided Bonferroni critical value over all rows.

    Args:
        settings: what to simulate.
        out: text stream for the per-row table (default: none; the command line passes stdout).

    Returns:
        A ``CheckResult`` with the two claims and one row per (η, S, process): measured loss and standard error,
        Eq. (7), the exact value, z-scores and verdict (all that ``plot`` draws).

    Raises:
        ValueError: on a bad spectrum or dataset size, or an (η, S) without a stationary law; raised before any
            simulation.
    """
    out = table_stream(out)
    t0 = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    problem = build_problem(settings, rng=rng)
    n_data = problem.dataset_size if settings.noise == "minibatch" else settings.dataset_size
    pairs = settings.grid()
    # Validate every configuration before spending time on any.
    for eta, s in pairs:
        try:
            expected_loss(problem, eta, s, dataset_size=n_data, **_dynamics(settings))
        except ValueError as exc:  # named by the options that set it
            raise ValueError(f"--eta {eta:g} with --batch-size {s}: {exc}") from None
    z_crit = bonferroni_z(settings.confidence, 2 * len(pairs))
    t_sim = time.perf_counter()
    jobs = [(eta, s, process) for eta, s in pairs for process in ("sde", "sgd")]
    rows = [_stationary_row(problem, eta, s, process, settings, n_data, z_crit, rng)
            for eta, s, process in budget.progress(jobs, desc="ou_check")]
    _print_table(rows, problem, settings, z_crit, time.perf_counter() - t_sim, out)
    claims = [_process_claim(rows, process, statement) for process, statement in CLAIMS]
    return CheckResult("ou_check", TITLE, claims, rows, seconds=time.perf_counter() - t0,
                       settings=settings.cli_options())


def estimate(settings: OUCheckSettings) -> Cost:
    """The memory and time of ``check(settings)`` (and its figure), from its sizes, before any work.

    Per-unit costs, measured on the 2-core development VM and rounded up: 6 ns per chain, step and dimension on the
    eigenbasis kernel, plus 0.15 ns per chain, step and dimension squared on the dense one (a rotated problem, or
    minibatch noise), 0.5 ns per chain, step and multiply of the minibatch kernel; the exact minibatch loss (GMRES
    on d² unknowns) 50 ns per N·d².

    Raises:
        ValueError: a bad ``--spectrum`` (named).
    """
    info = spectrum_of(settings.spectrum)
    d, c, t = info.dim, settings.chains, settings.steps
    minibatch = settings.noise == "minibatch"
    n = (DEFAULT_MINIBATCH_DATASET_SIZE if settings.dataset_size is None else settings.dataset_size) if minibatch \
        else 0
    pairs = settings.grid()
    cost = Cost()
    spec = f"--spectrum={settings.spectrum} (dimension {d})"
    cost.memory(spec, info.build_bytes + 12 * 8.0 * d * d)  # H, its eigenvectors, C, roots and rotations
    cost.time(spec, NS * (info.build_flops + 40.0 * d**3))
    if minibatch:
        data = f"--dataset-size={n} (dimension {d})"
        cost.memory(data, 8.0 * (4 * n * d + 64 * d * d))  # the data, and GMRES's Krylov basis of d² unknowns
        cost.time(data, len(pairs) * 3 * 50 * NS * n * d * d)
    cost.memory(f"--chains={c}", c * 8.0 * (4 * d + 22 + n) + 8.0 * 2**24)
    dense = settings.rotate or minibatch
    per = 0.0
    for _, s in pairs:
        per += 6 * NS * d + (0.15 * NS * d * d if dense else 0.0)          # the SDE (exact OU transition)
        if minibatch:
            thin = max(1, math.ceil(d / (2.0 * s)))
            per += 30 * NS + 0.5 * NS * (s * d + d * d / thin)
        else:
            per += 6 * NS * d + (0.15 * NS * d * d if dense else 0.0)
    cost.time(f"--steps={t} with --chains={c} and {len(pairs)} (eta, S) pairs", c * t * per)
    return cost


def _dynamics(settings: OUCheckSettings) -> dict:
    """The keyword arguments of the dynamics shared by every run: momentum and weight decay."""
    return dict(momentum=settings.momentum, weight_decay=settings.weight_decay)


def _stationary_row(problem, eta: float, s: int, process: str, settings: OUCheckSettings, n_data, z_crit: float,
                    rng) -> dict:
    """Simulate one (η, S, process) and compare its stationary loss with the exact value and Eq. (7)."""
    common = _dynamics(settings)
    run_kw = dict(steps=settings.steps, chains=settings.chains, rng=rng, burn_in=settings.burn_in, **common)
    try:
        if process == "sde":
            res = simulate(problem, eta, s, method="exact", dataset_size=n_data, **run_kw)
            exact = expected_loss(problem, eta, s, process="sde", dataset_size=n_data, **common)
        elif settings.noise == "minibatch":
            res = simulate(problem, eta, s, noise="minibatch", **run_kw)
            exact = expected_loss(problem, eta, s, noise="minibatch", **common)
        else:
            res = simulate(problem, eta, s, dataset_size=n_data, **run_kw)
            exact = expected_loss(problem, eta, s, dataset_size=n_data, **common)
    except RunTooShort as exc:
        needed = int(exc.needed_steps) if math.isfinite(exc.needed_steps) else None
        raise ValueError(
            f"--steps {settings.steps} is too short: "
            + (f"need steps >= {needed} " if needed else "a mode does not relax ") + f"at eta={eta:g}, S={s} "
            + "(the default burn-in lets the slowest mode relax and as many steps again are averaged); raise "
              "--steps, or set --burn-in (fewer steps discarded, at the price of a biased average)") from None
    eq7 = eq7_loss(problem, eta, s)
    # The scale of round-off: Eq. (7) at this (eta, S), which is > 0 even where the exact loss is 0 (S = N).
    z, ok = z_test(res.mean_loss, res.stderr, exact, eq7, z_crit)
    z_eq7, _ = z_test(res.mean_loss, res.stderr, eq7, eq7, z_crit)
    return dict(
        eta=eta, batch_size=s, ratio=eta / s, trace_h=problem.trace, process=process, method=res.method,
        measured_loss=res.mean_loss, stderr=res.stderr, theory_eq7=eq7, theory_exact=exact,
        discrete_correction=(exact - eq7) / eq7, z=z, z_eq7=z_eq7, z_critical=z_crit,
        ok=bool(ok), confidence=settings.confidence, chains=res.chains, steps=res.steps,
        burn_in=res.burn_in, relaxation_steps=res.relaxation_steps, seconds=res.seconds,
        noise=settings.noise, momentum=settings.momentum, weight_decay=settings.weight_decay, dataset_size=n_data,
    )


def _process_claim(rows: list[dict], process: str, statement: str) -> Claim:
    """The claim that every row of ``process`` agrees with its exact stationary loss."""
    rs = [r for r in rows if r["process"] == process]
    worst = max((abs(r["z"]) for r in rs if r["z"] is not None), default=0.0)
    exact_rows = sum(r["z"] is None for r in rs)
    corr = max(abs(r["discrete_correction"]) for r in rs)
    return Claim(
        f"stationary-loss-{process}", statement, holds=all(r["ok"] for r in rs),
        summary=f"{sum(r['ok'] for r in rs)}/{len(rs)} rows agree, max |z| = {worst:.2f} <= "
                f"{rs[0]['z_critical']:.2f}"
                + (f" ({exact_rows} row(s) without noise, compared at round-off level: z is —)" if exact_rows else "")
                + f"; largest discrete correction {100 * corr:.1f} %",
        numbers=dict(max_abs_z=worst, rows=len(rs)))


def _print_table(rows, problem, settings: OUCheckSettings, z_crit, elapsed, out) -> None:
    """The per-row table, the equal-ratio SDE rows side by side, and the count of rows that agree."""
    w = out.write
    w(f"ou_check: {problem!r}\n")
    w(f"noise={settings.noise} momentum={settings.momentum} weight_decay={settings.weight_decay} "
      f"chains={settings.chains} steps={settings.steps} seed={settings.seed}\n")
    w(f"verdict: |z| <= {z_crit:.2f} (confidence {settings.confidence} over {len(rows)} rows, Bonferroni)\n\n")
    head = (f"{'eta':>7} {'S':>5} {'eta/S':>9} {'process':>7} {'measured':>12} {'+-stderr':>10} "
            f"{'Eq.7':>12} {'exact':>12} {'corr%':>7} {'z':>7} {'z(Eq.7)':>8}  verdict\n")
    w(head)
    w("-" * (len(head) - 1) + "\n")
    for r in rows:
        w(f"{r['eta']:>7.4g} {r['batch_size']:>5d} {r['ratio']:>9.4g} {r['process']:>7} "
          f"{r['measured_loss']:>12.6g} {r['stderr']:>10.2g} {r['theory_eq7']:>12.6g} {r['theory_exact']:>12.6g} "
          f"{100 * r['discrete_correction']:>+7.2f} {format_z(r['z'])} {format_z(r['z_eq7'], 8, 1)}  "
          f"{'ok' if r['ok'] else 'FAIL'}\n")
    groups = {}
    for r in rows:
        if r["process"] == "sde":
            groups.setdefault(round(r["ratio"], 12), []).append(r)
    equal = {k: v for k, v in groups.items() if len(v) > 1}
    if equal:
        w("\nequal eta/S, SDE rows (the theory says the stationary loss depends on eta/S only):\n")
        for ratio, rs in sorted(equal.items()):
            vals = ", ".join(f"{r['measured_loss']:.6g}+-{r['stderr']:.2g} (eta={r['eta']:g})" for r in rs)
            w(f"  eta/S={ratio:g}: {vals}\n")
    n_fail = sum(not r["ok"] for r in rows)
    w(f"\n{len(rows) - n_fail}/{len(rows)} rows agree with the exact value for their process; "
      f"simulation took {elapsed:.1f} s\n")


def plot(result: CheckResult, path) -> None:
    """Draw the result of ``check`` into ``path`` (PNG): see ``plot_rows``."""
    plot_rows(result.rows, path)


def plot_rows(rows, path) -> None:
    """Measured stationary loss against η/S, with Eq. (7) and the exact values, and the deviation from Eq. (7).

    Args:
        rows: the rows of ``check``'s result.
        path: the figure's file (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True, constrained_layout=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    ratios = np.array(sorted({r["ratio"] for r in rows}))
    trace = rows[0]["trace_h"]
    grid = np.geomspace(ratios.min() / 1.3, ratios.max() * 1.3, 50)
    ax.plot(grid, grid * trace / 4.0, "k-", lw=1, label=r"Eq. (7): $\eta\,\mathrm{Tr}(H)/(4S)$")
    rel.axhline(0.0, color="k", lw=1)
    styles = {"sde": ("C0", "o", "SDE (exact OU sampler)"), "sgd": ("C3", "s", "SGD (dt = eta)")}
    etas = sorted({r["eta"] for r in rows})
    for process, (color, marker, label) in styles.items():
        rs = [r for r in rows if r["process"] == process]
        # Spread the markers of equal ratios sideways by eta so that they do not hide each other.
        x = np.array([r["ratio"] * (1.0 + 0.05 * (etas.index(r["eta"]) - (len(etas) - 1) / 2)) for r in rs])
        y = np.array([r["measured_loss"] for r in rs])
        e = np.array([r["stderr"] for r in rs])
        eq7 = np.array([r["theory_eq7"] for r in rs])
        exact = np.array([r["theory_exact"] for r in rs])
        ax.errorbar(x, y, yerr=e, fmt=marker, color=color, ms=4, capsize=2, label=f"{label}, measured")
        rel.errorbar(x, 100 * (y / eq7 - 1), yerr=100 * e / eq7, fmt=marker, color=color, ms=4, capsize=2)
        rel.plot(x, 100 * (exact / eq7 - 1), "_", color=color, ms=12, mew=2, label=f"{label}, exact")
    for a in (ax, rel):
        a.set_xscale("log")
    ax.set_yscale("log")
    rel.set_xlabel(r"$\eta/S$ (markers of equal $\eta/S$ spread by $\eta$)")
    ax.set_ylabel(r"stationary $E[L] - L^*$")
    rel.set_ylabel("deviation from Eq. (7), %")
    ax.set_title(f"Stationary loss of SGD and its SDE (Tr H = {trace:.3g})")
    ax.legend(fontsize=7)
    rel.legend(fontsize=7, title="exact value", title_fontsize=7)
    save_figure_atomic(fig, path, dpi=130, kind=result_kind("ou_check"))


def run(args, out=None) -> CheckResult:
    """The check behind the command line (for ``python -m verification``): ``check`` plus the ``--out`` figure.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the table (default stdout).

    Returns:
        ``check``'s result, with ``DIR/ou_check.png`` in its figures when ``--out DIR`` was given.
    """
    settings = settings_from_args(args)
    plan(args, estimate(settings), "python -m verification.ou_check")
    return check_with_figure(check(settings, out=sys.stdout if out is None else out), args, "ou_check", plot)


def run_check(args, *, out=None) -> tuple[list[dict], bool]:
    """Simulate the grid, print the table, and return the rows and whether all of them agree (``check``'s rows)."""
    result = check(settings_from_args(args), out=sys.stdout if out is None else out)
    return result.rows, result.ok


def main(argv=None) -> int:
    """``python -m verification.ou_check``: print the table, write ``--json`` (the rows) and ``--plot``.

    Returns:
        0 when every row agrees, 1 when one does not, 2 on bad input (one line on stderr).
    """
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    try:
        check_outputs(args, "ou_check")  # --json, and --out when python -m verification passes one
        if args.plot:
            # Only formats whose metadata carries the stamp: a figure written in another could not be replaced later.
            check_output_file(args.plot, option="--plot", formats=stamped_figure_formats(),
                              kind=result_kind("ou_check"))
        with output_locks((args.json, False), (args.plot, False), (args.out, True), option="--json/--plot/--out"):
            result = run(args)
            if args.json:
                with writing(args.json, "--json"):
                    write_json_atomic(args.json, jsonable({"check": "ou_check", "ok": result.ok, "rows": result.rows}),
                                      kind=result_kind("ou_check"))
            if args.plot:
                with writing(args.plot, "--plot"):
                    plot(result, args.plot)
    except ValueError as exc:  # bad input, a folder in use, a file that cannot be written (OutputError)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
