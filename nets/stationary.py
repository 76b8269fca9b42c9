r"""The stationary phase of SGD on a trained network: SGD continues at a run's fixed (η, S), the
fluctuation–dissipation ratio (``sde.diagnostics.FDRMonitor``) decides when it is stationary, and over the
stationary phase the excess loss E(l) of Eq. (7) is measured two ways (over the bottom reached by annealing η to 0,
and as (η/4)⟨‖g_B‖²⟩, exact on a quadratic), beside Tr(H) and Tr(C) at the end. The network experiment ``eq7``
runs this on a grid of η/S; it is library code so that any run folder can be examined the same way.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from nets.curvature import gradient_noise, hessian_stats
from nets.data import BatchSampler
from nets.evaluation import evaluate
from nets.sgd import make_optimizer, sgd_step
from nets.train import TrainConfig, load_run
from sde.diagnostics import FDRMonitor

__all__ = ["stationary_phase", "batch_means"]


def _monitor(cfg: TrainConfig) -> FDRMonitor:
    return FDRMonitor(cfg.eta, momentum=cfg.momentum, dampening=cfg.dampening, weight_decay=cfg.weight_decay)


def stationary_phase(run_dir, *, steps: int, window: int, anneal_steps: int, measure_size: int, probes: int,
                     fdr_tol: float = 0.1, eval_every: int = 10, device: str = "cpu", seed: int = 0) -> dict:
    """Continue SGD at the run's (η, S), find the stationary phase by the FDR, and measure E(l), Tr(H), Tr(C).

    Args:
        run_dir: a finished ``nets.train`` run folder (read, never written).
        steps: SGD steps at the run's fixed (η, S).
        window: steps per FDR window; the stationary phase starts at the first window whose ratio ⟨O_L⟩/⟨O_R⟩ is
            within ``fdr_tol`` of 1 (else at half the run, and ``stationary`` is False).
        anneal_steps: steps of the linear anneal of η to 0 that finds the bottom of the basin.
        measure_size: examples of the fixed measurement subset (loss, Tr(H), Tr(C)).
        probes: Hutchinson probes of Tr(H).
        eval_every: steps between evaluations of the full-batch loss.
        device, seed: where to compute, and the seed of the trace probes.

    Returns:
        A JSON-ready dict: the FDR ratios, ``stationary`` and its start, the mean loss and the two estimates of the
        excess loss (``e_anneal`` over the annealed bottom, ``e_fdr`` = (η/4)⟨‖g_B‖²⟩) with standard errors,
        Tr(H) (with and without the L2 term's γP), Tr(C), λ_max and the predictions η/(4S)·Tr.
    """
    cfg, model, data = load_run(run_dir, device=device)
    torch.manual_seed(cfg.seed + 12345)
    n = data.train_size
    x_m, y_m = data.measurement_set(min(measure_size, n), seed=cfg.data_seed + 2)
    opt = make_optimizer(model, eta=cfg.eta, momentum=cfg.momentum, dampening=cfg.dampening,
                         weight_decay=cfg.weight_decay)
    sampler = BatchSampler(n, seed=cfg.seed + 1000, device=x_m.device)
    gamma = cfg.weight_decay

    def objective(m):  # the data loss plus the L2 term SGD minimises, on the measurement subset
        l2 = 0.5 * gamma * sum(float((p.detach().double() ** 2).sum()) for p in m.parameters())
        return evaluate(m, F.cross_entropy, x_m, y_m, batch_size=1000)[0] + l2

    ratios, losses, loss_steps, gsq = [], [], [], []
    mon = _monitor(cfg)
    for k in range(steps):
        idx = sampler.next(cfg.batch_size)
        loss, obs = sgd_step(model, opt, data.x_train[idx], data.y_train[idx], loss_fn=F.cross_entropy,
                             observe=True)
        gsq.append(obs.grad_sq)  # ‖g_B + γθ‖², the whole stochastic gradient
        mon.record(obs.o_left, obs.o_right)
        if not math.isfinite(float(loss)):  # a result, as in training: recorded, not raised
            return {"diverged": {"phase": "stationary", "step": k, "loss": float(loss), "eta": cfg.eta,
                                 "batch_size": cfg.batch_size}}
        if (k + 1) % eval_every == 0:
            losses.append(objective(model))
            loss_steps.append(k + 1)
        if (k + 1) % window == 0:
            sm = mon.summary()
            ratios.append(sm.ratio)
            mon = _monitor(cfg)
    start_window = next((i for i, r in enumerate(ratios) if abs(r - 1.0) < fdr_tol), None)
    stationary = start_window is not None
    start = (start_window if stationary else len(ratios) // 2) * window
    loss_steps = np.array(loss_steps)
    l_stat = np.array(losses)[loss_steps > start]
    g_stat = np.array(gsq)[start:]
    mean_l, se_l = batch_means(l_stat)
    mean_g, se_g = batch_means(g_stat)
    # The bottom of the basin: anneal eta linearly to 0 from the last state.
    bottom_model = copy.deepcopy(model)
    opt_b = make_optimizer(bottom_model, eta=cfg.eta, momentum=cfg.momentum, dampening=cfg.dampening,
                           weight_decay=gamma)
    for k in range(anneal_steps):
        idx = sampler.next(cfg.batch_size)
        sgd_step(bottom_model, opt_b, data.x_train[idx], data.y_train[idx], loss_fn=F.cross_entropy,
                 lr=cfg.eta * (1.0 - k / anneal_steps))
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
    return out


def batch_means(x: np.ndarray, batches: int = 10) -> tuple[float, float]:
    """The mean of a (correlated) time series and its standard error from ``batches`` consecutive batch means,
    which absorb the autocorrelation when each batch is much longer than the correlation time; NaN error for
    fewer than 2 points."""
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan
    k = min(batches, x.size)
    means = np.array([c.mean() for c in np.array_split(x, k)])
    return float(x.mean()), float(means.std(ddof=1) / math.sqrt(k))
