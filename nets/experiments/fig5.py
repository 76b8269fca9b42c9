"""``python -m nets.experiments.fig5``: where the η/S invariance breaks (Fig. 5).

The paper (Sec. 3): "similar learning dynamics and final performance can be observed when simultaneously
multiplying the learning rate and batch size by a factor β up to a certain limit. This is done for a smaller
training set size in Fig. 5 (a) than in (b)"; the caption: "Validation accuracy for different dataset sizes and
different β values for fixed ratio β × (η = 0.1)/β × (S = 50)"; footnote 10: "Experiments are repeated 5 times with
different random seeds. The graphs denote the mean validation accuracies and the numbers in the brackets denote the
mean and standard deviation of the maximum validation accuracy across different runs. The * denotes at least one
seed diverged."

Full scale: (η, S) = β·(0.1, 50), β ∈ {1, 2, 4, 8, 16, 32}, on VGG11 and CIFAR-10 (``--data-root``) with training
sets of 10 000 and 50 000 examples, 200 epochs, 5 seeds. Small scale: the batch-norm MLP on Fashion-MNIST with
2 000 and 20 000 examples, β ∈ {1, 2, 4, 8, 16, 32}, 5 epochs, 3 seeds. A run that diverges is a result: it is
drawn, tabled with a ``*`` and counts as a break. Two mechanisms predict the break (``verification.breakdown`` works
them out exactly on quadratics): ηλ_max approaching 2 (λ_max measured on the β = 1 model, eval-mode batch norm, so
an early bound; drawn where ηλ_max = 1), and S approaching N, where sampling without replacement scales the noise by
(N − S)/(N − 1) (drawn where that factor is 0.8). The claim agrees when each N is invariant at small β (the mean
maximum validation accuracy within ``tol`` of β = 1 for β ≤ 4, no divergence), breaks at some larger β (a drop by
more than ``tol``, or a diverged seed), and the smaller N breaks no later than the larger. Each comparison with
``tol`` is judged by the 95 % interval that the seeds' scatter gives the difference of means: where that interval
straddles the tolerance (or one seed gives no scatter), the part is "not settled".
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, measure_options, seed_words, seeds_for, with_
from nets.experiments.sweep import RunSpec
from sgd_noise_common.claims import Claim
from sgd_noise_common.stats import Comparison, all_of, compare, within

NAME = "fig5"
CLAIM = ("scaling eta and S together keeps the accuracy until large beta, and the invariance breaks earlier for "
         "smaller training sets")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """(η, S) = β·(η0, S0) for each β, at each training-set size, with ``model``; ``tol`` is the drop of the mean
    maximum validation accuracy that counts as a break."""

    eta0: float
    batch_size: int
    betas: tuple
    train_sizes: tuple
    tol: float
    model: str
    seeds: int


SETTINGS = {
    "smoke": Settings(eta0=0.1, batch_size=2, betas=(1, 4, 16, 64), train_sizes=(128, 512), tol=0.05, model="mlp",
                      seeds=1),
    "small": Settings(eta0=0.1, batch_size=50, betas=(1, 2, 4, 8, 16, 32), train_sizes=(2000, 20000), tol=0.02,
                      model="mlp", seeds=3),
    "full": Settings(eta0=0.1, batch_size=50, betas=(1, 2, 4, 8, 16, 32), train_sizes=(10000, 50000), tol=0.01,
                     model="vgg11", seeds=5),
}


def choices(scale: str, args) -> list[str]:
    """What the paper leaves open at this scale, and what was chosen."""
    st = SETTINGS[scale]
    out = ["Not in the paper: which model and dataset Fig. 5 used; chose VGG11 on CIFAR-10, whose Fig. 4(c, d) "
           "runs use the same base (eta, S) = (0.1, 50).",
           "Not in the paper: the two training-set sizes; chose 10 000 and all 50 000 examples (a random subset "
           "drawn with --data-seed).",
           "Not in the paper: the values of beta; chose 1, 2, 4, ..., 32 (S up to 1 600).",
           "Not in the paper: the number of epochs of these runs; chose 200, as Fig. 3.",
           "Not in the paper: momentum, weight decay, augmentation; chose plain SGD, none and none.",
           f"Not in the paper: what counts as a break; chose a drop of the mean maximum validation accuracy by more "
           f"than {st.tol:g} from beta = 1, or a diverged seed."]
    if scale == "small":
        out.append("Small scale, not the paper's: the batch-norm MLP on Fashion-MNIST with 2 000 and 20 000 "
                   f"examples, 5 epochs, {seed_words(scale, args, st.seeds)}, beta * (0.1, 50).")
    if scale == "smoke":
        out.append("Smoke scale: the narrow MLP on synthetic data with 128 and 512 examples, beta * (0.1, 2).")
    return out


def specs(scale, args) -> list[RunSpec]:
    """β·(η0, S0) at every training-set size, per seed; the β = 1 runs are measured (λ_max)."""
    st = SETTINGS[scale]
    base = base_config(scale, args, model=st.model)
    out = []
    for seed in seeds_for(scale, args, default_small=st.seeds, default_full=st.seeds):
        for n in st.train_sizes:
            for b in st.betas:
                if b * st.batch_size > n:
                    continue
                out.append(RunSpec(with_(base, eta=b * st.eta0, batch_size=b * st.batch_size, train_size=n,
                                         seed=seed),
                                   tags=dict(panel=f"N = {n}", beta=b, n=n, seed=seed),
                                   stages={"measure": measure_options(scale)} if b == 1 else {}))
    return out


def summarise(results, ctx: Context, group: str = "n") -> dict:
    """Per (group, β), the group being the results' ``group`` entry (N here, a panel in ``nets.experiments.advise``):
    the seeds' maximum validation accuracies, how many seeds diverged, their curves and λ_max."""
    cells: dict[tuple, dict] = {}
    for spec, r in results:
        cell = cells.setdefault((r[group], r["beta"]), {"max_acc": [], "diverged": 0, "curves": [], "lam": []})
        if r.get("diverged"):
            cell["diverged"] += 1
            continue
        hist = ctx.history(spec.key())
        if hist:
            cell["max_acc"].append(max(h["val_acc"] for h in hist))
            cell["curves"].append(([h["epoch"] for h in hist], [h["val_acc"] for h in hist]))
        if "lambda_max" in r and r["lambda_max"] == r["lambda_max"]:
            cell["lam"].append(r["lambda_max"])
    return cells


def _shift(cells, n, b) -> tuple[float, float, int]:
    """The mean maximum accuracy at β minus that at β = 1 for training-set size ``n``, its standard error from the
    seeds' scatter (NaN with fewer than two seeds in either cell), and the degrees of freedom (conservative:
    the smaller cell's)."""
    ref, cell = np.array(cells[(n, 1)]["max_acc"]), np.array(cells[(n, b)]["max_acc"])
    if not ref.size or not cell.size:
        return math.nan, math.nan, 0
    diff = float(cell.mean() - ref.mean())
    if ref.size < 2 or cell.size < 2:
        return diff, math.nan, 0
    se = math.sqrt(cell.var(ddof=1) / cell.size + ref.var(ddof=1) / ref.size)
    return diff, se, int(min(ref.size, cell.size) - 1)


def beta_breaks(cells, tol: float) -> tuple[dict, dict]:
    """Per N (each group of ``summarise``): ``(β*, settled, a break settled)``: β* is the first β whose accuracy
    drops by more than ``tol`` below β = 1, or where a seed diverges (inf when none does); ``settled`` says whether
    the seeds' scatter settles that first drop (``sgd_noise_common.stats.compare``; with no break: whether even the
    largest β's drop is surely below ``tol``), and ``a break settled`` whether some β's drop is settled. Also per N,
    the invariance at 1 < β ≤ 4 (each shift from β = 1 within ±``tol``, ``within``: a rise counts against it as much
    as a drop).
    """
    breaks, invariant = {}, {}
    for n in sorted({n for n, _ in cells}):
        betas = sorted(b for m, b in cells if m == n)
        beta_star, settled, parts, drops = math.inf, True, [], []
        for b in betas:
            c = cells[(n, b)]
            diff, se, dof = _shift(cells, n, b)
            if c["diverged"] or not c["max_acc"]:
                drop = Comparison(holds=True, settled=True, low=math.nan, high=math.nan)
            else:
                drop = compare(-diff, se, tol, above=True, dof=dof or None)
            drops.append(drop)
            if 1 < b <= 4:  # invariance: the shift from β = 1 within ±tol (a diverged seed breaks it outright)
                parts.append(Comparison(holds=False, settled=True, low=math.nan, high=math.nan) if c["diverged"]
                             else within(diff, se, -tol, tol, dof=dof or None))
            if drop.holds and math.isinf(beta_star):
                beta_star, settled = float(b), drop.settled
        if math.isinf(beta_star):
            settled = drops[-1].settled
        breaks[n] = (beta_star, settled, any(d.holds and d.settled for d in drops))
        invariant[n] = all_of(*parts) if parts else Comparison(False, False, math.nan, math.nan)
    return breaks, invariant


def analyse(results, ctx: Context) -> list[Claim]:
    """Mean maximum validation accuracy ± s.d. over seeds per (N, β), diverged seeds counted as breaks; the claims
    of the module docstring."""
    st = SETTINGS[ctx.scale]
    cells = summarise(results, ctx)
    breaks, invariant = beta_breaks(cells, st.tol)
    ns = sorted(breaks)
    lam = {n: float(np.mean(cells[(n, 1)]["lam"])) for n in ns if (n, 1) in cells and cells[(n, 1)]["lam"]}
    rows = []
    for (n, b), c in sorted(cells.items()):
        acc = np.array(c["max_acc"])
        cell = (f"{acc.mean():.4f} ± {acc.std(ddof=1) if acc.size > 1 else 0.0:.4f}" if acc.size else "—")
        rows.append([n, b, f"{b * st.eta0:g}", b * st.batch_size, cell + (" *" if c["diverged"] else ""),
                     f"{c['diverged']}/{c['diverged'] + acc.size}"])
    ctx.table("Maximum validation accuracy over each run, mean ± s.d. over seeds (* : at least one seed diverged, "
              "as in the paper)", ["N", "beta", "eta", "S", "max val acc", "diverged"], rows)
    predicted = "; predicted: " + ", ".join(f"N={n}: eta lambda_max = 1 at beta {1.0 / (st.eta0 * lam[n]):.3g}"
                                           for n in ns if n in lam) \
        + "; (N-S)/(N-1) = 0.8 at " + ", ".join(f"beta {0.2 * (n - 1) / st.batch_size:.3g} (N={n})" for n in ns)
    inv = all_of(*invariant.values())
    found = [math.isfinite(breaks[n][0]) for n in ns]
    first = breaks[ns[0]][0]
    claims = [
        Claim("invariant-at-small-beta", f"mean maximum validation accuracy within {st.tol:g} of beta = 1 for "
              "beta <= 4 (95 % interval from the seeds' scatter), no seed diverged", holds=inv.holds,
              settled=inv.settled, summary=", ".join(f"N={n}: {invariant[n].words()}" for n in ns)),
        Claim("breaks-at-large-beta", f"the accuracy drops by more than {st.tol:g}, or a seed diverges, at some "
              "larger beta (the drop's 95 % interval above the tolerance)", holds=all(found),
              settled=all(breaks[n][2] for n in ns) if all(found) else any(
                  breaks[n][1] for n in ns if not math.isfinite(breaks[n][0])),
              summary=", ".join(f"N={n}: beta* = {breaks[n][0]:g}"
                                + ("" if breaks[n][1] or not math.isfinite(breaks[n][0]) else " (not settled)")
                                for n in ns)),
        Claim("small-data-breaks-first", "the smallest training set breaks at the smallest beta",
              holds=bool(math.isfinite(first)) and first <= min(breaks[n][0] for n in ns),
              settled=all(breaks[n][1] for n in ns),
              summary=", ".join(f"N={n}: {breaks[n][0]:g}" for n in ns) + predicted),
    ]
    _plot(cells, lam, st, ctx)
    return claims


def _plot(cells, lam, st, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({n for n, _ in cells})
    fig, axes = plt.subplots(1, len(ns) + 1, figsize=(5.2 * (len(ns) + 1), 4.4), constrained_layout=True)
    for ax, n in zip(axes, ns):  # the paper's panels: mean validation curve per beta
        betas = sorted(b for m, b in cells if m == n)
        for i, b in enumerate(betas):
            c = cells[(n, b)]
            if c["curves"]:
                e = np.array(c["curves"][0][0])
                v = np.mean([np.interp(e, ce, cv) for ce, cv in c["curves"]], axis=0)
                acc = np.array(c["max_acc"])
                sd = acc.std(ddof=1) if acc.size > 1 else 0.0  # as in the table
                ax.plot(e, v, "-", color=f"C{i}", label=f"beta={b} ({acc.mean():.3f}, {sd:.3f})"
                        + (" *" if c["diverged"] else ""))
            else:
                ax.plot([], [], "-", color=f"C{i}", label=f"beta={b}: every seed diverged *")
        ax.set(xlabel="epoch", ylabel="mean validation accuracy", title=f"N = {n}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for i, n in enumerate(ns):
        betas = sorted(b for m, b in cells if m == n)
        means = [np.mean(cells[(n, b)]["max_acc"]) if cells[(n, b)]["max_acc"] else np.nan for b in betas]
        ax.plot(betas, means, "-o", color=f"C{i}", label=f"N = {n}")
        for b in betas:
            if cells[(n, b)]["diverged"]:
                ax.plot([b], [np.nanmin(means) if np.isfinite(np.nanmin(means)) else 0.0], "x", color=f"C{i}",
                        ms=10)
        ax.axvline(0.2 * (n - 1) / st.batch_size, color=f"C{i}", ls=":", lw=1)
        if n in lam:
            ax.axvline(1.0 / (st.eta0 * lam[n]), color=f"C{i}", ls="--", lw=1)
    ax.plot([], [], "x", color="0.4", label="a seed diverged (*)")
    ax.plot([], [], ":", color="0.4", label="(N-S)/(N-1) = 0.8")
    ax.plot([], [], "--", color="0.4", label=r"$\eta\lambda_{max}$ = 1 ($\lambda_{max}$ at beta = 1)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel=r"$\beta$: $(\eta, S) = \beta(\eta_0, S_0)$" + f", eta0 = {st.eta0:g}, S0 = {st.batch_size}",
           ylabel="max validation accuracy (mean over seeds)", title=f"break: drop > {st.tol:g} or divergence")
    ax.legend(fontsize=7)
    fig.suptitle("Fig. 5: beta (eta0, S0) at two training-set sizes")
    ctx.figure(fig, "fig5")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig5``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
