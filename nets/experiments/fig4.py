"""``python -m nets.experiments.fig4``: the loss along the line between two trained models (Fig. 4).

Pairs: (a) two models trained with different η/S (the higher ratio, the paper says, sits in the wider basin);
(b) two models trained with the same ratio but (η, S) and (4η, 4S) (the same width). Along θ(α) = (1 − α)θ_A + αθ_B,
α ∈ [−1, 2], the training loss is evaluated with batch-norm statistics recomputed at every α. The width at each end
is read off as the curvature of a parabola fitted to the loss within ±0.3 of the endpoint (smaller = wider). The
claim agrees when the higher-ratio end is flatter in (a), and the two ends of (b) differ by less (in log-curvature)
than the two ends of (a).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from common.claims import Claim
from common.files import write_text_atomic
from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seeds_for, with_
from nets.experiments.sweep import RunSpec

NAME = "fig4"
CLAIM = ("a higher eta/S ends in a wider basin along the line between two models; equal eta/S with different eta "
         "and S ends in basins of the same width")
@dataclass(frozen=True)
class Settings:
    """The high-ratio end (η, S) of the interpolations, and the model."""

    eta: float
    batch_size: int
    model: str


SETTINGS = {"smoke": Settings(0.2, 16, "mlp"), "small": Settings(0.05, 32, "vgg11"),
            "full": Settings(0.1, 50, "vgg11")}
ALPHAS = np.round(np.linspace(-1.0, 2.0, 31), 10)


def specs(scale, args) -> list[RunSpec]:
    """Per seed: (η, S), (η/4, S) and (4η, 4S)."""
    st = SETTINGS[scale]
    eta, s, model = st.eta, st.batch_size, st.model
    base = base_config(scale, args, model=model)
    out = []
    for seed in seeds_for(scale, args):
        out += [RunSpec(with_(base, eta=eta, batch_size=s, seed=seed), tags=dict(run="high", seed=seed)),
                RunSpec(with_(base, eta=eta / 4, batch_size=s, seed=seed + 100), tags=dict(run="low", seed=seed)),
                RunSpec(with_(base, eta=4 * eta, batch_size=4 * s, seed=seed + 200), tags=dict(run="big", seed=seed))]
    return out


def endpoint_curvature(alphas, losses, at: float, half_width: float = 0.3) -> float:
    """Second derivative of a parabola fitted (least squares) to the loss within ``half_width`` of ``at``."""
    sel = np.abs(alphas - at) <= half_width + 1e-9
    if sel.sum() < 3:
        return math.nan
    c2 = np.polyfit(alphas[sel] - at, losses[sel], 2)[0]
    return float(2.0 * c2)


def _interp(ctx: Context, a_key: str, b_key: str) -> dict:
    cache = ctx.out / f"interp-{a_key}-{b_key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from torch.nn import functional as F

    from nets.landscape import interpolate
    from nets.train import load_run

    _, ma, data = load_run(ctx.out / "runs" / a_key, device="cpu")
    _, mb, _ = load_run(ctx.out / "runs" / b_key, device="cpu")
    n = min(data.train_size, 2000)
    x, y = data.measurement_set(n, seed=11)
    res = interpolate(ma, mb, F.cross_entropy, x, y, alphas=ALPHAS, bn_inputs=x, batch_size=500).to_dict()
    write_text_atomic(cache, json.dumps(res) + "\n")
    return res


def analyse(results, ctx: Context) -> list[Claim]:
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    by = {}
    for spec, _ in results:
        by.setdefault(spec.tags["seed"], {})[spec.tags["run"]] = spec.key()
    seed = min(by)
    runs = by[seed]
    if not {"high", "low", "big"} <= runs.keys():
        return [Claim("complete", "all three runs finished", holds=False, summary="incomplete sweep")]
    diff = _interp(ctx, runs["high"], runs["low"])   # alpha=0: high ratio, alpha=1: low ratio
    same = _interp(ctx, runs["high"], runs["big"])   # alpha=0: (eta, S), alpha=1: (4 eta, 4 S)
    a = np.array(diff["alphas"])
    ld, ls = np.array(diff["losses"]), np.array(same["losses"])
    k_hi, k_lo = endpoint_curvature(a, ld, 0.0), endpoint_curvature(a, ld, 1.0)
    k_s0, k_s1 = endpoint_curvature(a, ls, 0.0), endpoint_curvature(a, ls, 1.0)
    _plot(diff, same, ctx)
    gap_diff = abs(math.log(abs(k_lo) / abs(k_hi))) if k_hi and k_lo else math.nan
    gap_same = abs(math.log(abs(k_s1) / abs(k_s0))) if k_s0 and k_s1 else math.nan
    return [
        Claim("higher-ratio-wider", "the model trained with the higher eta/S sits in the flatter basin",
              holds=k_hi < k_lo, summary=f"curvature along the line at the high-ratio end {k_hi:.3g}, at the "
                                         f"low-ratio end {k_lo:.3g}", numbers=dict(high=k_hi, low=k_lo)),
        Claim("equal-ratio-same-width", "equal eta/S gives ends of similar width (log-curvature gap smaller than "
              "for different ratios)", holds=gap_same < gap_diff,
              summary=f"abs(log curvature ratio): equal ratio {gap_same:.3f}, different ratios {gap_diff:.3f} "
                      f"({k_s0:.3g} vs {k_s1:.3g})", numbers=dict(gap_same=gap_same, gap_diff=gap_diff)),
    ]


def _plot(diff, same, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, res, title, labels in ((axes[0], diff, "different eta/S", ("high ratio", "ratio / 4")),
                                   (axes[1], same, "equal eta/S", ("(eta, S)", "(4 eta, 4 S)"))):
        ax.plot(res["alphas"], res["losses"], "-o", ms=3, color="C0", label="train loss")
        ax2 = ax.twinx()
        ax2.plot(res["alphas"], res["accuracies"], "--", color="C3", lw=1, label="train accuracy")
        ax2.set_ylabel("accuracy", color="C3")
        ax.set_yscale("log")
        ax.set(xlabel=f"alpha (0: {labels[0]}, 1: {labels[1]})", ylabel="loss", title=title)
        for x0 in (0.0, 1.0):
            ax.axvline(x0, color="0.6", lw=0.8)
    fig.suptitle("Fig. 4 analogue: loss along (1 - alpha) theta_A + alpha theta_B, batch norm recomputed at each alpha")
    ctx.figure(fig, "fig4")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig4``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
