"""``python -m nets.experiments.fig3``: curvature and generalisation against η/S over a grid of η and S (Fig. 3).

The paper (Sec. 3): "We trained a series of 4-layer batch-normalized ReLU MLPs on Fashion-MNIST with different η
and S"; footnote 8: "Each experiment was run for 200 epochs in which most models reached an accuracy of almost 100%
on the training set"; "Fig. 3a and Fig. 3b show the values of these quantities for minima obtained by SGD for
different η/S, with η ∈ [5e-3, 1e-1] and S ∈ [25, 1000]"; and Sec. 2: "we compare geometrical properties of minima
with the same loss value".

Full scale: the batch-norm MLP on Fashion-MNIST (all 60 000 examples), 200 epochs, η ∈ {0.005, 0.01, 0.02, 0.05,
0.1} × S ∈ {25, 50, 100, 250, 500, 1000}, 3 seeds. Small scale: 20 000 examples, 5 epochs, η ∈ {0.01, 0.04, 0.16} ×
S ∈ {32, 128, 512}, 3 seeds. Every run is measured after training (``nets.measure``: λ_max by Lanczos, ‖H‖_F and
Tr(H) by Hutchinson, eval-mode batch norm recomputed on the training set), and the report gives the Spearman rank
correlation of each quantity with η/S, over all runs and seeds, with its p-value; the training loss of every run;
and the equal-ratio test among the runs that reached a comparable training loss (within a factor
``COMPARABLE_LOSS`` of the median final training loss).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, measure_options, seed_words, seeds_for, with_
from nets.experiments.sweep import RunSpec
from sgd_noise_common.claims import Claim

NAME = "fig3"
CLAIM = ("a higher eta/S gives a smaller Hessian lambda_max and Frobenius norm (a wider minimum) and a better "
         "validation accuracy; equal eta/S gives equal accuracy")
GRIDS = {"smoke": ([0.05, 0.2], [16, 64]), "small": ([0.01, 0.04, 0.16], [32, 128, 512]),
         "full": ([0.005, 0.01, 0.02, 0.05, 0.1], [25, 50, 100, 250, 500, 1000])}
SEEDS = {"small": 3, "full": 3}
#: Runs count as having reached a comparable training loss when theirs is within this factor of the median.
COMPARABLE_LOSS = 3.0
QUANTITIES = (("lambda_max", "Hessian $\\lambda_{max}$", -1), ("frobenius", "Hessian $\\|H\\|_F$", -1),
              ("trace_h", "Tr(H)", -1), ("final_val_acc", "validation accuracy", +1))


def choices(scale: str, args) -> list[str]:
    """What the paper leaves open at this scale, and what was chosen."""
    out = ["Not in the paper: the MLP's width; chose 256 hidden units in each of the 3 hidden layers "
           "(4 linear layers, batch norm after each hidden one).",
           "Not in the paper: the grid points inside eta in [5e-3, 1e-1] and S in [25, 1000]; chose eta in {0.005, "
           "0.01, 0.02, 0.05, 0.1} and S in {25, 50, 100, 250, 500, 1000} (spanning both ranges).",
           f"Not in the paper: the number of seeds for Fig. 3; chose {SEEDS['full']}.",
           "Not in the paper: momentum, weight decay; chose plain SGD without weight decay.",
           "Not in the paper: how the Hessian was measured beyond 'the finite difference method'; measured "
           "exactly by Hessian-vector products on 5 000 training examples, batch norm in eval mode with its "
           "statistics recomputed on the training set (nets.measure).",
           f"Not in the paper: what 'the same loss value' means; chose final training loss within a factor "
           f"{COMPARABLE_LOSS:g} of the median over runs."]
    if scale == "small":
        seeds = seed_words(scale, args, SEEDS["small"], SEEDS["full"])
        out.append("Small scale, not the paper's: 20 000 training examples, 5 epochs, eta in {0.01, 0.04, 0.16} x "
                   f"S in {{32, 128, 512}}, {seeds}, measured on 1 000 examples.")
    return out


def specs(scale, args) -> list[RunSpec]:
    """The runs of the grid of η and S at this scale, each measured after training."""
    etas, sizes = GRIDS[scale]
    base = base_config(scale, args)
    out = []
    for seed in seeds_for(scale, args, default_small=SEEDS["small"], default_full=SEEDS["full"]):
        for eta in etas:
            for s in sizes:
                out.append(RunSpec(with_(base, eta=eta, batch_size=s, seed=seed),
                                   tags=dict(panel="grid", eta_grid=eta, s_grid=s, seed=seed),
                                   stages={"measure": measure_options(scale)}))
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    from scipy.stats import spearmanr

    diverged = [r for _, r in results if r.get("diverged")]
    rows = [r for _, r in results if not r.get("diverged")]
    if len(rows) < 3:
        return [Claim("enough-runs", "at least 3 finished runs to correlate", holds=False,
                      summary=f"{len(rows)} finished")]
    ratio = np.array([r["ratio"] for r in rows])
    claims = []
    for key, label, sign in QUANTITIES:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        rho, p = spearmanr(ratio, vals)
        # The direction decides the verdict; its significance at 5 % whether the data settle it.
        agrees = bool(np.sign(rho) == sign)
        verdict = (("as claimed" if agrees else "the opposite direction") if p < 0.05 else
                   ("the claimed" if agrees else "the opposite") + " direction, not significant at 5 %")
        claims.append(Claim(
            f"{key}-vs-ratio", f"{label.replace('$', '').replace(chr(92), '').replace('|', '‖')} "
            f"{'falls' if sign < 0 else 'rises'} with eta/S (Spearman, 5 %)",
            holds=agrees, settled=bool(p < 0.05),
            summary=f"rho = {rho:+.2f} (p = {p:.2g}) over {len(rows)} runs: {verdict}",
            numbers=dict(rho=float(rho), p=float(p))))
    claims += _equal_ratio_claims(rows)
    ctx.table("Every run: final training loss (the paper compares minima 'with the same loss value'), accuracy "
              "and curvature", ["eta", "S", "eta/S", "seed", "train loss", "val acc", "lambda_max", "|H|_F", "Tr(H)"],
              [[f"{r['eta']:g}", r["batch_size"], f"{r['ratio']:.3g}", r["seed"], f"{r['final_train_loss']:.4g}",
                f"{r['final_val_acc']:.4f}", f"{r['lambda_max']:.4g}", f"{r['frobenius']:.4g}", f"{r['trace_h']:.4g}"]
               for r in sorted(rows, key=lambda r: (r["ratio"], r["eta"], r["seed"]))]
              + [[f"{r['eta']:g}", r["batch_size"], f"{r['ratio']:.3g}", r["seed"], "diverged *", "", "", "", ""]
                 for r in diverged])
    _plot(rows, ctx)
    return claims


def _equal_ratio_claims(rows) -> list[Claim]:
    """Equal ratio: the spread of accuracy within equal-ratio groups against the spread of the group means, over
    all runs and over the runs whose final training loss is within ``COMPARABLE_LOSS`` of the median."""
    from scipy.stats import f_oneway

    out = []
    median = float(np.median([r["final_train_loss"] for r in rows]))
    comparable = [r for r in rows if median / COMPARABLE_LOSS <= r["final_train_loss"] <= median * COMPARABLE_LOSS]
    for name, subset, what in (("equal-ratio-equal-accuracy", rows, "all runs"),
                               ("equal-ratio-equal-accuracy-same-loss", comparable,
                                f"runs with training loss within x{COMPARABLE_LOSS:g} of the median {median:.3g}")):
        groups: dict[float, list[float]] = {}
        for r in subset:
            groups.setdefault(round(math.log(r["ratio"]), 6), []).append(r["final_val_acc"])
        multi = [v for v in groups.values() if len(v) > 1]
        if len(groups) < 2 or not multi:
            out.append(Claim(name, f"equal eta/S gives equal accuracy ({what})", holds=False, settled=False,
                             summary=f"not testable: {len(subset)} runs in {len(groups)} ratio groups"))
            continue
        within = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in multi])))
        between = float(np.std([np.mean(v) for v in groups.values()], ddof=1))
        # One-way ANOVA over the ratio groups: the ratio explains the accuracy beyond the scatter within a group
        # when its F-test rejects "one accuracy for all ratios" at 5 %; short of that the data do not settle it.
        p_value = float(f_oneway(*groups.values()).pvalue)
        out.append(Claim(name, f"runs with equal eta/S (different eta, S and seeds) reach the same accuracy "
                         f"({what}): the spread within equal-ratio groups is below the spread between ratios "
                         "(one-way ANOVA over the ratio groups, 5 %)",
                         holds=within < between, settled=p_value < 0.05 or within >= between,
                         summary=f"{len(subset)} runs: within-group sd {within:.4f} vs between-ratio sd "
                                 f"{between:.4f} (F-test p = {p_value:.2g})",
                         numbers=dict(within=within, between=between, runs=len(subset), p_value=p_value)))
    return out


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
