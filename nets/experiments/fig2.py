"""``python -m nets.experiments.fig2``: when the batch grows, scale η like S (Fig. 2).

A small-batch run (η₀, S₀) against runs with a k-times larger batch and η scaled like S (kη₀), like √S (√k·η₀), or
kept fixed (η₀). The paper (ResNet56 and VGG11 on CIFAR-10, S₀ = 50) finds the linear rule closest to the
small-batch curve. The distance is the RMS difference of validation accuracy curves against epochs (examples seen),
evaluated four times per epoch and averaged over seeds; the claim agrees when the linear rule has the smallest
distance.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from common.claims import Claim
from nets.experiments.analysis import Context, curve, rms_distance
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seeds_for, with_
from nets.experiments.sweep import RunSpec

NAME = "fig2"
CLAIM = "growing the batch k-fold, scaling eta by k keeps the small-batch learning curve better than sqrt(k) or 1"
# small: VGG11 at 1/4 width (ResNet56 at batch 16 runs at ~40 examples/s on 2 cores: 40 min for the sweep).
@dataclass(frozen=True)
class Settings:
    """The small batch (η0, S0), the growth factor k of the batch, and the model."""

    eta0: float
    batch_size: int
    k: int
    model: str


SETTINGS = {"smoke": Settings(0.02, 8, 4, "mlp"), "small": Settings(0.02, 32, 8, "vgg11"),
            "full": Settings(0.01, 50, 8, "resnet56")}
RULES = {"linear": lambda k: k, "sqrt": math.sqrt, "fixed": lambda k: 1.0}


def specs(scale, args) -> list[RunSpec]:
    """The small-batch run and the k-fold batch with η scaled by each rule, per seed."""
    st = SETTINGS[scale]
    eta0, s0, k, model = st.eta0, st.batch_size, st.k, st.model
    base = with_(base_config(scale, args, model=model), evals_per_epoch=4)
    if scale == "full":
        base = with_(base, schedule="step", decay_factor=0.1, decay_every=60.0)
    out = []
    for seed in seeds_for(scale, args, default_small=2):
        out.append(RunSpec(with_(base, eta=eta0, batch_size=s0, seed=seed), tags=dict(run="small-batch", seed=seed)))
        for rule, f in RULES.items():
            out.append(RunSpec(with_(base, eta=eta0 * f(k), batch_size=k * s0, seed=seed),
                               tags=dict(run=rule, seed=seed)))
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    import numpy as np

    by = {}
    for spec, r in results:
        by.setdefault(spec.tags["seed"], {})[spec.tags["run"]] = ctx.history(spec.key())
    dist = {rule: [] for rule in RULES}
    for runs in by.values():
        if "small-batch" in runs and all(r in runs for r in RULES):
            for rule in RULES:
                dist[rule].append(rms_distance(runs["small-batch"], runs[rule], "val_acc"))
    if not dist["linear"]:
        return [Claim("complete", "all four runs of a seed finished", holds=False, summary="incomplete sweep")]
    m = {k: float(np.mean(v)) for k, v in dist.items()}
    best = min(m, key=m.get)
    _plot(by, ctx)
    return [Claim("linear-rule-closest", "eta scaled like S matches the small-batch curve best",
                  holds=best == "linear", summary="RMS val-accuracy distance to the small-batch curve: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) + f"; closest: {best}",
                  numbers=m)]


def _plot(by, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = by[min(by)]
    fig, ax = plt.subplots(figsize=(6.6, 4.4), constrained_layout=True)
    for k, color in (("small-batch", "k"), ("linear", "C0"), ("sqrt", "C1"), ("fixed", "C3")):
        if k in runs:
            e, v = curve(runs[k], "val_acc")
            label = k if k == "small-batch" else f"eta ~ {'S' if k == 'linear' else 'sqrt(S)' if k == 'sqrt' else '1'}"
            ax.plot(e, v, "-o", color=color, ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="Fig. 2 analogue: rescaling eta with the batch")
    ax.legend(fontsize=8)
    ctx.figure(fig, "fig2")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig2``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
