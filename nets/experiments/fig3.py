"""``python -m nets.experiments.fig3``: curvature and generalisation against η/S over a grid of η and S (Fig. 3).

The paper trains 4-layer batch-norm MLPs on Fashion-MNIST over a grid of η and S and reports that a higher η/S goes
with a smaller Hessian λ_max and Frobenius norm (a wider minimum) and a better validation accuracy, and that the
accuracy is the same for equal η/S. Here every run is measured after training (``nets.measure``: λ_max by Lanczos,
‖H‖_F and Tr(H) by Hutchinson, eval-mode batch norm recomputed on the training set), and the report gives the
Spearman rank correlation of each quantity with η/S, over all runs and seeds, with its p-value.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from common.claims import Claim
from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, measure_options, seeds_for, with_
from nets.experiments.sweep import RunSpec

NAME = "fig3"
CLAIM = ("a higher eta/S gives a smaller Hessian lambda_max and Frobenius norm (a wider minimum) and a better "
         "validation accuracy; equal eta/S gives equal accuracy")
GRIDS = {"smoke": ([0.05, 0.2], [16, 64]), "small": ([0.01, 0.04, 0.16], [32, 128, 512]),
         "full": ([0.01, 0.02, 0.05, 0.1, 0.2], [32, 64, 128, 256, 512])}
QUANTITIES = (("lambda_max", "Hessian $\\lambda_{max}$", -1), ("frobenius", "Hessian $\\|H\\|_F$", -1),
              ("trace_h", "Tr(H)", -1), ("final_val_acc", "validation accuracy", +1))


def specs(scale, args) -> list[RunSpec]:
    """The runs of the grid of η and S at this scale, each measured after training."""
    etas, sizes = GRIDS[scale]
    base = base_config(scale, args)
    out = []
    for seed in seeds_for(scale, args, default_small=2 if scale == "small" else 3):
        for eta in etas:
            for s in sizes:
                out.append(RunSpec(with_(base, eta=eta, batch_size=s, seed=seed),
                                   tags=dict(eta_grid=eta, s_grid=s), stages={"measure": measure_options(scale)}))
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    from scipy.stats import spearmanr

    rows = [r for _, r in results]
    if len(rows) < 3:
        return [Claim("enough-runs", "at least 3 finished runs to correlate", holds=False,
                      summary=f"{len(rows)} finished")]
    ratio = np.array([r["ratio"] for r in rows])
    claims = []
    for key, label, sign in QUANTITIES:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        rho, p = spearmanr(ratio, vals)
        agrees = bool(np.sign(rho) == sign and p < 0.05)
        verdict = ("as claimed" if agrees else "the claimed direction, not significant at 5 %"
                   if np.sign(rho) == sign else "the opposite direction")
        claims.append(Claim(
            f"{key}-vs-ratio", f"{label.replace('$', '').replace(chr(92), '')} "
            f"{'falls' if sign < 0 else 'rises'} with eta/S (Spearman, 5 %)",
            holds=agrees, summary=f"rho = {rho:+.2f} (p = {p:.2g}) over {len(rows)} runs: {verdict}",
            numbers=dict(rho=float(rho), p=float(p))))
    # Equal ratio: spread of accuracy within equal-ratio groups against the spread of the group means.
    groups: dict[float, list[float]] = {}
    for r in rows:
        groups.setdefault(round(math.log(r["ratio"]), 6), []).append(r["final_val_acc"])
    multi = {k: v for k, v in groups.items() if len({*v}) > 1 or len(v) > 1}
    if len(groups) > 1 and multi:
        within = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in multi.values() if len(v) > 1])))
        between = float(np.std([np.mean(v) for v in groups.values()], ddof=1))
        claims.append(Claim(
            "equal-ratio-equal-accuracy", "runs with equal eta/S (different eta, S and seeds) reach the same "
            "accuracy: the spread within equal-ratio groups is below the spread between ratios",
            holds=within < between, summary=f"within-group sd {within:.4f} vs between-ratio sd {between:.4f}",
            numbers=dict(within=within, between=between)))
    _plot(rows, ctx)
    return claims


def _plot(rows, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    sizes = sorted({r["batch_size"] for r in rows})
    etas = sorted({r["eta"] for r in rows})
    markers = "osD^v<>p"
    for ax, (key, label, _) in zip(axes.ravel(), QUANTITIES):
        for si, s in enumerate(sizes):
            for ei, eta in enumerate(etas):
                vals = np.array([r[key] for r in rows if r["batch_size"] == s and r["eta"] == eta], dtype=float)
                if vals.size == 0:
                    continue
                se = vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else 0.0
                ax.errorbar([eta / s], [vals.mean()], yerr=[se], fmt=markers[ei % len(markers)],
                            color=f"C{si}", ms=6, capsize=3,
                            label=f"S={s}" if ei == 0 else None)
        ax.set_xscale("log")
        if key != "final_val_acc":
            ax.set_yscale("log")
        ax.set_xlabel(r"$\eta/S$")
        ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=7, title="colour: S; marker: eta", title_fontsize=7)
    fig.suptitle("Fig. 3: geometry and accuracy against eta/S (mean ± s.e. over seeds)")
    ctx.figure(fig, "fig3")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig3``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
