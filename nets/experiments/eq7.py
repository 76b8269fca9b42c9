"""``python -m nets.experiments.eq7``: Eq. (7), E(l) = η/(4S)·Tr(H), measured on trained networks.

After training at (η, S), SGD continues at the same fixed (η, S); the fluctuation–dissipation ratio ⟨O_L⟩/⟨O_R⟩
(``sde.diagnostics.FDRMonitor``) over consecutive windows decides when the process is stationary (the first window
within ``fdr_tol`` of 1). Over the stationary phase: the mean full-batch training loss ⟨L⟩ on a fixed measurement
subset, and two estimates of the excess E(l) over the bottom of the basin SGD explores: ⟨L⟩ minus the loss reached
by annealing η linearly to 0 from the last state, and (η/4)⟨‖g_B‖²⟩ (exact on a quadratic, ``verification.fdr``).
At the end Tr(H) (Hutchinson) and Tr(C) (per-example gradients) are measured there. Across a grid of η/S the report
gives the log-log slope of E(l) against η/(4S)·Tr(H), against η/(4S)·Tr(H_data) (the data loss's Hessian, without
the γP that the L2 term adds over all P parameters, most of which no gradient noise reaches) and against
η/(4S)·Tr(C), the ratios with their uncertainty, and Tr(C)/Tr(H), the paper's Assumption 2 (C = H).

The network is the MLP *without* batch norm, trained *with* weight decay γ, and the loss, its Hessian and the
gradient in (η/4)⟨‖g‖²⟩ all include the L2 term (γ/2)‖θ‖² that SGD actually minimises. Both choices are needed
for a stationary state to exist: with batch norm the weights feeding it are scale-invariant (θ·∇L = 0 for them), and
with cross-entropy and no weight decay the loss keeps falling as the weights grow, so SGD drifts for ever. The FDR
shows the latter: run without weight decay (``small`` scale, 6000 steps after 5 epochs), every window had
⟨O_L⟩/⟨O_R⟩ < 0.2 and most were negative, ⟨θ·g⟩ < 0, the norm growing.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np

from nets.experiments._common import Context, base_config, main_for, seeds_for, with_
from nets.experiments._runner import RunSpec
from common.files import write_text_atomic
from common.claims import Claim

NAME = "eq7"
CLAIM = ("near a minimum SGD's stationary excess loss is E(l) = eta/(4S) Tr(H) (with C = H; eta/(4S) Tr(C) in "
         "general)")
SETTINGS = {  # etas, batch sizes, stationary steps, window, anneal steps, measure size, probes, weight decay
    "smoke": ([0.05, 0.1, 0.2], [16], 600, 100, 200, 256, 8, 1e-2),
    "small": ([0.02, 0.05, 0.1, 0.2], [32, 128], 6000, 500, 2000, 2000, 16, 1e-2),
    "full": ([0.01, 0.02, 0.05, 0.1, 0.2], [32, 128, 512], 40000, 2000, 10000, 5000, 32, 5e-3),
}


def specs(scale, args) -> list[RunSpec]:
    etas, sizes, steps, window, anneal, msize, probes, wd = SETTINGS[scale]
    base = with_(base_config(scale, args), batch_norm=False, weight_decay=wd)
    out = []
    for seed in seeds_for(scale, args):
        for eta in etas:
            for s in sizes:
                out.append(RunSpec(with_(base, eta=eta, batch_size=s, seed=seed), tags=dict(seed=seed),
                                   stationary=dict(steps=steps, window=window, anneal_steps=anneal,
                                                   measure_size=msize, probes=probes)))
    return out


def stationary_phase(run_dir, *, steps: int, window: int, anneal_steps: int, measure_size: int, probes: int,
                     fdr_tol: float = 0.1, eval_every: int = 10, device: str = "cpu", seed: int = 0) -> dict:
    """Continue SGD at the run's (η, S), find the stationary phase by the FDR, and measure E(l), Tr(H), Tr(C)."""
    import torch
    from torch.nn import functional as F

    from nets.curvature import gradient_noise, hessian_stats
    from nets.data import BatchSampler
    from nets.evaluation import evaluate
    from nets.train import _fdr_post, _fdr_pre, load_run
    from sde.diagnostics import FDRMonitor

    cache = Path(run_dir) / "stationary.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg, model, data = load_run(run_dir, device=device)
    torch.manual_seed(cfg.seed + 12345)
    n = data.train_size
    x_m, y_m = data.measurement_set(min(measure_size, n), seed=cfg.data_seed + 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.eta, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = BatchSampler(n, seed=cfg.seed + 1000, device=x_m.device)
    gamma = cfg.weight_decay

    def objective(m):  # the data loss plus the L2 term SGD minimises, on the measurement subset
        l2 = 0.5 * gamma * sum(float((p.detach().double() ** 2).sum()) for p in m.parameters())
        return evaluate(m, F.cross_entropy, x_m, y_m, batch_size=1000)[0] + l2

    ratios, losses, loss_steps, gsq = [], [], [], []
    mon = FDRMonitor(cfg.eta, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    for k in range(steps):
        idx = sampler.next(cfg.batch_size)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        o_left, plain_sq = _fdr_pre(model, cfg.weight_decay)
        gsq.append(plain_sq)  # ‖g_B + γθ‖², the whole stochastic gradient
        opt.step()
        mon.record(o_left, _fdr_post(model, opt, cfg, cfg.eta, plain_sq))
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"SGD diverged in the stationary phase at step {k}")
        if (k + 1) % eval_every == 0:
            losses.append(objective(model))
            loss_steps.append(k + 1)
        if (k + 1) % window == 0:
            sm = mon.summary()
            ratios.append(sm.ratio)
            mon = FDRMonitor(cfg.eta, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start_window = next((i for i, r in enumerate(ratios) if abs(r - 1.0) < fdr_tol), None)
    stationary = start_window is not None
    start = (start_window if stationary else len(ratios) // 2) * window
    loss_steps = np.array(loss_steps)
    l_stat = np.array(losses)[loss_steps > start]
    g_stat = np.array(gsq)[start:]
    mean_l, se_l = _batch_means(l_stat)
    mean_g, se_g = _batch_means(g_stat)
    # The bottom of the basin: anneal eta linearly to 0 from the last state.
    bottom_model = copy.deepcopy(model)
    opt_b = torch.optim.SGD(bottom_model.parameters(), lr=cfg.eta, momentum=cfg.momentum, weight_decay=gamma)
    for k in range(anneal_steps):
        for g in opt_b.param_groups:
            g["lr"] = cfg.eta * (1.0 - k / anneal_steps)
        idx = sampler.next(cfg.batch_size)
        opt_b.zero_grad(set_to_none=True)
        F.cross_entropy(bottom_model(data.x_train[idx]), data.y_train[idx]).backward()
        opt_b.step()
    bottom = objective(bottom_model)
    hs = hessian_stats(model, F.cross_entropy, x_m, y_m, batch_size=min(len(x_m), 500), num_probes=probes,
                       rng=seed, weight_decay=gamma)
    gn = gradient_noise(model, F.cross_entropy, x_m, y_m, batch_size=min(len(x_m), 500))
    pref = cfg.eta / (4.0 * cfg.batch_size)
    out = dict(stationary=stationary, stationary_start=start, fdr_ratios=ratios, fdr_ratio_last=ratios[-1],
               weight_decay=gamma, mean_loss=mean_l,
               mean_loss_stderr=se_l, bottom_loss=bottom, e_anneal=mean_l - bottom, e_anneal_stderr=se_l,
               e_fdr=cfg.eta / 4.0 * mean_g, e_fdr_stderr=cfg.eta / 4.0 * se_g, trace_h=hs.trace,
               trace_h_stderr=hs.trace_stderr, trace_c=gn.trace_c, trace_c_stderr=gn.trace_c_stderr,
               pred_h=pref * hs.trace, pred_c=pref * gn.trace_c, lambda_max=hs.lambda_max, num_params=hs.num_params,
               trace_h_data=hs.trace - gamma * hs.num_params, pred_h_data=pref * (hs.trace - gamma * hs.num_params))
    write_text_atomic(cache, json.dumps(out, indent=2) + "\n")
    return out


def _batch_means(x: np.ndarray, batches: int = 10) -> tuple[float, float]:
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan
    k = min(batches, x.size)
    means = np.array([c.mean() for c in np.array_split(x, k)])
    return float(x.mean()), float(means.std(ddof=1) / math.sqrt(k))


def _slope(x, y) -> tuple[float, float]:
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return math.nan, math.nan
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if ok.sum() == 2:
        return float((ly[1] - ly[0]) / (lx[1] - lx[0])), math.nan
    (b, a), cov = np.polyfit(lx, ly, 1, cov=True)
    return float(b), float(math.sqrt(cov[0, 0]))


def _with_data_trace(spec, r) -> dict:
    """Tr(H) of the data loss alone, Tr(H) − γP (P parameters), for results measured before it was stored."""
    if "pred_h_data" in r:
        return r
    from nets.models import build_model, count_parameters

    cfg = spec.train
    shape = (1, 32, 32) if cfg.pad_to == 32 else ((3, 32, 32) if "cifar" in cfg.dataset else (1, 28, 28))
    p = count_parameters(build_model(cfg.model, shape, 10, width=cfg.width, batch_norm=cfg.batch_norm))
    t = r["trace_h"] - cfg.weight_decay * p
    return dict(r, num_params=p, trace_h_data=t, pred_h_data=r["pred_h"] * t / r["trace_h"])


def analyse(results, ctx: Context) -> list[Claim]:
    rows = [_with_data_trace(spec, r) for spec, r in results]
    e_a = np.array([r["e_anneal"] for r in rows])
    e_f = np.array([r["e_fdr"] for r in rows])
    p_h = np.array([r["pred_h"] for r in rows])
    p_c = np.array([r["pred_c"] for r in rows])
    p_d = np.array([r["pred_h_data"] for r in rows])
    c_over_h = np.array([r["trace_c"] / r["trace_h"] for r in rows])
    stationary = sum(bool(r["stationary"]) for r in rows)
    claims = [Claim("stationary", "SGD reaches a stationary phase (FDR ratio within 0.1 of 1)",
                    holds=stationary == len(rows), summary=f"{stationary}/{len(rows)} runs")]
    for name, e in (("anneal", e_a), ("fdr", e_f)):
        for pname, p in (("Tr(H)", p_h), ("Tr(H_data)", p_d), ("Tr(C)", p_c)):
            slope, se = _slope(p, e)
            ratio = e / p
            med = float(np.median(ratio))
            claims.append(Claim(
                f"eq7-{name}-{pname[3:-1]}",
                f"E(l) ({'<L> minus annealed bottom' if name == 'anneal' else '(eta/4)<|g_B|^2>'}) "
                f"= eta/(4S) {pname}: log-log slope 1 within 0.25 and ratio within a factor 2",
                holds=bool(abs(slope - 1.0) < 0.25 and 0.5 < med < 2.0),
                summary=f"slope {slope:.2f} ± {se:.2f}; E(l)/prediction median {med:.3g} (range "
                        f"{ratio.min():.3g}..{ratio.max():.3g})", numbers=dict(slope=slope, median_ratio=med)))
    c_over_d = np.array([r["trace_c"] / r["trace_h_data"] for r in rows])
    claims.append(Claim("assumption-c-equals-h", "Tr(C)/Tr(H) = 1 (the paper's Assumption 2, C = H), within a "
                        "factor 2", holds=bool(0.5 < np.median(c_over_h) < 2.0),
                        summary=f"Tr(C)/Tr(H) median {np.median(c_over_h):.3g} (range {c_over_h.min():.3g}.."
                                f"{c_over_h.max():.3g}); Tr(C)/Tr(H_data), without the L2 term gamma*P: median "
                                f"{np.median(c_over_d):.3g}"))
    _plot(rows, ctx)
    return claims


def _plot(rows, ctx: Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, pk, label in ((axes[0], "pred_h", "Tr(H)"), (axes[1], "pred_c", "Tr(C)")):
        p = np.array([r[pk] for r in rows])
        for ek, sk, color, name in (("e_anneal", "e_anneal_stderr", "C0", "<L> - annealed bottom"),
                                    ("e_fdr", "e_fdr_stderr", "C3", "(eta/4)<|g_B|^2>")):
            e = np.array([r[ek] for r in rows])
            se = np.array([r[sk] for r in rows])
            ax.errorbar(p, e, yerr=np.nan_to_num(se), fmt="o", color=color, ms=5, capsize=2, label=name)
        lo, hi = np.nanmin(p) / 2, np.nanmax(p) * 2
        ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="E(l) = prediction")
        ax.set(xscale="log", yscale="log", xlabel=f"eta/(4S) {label}", ylabel="measured E(l)",
               title=f"Eq. (7) with {label}")
        ax.legend(fontsize=7)
    ctx.figure(fig, "eq7")


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
