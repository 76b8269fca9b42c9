"""``python -m nets.experiments.fig4``: the loss along the line between two trained models (Fig. 4).

The paper (Sec. 3): "We follow [15] by investigating the loss on the line interpolating between the parameters of
two models with interpolation coefficient α. In Fig. 4(a,b) we consider Resnet56 models on CIFAR10 resulting from
optimization with different η/S ... In Fig. 4(c,d) we consider VGG-11 models trained on CIFAR10 with the same ratio
(η = 0.1 × β)/(S = 50 × β) but different β. We see the same sharpness for the same ratio. Experiments were repeated
several times with different random initializations."

Full scale, on CIFAR-10 (``--data-root``), 200 epochs: (a, b) ResNet56 trained at (0.1, 50) against (0.025, 50), a
4× lower η/S; (c, d) VGG11 at β = 1 and β = 4 of (η, S) = β·(0.1, 50); 3 seeds. Small scale: the same models at a
quarter width on Fashion-MNIST padded to 32×32 (10 000 examples, 6 epochs), base (0.05, 32). Along
θ(α) = (1 − α)θ_A + αθ_B, α ∈ [−1, 2], the training and test loss and accuracy are evaluated with batch-norm
statistics recomputed on training inputs at every α. The width at each end is the curvature of a parabola fitted
to the training loss within ±0.3 of the endpoint (smaller = wider), per seed; the claim agrees when the
higher-ratio end is flatter in (a, b), and the two ends of (c, d) differ by less (in log-curvature) than the two
ends of (a, b), each judged by the 95 % interval of the per-seed values ("not settled" with one seed).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seed_words, seeds_for, with_
from nets.experiments.sweep import RunSpec
from sgd_noise_common.claims import Claim
from sgd_noise_common.files import read_json, write_json_atomic
from sgd_noise_common.seeds import spawn_seeds
from sgd_noise_common.stats import mean_above

NAME = "fig4"
CLAIM = ("a higher eta/S ends in a wider basin along the line between two models; equal eta/S with different eta "
         "and S ends in basins of the same width")
ALPHAS = np.round(np.linspace(-1.0, 2.0, 31), 10)
#: Examples of the training and test sets evaluated at every α.
EVAL_SIZE = 2000


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The base (η, S): panel (a, b) trains ``diff_model`` at (η, S) and (η/``ratio_factor``, S); panel (c, d)
    trains ``same_model`` at β·(η, S) for β in ``betas``."""

    eta: float
    batch_size: int
    diff_model: str
    same_model: str
    ratio_factor: float = 4.0
    betas: tuple = (1, 4)


SETTINGS = {"smoke": Settings(eta=0.2, batch_size=16, diff_model="resnet56", same_model="vgg11"),
            "small": Settings(eta=0.05, batch_size=32, diff_model="resnet56", same_model="vgg11"),
            "full": Settings(eta=0.1, batch_size=50, diff_model="resnet56", same_model="vgg11")}
SEEDS = {"small": 3, "full": 3}


def choices(scale: str, args) -> list[str]:
    """What the paper leaves open at this scale, and what was chosen."""
    st = SETTINGS[scale]
    out = [f"Not in the paper: the two ratios of Fig. 4(a, b); chose ({st.eta:g}, {st.batch_size}) against "
           f"({st.eta / st.ratio_factor:g}, {st.batch_size}), {st.ratio_factor:g}x lower.",
           f"Not in the paper: the values of beta in Fig. 4(c, d); chose {', '.join(map(str, st.betas))}.",
           f"Not in the paper: the number of repetitions ('several'); chose {SEEDS['full']} seeds at full scale.",
           "Not in the paper: momentum, weight decay, augmentation and the learning-rate schedule of these runs; "
           "chose constant eta, plain SGD, none and none.",
           f"Not in the paper: the evaluation set along the line; chose {EVAL_SIZE} training and {EVAL_SIZE} test "
           "examples, batch norm recomputed on the training ones at every alpha."]
    if scale == "small":
        seeds = seed_words(scale, args, SEEDS["small"], SEEDS["full"])
        out.append("Small scale, not the paper's: ResNet56 and VGG11 at 1/4 width on Fashion-MNIST zero-padded to "
                   f"32x32 (10 000 examples, 6 epochs), base (0.05, 32), {seeds}.")
    if scale == "smoke":
        out.append("Smoke scale: both panels are the narrow MLP on synthetic data (the pipeline only).")
    return out


def specs(scale, args) -> list[RunSpec]:
    """Per seed: panel ``different ratio`` (η, S) and (η/4, S); panel ``equal ratio`` β·(η, S) for each β."""
    st = SETTINGS[scale]
    out = []
    for seed in seeds_for(scale, args, default_small=SEEDS["small"], default_full=SEEDS["full"]):
        a = base_config(scale, args, model=st.diff_model)
        b = base_config(scale, args, model=st.same_model)
        diff = dict(panel=f"{st.diff_model}: different eta/S", seed=seed)
        same = dict(panel=f"{st.same_model}: equal eta/S", seed=seed)
        # Every run of a replicate starts from its own initialisation and batch order: children of the replicate's
        # seed (sgd_noise_common.seeds), one per run.
        run_seed = spawn_seeds(seed, ("high", "low", *(f"beta{beta}" for beta in st.betas)))
        out += [RunSpec(with_(a, eta=st.eta, batch_size=st.batch_size, seed=run_seed["high"]),
                        tags=dict(run="high", **diff)),
                RunSpec(with_(a, eta=st.eta / st.ratio_factor, batch_size=st.batch_size, seed=run_seed["low"]),
                        tags=dict(run="low", **diff))]
        out += [RunSpec(with_(b, eta=st.eta * beta, batch_size=st.batch_size * beta, seed=run_seed[f"beta{beta}"]),
                        tags=dict(run=f"beta{beta}", **same)) for beta in st.betas]
    return out


def endpoint_curvature(alphas, losses, at: float, half_width: float = 0.3) -> float:
    """Second derivative of a parabola fitted (least squares) to the loss within ``half_width`` of ``at``."""
    alphas, losses = np.asarray(alphas), np.asarray(losses)
    sel = (np.abs(alphas - at) <= half_width + 1e-9) & np.isfinite(losses)
    if sel.sum() < 3:
        return math.nan
    c2 = np.polyfit(alphas[sel] - at, losses[sel], 2)[0]
    return float(2.0 * c2)


def _interp(ctx: Context, a_key: str, b_key: str) -> dict:
    """Training and test loss and accuracy along the line between two runs (cached in the output folder)."""
    cache = ctx.out / f"interp-{a_key}-{b_key}.json"
    if cache.is_file():
        return read_json(cache, what="interpolation")
    from torch.nn import functional as F

    from nets.landscape import interpolate
    from nets.train import load_run

    # On the first run's own device (its TrainConfig.device, resolved as training resolves it), the second beside
    # it; the numbers come back as lists.
    _, ma, data = load_run(ctx.out / "runs" / a_key, device=None)
    _, mb, _ = load_run(ctx.out / "runs" / b_key, device=str(next(ma.parameters()).device))
    x, y = data.measurement_set(min(data.train_size, EVAL_SIZE), seed=11)
    n_test = min(int(data.x_test.shape[0]), EVAL_SIZE)
    train, more = interpolate(ma, mb, F.cross_entropy, x, y, alphas=ALPHAS, bn_inputs=x, batch_size=500,
                              more_sets={"test": (data.x_test[:n_test], data.y_test[:n_test])})
    test = more["test"]
    res = {"alphas": train.alphas.tolist(), "train_loss": train.losses.tolist(),
           "train_acc": train.accuracies.tolist(), "test_loss": test.losses.tolist(),
           "test_acc": test.accuracies.tolist()}
    write_json_atomic(cache, res, kind="nets.experiments.fig4.interpolation")
    return res


def analysis_work(specs) -> list[tuple]:
    """The analysis's cost for the plan (``nets.experiments.plan.make_plan``): per seed, two lines of ``ALPHAS``
    points (``_interp``), each point the batch-norm statistics recomputed on the training examples (with batch
    norm) and the loss over the training and the test examples, ``EVAL_SIZE`` of each at most: forward passes over
    that many examples per point, with the pair's model."""
    from nets.experiments.plan import run_examples, test_examples

    by: dict = {}
    for spec in specs:
        by.setdefault((spec.tags["seed"], spec.tags["panel"]), spec)
    out = []
    for spec in by.values():
        cfg = spec.train
        train = min(run_examples(cfg)[1], EVAL_SIZE)
        test = min(test_examples(cfg), EVAL_SIZE)
        out.append((spec, len(ALPHAS) * ((2 if cfg.batch_norm else 1) * train + test)))
    return out


def analyse(results, ctx: Context) -> list[Claim]:
    """Endpoint curvatures along each pair's line, per seed; the claims compare them (see the module docstring)."""
    by: dict[int, dict] = {}
    for spec, r in results:
        if not r.get("diverged"):
            by.setdefault(spec.tags["seed"], {})[spec.tags["run"]] = spec.key()
    st = SETTINGS[ctx.scale]
    b0, b1 = f"beta{st.betas[0]}", f"beta{st.betas[-1]}"
    curv, seeds, first = [], [], None
    for seed, runs in sorted(by.items()):
        if not {"high", "low", b0, b1} <= runs.keys():
            continue
        diff, same = _interp(ctx, runs["high"], runs["low"]), _interp(ctx, runs[b0], runs[b1])
        first = first or (diff, same, seed)
        a = np.array(diff["alphas"])
        seeds.append(seed)
        curv.append([endpoint_curvature(a, diff["train_loss"], 0.0), endpoint_curvature(a, diff["train_loss"], 1.0),
                     endpoint_curvature(a, same["train_loss"], 0.0), endpoint_curvature(a, same["train_loss"], 1.0)])
    if not curv:
        return [Claim("complete", "all four runs of a seed finished without diverging", holds=False,
                      summary="incomplete sweep")]
    k_hi, k_lo, k_s0, k_s1 = np.nanmedian(np.array(curv), axis=0)
    _plot(*first, ctx)
    gaps = np.array([[abs(math.log(abs(c[1] / c[0]))), abs(math.log(abs(c[3] / c[2])))] for c in curv
                     if all(np.isfinite(c)) and all(c)])
    gap_diff, gap_same = (np.median(gaps, axis=0) if gaps.size else (math.nan, math.nan))
    ctx.table("Curvature of the training loss along the line at each end (per seed)",
              ["seed", "high ratio", "ratio / 4", f"beta {st.betas[0]}", f"beta {st.betas[-1]}"],
              [[seed] + [f"{v:.4g}" for v in c] for seed, c in zip(seeds, curv)])
    # Per seed: how much sharper the low-ratio end is (log k_lo/k_hi), and how much wider the different-ratio gap
    # is than the equal-ratio one; the seeds' scatter judges each mean at 95 % (one seed: not settled).
    sharper = [math.log(c[1] / c[0]) for c in curv if c[0] > 0 and c[1] > 0]
    wider = [g[0] - g[1] for g in gaps]
    hi_lo, same_w = mean_above(sharper), mean_above(wider)
    return [
        Claim("higher-ratio-wider", "the model trained with the higher eta/S sits in the flatter basin (the per-seed "
              "log curvature ratio low/high above 0, 95 %)", holds=hi_lo.holds, settled=hi_lo.settled,
              summary=f"curvature along the line at the high-ratio end {k_hi:.3g}, at the low-ratio end {k_lo:.3g} "
                      f"(medians; {len(curv)} seeds)", numbers=dict(high=k_hi, low=k_lo)),
        Claim("equal-ratio-same-width", "equal eta/S gives ends of similar width (the per-seed log-curvature gap "
              "smaller than for different ratios, 95 %)", holds=same_w.holds, settled=same_w.settled,
              summary=f"abs(log curvature ratio): equal ratio {gap_same:.3f}, different ratios {gap_diff:.3f} "
                      f"(medians; ends {k_s0:.3g} vs {k_s1:.3g}; {len(wider)} seeds)",
              numbers=dict(gap_same=gap_same, gap_diff=gap_diff)),
    ]


def _plot(diff, same, seed, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = SETTINGS[ctx.scale]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), constrained_layout=True)
    for ax, res, title, labels in (
            (axes[0], diff, f"(a, b) {st.diff_model}: different eta/S", ("high ratio", "ratio / 4")),
            (axes[1], same, f"(c, d) {st.same_model}: equal eta/S",
             (f"beta {st.betas[0]}", f"beta {st.betas[-1]}"))):
        ax.plot(res["alphas"], res["train_loss"], "-o", ms=3, color="C0", label="train loss")
        ax.plot(res["alphas"], res["test_loss"], "-s", ms=3, color="C1", label="test loss")
        ax2 = ax.twinx()
        ax2.plot(res["alphas"], res["train_acc"], "--", color="C0", lw=1, label="train accuracy")
        ax2.plot(res["alphas"], res["test_acc"], "--", color="C1", lw=1, label="test accuracy")
        ax2.set_ylabel("accuracy (dashed)")
        ax.set_yscale("log")
        ax.set(xlabel=f"alpha (0: {labels[0]}, 1: {labels[1]})", ylabel="loss (solid)", title=title)
        for x0 in (0.0, 1.0):
            ax.axvline(x0, color="0.6", lw=0.8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Fig. 4: loss and accuracy along (1 - alpha) theta_A + alpha theta_B (seed {seed}), batch norm "
                 "recomputed at each alpha")
    ctx.figure(fig, "fig4")


def main(argv=None) -> int:
    """``python -m nets.experiments.fig4``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
