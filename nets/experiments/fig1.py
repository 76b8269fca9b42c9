"""``python -m nets.experiments.fig1``: equal η/S gives equal learning curves (Fig. 1).

The paper (Sec. 3): "we trained the VGG11 architecture on the CIFAR10 dataset ... a cyclic batch size (CBS)
schedule (blue) oscillating between 128 and 640 while using a fixed learning rate of η = 0.005, compared to a
cyclic learning rate (CLR) schedule (red) oscillating between 0.001 and 0.005 with a fixed batch size of S = 128.
The right plot compares ... constant learning rate to batch size ratios of η/S = 0.001/128 (blue) versus
η/S = 0.005/640 (red)"; footnote 6: "Each experiment was repeated for 5 different random initializations."

Full scale is exactly that: VGG11 on CIFAR-10 (``--data-root``), CLR η ∈ [0.001, 0.005] at S = 128 against CBS
S ∈ [128, 640] at η = 0.005 (the same η/S at every example seen), constant 0.001/128 against 0.005/640, 5 seeds,
200 epochs; plus a control (0.001, 1024) with 1/8 the ratio, which is not in the paper. Small scale: VGG11 at a
quarter width on Fashion-MNIST padded to 32×32 (10 000 examples, 6 epochs), η_max = 0.05, S = 32, 3 seeds. Curves
are evaluated four times per epoch. The distance between two runs is the RMS difference of their validation
accuracy curves; the claim agrees when each equal-ratio pair is closer than the control pair, judged by the 95 %
interval of the per-seed difference ("not settled" where it straddles 0, or with one seed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from nets.experiments.analysis import Context, curve, rms_distance
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seed_words, seeds_for, with_
from nets.experiments.sweep import RunSpec
from sgd_noise_common.claims import Claim
from sgd_noise_common.stats import mean_above

NAME = "fig1"
CLAIM = ("the dynamics are set by eta/S: a cyclic batch size follows the cyclic learning rate with the same ratio, "
         "and constant (eta, S) pairs with equal ratio give the same learning curves")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One scale: the cyclic schedules (η between ``cycle_low``·η_max and η_max, or S between S0 and
    S0/``cycle_low``), the equal-ratio constant pair (η_max·cycle_low, S0) and (η_max, S0/cycle_low)."""

    eta_max: float
    batch_size: int
    cycle_low: float
    cycle_epochs: float
    model: str
    seeds: int


SETTINGS = {
    "smoke": Settings(eta_max=0.2, batch_size=16, cycle_low=0.2, cycle_epochs=1.0, model="mlp", seeds=1),
    "small": Settings(eta_max=0.05, batch_size=32, cycle_low=0.2, cycle_epochs=2.0, model="vgg11", seeds=3),
    "full": Settings(eta_max=0.005, batch_size=128, cycle_low=0.2, cycle_epochs=25.0, model="vgg11", seeds=5),
}


def choices(scale: str, args) -> list[str]:
    """What the paper leaves open at this scale, and what was chosen."""
    st = SETTINGS[scale]
    out = [f"Not in the paper: the cycle length; chose a period of {st.cycle_epochs:g} epochs (a triangular wave) "
           "so that a run sees several cycles.",
           "Not in the paper: momentum and weight decay; chose plain SGD (momentum 0, no weight decay), the "
           "setting of the SDE argument.",
           "Not in the paper: data augmentation; chose none.",
           f"Not in the paper: a control; added ({st.eta_max * st.cycle_low:g}, {8 * st.batch_size}) with 1/8 the "
           "ratio, to show what distance counts as different."]
    if scale == "small":
        out.append("Small scale, not the paper's: VGG11 at 1/4 width on Fashion-MNIST zero-padded to 32x32 "
                   f"(10 000 examples, 6 epochs), eta_max = 0.05, S = 32, {seed_words(scale, args, st.seeds)}: "
                   "minutes on a CPU.")
    return out


def specs(scale, args) -> list[RunSpec]:
    """CLR and CBS with equal η/S (panel ``cyclic``); (η, S), (5η, 5S) and a control (panel ``constant``); per
    seed."""
    st = SETTINGS[scale]
    eta, s0, low, period, model = st.eta_max, st.batch_size, st.cycle_low, st.cycle_epochs, st.model
    k = round(1 / low)  # the paper: 128 -> 640 and 0.001 -> 0.005, a factor 5
    base = with_(base_config(scale, args, model=model), evals_per_epoch=4)
    out = []
    for seed in seeds_for(scale, args, default_small=st.seeds, default_full=st.seeds):
        common = dict(seed=seed, cycle_low=low, cycle_epochs=period)
        cyc = dict(panel="cyclic", seed=seed)
        con = dict(panel="constant", seed=seed)
        out += [
            RunSpec(with_(base, eta=eta, batch_size=s0, schedule="clr", **common), tags=dict(run="clr", **cyc)),
            RunSpec(with_(base, eta=eta, batch_size=s0, schedule="cbs", **common), tags=dict(run="cbs", **cyc)),
            RunSpec(with_(base, eta=eta * low, batch_size=s0, seed=seed), tags=dict(run="const-a", **con)),
            RunSpec(with_(base, eta=eta * low * k, batch_size=k * s0, seed=seed), tags=dict(run="const-b", **con)),
            RunSpec(with_(base, eta=eta * low, batch_size=8 * s0, seed=seed), tags=dict(run="control", **con)),
        ]
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    by = {}
    for spec, r in results:  # a diverged run (None) is infinitely far from any curve; the report tables it
        by.setdefault(spec.tags["seed"], {})[spec.tags["run"]] = None if r.get("diverged") else \
            ctx.history(spec.key())
    d = {"cyclic": [], "constant": [], "control": []}
    for runs in by.values():
        if {"clr", "cbs", "const-a", "const-b", "control"} <= runs.keys():
            d["cyclic"].append(rms_distance(runs["clr"], runs["cbs"], "val_acc"))
            d["constant"].append(rms_distance(runs["const-a"], runs["const-b"], "val_acc"))
            d["control"].append(rms_distance(runs["const-a"], runs["control"], "val_acc"))
    if not d["control"]:
        return [Claim("complete", "all five runs of a seed finished", holds=False, summary="incomplete sweep")]
    import numpy as np

    m = {k: float(np.mean(v)) for k, v in d.items()}
    claims = []
    for name, pair, statement in (
            ("cyclic-lr-vs-cyclic-batch", "cyclic", "a cyclic batch size follows the cyclic learning rate with the "
             "same eta/S (closer than the control with 1/8 the ratio)"),
            ("equal-ratio-constant", "constant", "(eta, S) and (5 eta, 5 S) give the same curve (closer than the "
             "control (eta, 8S))")):
        # Per seed, how much closer the pair is than the control; the seeds' scatter judges the mean (95 %).
        gap = np.array(d["control"]) - np.array(d[pair])
        c = mean_above(gap)
        claims.append(Claim(name, statement + " (the 95 % interval of the per-seed difference above 0)",
                            holds=c.holds, settled=c.settled,
                            summary=f"RMS val-accuracy distance {m[pair]:.4f} vs control {m['control']:.4f}; "
                                    f"difference {np.mean(gap):.4f} (95 % {c.low:.4f}..{c.high:.4f}, "
                                    f"{len(d[pair])} seeds)",
                            numbers=dict(distance=m[pair], control=m["control"])))
    _plot(by, ctx)
    return claims


def _plot(by, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = by[min(by)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    styles = {"clr": ("C3", "cyclic learning rate"), "cbs": ("C0", "cyclic batch size"),
              "const-a": ("C3", "(eta, S)"), "const-b": ("C0", "(5 eta, 5 S)"), "control": ("0.5", "(eta, 8 S)")}
    for ax, keys, title in ((axes[0], ("clr", "cbs"), "cyclic schedules, equal eta/S"),
                            (axes[1], ("const-a", "const-b", "control"), "constant eta and S")):
        for k in keys:
            if k not in runs:
                continue
            if runs[k] is None:
                ax.plot([], [], "x", color=styles[k][0], label=f"{styles[k][1]}: diverged *")
                continue
            color, label = styles[k]
            e, v = curve(runs[k], "val_acc")
            et, vt = curve(runs[k], "train_acc")
            ax.plot(e, v, "-o", color=color, ms=3, label=f"{label}: validation")
            ax.plot(et, vt, "--", color=color, lw=1, label=f"{label}: train")
        ax.set(xlabel="epoch", title=title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(f"Fig. 1 analogue (seed {min(by)})")
    ctx.figure(fig, "fig1")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig1``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
