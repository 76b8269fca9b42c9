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
"""

from __future__ import annotations

import math
import sys

import numpy as np

from quadratic import SPECTRUM_HELP, LeastSquares, Quadratic, parse_spectrum, psd_sqrt
from common import validate
from sde import expected_loss, stability_bound
from sde.diagnostics import FDRMonitor
from common.cli import Parser
from verification.cli import bonferroni_z
from common.files import save_figure_atomic
from common.claims import CheckResult, Claim
from verification.cli import add_common_options, figure_path, run_main

__all__ = ["main", "run", "build_parser", "run_sgd"]

DEFAULT_SPECTRUM = "logspace:0.05:1:20"


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.fdr", description=__doc__.split("\n\n")[0])
    p.add_argument("--spectrum", default=DEFAULT_SPECTRUM, help=f"Hessian spectrum: {SPECTRUM_HELP}")
    p.add_argument("--eta", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=10, help="batch size S (default 10)")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum of the momentum settings (default 0.9)")
    p.add_argument("--dampening", type=float, default=0.5, help="dampening of that setting (default 0.5)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="weight decay of that setting (default 0.01)")
    p.add_argument("--chains", type=int, default=128, help="independent chains per setting (default 128)")
    p.add_argument("--steps", type=int, default=4000, help="measured steps after the burn-in (default 4000)")
    add_common_options(p)
    return p


def run_sgd(problem: Quadratic, eta, batch_size, *, steps, chains, rng, momentum=0.0, dampening=0.0,
            weight_decay=0.0, theta0=None, burn_in=0, noise="gaussian", monitor: FDRMonitor | None = None):
    """torch-convention SGD on ``problem`` (numpy, chains in parallel), feeding ``monitor`` after ``burn_in``.

    Gaussian noise: g_B = H(θ − θ*) + ξ, ξ ~ N(0, C/S). ``noise="minibatch"`` (a ``LeastSquares``): the mean
    gradient of S examples drawn with replacement. Returns per-chain time averages of L(θ) − L(θ*) and of ‖g_B‖²
    over the measured steps.
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
        g_total = g + weight_decay * theta if weight_decay else g
        if momentum:
            # torch: the first step sets the buffer to g (no dampening), later steps b ← μb + (1−d)g.
            buf = g_total.copy() if k == 0 else momentum * buf + (1.0 - dampening) * g_total
            step = buf
        else:
            step = g_total
        if k >= burn_in:
            if monitor is not None:
                monitor.observe(theta, g, buf if momentum else None)
            loss_sum += problem.loss(theta)
            gsq_sum += np.einsum("cd,cd->c", g, g)
        theta = theta - eta * step
        if not np.all(np.isfinite(theta)):
            raise ValueError(f"SGD diverged at step {k} (eta={eta}, momentum={momentum})")
    return loss_sum / steps, gsq_sum / steps


def _settings(args):
    mu, damp, wd = args.momentum, args.dampening, args.weight_decay
    return [
        ("plain SGD", dict()),
        (f"momentum {mu:g}", dict(momentum=mu)),
        (f"momentum {mu:g}, dampening {damp:g}", dict(momentum=mu, dampening=damp)),
        (f"momentum {mu:g}, weight decay {wd:g}", dict(momentum=mu, weight_decay=wd)),
        ("least squares, real minibatches", dict(noise="minibatch")),
    ]


def run(args, out=None) -> CheckResult:
    out = sys.stdout if out is None else out
    validate.positive_float("--eta", args.eta)
    validate.positive_int("--batch-size", args.batch_size)
    validate.float_in("--momentum", args.momentum, 0.0, 1.0)
    validate.float_in("--dampening", args.dampening, 0.0, 1.0)
    validate.nonnegative_float("--weight-decay", args.weight_decay)
    chains = validate.positive_int("--chains", args.chains, minimum=2)
    steps = validate.positive_int("--steps", args.steps, minimum=2)
    rng = np.random.default_rng(args.seed)
    spectrum = parse_spectrum(args.spectrum, rng=rng)
    d = spectrum.size
    minimum = rng.standard_normal(d)  # away from the origin, so θ·g ≠ 2L
    quad = Quadratic.from_spectrum(spectrum, rotate=True, rng=rng, minimum=minimum)
    lsq = LeastSquares.sample(max(20 * d, 200), spectrum, noise_std=1.0, rotate=True, rng=rng)
    eta, s = args.eta, args.batch_size
    settings = _settings(args)
    for name, kw in settings:
        problem = lsq if kw.get("noise") == "minibatch" else quad
        bound = stability_bound(problem, momentum=kw.get("momentum", 0.0), weight_decay=kw.get("weight_decay", 0.0))
        if not eta < bound:
            raise ValueError(f"--eta must be < {bound:.6g} for the setting '{name}' (no stationary law above)")
    z_crit = bonferroni_z(args.confidence, len(settings) + 2)
    rows, claims, monitors = [], [], {}
    out.write(f"fdr: {quad!r}, minimum away from the origin; eta={eta} S={s} chains={chains} steps={steps}\n")
    out.write(f"{'setting':<40} {'<O_L>':>11} {'<O_R>':>11} {'ratio':>9} {'+-':>8} {'z':>7}\n")
    worst = 0.0
    for name, kw in settings:
        problem = lsq if kw.get("noise") == "minibatch" else quad
        mu = kw.get("momentum", 0.0)
        wd = kw.get("weight_decay", 0.0)
        a_min = float(problem.eigenvalues.min()) + wd
        # Burn-in: 10 relaxation times of the slowest mode (effective learning rate η/(1−μ)).
        burn = int(math.ceil(10.0 / (-math.log(max(1e-12, abs(1.0 - eta / (1.0 - mu) * a_min))))))
        mon = FDRMonitor(eta, momentum=mu, dampening=kw.get("dampening", 0.0), weight_decay=wd)
        run_sgd(problem, eta, s, steps=steps, chains=chains, rng=rng, burn_in=burn, monitor=mon,
                **{k: v for k, v in kw.items()})
        sm = mon.summary()
        z = sm.z_score()
        worst = max(worst, abs(z))
        monitors[name] = mon
        rows.append(dict(setting=name, **{k: v for k, v in kw.items()}, eta=eta, batch_size=s, burn_in=burn,
                         o_left=sm.o_left, o_right=sm.o_right, ratio=sm.ratio, ratio_stderr=sm.ratio_stderr,
                         z=z, z_critical=z_crit, ok=abs(z) <= z_crit, yaida_stationary=sm.is_stationary()))
        out.write(f"{name:<40} {sm.o_left:>11.5g} {sm.o_right:>11.5g} {sm.ratio:>9.5f} {sm.ratio_stderr:>8.2g} "
                  f"{z:>+7.2f}\n")
    ratios = ", ".join(f"{r['ratio']:.4f}±{r['ratio_stderr']:.4f}" for r in rows)
    claims.append(Claim(
        "fdr-stationary", "at stationarity <theta.g> = eta(1+mu)/(2(1-d)) <|b'|^2> (plain SGD: <theta.grad L> = "
        "(eta/2)<|g_B|^2>), with momentum, dampening, weight decay and real minibatches",
        holds=all(r["ok"] for r in rows),
        summary=f"<O_L>/<O_R> = {ratios}; max |z| = {worst:.2f} <= {z_crit:.2f}?",
        numbers=dict(ratios=[r["ratio"] for r in rows], max_abs_z=worst, z_critical=z_crit)))

    # (η/4)⟨‖g_B‖²⟩ against the exact stationary loss, plain SGD on the quadratic.
    loss_c, gsq_c = run_sgd(quad, eta, s, steps=steps, chains=chains, rng=rng, burn_in=rows[0]["burn_in"])
    est = eta / 4.0 * gsq_c
    exact = expected_loss(quad, eta, s)
    est_m, est_se = float(est.mean()), float(est.std(ddof=1) / math.sqrt(chains))
    loss_m, loss_se = float(loss_c.mean()), float(loss_c.std(ddof=1) / math.sqrt(chains))
    z_id = (est_m - exact) / est_se
    claims.append(Claim(
        "loss-from-gradient-norm", "on a quadratic, (eta/4)<|g_B|^2> equals the stationary loss excess E(l)",
        holds=abs(z_id) <= z_crit,
        summary=f"(eta/4)<|g_B|^2> = {est_m:.5g} ± {est_se:.2g}, exact E(l) = {exact:.5g} (z = {z_id:+.2f}); "
                f"measured <L - L*> = {loss_m:.5g} ± {loss_se:.2g}",
        numbers=dict(estimate=est_m, stderr=est_se, exact=exact, z=z_id, measured_loss=loss_m)))
    out.write(f"(eta/4)<|g_B|^2> = {est_m:.5g} ± {est_se:.2g} against exact E(l) = {exact:.5g}: z = {z_id:+.2f}\n")

    # Not stationary: from a distant start, averaged over the first relaxation time only.
    far = quad.minimum + 3.0 * rng.standard_normal(d)
    early = max(10, rows[0]["burn_in"] // 10)
    mon_far = FDRMonitor(eta)
    run_sgd(quad, eta, s, steps=early, chains=chains, rng=rng, theta0=far, monitor=mon_far)
    sm_far = mon_far.summary()
    claims.append(Claim(
        "detects-non-stationarity", f"the relation flags a run still relaxing (first {early} steps from a distant "
        "start)", holds=abs(sm_far.z_score()) <= z_crit, expected=False,
        summary=f"<O_L>/<O_R> = {sm_far.ratio:.3f} ± {sm_far.ratio_stderr:.2g}, z = {sm_far.z_score():+.1f}",
        numbers=dict(ratio=sm_far.ratio, z=sm_far.z_score(), steps=early)))
    out.write(f"transient (first {early} steps from afar): ratio {sm_far.ratio:.3f}, z = {sm_far.z_score():+.1f}\n")

    result = CheckResult("fdr", "fluctuation-dissipation relation at stationarity (Yaida 2019)", claims, rows,
                         settings=dict(spectrum=args.spectrum, eta=eta, batch_size=s, momentum=args.momentum,
                                       dampening=args.dampening, weight_decay=args.weight_decay, chains=chains,
                                       steps=steps, seed=args.seed, confidence=args.confidence))
    path = figure_path(args, "fdr")
    if path is not None:
        _plot(rows, quad, eta, s, rng, path, chains)
        result.figures.append(str(path))
    return result


def _plot(rows, quad, eta, s, rng, path, chains) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    steps = 3000
    mon = FDRMonitor(eta)
    run_sgd(quad, eta, s, steps=steps, chains=chains, rng=rng, theta0=quad.minimum + 3.0, monitor=mon)
    edges = np.unique(np.geomspace(1, steps, 30).astype(int))
    mids, rat, err = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a < 2:
            continue
        sm = mon.summary(a, b)
        mids.append(np.sqrt(a * b))
        rat.append(sm.ratio)
        err.append(sm.ratio_stderr)
    rat, err = np.array(rat), np.array(err)
    tr.plot(mids, rat, "o-", ms=3)
    tr.fill_between(mids, rat - err, rat + err, alpha=0.3)
    tr.axhline(1.0, color="k", lw=1)
    tr.set_xscale("log")
    tr.set_yscale("log")
    tr.set_xlabel("step (window centre)")
    tr.set_ylabel(r"windowed $\langle O_L\rangle / \langle O_R\rangle$")
    tr.set_title("From a distant start: the ratio reaches 1 at equilibrium", fontsize=10)
    save_figure_atomic(fig, path, dpi=120)


def main(argv=None, out=None) -> int:
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
