"""``python -m nets.experiments.fig5``: where the η/S invariance breaks (Fig. 5).

(η, S) = (βη₀, βS₀) at a fixed ratio, for β from 1 upwards, on two or more training-set sizes N, each for the same
number of epochs. The paper finds the final accuracy constant in β until a large β, and the break earlier on small
datasets. Two mechanisms predict the break (``verification.breakdown`` works them out exactly on quadratics): ηλ_max
approaching 2, with λ_max measured on the β = 1 model (β*_η = 2/(η₀λ_max), drawn where ηλ_max = 1; it is the
eval-mode λ_max, and with batch norm the train-mode Hessian SGD sees can be several times flatter, so the line is
an early bound), and S
approaching N, where sampling without replacement scales the noise by (N − S)/(N − 1) (drawn where that factor is
0.8). The claim agrees when each N is invariant at small β (validation accuracy within ``tol`` of β = 1), breaks at
some larger β, and the smaller N breaks no later than the larger.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from common.claims import Claim
from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, measure_options, seeds_for, with_
from nets.experiments.sweep import RunSpec

NAME = "fig5"
CLAIM = ("scaling eta and S together keeps the accuracy until large beta, and the invariance breaks earlier for "
         "smaller training sets")
@dataclass(frozen=True)
class Settings:
    """(η, S) = β·(η0, S0) for each β, at each training-set size; ``tol`` is the accuracy drop that counts as a
    break."""

    eta0: float
    batch_size: int
    betas: tuple
    train_sizes: tuple
    tol: float


SETTINGS = {
    "smoke": Settings(0.01, 2, (1, 4, 16, 64), (128, 512), 0.05),
    "small": Settings(0.005, 4, (1, 2, 4, 8, 16, 32, 64, 128), (2000, 20000), 0.02),
    "full": Settings(0.005, 4, (1, 2, 4, 8, 16, 32, 64, 128, 256), (5000, 60000), 0.01),
}


def specs(scale, args) -> list[RunSpec]:
    """β·(η0, S0) at every training-set size, per seed; the β = 1 runs are measured (λ_max)."""
    st = SETTINGS[scale]
    eta0, s0, betas, sizes = st.eta0, st.batch_size, st.betas, st.train_sizes
    base = base_config(scale, args)
    out = []
    for seed in seeds_for(scale, args):
        for n in sizes:
            for b in betas:
                if b * s0 > n:
                    continue
                out.append(RunSpec(with_(base, eta=b * eta0, batch_size=b * s0, train_size=n, seed=seed),
                                   tags=dict(beta=b, n=n, seed=seed),
                                   stages={"measure": measure_options(scale)} if b == 1 else {}))
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    st = SETTINGS[ctx.scale]
    eta0, s0, tol = st.eta0, st.batch_size, st.tol
    acc: dict[int, dict[int, list[float]]] = {}
    lam: dict[int, float] = {}
    for spec, r in results:
        acc.setdefault(r["n"], {}).setdefault(r["beta"], []).append(r["final_val_acc"])
        if r["beta"] == 1 and "lambda_max" in r:
            lam[r["n"]] = r["lambda_max"]
    curves = {n: (np.array(sorted(d)), np.array([np.mean(d[b]) for b in sorted(d)])) for n, d in acc.items()}
    breaks, invariant = {}, {}
    for n, (b, a) in curves.items():
        drop = a[0] - a
        over = np.flatnonzero(drop > tol)
        breaks[n] = float(b[over[0]]) if over.size else float("inf")
        small = b <= 4
        invariant[n] = bool(np.all(np.abs(drop[small]) <= tol))
    ns = sorted(curves)
    claims = [
        Claim("invariant-at-small-beta", f"validation accuracy within {tol:g} of beta = 1 for beta <= 4",
              holds=all(invariant.values()), summary=", ".join(f"N={n}: {'yes' if invariant[n] else 'no'}"
                                                               for n in ns)),
        Claim("breaks-at-large-beta", f"the accuracy drops by more than {tol:g} at some larger beta",
              holds=all(np.isfinite(breaks[n]) for n in ns),
              summary=", ".join(f"N={n}: beta* = {breaks[n]:g}" for n in ns)),
        Claim("small-data-breaks-first", "the smallest training set breaks at the smallest beta",
              holds=bool(np.isfinite(breaks[ns[0]])) and breaks[ns[0]] <= min(breaks[n] for n in ns),
              summary=", ".join(f"N={n}: {breaks[n]:g}" for n in ns)
              + "; predicted: " + ", ".join(
                  f"N={n}: eta lambda_max = 1 at beta {1.0 / (eta0 * lam[n]):.3g}" for n in ns if n in lam)
              + "; (N-S)/(N-1) = 0.8 at " + ", ".join(f"beta {0.2 * (n - 1) / s0:.3g} (N={n})" for n in ns)),
    ]
    _plot(curves, lam, eta0, s0, tol, ctx)
    return claims


def _plot(curves, lam, eta0, s0, tol, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6), constrained_layout=True)
    for i, (n, (b, a)) in enumerate(sorted(curves.items())):
        color = f"C{i}"
        ax.plot(b, a, "-o", color=color, label=f"N = {n}")
        ax.axvline(0.2 * (n - 1) / s0, color=color, ls=":", lw=1)
        if n in lam:
            ax.axvline(1.0 / (eta0 * lam[n]), color=color, ls="--", lw=1)
    ax.plot([], [], ":", color="0.4", label="(N-S)/(N-1) = 0.8")
    ax.plot([], [], "--", color="0.4", label=r"$\eta\lambda_{max}$ = 1 ($\lambda_{max}$ at beta = 1)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel=r"$\beta$: $(\eta, S) = (\beta\eta_0, \beta S_0)$" + f", eta0 = {eta0:g}, S0 = {s0}",
           ylabel="final validation accuracy", title=f"Fig. 5 analogue (break: drop > {tol:g})")
    ax.legend(fontsize=7)
    ctx.figure(fig, "fig5")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig5``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
