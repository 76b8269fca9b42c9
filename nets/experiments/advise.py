"""``python -m nets.experiments.advise``: the batch-scaling advisor (``nets.advise``) predicted against measured.

For each configuration (a panel), runs at (η, S) = β·(η0, S0) are trained from scratch for every β, as in Fig. 5,
and the β = 1 run of each seed is advised (``nets.advise.core.advise_run``, with ``--verify``). Three β* are
compared per panel:

* **predicted**: the advisor's, from the β = 1 run's end: the smallest β whose predicted loss curve, continued
  from there at (βη, βS), leaves ``tol`` (relative) of β = 1's;
* **verified**: the same criterion on curves measured by training from the β = 1 run's weights at each β;
* **from scratch**: Fig. 5's criterion on the runs trained from scratch at each β: the mean maximum validation
  accuracy drops by more than ``acc_tol`` below β = 1, or a seed diverges.

The goal (issue 21) is agreement within a factor 2, and closer than McCandlish et al.'s B_simple/S. Each claim is
judged per seed (the advisor's numbers come from each seed's own run): it holds when it holds for every seed, fails
when it fails for every seed, and is "not settled" when the seeds disagree.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seeds_for, with_
from nets.experiments.sweep import RunSpec
from sgd_noise_common.claims import Claim
from sgd_noise_common.files import read_json

NAME = "advise"
CLAIM = ("the advisor predicts, from one run at (eta, S), the beta at which scaling (eta, S) by beta stops "
         "preserving the training dynamics, within a factor 2 and closer than B_simple/S")

#: The factor within which a predicted β* agrees with a measured one.
FACTOR = 2.0


@dataclass(frozen=True)
class Panel:
    """One configuration: the MLP on ``train_size`` Fashion-MNIST examples at β·(eta0, batch_size), momentum μ."""

    label: str
    train_size: int
    eta0: float
    batch_size: int
    momentum: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The panels, the βs and epochs of the from-scratch runs, Fig. 5's accuracy tolerance and the advisor's
    arguments (``advise_run``)."""

    panels: tuple
    betas: tuple
    epochs: int
    acc_tol: float
    seeds: int
    model: str
    width: float | None
    advise: dict


SETTINGS = {
    "smoke": Settings(panels=(Panel("N = 256", 256, 0.1, 8), Panel("N = 256, mu = 0.9", 256, 0.01, 8, 0.9)),
                      betas=(1, 4, 16), epochs=2, acc_tol=0.05, seeds=1, model="mlp", width=0.125,
                      advise=dict(tol=0.05, top_k=2, examples=128, epochs=1.0, verify_seeds=1)),
    "small": Settings(panels=(Panel("N = 2000", 2000, 0.1, 50), Panel("N = 20000", 20000, 0.1, 50),
                              Panel("N = 2000, mu = 0.9", 2000, 0.01, 50, 0.9)),
                      betas=(1, 2, 4, 8, 16, 32), epochs=5, acc_tol=0.02, seeds=3, model="mlp", width=None,
                      advise=dict(tol=0.05, top_k=8, examples=1000, epochs=2.0, verify_seeds=3)),
    "full": Settings(panels=(Panel("N = 10000", 10000, 0.1, 50), Panel("N = 50000", 50000, 0.1, 50)),
                     betas=(1, 2, 4, 8, 16, 32), epochs=200, acc_tol=0.01, seeds=5, model="vgg11", width=None,
                     advise=dict(tol=0.05, top_k=20, examples=5000, epochs=2.0, verify_seeds=5)),
}


def choices(scale: str, args) -> list[str]:
    """What the issue and the paper leave open, and what was chosen."""
    st = SETTINGS[scale]
    a = st.advise
    return ["Not in the paper: the advisor is this toolkit's (issue 21). Its from-scratch comparison is Fig. 5's "
            f"protocol: beta in {{{', '.join(f'{b:g}' for b in st.betas)}}}, {st.epochs} epochs, a break when the mean"
            f" maximum validation accuracy drops by more than {st.acc_tol:g} below beta = 1 or a seed diverges.",
            f"Chosen: the advisor at the end of each seed's beta = 1 run, tolerance {a['tol']:g} on the relative "
            f"deviation of the loss curve over {a['epochs']:g} epochs, top {a['top_k']} directions, "
            f"{a['examples']} measurement examples, verified with {a['verify_seeds']} batch orders per beta.",
            "Chosen (the configuration not tuned on): the MLP with momentum 0.9 at eta0 = 0.01 (the same "
            "eta/(1 - mu) = 0.1 as the others) on 2 000 examples.",
            "Batch norm: the advisor measures the train-mode loss (batch statistics of batches of S), the loss SGD "
            "descends; the eval-mode curvature of these networks is several times larger."]


def specs(scale, args) -> list[RunSpec]:
    """Every β of every panel and seed from scratch; the β = 1 runs are advised."""
    st = SETTINGS[scale]
    base = base_config(scale, args, model=st.model)
    base = with_(base, epochs=st.epochs, **({"width": st.width} if st.width is not None else {}))
    out = []
    for seed in seeds_for(scale, args, default_small=st.seeds, default_full=st.seeds):
        for panel in st.panels:
            for b in st.betas:
                if b * panel.batch_size > panel.train_size:
                    continue
                stages = {"advise": dict(st.advise, seed=0)} if b == 1 else {}
                out.append(RunSpec(with_(base, eta=b * panel.eta0, batch_size=b * panel.batch_size,
                                         momentum=panel.momentum, train_size=panel.train_size, seed=seed),
                                   tags=dict(panel=panel.label, beta=b, seed=seed), stages=stages))
    return out


def _from_scratch(results, ctx: Context, st: Settings) -> dict:
    """Per panel: β* by Fig. 5's criterion on the mean maximum validation accuracy over seeds (inf: none), computed
    by Fig. 5's own analysis (``nets.experiments.fig5``) with the panels as its groups."""
    from nets.experiments.fig5 import beta_breaks, summarise

    cells = summarise(results, ctx, group="panel")
    breaks, _ = beta_breaks(cells, st.acc_tol)
    return {panel: dict(beta_star=b[0]) for panel, b in breaks.items()}


def _advice(ctx: Context, metrics: dict):
    from nets.advise import Advice

    path = ctx.out / "runs" / metrics["key"] / "advise.json"
    return Advice.from_dict(read_json(path, what="advice")) if path.is_file() else None


def _factor(a: float, b: float) -> float:
    """max(a/b, b/a); inf when one is not finite and the other is, 1 when neither is (both: no break seen)."""
    fa, fb = math.isfinite(a), math.isfinite(b)
    if not fa and not fb:
        return 1.0
    if not (fa and fb):
        return math.inf
    return max(a / b, b / a)


def _judge(name: str, statement: str, per_seed: list[bool], summary: str, numbers=None) -> Claim:
    holds = sum(per_seed) * 2 > len(per_seed) if per_seed else False
    settled = bool(per_seed) and (all(per_seed) or not any(per_seed))
    return Claim(name, statement, holds=holds, settled=settled, summary=summary, numbers=numbers or {})


def _star(x: float) -> str:
    return "none" if not math.isfinite(x) else f"{x:g}"


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of the module docstring, the per-seed table and the figure."""
    st = SETTINGS[ctx.scale]
    scratch = _from_scratch(results, ctx, st)
    advised: dict[str, list] = {}
    for _, r in results:
        if r["beta"] == 1 and not r.get("diverged"):
            a = _advice(ctx, r)
            if a is not None:
                advised.setdefault(r["panel"], []).append((r.get("seed"), a))
    claims, rows = [], []
    for panel in [p.label for p in st.panels if p.label in advised]:
        items = advised[panel]
        sc = scratch.get(panel, {}).get("beta_star", math.nan)
        pred = [a.beta_star if math.isfinite(a.beta_star) else math.inf for _, a in items]
        ver = [a.beta_star_measured if math.isfinite(a.beta_star_measured) else math.inf for _, a in items]
        mcc = [a.mccandlish_beta for _, a in items]
        for (seed, a), p, v in zip(items, pred, ver):
            m = a.measurements
            rows.append([panel, seed, f"{m.lambda_max:.4g}", f"{m.eta * m.lambda_max:.3g}",
                         f"{m.eta / 2 * m.batch_sharpness:.3g}", f"{m.b_simple:.4g}", f"{a.mccandlish_beta:.3g}",
                         f"{_star(p)} ({a.mechanism or '-'})", _star(v), _star(sc)])
        tag = panel.replace(" ", "").replace(",", "-").replace("=", "")
        ok_v = [_factor(p, v) <= FACTOR for p, v in zip(pred, ver)]
        claims.append(_judge(f"verified-{tag}", f"{panel}: the predicted beta* within a factor {FACTOR:g} of the one "
                             "measured by training from the beta = 1 run's weights (per seed)", ok_v,
                             f"predicted {', '.join(map(_star, pred))}; verified {', '.join(map(_star, ver))}"))
        ok_s = [_factor(p, sc) <= FACTOR for p in pred]
        claims.append(_judge(f"from-scratch-{tag}", f"{panel}: the predicted beta* within a factor {FACTOR:g} of "
                             "Fig. 5's, measured on runs trained from scratch at each beta", ok_s,
                             f"predicted {', '.join(map(_star, pred))}; from scratch {_star(sc)}; factor "
                             f"{', '.join(f'{_factor(p, sc):.3g}' for p in pred)}"))
        closer = [_factor(p, sc) < _factor(q, sc) for p, q in zip(pred, mcc)]
        claims.append(_judge(f"closer-than-noise-scale-{tag}", f"{panel}: the predicted beta* closer to the "
                             "from-scratch one than B_simple/S (McCandlish et al.) is", closer,
                             f"B_simple/S {', '.join(f'{q:.3g}' for q in mcc)} (factor "
                             f"{', '.join(f'{_factor(q, sc):.3g}' for q in mcc)} from {_star(sc)})"))
    ctx.paragraph("Reading.", _reading(advised, scratch, st, claims))
    ctx.table("Per seed: the advisor at the end of the beta = 1 run (train-mode batch-norm statistics where the "
              "model has batch norm) against the from-scratch beta* of Fig. 5's criterion",
              ["panel", "seed", "lambda_max", "eta lambda_max", "eta/2 batch sharpness", "B_simple",
               "B_simple/S", "predicted beta* (mechanism)", "verified beta*", "from scratch beta*"], rows,
              name="per-seed")
    _plot(advised, scratch, st, ctx)
    return claims


def _reading(advised, scratch, st, claims) -> str:
    """The verdict's reading: which comparison holds, by how much the other misses, and which mechanism the
    advisor named; beside it (a post-hoc observation, not a claim) the β at which the finite-data factor alone
    leaves 1 ± tol, which is what would remain if the discreteness the advisor sees at the β = 1 point
    self-stabilised in runs trained from scratch."""
    parts, kappa_factors = [], []
    for panel in [p.label for p in st.panels if p.label in advised]:
        items = [a for _, a in advised[panel]]
        sc = scratch.get(panel, {}).get("beta_star", math.nan)
        pred = [a.beta_star if math.isfinite(a.beta_star) else math.inf for a in items]
        ver = [a.beta_star_measured if math.isfinite(a.beta_star_measured) else math.inf for a in items]
        mech = sorted({a.mechanism for a in items if a.mechanism})
        kappa_only = []
        for a in items:
            b = next((r.beta for r in a.rows if r.impossible or r.kappa_factor < 1 - a.tol), math.inf)
            kappa_only.append(b)
        kappa_factors += [_factor(b, sc) for b in kappa_only]
        parts.append(f"{panel}: predicted beta* {', '.join(map(_star, pred))} ({', '.join(mech) or 'none'}), "
                     f"verified from the run {', '.join(map(_star, ver))} (factor "
                     f"{max(_factor(p, v) for p, v in zip(pred, ver)):.3g} at most), from scratch {_star(sc)} "
                     f"(factor {max(_factor(p, sc) for p in pred):.3g} at most); the finite-data factor alone "
                     f"leaves 1 ± {items[0].tol:g} at beta {', '.join(map(_star, kappa_only))}.")
    text = " ".join(parts)
    unstable = [(r.predicted_deviation, r.measured_deviation) for items in advised.values() for _, a in items
                for r in a.rows if not r.impossible and r.stability_margin >= 1 and math.isfinite(r.measured_deviation)]
    if unstable:
        over = sum(p > 10 * m for p, m in unstable)
        text += (f" Where the linearised law is mean-square unstable (rho >= 1; {len(unstable)} rows), the predicted "
                 f"deviation exceeds the measured one more than tenfold in {over}: the law has no saturation, the "
                 "trained network leaves the sharp region and settles (as in eq7's escape), so above beta* the "
                 "advisor's deviations are bounds on nothing; its beta* is what it predicts.")
    ver_ok = all(c.holds for c in claims if c.name.startswith("verified-"))
    scratch_ok = all(c.holds for c in claims if c.name.startswith("from-scratch-"))
    if ver_ok and not scratch_ok:
        text += (" So the advisor predicts what it models, SGD continued from the run's end at (beta eta, beta S), "
                 "where the loss curve departs as soon as the discrete-time (or mean-square stability) term at the "
                 "run's own curvature grows; but runs trained from scratch at each beta keep Fig. 5's accuracy much "
                 "longer, by the factor above: their curvature is not the beta = 1 run's (sharpness adapts to the "
                 "learning rate, the edge of stability), so the discreteness the advisor sees at the beta = 1 point "
                 "is the mechanism that misjudges them. The finite-data factor alone, which does not depend on the "
                 "curvature, " + (f"falls within a factor {FACTOR:g} of the from-scratch beta* in every panel and "
                                  "seed here" if kappa_factors and max(kappa_factors) <= FACTOR else
                                  f"is off the from-scratch beta* by up to a factor {max(kappa_factors):.3g}")
                 + "; that is an observation after the fact, to be tested on configurations not yet seen before it "
                 "becomes a rule. (The criteria also differ: a 5 % change of the loss curve against a drop of 0.02 "
                 "in the best validation accuracy.)")
    return text


def _plot(advised, scratch, st, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p.label for p in st.panels if p.label in advised]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.2 * max(len(panels), 1), 4.3),
                             constrained_layout=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (seed, a) in enumerate(advised[panel]):
            rows = [r for r in a.rows if not r.impossible and r.beta > 1]
            b = [r.beta for r in rows]
            clip = lambda v: np.clip(np.where(np.isfinite(v), v, 1e6), a.tol / 100, 1e6)  # noqa: E731
            ax.plot(b, clip(np.array([r.predicted_deviation for r in rows])), "o-", color=f"C{i}",
                    label=f"seed {seed}: predicted")
            if a.verified_seeds:
                ax.plot(b, clip(np.array([r.measured_deviation for r in rows])), "s--", color=f"C{i}",
                        label=f"seed {seed}: verified")
            if math.isfinite(a.mccandlish_beta):
                ax.axvline(a.mccandlish_beta, color=f"C{i}", lw=0.8, ls=":")
        tol = advised[panel][0][1].tol
        ax.axhline(tol, color="k", lw=1, ls="--", label=f"tolerance {tol:g}")
        sc = scratch.get(panel, {}).get("beta_star", math.nan)
        if math.isfinite(sc):
            ax.axvline(sc, color="r", lw=2, alpha=0.5, label=f"from scratch beta* = {sc:g}")
        ax.plot([], [], ":", color="0.4", label="B_simple/S (McCandlish)")
        ax.set(xscale="log", yscale="log", xlabel="beta", ylabel="max |L_beta - L_1| / L_1",
               title=panel)
        ax.legend(fontsize=6)
    fig.suptitle("The advisor: predicted and verified departure from beta = 1, and the from-scratch beta*")
    ctx.figure(fig, NAME)


def main(argv=None) -> int:
    """``python -m nets.experiments.advise``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
