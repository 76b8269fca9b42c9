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

import math
import sys
from dataclasses import dataclass

import numpy as np

from common.claims import Claim
from nets.experiments.analysis import Context
from nets.experiments.cli import main_for
from nets.experiments.scales import base_config, seeds_for, with_
from nets.experiments.sweep import RunSpec

NAME = "eq7"
CLAIM = ("near a minimum SGD's stationary excess loss is E(l) = eta/(4S) Tr(H) (with C = H; eta/(4S) Tr(C) in "
         "general)")
@dataclass(frozen=True)
class Settings:
    """The grid of one scale and the stationary phase after each run (``nets.stationary.stationary_phase``)."""

    etas: tuple
    batch_sizes: tuple
    steps: int            # SGD steps of the stationary phase
    window: int           # steps per FDR window
    anneal_steps: int     # steps of the anneal to the bottom of the basin
    measure_size: int     # examples of the measurement subset
    probes: int           # Hutchinson probes of Tr(H)
    weight_decay: float


SETTINGS = {
    "smoke": Settings((0.05, 0.1, 0.2), (16,), 600, 100, 200, 256, 8, 1e-2),
    "small": Settings((0.02, 0.05, 0.1, 0.2), (32, 128), 6000, 500, 2000, 2000, 16, 1e-2),
    "full": Settings((0.01, 0.02, 0.05, 0.1, 0.2), (32, 128, 512), 40000, 2000, 10000, 5000, 32, 5e-3),
}


def choices(scale: str, args) -> list[str]:
    """What the paper leaves open at this scale, and what was chosen."""
    st = SETTINGS[scale]
    return ["Not in the paper: Eq. (7) is derived, not measured, in the paper; this experiment measures it on the "
            "MLP of Fig. 3 without batch norm and with weight decay (see the module docstring: both are needed "
            "for a stationary state).",
            f"Chosen: weight decay {st.weight_decay:g}; the stationary phase {st.steps} steps in windows of "
            f"{st.window} (the FDR ratio within 0.1 of 1 starts it), an anneal of {st.anneal_steps} steps, "
            f"measurements on {st.measure_size} examples with {st.probes} probes."]


def specs(scale, args) -> list[RunSpec]:
    """The runs of a scale: the BN-free MLP with weight decay on the grid of η and S, each followed by the
    stationary phase."""
    st = SETTINGS[scale]
    base = with_(base_config(scale, args), batch_norm=False, weight_decay=st.weight_decay)
    stationary = dict(steps=st.steps, window=st.window, anneal_steps=st.anneal_steps,
                      measure_size=st.measure_size, probes=st.probes)
    out = []
    for seed in seeds_for(scale, args, default_full=3):
        for eta in st.etas:
            for s in st.batch_sizes:
                out.append(RunSpec(with_(base, eta=eta, batch_size=s, seed=seed),
                                   tags=dict(panel="grid", seed=seed),
                                   stages={"stationary": stationary}))
    return out


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
    """The claims of this experiment, judged on the finished runs ``results`` (pairs of spec and metrics), and its
    figures, written through ``ctx``."""
    rows = [_with_data_trace(spec, r) for spec, r in results if not r.get("diverged")]
    if len(rows) < 2:
        return [Claim("enough-runs", "at least 2 runs finished without diverging", holds=False,
                      summary=f"{len(rows)} of {len(results)}")]
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
    """``python -m nets.experiments.eq7``: run the sweep, analyse it, write the report; the exit code."""
    return main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
