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
"""

from __future__ import annotations

import sys
import time

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, parse_spectrum
from sde import eq7_loss, expected_loss, simulate
from common.cli import Parser, float_list, int_list
from verification.cli import bonferroni_z
from common.files import save_figure_atomic, write_json_atomic
from common.claims import CheckResult, Claim
from verification.cli import figure_path

__all__ = ["main", "run", "run_check", "build_problem"]

DEFAULT_SPECTRUM = "logspace:0.01:1:100"
DEFAULT_ETAS = "0.05,0.1,0.2"
DEFAULT_BATCH_SIZES = "5,10,20"


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.ou_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--eta", type=float_list, default=float_list(DEFAULT_ETAS),
                   help=f"learning rates, comma-separated (default {DEFAULT_ETAS})")
    p.add_argument("--batch-size", type=int_list, default=int_list(DEFAULT_BATCH_SIZES),
                   help=f"batch sizes, comma-separated (default {DEFAULT_BATCH_SIZES}); the grid is eta x S")
    p.add_argument("--spectrum", default=DEFAULT_SPECTRUM, help=f"Hessian spectrum: {SPECTRUM_HELP}")
    p.add_argument("--rotate", action="store_true", help="put H (and C) in a random orthonormal basis")
    p.add_argument("--noise", choices=("gaussian", "minibatch"), default="gaussian",
                   help="gaussian: xi ~ N(0, C/S) with C = H; minibatch: real minibatches of least squares")
    p.add_argument("--dataset-size", type=int, default=None,
                   help="N: without-replacement factor for gaussian noise; dataset size for minibatch "
                        "(default 1000 there)")
    p.add_argument("--momentum", type=float, default=0.0, help="momentum mu in [0, 1) (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay gamma >= 0 (default 0)")
    p.add_argument("--chains", type=int, default=256, help="independent chains per run (default 256)")
    p.add_argument("--steps", type=int, default=8000, help="steps per run (default 8000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--confidence", type=float, default=0.99,
                   help="family-wise confidence of the verdicts, Bonferroni over rows (default 0.99)")
    p.add_argument("--json", default=None, metavar="PATH", help="write one JSON object per row to PATH")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a figure of measured vs predicted loss")
    p.add_argument("--out", default=None, metavar="DIR", help="write the figure as DIR/ou_check.png")
    return p


def build_problem(args, rng: np.random.Generator) -> Quadratic:
    """The problem the flags describe (raises ``ValueError`` on bad input)."""
    spectrum = parse_spectrum(args.spectrum, rng=rng)
    if args.noise == "minibatch":
        n = 1000 if args.dataset_size is None else args.dataset_size
        if n < spectrum.size:
            raise ValueError(f"--dataset-size must be >= the dimension {spectrum.size} for minibatch noise, got {n}")
        return LeastSquares.sample(n, spectrum, noise_std=1.0, rotate=args.rotate, rng=rng)
    return Quadratic.from_spectrum(spectrum, rotate=args.rotate, rng=rng)


def run_check(args, *, out=None) -> tuple[list[dict], bool]:
    """Simulate the grid, print the table, and return the rows and whether all of them pass."""
    out = sys.stdout if out is None else out
    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"--confidence must lie in (0, 1), got {args.confidence}")
    if args.chains < 2:
        raise ValueError(f"--chains must be >= 2 (the standard error comes from independent chains), got {args.chains}")
    rng = np.random.default_rng(args.seed)
    problem = build_problem(args, rng)
    minibatch = args.noise == "minibatch"
    n_data = problem.dataset_size if minibatch else args.dataset_size
    pairs = [(float(e), int(s)) for e in args.eta for s in args.batch_size]
    common = dict(momentum=args.momentum, weight_decay=args.weight_decay)
    # Validate every configuration before spending time on any.
    for eta, s in pairs:
        expected_loss(problem, eta, s, dataset_size=n_data, **common)
    rows = []
    z_crit = bonferroni_z(args.confidence, 2 * len(pairs))
    t0 = time.perf_counter()
    for eta, s in pairs:
        for process in ("sde", "sgd"):
            if process == "sde":
                res = simulate(problem, eta, s, steps=args.steps, chains=args.chains, method="exact",
                               dataset_size=n_data, rng=rng, **common)
                exact = expected_loss(problem, eta, s, process="sde", dataset_size=n_data, **common)
            elif minibatch:
                res = simulate(problem, eta, s, steps=args.steps, chains=args.chains, noise="minibatch",
                               rng=rng, **common)
                exact = expected_loss(problem, eta, s, noise="minibatch", **common)
            else:
                res = simulate(problem, eta, s, steps=args.steps, chains=args.chains, dataset_size=n_data,
                               rng=rng, **common)
                exact = expected_loss(problem, eta, s, dataset_size=n_data, **common)
            eq7 = eq7_loss(problem, eta, s)
            z = res.z_score(exact)
            rows.append(dict(
                eta=eta, batch_size=s, ratio=eta / s, trace_h=problem.trace, process=process, method=res.method,
                measured_loss=res.mean_loss, stderr=res.stderr, theory_eq7=eq7, theory_exact=exact,
                discrete_correction=(exact - eq7) / eq7, z=z, z_eq7=res.z_score(eq7), z_critical=z_crit,
                ok=bool(abs(z) <= z_crit), confidence=args.confidence, chains=res.chains, steps=res.steps,
                burn_in=res.burn_in, relaxation_steps=res.relaxation_steps, seconds=res.seconds,
                noise=args.noise, momentum=args.momentum, weight_decay=args.weight_decay, dataset_size=n_data,
            ))
    elapsed = time.perf_counter() - t0
    _print_table(rows, problem, args, z_crit, elapsed, out)
    return rows, all(r["ok"] for r in rows)


def _print_table(rows, problem, args, z_crit, elapsed, out) -> None:
    w = out.write
    w(f"ou_check: {problem!r}\n")
    w(f"noise={args.noise} momentum={args.momentum} weight_decay={args.weight_decay} "
      f"chains={args.chains} steps={args.steps} seed={args.seed}\n")
    w(f"verdict: |z| <= {z_crit:.2f} (confidence {args.confidence} over {len(rows)} rows, Bonferroni)\n\n")
    head = (f"{'eta':>7} {'S':>5} {'eta/S':>9} {'process':>7} {'measured':>12} {'+-stderr':>10} "
            f"{'Eq.7':>12} {'exact':>12} {'corr%':>7} {'z':>7} {'z(Eq.7)':>8}  verdict\n")
    w(head)
    w("-" * (len(head) - 1) + "\n")
    for r in rows:
        w(f"{r['eta']:>7.4g} {r['batch_size']:>5d} {r['ratio']:>9.4g} {r['process']:>7} "
          f"{r['measured_loss']:>12.6g} {r['stderr']:>10.2g} {r['theory_eq7']:>12.6g} {r['theory_exact']:>12.6g} "
          f"{100 * r['discrete_correction']:>+7.2f} {r['z']:>+7.2f} {r['z_eq7']:>+8.1f}  "
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


def plot_rows(rows, path) -> None:
    """Measured stationary loss against η/S, with Eq. (7) and the exact values."""
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
    save_figure_atomic(fig, path, dpi=130)


def run(args, out=None) -> CheckResult:
    """The check as a ``CheckResult`` (for ``python -m verification``): one claim per process."""
    t0 = time.perf_counter()
    rows, _ = run_check(args, out=out)
    claims = []
    for process, statement in (("sde", "the SDE (exact OU sampler) reaches its exact stationary loss; with C = H "
                                       "this is Eq. (7), eta Tr(H)/(4S)"),
                               ("sgd", "SGD itself reaches the exact discrete-time stationary loss (Eq. (7) plus "
                                       "the discrete correction)")):
        rs = [r for r in rows if r["process"] == process]
        worst = max(abs(r["z"]) for r in rs)
        corr = max(abs(r["discrete_correction"]) for r in rs)
        claims.append(Claim(
            f"stationary-loss-{process}", statement, holds=all(r["ok"] for r in rs),
            summary=f"{sum(r['ok'] for r in rs)}/{len(rs)} rows agree, max |z| = {worst:.2f} <= "
                    f"{rs[0]['z_critical']:.2f}; largest discrete correction {100 * corr:.1f} %",
            numbers=dict(max_abs_z=worst, rows=len(rs))))
    result = CheckResult("ou_check", "stationary loss of SGD and its SDE against the exact theory (Eq. 7)", claims,
                         rows, seconds=time.perf_counter() - t0,
                         settings={k: v for k, v in vars(args).items() if k not in ("json", "plot", "out")})
    path = figure_path(args, "ou_check")
    if path is not None:
        plot_rows(rows, path)
        result.figures.append(str(path))
    return result


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    rows = result.rows
    if args.json:
        write_json_atomic(args.json, rows)
    if args.plot:
        plot_rows(rows, args.plot)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
