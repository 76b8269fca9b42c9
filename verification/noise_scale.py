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

From Python, without the command line::

    from verification.noise_scale import NoiseScaleSettings, check
    result = check(NoiseScaleSettings(pairs=2000))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, batch_noise_factor, finite_data_factor, parse_spectrum
from sde import minibatch_indices
from sde.diagnostics import noise_scale
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

__all__ = ["NoiseScaleSettings", "EstimatorCase", "ExactNoise", "NoiseScaleResult", "build_parser",
           "settings_from_args", "estimator_cases", "check", "estimate", "plot", "run", "main"]

TITLE = "gradient noise scale, two-batch estimators (McCandlish et al. 2018)"
#: Most measurements per batch size in the figure (enough for error bars well inside the markers' spread).
FIGURE_PAIRS = 2000


@dataclass(frozen=True, kw_only=True)
class NoiseScaleSettings:
    """What ``noise_scale`` measures: the problems, the two batch sizes and the number of measurements.

    The defaults are those of the command line. The spectrum is parsed in ``check`` (a Marchenko–Pastur spectrum
    draws from the seed's stream), which also checks that N is at least the dimension.

    Attributes:
        spectrum: Hessian / input spectrum (``--spectrum``).
        dataset_size: N of the least-squares problem (``--dataset-size``), >= 2.
        b_small: the small batch size (``--b-small``), >= 1 and < ``b_big``.
        b_big: the big batch size (``--b-big``), <= N.
        pairs: measurements of each batch size (``--pairs``), >= 2.
        seed: seed of the one random stream that every draw comes from, in a fixed order.
        confidence: family-wise confidence of the verdicts, in (0, 1).

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--b-small must be < --b-big, got 64 and 8``.
    """

    spectrum: str = spectrum_setting("logspace:0.05:1:20", f"Hessian / input spectrum: {SPECTRUM_HELP}")
    dataset_size: int = setting(200, help="N of the least-squares problem", range=">= 2")
    b_small: int = setting(8, help="the small batch size", range=">= 1")
    b_big: int = setting(150, help="the big batch size, <= N", range=">= 2")
    pairs: int = setting(4000, help="measurements of each batch size", range=">= 2")
    seed: int = seed_setting()
    confidence: float = confidence_setting()

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        check_confidence(self.confidence)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "dataset_size", validate.positive_int("--dataset-size", self.dataset_size, minimum=2))
        set_(self, "b_small", validate.positive_int("--b-small", self.b_small))
        set_(self, "b_big", validate.positive_int("--b-big", self.b_big))
        set_(self, "pairs", validate.positive_int("--pairs", self.pairs, minimum=2))
        if not self.b_small < self.b_big:
            raise ValueError(f"--b-small must be < --b-big, got {self.b_small} and {self.b_big}")
        if self.b_big > self.dataset_size:
            raise ValueError(f"--b-big must be <= --dataset-size N = {self.dataset_size}, got {self.b_big}")
        set_(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))


def build_parser() -> Parser:
    """The command line of ``python -m verification.noise_scale``: an option per field of ``NoiseScaleSettings``
    (its defaults, ranges and help), and the common options."""
    return check_parser("python -m verification.noise_scale", __doc__, NoiseScaleSettings)


def settings_from_args(args) -> NoiseScaleSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(NoiseScaleSettings, args)


@dataclass(frozen=True)
class EstimatorCase:
    """One test of the two-batch estimators: where the gradients come from and which f(B) the estimator assumes.

    Attributes:
        claim: the claim's name.
        description: the case in words.
        problem: ``"gaussian"`` (quadratic, Gaussian gradient noise) or ``"lsq"`` (least squares, real batches).
        sampling: ``"with"`` or ``"without"`` replacement for least squares; ``None`` for Gaussian noise.
        estimator_dataset_size: the N given to the estimator (``None``: the 1/B formulas).
        unbiased: whether the estimates are expected to agree with the exact values.
    """

    claim: str
    description: str
    problem: str
    sampling: str | None
    estimator_dataset_size: int | None
    unbiased: bool


def estimator_cases(dataset_size: int) -> list[EstimatorCase]:
    """The four cases: Gaussian noise, least squares with and without replacement (with the finite-population
    f(B)), and the must-fail one: the 1/B formulas applied to batches drawn without replacement."""
    return [
        EstimatorCase("unbiased-gaussian", "quadratic, Gaussian noise", "gaussian", None, None, True),
        EstimatorCase("unbiased-with-replacement", "least squares, with replacement", "lsq", "with", None, True),
        EstimatorCase("unbiased-without-replacement", "least squares, without replacement, f(B) = (N-B)/(B(N-1))",
                      "lsq", "without", dataset_size, True),
        EstimatorCase("misapplied-1/B-formulas", "least squares, without replacement, 1/B formulas", "lsq",
                      "without", None, False),
    ]


@dataclass(frozen=True)
class ExactNoise:
    """The exact ‖G‖² and Tr(Σ) at the measured point.

    Attributes:
        grad_sq: ‖G‖², the squared norm of the full-batch gradient.
        trace_sigma: Tr(Σ), the trace of the per-example gradient covariance.
    """

    grad_sq: float
    trace_sigma: float

    @property
    def b_simple(self) -> float:
        """B_simple = Tr(Σ)/‖G‖²."""
        return self.trace_sigma / self.grad_sq


@dataclass
class NoiseScaleResult(CheckResult):
    """``check``'s result, with what ``plot`` needs (not part of the JSON).

    Attributes:
        problem: the least-squares problem.
        theta: the point the gradients are measured at.
        exact: the exact values there.
        rng_state: the state of the check's stream after its last draw; the figure's measurements continue it.
        config: the settings the check ran with.
    """

    problem: LeastSquares | None = field(default=None, repr=False)
    theta: np.ndarray | None = field(default=None, repr=False)
    exact: ExactNoise | None = None
    rng_state: dict | None = field(default=None, repr=False)
    config: NoiseScaleSettings | None = None


def _squared_norms_lsq(problem: LeastSquares, theta, b, pairs, sampling, rng):
    """‖G_B‖² of ``pairs`` minibatch gradients of size ``b`` at ``theta``."""
    idx = minibatch_indices(problem.dataset_size, b, draws=pairs, sampling=sampling, rng=rng)[0]
    xb = problem.inputs[idx]                                   # (pairs, b, d)
    resid = xb @ theta - problem.targets[idx]                  # (pairs, b)
    g = np.einsum("pb,pbd->pd", resid, xb) / b
    return np.einsum("pd,pd->p", g, g)


def _squared_norms_gauss(problem: Quadratic, theta, b, pairs, rng):
    """‖G_B‖² of ``pairs`` gradients with Gaussian noise N(0, C/b) at ``theta``."""
    w, u = np.linalg.eigh(problem.noise_covariance)
    f_t = ((u * np.sqrt(np.clip(w, 0.0, None))) @ u.T).T
    g = problem.grad(theta) + rng.standard_normal((pairs, problem.dim)) @ f_t / math.sqrt(b)
    return np.einsum("pd,pd->p", g, g)


def check(settings: NoiseScaleSettings, *, out=None) -> NoiseScaleResult:
    """Measure gradient norms at two batch sizes and judge the two-batch estimators against exact values.

    Claims (z-tests of |G|², Tr(Σ) and B_simple, Bonferroni over all tests):

    * ``unbiased-gaussian``, ``unbiased-with-replacement``, ``unbiased-without-replacement`` (hold): the
      estimates agree with the exact values on a quadratic with Gaussian noise, and on least squares with batches
      drawn with replacement (1/B) and without (the finite-population f(B));
    * ``misapplied-1/B-formulas`` (expected to fail): the 1/B formulas on batches drawn without replacement;
    * ``naive-big-batch`` (expected to fail): the big-batch norm ‖G_big‖² alone estimates ‖G‖².

    Args:
        settings: what to measure.
        out: text stream for the per-case table (default: none; the command line passes stdout).

    Returns:
        A ``NoiseScaleResult``: the claims, one row per estimator case and what ``plot`` needs.

    Raises:
        ValueError: when N is below the dimension; raised before any measurement.
    """
    out = table_stream(out)
    n, b_s, b_b, pairs = settings.dataset_size, settings.b_small, settings.b_big, settings.pairs
    rng = np.random.default_rng(settings.seed)
    try:
        spectrum = parse_spectrum(settings.spectrum, rng=rng)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None
    if n < spectrum.size:
        raise ValueError(f"--dataset-size must be >= the dimension {spectrum.size}, got {n}")
    d = spectrum.size
    quad = Quadratic.from_spectrum(spectrum, rotate=True, rng=rng)
    lsq = LeastSquares.sample(n, spectrum, noise_std=1.0, rotate=True, rng=rng)
    # A point away from the minimum, where ‖G‖² and Tr(Σ) are of comparable size (B_simple of order B_small..B_big).
    theta_q = quad.minimum + rng.standard_normal(d) * 0.3
    theta_l = lsq.minimum + rng.standard_normal(d) * 0.3
    g_l = lsq.grad(theta_l)
    exact = {"gaussian": ExactNoise(float(np.sum(quad.grad(theta_q) ** 2)), float(np.trace(quad.noise_covariance))),
             "lsq": ExactNoise(float(g_l @ g_l), float(np.trace(lsq.population_noise_covariance(theta_l))))}
    cases = estimator_cases(n)
    z_crit = bonferroni_z(settings.confidence, 3 * len(cases) + 1)
    out.write(f"noise_scale: d={d}, N={n}, B_small={b_s}, B_big={b_b}, {pairs} measurements each\n")
    out.write(f"{'case':<58} {'|G|^2 est/exact':>16} {'z':>7} {'TrS est/exact':>14} {'z':>7} {'B_simple':>9} "
              f"{'exact':>8}\n")
    rows, draws = [], {}
    for case in budget.progress(cases, desc="noise_scale"):
        key = (case.problem, case.sampling)
        if key not in draws:  # the with- and without-replacement cases share their draws
            if case.problem == "gaussian":
                draws[key] = (_squared_norms_gauss(quad, theta_q, b_s, pairs, rng),
                              _squared_norms_gauss(quad, theta_q, b_b, pairs, rng))
            else:
                draws[key] = (_squared_norms_lsq(lsq, theta_l, b_s, pairs, case.sampling, rng),
                              _squared_norms_lsq(lsq, theta_l, b_b, pairs, case.sampling, rng))
        rows.append(_case_row(case, *draws[key], exact[case.problem], settings, z_crit, out))
    claims = [_case_claim(r, z_crit) for r in rows]
    claims.append(_naive_claim(draws[("lsq", "with")][1], exact["lsq"], b_b, z_crit, out))
    return NoiseScaleResult("noise_scale", TITLE, claims, rows,
                            settings=options_dict(settings),
                            problem=lsq, theta=theta_l, exact=exact["lsq"], rng_state=rng.bit_generator.state,
                            config=settings)


def _case_row(case: EstimatorCase, small, big, exact: ExactNoise, settings: NoiseScaleSettings, z_crit: float,
              out) -> dict:
    """Estimate from the two batch sizes' squared norms, compare with the exact values, print and return the row."""
    est = noise_scale(small, big, settings.b_small, settings.b_big, dataset_size=case.estimator_dataset_size)
    g2, tr, bs_exact = exact.grad_sq, exact.trace_sigma, exact.b_simple
    # Each z against the scale of its quantity: a standard error at round-off level gives no z ("—"), see z_test.
    z_g, ok_g = z_test(est.grad_sq, est.grad_sq_stderr, g2, max(abs(g2), abs(est.grad_sq)), z_crit)
    z_t, ok_t = z_test(est.trace_sigma, est.trace_sigma_stderr, tr, max(abs(tr), abs(est.trace_sigma)), z_crit)
    z_b, ok_b = z_test(est.b_simple, est.b_simple_stderr, bs_exact, max(abs(bs_exact), abs(est.b_simple)), z_crit)
    ok = bool(ok_g and ok_t and ok_b)
    out.write(f"{case.description:<58} {est.grad_sq / g2:>16.4f} {format_z(z_g)} {est.trace_sigma / tr:>14.4f} "
              f"{format_z(z_t)} {est.b_simple:>9.3g} {bs_exact:>8.3g}\n")
    return dict(claim=case.claim, case=case.description, sampling=case.sampling or "gaussian",
                estimator_dataset_size=case.estimator_dataset_size, expected_unbiased=case.unbiased,
                grad_sq=est.grad_sq, grad_sq_stderr=est.grad_sq_stderr, grad_sq_exact=g2, z_grad_sq=z_g,
                trace_sigma=est.trace_sigma, trace_sigma_stderr=est.trace_sigma_stderr, trace_sigma_exact=tr,
                z_trace_sigma=z_t, b_simple=est.b_simple, b_simple_stderr=est.b_simple_stderr,
                b_simple_exact=bs_exact, z_b_simple=z_b, agrees=ok)


def _case_claim(r: dict, z_crit: float) -> Claim:
    """The claim of one estimator case, from its row."""
    return Claim(
        r["claim"], f"two-batch estimates of |G|^2, Tr(Sigma) and B_simple: {r['case']}", holds=r["agrees"],
        expected=r["expected_unbiased"],
        summary=(f"|G|^2 {r['grad_sq']:.4g} vs {r['grad_sq_exact']:.4g} (z {format_z(r['z_grad_sq'], 0, 1)}), "
                 f"Tr(Sigma) {r['trace_sigma']:.4g} vs {r['trace_sigma_exact']:.4g} "
                 f"(z {format_z(r['z_trace_sigma'], 0, 1)}), B_simple {r['b_simple']:.3g} vs "
                 f"{r['b_simple_exact']:.3g} (z {format_z(r['z_b_simple'], 0, 1)}); "
                 f"|z| <= {z_crit:.2f}?"),
        numbers={k: r[k] for k in ("grad_sq", "grad_sq_exact", "trace_sigma", "trace_sigma_exact", "b_simple",
                                   "b_simple_exact")})


def _naive_claim(big, exact: ExactNoise, b_big: int, z_crit: float, out) -> Claim:
    """The naive estimate ‖G‖² ≈ ‖G_big‖² (finite big batch): biased by f(B_big)·Tr(Σ), so it must fail."""
    g2, tr = exact.grad_sq, exact.trace_sigma
    naive, naive_se = float(big.mean()), float(big.std(ddof=1) / math.sqrt(big.size))
    z_naive, agrees = z_test(naive, naive_se, g2, max(abs(g2), abs(naive)), z_crit)
    out.write(f"naive |G_big|^2 = {naive:.4g} against |G|^2 = {g2:.4g}: z = {format_z(z_naive, 0, 1)}\n")
    return Claim(
        "naive-big-batch", "the big-batch gradient norm alone estimates |G|^2", holds=bool(agrees),
        expected=False, summary=f"|G_big|^2 = {naive:.4g} ± {naive_se:.2g} vs |G|^2 = {g2:.4g} "
                                f"(z {format_z(z_naive, 0, 1)}); "
                                f"the bias is f(B_big) Tr(Sigma) = {batch_noise_factor(b_big) * tr:.3g}",
        numbers=dict(naive=naive, exact=g2, z=z_naive))


def plot(result: NoiseScaleResult, path) -> None:
    """Draw E‖G_B‖² against B for both samplings into ``path`` (PNG): the line the two-batch estimators rest on.

    The measurements continue the check's stream from where it left it, so the figure is the same on every call.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lsq, theta, exact = result.problem, result.theta, result.exact
    rng = generator_from_state(result.rng_state)
    pairs = min(result.config.pairs, FIGURE_PAIRS)
    n = lsq.dataset_size
    g2, tr = exact.grad_sq, exact.trace_sigma
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
        f = 1.0 / grid if n_f is None else finite_data_factor(grid, n) / grid
        ax.plot(grid, g2 + f * tr, "-", color=color, lw=1, label=label)
    ax.axhline(g2, color="k", ls=":", lw=1, label="|G|² (full batch)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel(r"$E\,\|G_B\|^2$")
    ax.set_title(f"Least squares, N = {n}: B_simple = Tr(Σ)/|G|² = {tr / g2:.3g}")
    ax.legend(fontsize=7)
    save_figure_atomic(fig, path, dpi=120, kind="verification.noise_scale")


def run(args, out=None) -> CheckResult:
    """The check behind the command line: ``check`` plus the figure ``--out DIR/noise_scale.png``.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the table (default stdout).

    Returns:
        ``check``'s result, with the figure's path when ``--out`` was given.
    """
    settings = settings_from_args(args)
    plan(args, estimate(settings, figure=getattr(args, "out", None) is not None), "python -m verification.noise_scale")
    return check_with_figure(check(settings, out=sys.stdout if out is None else out), args, "noise_scale", plot)


def estimate(settings: NoiseScaleSettings, *, figure: bool = True) -> Cost:
    """The memory and time of ``check(settings)`` and, with ``figure``, of its figure, from its sizes, before any
    work.

    Each measurement gathers its batch's examples (B x d doubles, twice at the peak); per-unit cost measured on
    the 2-core development VM and rounded up: 5 ns per example and dimension gathered, 2 ns per dimension squared
    of a Gaussian gradient, plus 3 s of set-up.

    Raises:
        ValueError: a bad ``--spectrum`` (named).
    """
    info = spectrum_of(settings.spectrum)
    d, n, p = info.dim, settings.dataset_size, settings.pairs
    b_s, b_b = settings.b_small, settings.b_big
    cost = Cost()
    spec = f"--spectrum={settings.spectrum} (dimension {d})"
    cost.memory(spec, info.build_bytes + 12 * 8.0 * d * d + 8.0 * 4 * n * d)
    cost.time(spec, 3.0 + NS * (info.build_flops + 60.0 * d**3 + 10.0 * n * d * d))
    what = f"--pairs={p} with --b-big={b_b}"
    cost.memory(what, 8.0 * p * (3 * b_b * d + 2 * b_b + 4 * d))
    cost.time(what, NS * p * (2 * 5.0 * (b_s + b_b) * d + 2 * (2.0 * d * d + 10.0 * d)))
    if figure:
        m = min(p, FIGURE_PAIRS)  # the figure measures up to B = N, with and without replacement
        cost.memory(f"--dataset-size={n} (the figure of --out)", 8.0 * m * (3 * n * d + 2 * n))
        cost.time(f"--dataset-size={n} (the figure of --out)", NS * m * 2 * 5.0 * d * 3.0 * n)
    return cost


def main(argv=None, out=None) -> int:
    """``python -m verification.noise_scale``; returns the exit status (0 pass, 1 a claim fails, 2 bad input)."""
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
