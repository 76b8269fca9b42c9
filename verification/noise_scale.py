r"""``python -m verification.noise_scale``: the gradient noise scale and its two-batch estimators, checked where exact.

McCandlish et al. (2018): with E‖G_B‖² = ‖G‖² + f(B)·Tr(Σ), the squared norms of gradients at two batch sizes give
unbiased estimates of ‖G‖² and Tr(Σ), and B_simple = Tr(Σ)/‖G‖². f(B) = 1/B for sampling with replacement (or
unlimited data) and (N−B)/(B(N−1)) without replacement from N. The check measures them at a point away from the
minimum, where the exact values are known, on (a) a quadratic with Gaussian gradient noise, (b) least squares with
batches drawn with replacement, (c) least squares without replacement, estimated with the finite-population f(B).
Each estimate must agree with the exact value (z-test, Bonferroni over all tests). Two must-fail cases show the
check can see a bias: McCandlish's 1/B formulas applied to batches drawn without replacement with B_big near N,
and the naive estimate ‖G‖² ≈ ‖G_big‖². The estimators live in ``sde.diagnostics.noise_scale``.

Exit status: 0 when every claim is as expected, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, parse_spectrum
from common import validate
from sde import minibatch_indices
from quadratic import batch_noise_factor
from sde.diagnostics import noise_scale
from common.cli import Parser
from verification.cli import bonferroni_z
from common.files import save_figure_atomic
from common.claims import CheckResult, Claim
from verification.cli import add_common_options, figure_path, run_main

__all__ = ["main", "run", "build_parser"]


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.noise_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--spectrum", default="logspace:0.05:1:20", help=f"Hessian / input spectrum: {SPECTRUM_HELP}")
    p.add_argument("--dataset-size", type=int, default=200, help="N of the least-squares problem (default 200)")
    p.add_argument("--b-small", type=int, default=8, help="the small batch size (default 8)")
    p.add_argument("--b-big", type=int, default=150, help="the big batch size, <= N (default 150)")
    p.add_argument("--pairs", type=int, default=4000, help="measurements of each batch size (default 4000)")
    add_common_options(p)
    return p


def _squared_norms_lsq(problem: LeastSquares, theta, b, pairs, sampling, rng):
    idx = minibatch_indices(problem.dataset_size, b, draws=pairs, sampling=sampling, rng=rng)[0]
    xb = problem.inputs[idx]                                   # (pairs, b, d)
    resid = xb @ theta - problem.targets[idx]                  # (pairs, b)
    g = np.einsum("pb,pbd->pd", resid, xb) / b
    return np.einsum("pd,pd->p", g, g)


def _squared_norms_gauss(problem: Quadratic, theta, b, pairs, rng):
    w, u = np.linalg.eigh(problem.noise_covariance)
    f_t = ((u * np.sqrt(np.clip(w, 0.0, None))) @ u.T).T
    g = problem.grad(theta) + rng.standard_normal((pairs, problem.dim)) @ f_t / math.sqrt(b)
    return np.einsum("pd,pd->p", g, g)


def run(args, out=None) -> CheckResult:
    out = sys.stdout if out is None else out
    n = validate.positive_int("--dataset-size", args.dataset_size, minimum=2)
    b_s = validate.positive_int("--b-small", args.b_small)
    b_b = validate.positive_int("--b-big", args.b_big)
    pairs = validate.positive_int("--pairs", args.pairs, minimum=2)
    if not b_s < b_b:
        raise ValueError(f"--b-small must be < --b-big, got {b_s} and {b_b}")
    if b_b > n:
        raise ValueError(f"--b-big must be <= --dataset-size N = {n}, got {b_b}")
    rng = np.random.default_rng(args.seed)
    spectrum = parse_spectrum(args.spectrum, rng=rng)
    if n < spectrum.size:
        raise ValueError(f"--dataset-size must be >= the dimension {spectrum.size}, got {n}")
    d = spectrum.size
    quad = Quadratic.from_spectrum(spectrum, rotate=True, rng=rng)
    lsq = LeastSquares.sample(n, spectrum, noise_std=1.0, rotate=True, rng=rng)
    # A point away from the minimum, where ‖G‖² and Tr(Σ) are of comparable size (B_simple of order B_small..B_big).
    theta_q = quad.minimum + rng.standard_normal(d) * 0.3
    theta_l = lsq.minimum + rng.standard_normal(d) * 0.3
    g_l = lsq.grad(theta_l)
    exact = {
        "gaussian": (float(np.sum(quad.grad(theta_q) ** 2)), float(np.trace(quad.noise_covariance))),
        "lsq": (float(g_l @ g_l), float(np.trace(lsq.population_noise_covariance(theta_l)))),
    }
    cases = [  # claim, name, problem kind, sampling, dataset_size given to the estimator, expected unbiased
        ("unbiased-gaussian", "quadratic, Gaussian noise", "gaussian", None, None, True),
        ("unbiased-with-replacement", "least squares, with replacement", "lsq", "with", None, True),
        ("unbiased-without-replacement", "least squares, without replacement, f(B) = (N-B)/(B(N-1))", "lsq",
         "without", n, True),
        ("misapplied-1/B-formulas", "least squares, without replacement, 1/B formulas", "lsq", "without", None,
         False),
    ]
    z_crit = bonferroni_z(args.confidence, 3 * len(cases) + 1)
    rows = []
    draws = {}
    out.write(f"noise_scale: d={d}, N={n}, B_small={b_s}, B_big={b_b}, {pairs} measurements each\n")
    out.write(f"{'case':<58} {'|G|^2 est/exact':>16} {'z':>7} {'TrS est/exact':>14} {'z':>7} {'B_simple':>9} "
              f"{'exact':>8}\n")
    for claim_name, name, kind, sampling, n_est, unbiased in cases:
        key = (kind, sampling)
        if key not in draws:
            if kind == "gaussian":
                draws[key] = (_squared_norms_gauss(quad, theta_q, b_s, pairs, rng),
                              _squared_norms_gauss(quad, theta_q, b_b, pairs, rng))
            else:
                draws[key] = (_squared_norms_lsq(lsq, theta_l, b_s, pairs, sampling, rng),
                              _squared_norms_lsq(lsq, theta_l, b_b, pairs, sampling, rng))
        small, big = draws[key]
        est = noise_scale(small, big, b_s, b_b, dataset_size=n_est)
        g2, tr = exact[kind]
        bs_exact = tr / g2
        z_g = (est.grad_sq - g2) / est.grad_sq_stderr
        z_t = (est.trace_sigma - tr) / est.trace_sigma_stderr
        z_b = (est.b_simple - bs_exact) / est.b_simple_stderr
        ok = max(abs(z_g), abs(z_t), abs(z_b)) <= z_crit
        rows.append(dict(claim=claim_name, case=name, sampling=sampling or "gaussian", estimator_dataset_size=n_est,
                         expected_unbiased=unbiased, grad_sq=est.grad_sq, grad_sq_stderr=est.grad_sq_stderr,
                         grad_sq_exact=g2, z_grad_sq=z_g, trace_sigma=est.trace_sigma,
                         trace_sigma_stderr=est.trace_sigma_stderr, trace_sigma_exact=tr, z_trace_sigma=z_t,
                         b_simple=est.b_simple, b_simple_stderr=est.b_simple_stderr, b_simple_exact=bs_exact,
                         z_b_simple=z_b, agrees=ok))
        out.write(f"{name:<58} {est.grad_sq / g2:>16.4f} {z_g:>+7.2f} {est.trace_sigma / tr:>14.4f} {z_t:>+7.2f} "
                  f"{est.b_simple:>9.3g} {bs_exact:>8.3g}\n")
    # The naive estimate ‖G‖² ≈ ‖G_big‖² (finite big batch): biased by f(B_big)·Tr(Σ).
    small, big = draws[("lsq", "with")]
    g2, tr = exact["lsq"]
    naive, naive_se = float(big.mean()), float(big.std(ddof=1) / math.sqrt(pairs))
    z_naive = (naive - g2) / naive_se

    claims = []
    for r in rows:
        claims.append(Claim(
            r["claim"],
            f"two-batch estimates of |G|^2, Tr(Sigma) and B_simple: {r['case']}", holds=r["agrees"],
            expected=r["expected_unbiased"],
            summary=(f"|G|^2 {r['grad_sq']:.4g} vs {r['grad_sq_exact']:.4g} (z {r['z_grad_sq']:+.1f}), Tr(Sigma) "
                     f"{r['trace_sigma']:.4g} vs {r['trace_sigma_exact']:.4g} (z {r['z_trace_sigma']:+.1f}), "
                     f"B_simple {r['b_simple']:.3g} vs {r['b_simple_exact']:.3g} (z {r['z_b_simple']:+.1f}); "
                     f"|z| <= {z_crit:.2f}?"),
            numbers={k: r[k] for k in ("grad_sq", "grad_sq_exact", "trace_sigma", "trace_sigma_exact", "b_simple",
                                       "b_simple_exact")}))
    claims.append(Claim(
        "naive-big-batch", "the big-batch gradient norm alone estimates |G|^2", holds=abs(z_naive) <= z_crit,
        expected=False, summary=f"|G_big|^2 = {naive:.4g} ± {naive_se:.2g} vs |G|^2 = {g2:.4g} (z {z_naive:+.1f}); "
                                f"the bias is f(B_big) Tr(Sigma) = {batch_noise_factor(b_b) * tr:.3g}",
        numbers=dict(naive=naive, exact=g2, z=z_naive)))
    out.write(f"naive |G_big|^2 = {naive:.4g} against |G|^2 = {g2:.4g}: z = {z_naive:+.1f}\n")
    result = CheckResult("noise_scale", "gradient noise scale, two-batch estimators (McCandlish et al. 2018)",
                         claims, rows, settings=dict(spectrum=args.spectrum, dataset_size=n, b_small=b_s,
                                                     b_big=b_b, pairs=pairs, seed=args.seed,
                                                     confidence=args.confidence))
    path = figure_path(args, "noise_scale")
    if path is not None:
        _plot(lsq, theta_l, exact["lsq"], rng, path, min(pairs, 2000))
        result.figures.append(str(path))
    return result


def _plot(lsq, theta, exact, rng, path, pairs) -> None:
    """E‖G_B‖² against B for both samplings: the line the two-batch estimators rest on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = lsq.dataset_size
    g2, tr = exact
    sizes = np.unique(np.geomspace(1, n, 14).astype(int))
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    for sampling, color, n_f, label in (("with", "C0", None, "with replacement: |G|² + Tr(Σ)/B"),
                                        ("without", "C3", n, "without: |G|² + Tr(Σ)(N−B)/(B(N−1))")):
        m, e = [], []
        for b in sizes:
            sq = _squared_norms_lsq(lsq, theta, int(b), pairs, sampling, rng)
            m.append(sq.mean())
            e.append(sq.std(ddof=1) / math.sqrt(pairs))
        ax.errorbar(sizes, m, yerr=e, fmt="o", color=color, ms=4, capsize=2, label=f"measured, {sampling}")
        grid = np.geomspace(1, n, 200)
        f = 1.0 / grid if n_f is None else (n - grid) / (grid * (n - 1))
        ax.plot(grid, g2 + f * tr, "-", color=color, lw=1, label=label)
    ax.axhline(g2, color="k", ls=":", lw=1, label="|G|² (full batch)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel(r"$E\,\|G_B\|^2$")
    ax.set_title(f"Least squares, N = {n}: B_simple = Tr(Σ)/|G|² = {tr / g2:.3g}")
    ax.legend(fontsize=7)
    save_figure_atomic(fig, path, dpi=120)


def main(argv=None, out=None) -> int:
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
