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
"""

from __future__ import annotations

import math
import sys

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, parse_spectrum
from common import validate
from sde import SimulationDiverged, expected_loss, simulate
from common.cli import Parser, int_list
from verification.cli import bonferroni_z
from common.files import save_figure_atomic
from common.claims import CheckResult, Claim
from verification.cli import add_common_options, figure_path, run_main

__all__ = ["main", "run", "build_parser", "factors", "break_point"]


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--spectrum", default="logspace:0.05:1:20", help=f"input covariance spectrum: {SPECTRUM_HELP}")
    p.add_argument("--dataset-size", type=int_list, default=[50, 200, 1000],
                   help="dataset sizes N, comma-separated (default 50,200,1000)")
    p.add_argument("--eta", type=float, default=0.02, help="base learning rate eta0 (default 0.02)")
    p.add_argument("--batch-size", type=int, default=2, help="base batch size S0 (default 2)")
    p.add_argument("--tolerance", type=float, default=0.2,
                   help="relative deviation from E_inv that counts as broken (default 0.2)")
    p.add_argument("--chains", type=int, default=64, help="chains per point (default 64)")
    add_common_options(p)
    return p


def factors(problem: LeastSquares, eta0: float, s0: int, beta: float) -> dict:
    """The exact factors at β: ``eta`` (discreteness alone), ``data`` (finite data alone), ``total`` (real
    minibatches, both and multiplicative noise), each relative to E_inv; ``inf`` where no stationary law exists."""
    eta, s = beta * eta0, int(round(beta * s0))
    n = problem.dataset_size
    e_inv = eta / s * problem.noise_trace / 4.0
    out = {"beta": beta, "eta": eta, "batch_size": s, "e_inv": e_inv}
    out["eta_factor"] = (expected_loss(problem, eta, s) / e_inv if eta * problem.lambda_max < 2.0 else math.inf)
    out["data_factor"] = (n - s) / (n - 1)
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


def _steps_for(problem, eta, s0_beta) -> int:
    # 60 relaxation times of the slowest mode (variance), at least 2000 steps.
    rate = -2.0 * math.log(max(1e-12, abs(1.0 - eta * float(problem.eigenvalues.min()))))
    return int(max(2000, math.ceil(60.0 / rate)))


def run(args, out=None) -> CheckResult:
    out = sys.stdout if out is None else out
    eta0 = validate.positive_float("--eta", args.eta)
    s0 = validate.positive_int("--batch-size", args.batch_size)
    tol = validate.float_in("--tolerance", args.tolerance, 0.0, 1.0)
    if tol == 0.0:
        raise ValueError("--tolerance must be > 0")
    chains = validate.positive_int("--chains", args.chains, minimum=2)
    sizes = sorted({validate.positive_int("--dataset-size", n) for n in args.dataset_size})
    rng = np.random.default_rng(args.seed)
    spectrum = parse_spectrum(args.spectrum, rng=rng)
    d = spectrum.size
    if sizes[0] < max(d, 2 * s0):
        raise ValueError(f"--dataset-size must be >= max(dimension {d}, 2 x --batch-size {2 * s0}), got {sizes[0]}")
    problems = {n: LeastSquares.sample(n, spectrum, noise_std=1.0, rng=rng) for n in sizes}
    ratio = eta0 / s0
    rows, curves = [], {}
    out.write(f"breakdown: d={d}, base eta0={eta0:g}, S0={s0} (ratio {ratio:g}), N in {sizes}, tolerance {tol:g}\n")
    out.write(f"{'N':>6} {'beta':>6} {'eta':>7} {'S':>5} {'measured/E_inv':>15} {'+-':>7} {'exact':>8} "
              f"{'F_eta':>7} {'F_N':>7} {'z':>7}\n")
    for n, prob in problems.items():
        beta_max = (n - 1) / s0
        fine = np.geomspace(1.0, beta_max, 40)
        fine_f = [factors(prob, eta0, s0, b) for b in fine]
        curves[n] = dict(
            beta=fine, total=np.array([f["total"] for f in fine_f]), eta=np.array([f["eta_factor"] for f in fine_f]),
            data=np.array([f["data_factor"] for f in fine_f]))
        curves[n]["break_total"] = break_point(fine, curves[n]["total"], tol)
        curves[n]["break_eta"] = break_point(fine, curves[n]["eta"], tol)
        curves[n]["break_data"] = break_point(fine, curves[n]["data"], tol)
        betas = [b for b in 2.0 ** np.arange(0, 12) if b * s0 <= n - 1]
        for b in betas:
            f = factors(prob, eta0, s0, b)
            row = dict(dataset_size=n, **f, measured=math.nan, stderr=math.nan, z=math.nan, status="ok")
            if not math.isfinite(f["total"]):
                row["status"] = "no stationary law"
            else:
                try:
                    res = simulate(prob, f["eta"], f["batch_size"], steps=_steps_for(prob, f["eta"], b),
                                   chains=chains, noise="minibatch", sampling="without", rng=rng)
                    row.update(measured=res.mean_loss / f["e_inv"], stderr=res.stderr / f["e_inv"],
                               z=res.z_score(f["total"] * f["e_inv"]))
                except (SimulationDiverged, ValueError) as exc:
                    row["status"] = f"diverged: {exc}"[:120]
            rows.append(row)
            out.write(f"{n:>6} {b:>6g} {f['eta']:>7.4g} {f['batch_size']:>5d} {row['measured']:>15.4f} "
                      f"{row['stderr']:>7.4f} {f['total']:>8.4f} {f['eta_factor']:>7.4f} {f['data_factor']:>7.4f} "
                      f"{row['z']:>+7.2f}  {row['status'] if row['status'] != 'ok' else ''}\n")
    measured = [r for r in rows if r["status"] == "ok"]
    z_crit = bonferroni_z(args.confidence, max(1, len(measured)))
    worst = max((abs(r["z"]) for r in measured), default=0.0)
    claims = [Claim(
        "measured-matches-exact", "simulated minibatch SGD reaches the exact stationary loss at every (N, beta)",
        holds=worst <= z_crit and len(measured) == len(rows) - sum(r["status"] == "no stationary law" for r in rows),
        summary=f"max |z| = {worst:.2f} over {len(measured)} points (<= {z_crit:.2f}?)",
        numbers=dict(max_abs_z=worst, z_critical=z_crit, points=len(measured)))]
    inside = [r for r in measured if abs(r["total"] - 1.0) < 0.5 * tol]
    outside = [r for r in rows if abs(r["total"] - 1.0) > 1.5 * tol]
    held = all(abs(r["measured"] - 1.0) + z_crit * r["stderr"] < tol for r in inside)
    broke = all((not math.isfinite(r["total"])) or r["status"] != "ok"
                or abs(r["measured"] - 1.0) - z_crit * r["stderr"] > tol for r in outside)
    claims.append(Claim(
        "invariant-before-break", "where the exact loss is within tol/2 of E_inv, the measured loss is within tol "
        "(eta/S invariance holds)", holds=held and bool(inside),
        summary=f"{len(inside)} points; largest |measured/E_inv - 1| = "
                f"{max((abs(r['measured'] - 1) for r in inside), default=math.nan):.3f}",
        numbers=dict(points=len(inside))))
    claims.append(Claim(
        "breaks-where-predicted", "where the exact loss is beyond 1.5 tol of E_inv, the measured loss has left the "
        "band (or there is no stationary law)", holds=broke and bool(outside),
        summary=f"{len(outside)} points; predicted break beta*: " + ", ".join(
            f"N={n}: {curves[n]['break_total']:.3g} (eta: {curves[n]['break_eta']:.3g}, data: "
            f"{curves[n]['break_data']:.3g})" for n in sizes),
        numbers={f"break_N{n}": curves[n]["break_total"] for n in sizes}))
    small, large = sizes[0], sizes[-1]
    last = {n: [r for r in measured if r["dataset_size"] == n] for n in sizes}
    mech_ok = (curves[small]["break_data"] < curves[small]["break_eta"]
               and curves[large]["break_eta"] < curves[large]["break_data"]
               and bool(last[small]) and last[small][-1]["measured"] < 1.0 - tol
               and any(r["measured"] > 1.0 + tol for r in last[large]))
    claims.append(Claim(
        "two-mechanisms", f"N={small} breaks first by S -> N (loss falls); N={large} by eta lambda_max -> 2 "
        "(loss rises)", holds=mech_ok,
        summary=f"N={small}: data break {curves[small]['break_data']:.3g} < eta break "
                f"{curves[small]['break_eta']:.3g}, last measured {last[small][-1]['measured']:.3f}; N={large}: eta "
                f"break {curves[large]['break_eta']:.3g} < data break {curves[large]['break_data']:.3g}, max measured "
                f"{max((r['measured'] for r in last[large]), default=math.nan):.3f}" if last[small] else "no data",
        numbers=dict(small=small, large=large)))
    result = CheckResult("breakdown", "where eta/S invariance breaks: large eta and S near N (Fig. 5)", claims, rows,
                         settings=dict(spectrum=args.spectrum, dataset_sizes=sizes, eta0=eta0, s0=s0, tolerance=tol,
                                       chains=chains, seed=args.seed, confidence=args.confidence))
    path = figure_path(args, "breakdown")
    if path is not None:
        _plot(rows, curves, sizes, tol, ratio, path)
        result.figures.append(str(path))
    return result


def _plot(rows, curves, sizes, tol, ratio, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5), constrained_layout=True)
    ax.axhspan(1 - tol, 1 + tol, color="0.9", label=f"invariant band ±{tol:g}")
    ax.axhline(1.0, color="k", lw=0.8)
    for i, n in enumerate(sizes):
        c = curves[n]
        color = f"C{i}"
        ok_total = np.isfinite(c["total"])
        ax.plot(c["beta"][ok_total], c["total"][ok_total], "-", color=color, lw=1.4,
                label=f"N={n}: exact (real minibatches)")
        ax.plot(c["beta"], c["eta"], "--", color=color, lw=0.8, alpha=0.7)
        ax.plot(c["beta"], c["data"], ":", color=color, lw=1.0, alpha=0.9)
        if math.isfinite(c["break_total"]):
            ax.axvline(c["break_total"], color=color, lw=1.0, alpha=0.6)
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
    ax.set_xlabel(r"$\beta$: $(\eta, S) = (\beta\eta_0, \beta S_0)$, $\eta/S$ = " + f"{ratio:g}")
    ax.set_ylabel(r"stationary loss / $E_{inv}$ = $(\eta/S)\,\mathrm{Tr}(\Sigma^*)/4$")
    ax.set_title("Where the eta/S invariance breaks (Fig. 5 analogue)")
    ax.legend(fontsize=7, loc="lower left")
    save_figure_atomic(fig, path, dpi=120)


def main(argv=None, out=None) -> int:
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
