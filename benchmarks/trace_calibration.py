"""Coverage of the deflated Tr(H) intervals at full size, against an exact Tr(H) (issue 18).

The model and data are those of ``benchmarks/curvature_speed.py``: the batch-norm MLP at width 2 (933 898
parameters), trained 2 epochs on Fashion-MNIST (synthetic data of its shape when the files are not installed),
measured on 4 096 training examples in eval mode. The CPU's vector extensions (avx512f or not) and torch's threads
are printed first.

The reference is exact, not sampled: for this network (Linear → eval-mode BatchNorm1d → ReLU, three times, then
Linear) the output is piecewise linear in each single parameter (eval-mode batch norm is a fixed affine map per
feature), so every diagonal entry of the output's Hessian vanishes (almost everywhere) and the diagonal of H equals
the diagonal of the Gauss–Newton matrix, H_ii = (1/N) Σ_n J_n,iᵀ Λ_n J_n,i with Λ_n = diag(p_n) − p_n p_nᵀ the
softmax cross-entropy's Hessian in the logits. ``exact_hessian_diagonal`` takes it from the per-example
back-propagated signals of the 10 logits (for a linear layer the per-example gradient is an outer product, so the
diagonal is (δ²)ᵀ(a²) summed over examples), in float64, at the operator's own batch-norm statistics. It is checked
against e_iᵀHe_i by Hessian-vector products at a few coordinates of every parameter tensor (printed), and against the
dense Hessian of a small network in tests/test_trace_calibration.py. Its error is rounding (float64), far below the
3x margin the issue asks for (the reference error is zero to the printed digits).

The estimator: ``adaptive_trace`` to ±``--rtol`` (default 3 %) at 95 %, deflated by the top 20 eigenpairs (computed
once, Lanczos to 1e-10; each call adds 20 HVPs for Tr(QᵀHQ)), over ``--seeds`` (default 24) probe seeds; one probe
per pass (``block=1``, as the recorded runs were made: blocks change the estimates only by rounding; their speed is
measured in ``benchmarks/results/curvature_block.json``). ±1 % (the
issue's) costs several hundred HVPs per seed, minutes of one core each, so 20 seeds would take hours; ±3 % keeps
24 seeds within about half an hour (±2 % took 116 probes for one seed, 100 s). Printed: every seed's
interval, the coverage (how many of the 95 % intervals contain the exact Tr(H)) with the range of counts a 95 %
coverage would give with probability 95 % (binomial), and the mean relative deviation with its z (the mean of the
seeds' deviations over its standard error across seeds). With ``--stats`` the same for ``hessian_stats`` at
``trace_rtol=--rtol`` (its own Lanczos deflation and control variate).

Run: ``OMP_NUM_THREADS=1 python benchmarks/trace_calibration.py [--seeds 24] [--rtol 0.03] [--stats]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nets.curvature import HessianOperator, adaptive_trace, hessian_stats, top_eigenvalues  # noqa: E402
from nets.models import count_parameters  # noqa: E402
from sgd_noise_common.environment import environment  # noqa: E402


def _layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and BatchNorm1d layers of a Flatten/Linear/BatchNorm1d/ReLU network, refusing anything else
    (the diagonal identity below needs the output to be piecewise linear in each single parameter)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    for m in leaves:
        if not isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Flatten, nn.Identity)):
            raise ValueError(f"exact_hessian_diagonal handles Linear, eval-mode BatchNorm1d and ReLU only, not {m}")
        if isinstance(m, nn.BatchNorm1d) and (m.training or m.running_mean is None):
            raise ValueError("exact_hessian_diagonal needs batch norm in eval mode with running statistics")
    return [m for m in leaves if isinstance(m, (nn.Linear, nn.BatchNorm1d))]


def exact_hessian_diagonal(op: HessianOperator, chunk: int = 512) -> np.ndarray:
    r"""diag(H) of the operator's measured loss (mean cross-entropy, eval-mode batch norm, its own statistics), as a
    float64 vector in the operator's parameter order: the Gauss–Newton diagonal, exact for a network that is
    piecewise linear in each single parameter (see the module docstring).

    Per example n and logit c, δ_{n,c} = ∂f_{n,c}/∂(layer output) by back-propagation; with
    g_{n,i} = Σ_{c,c'} Λ_n[c,c'] δ_{n,c,i} δ_{n,c',i}: a linear layer's weight W_ij gets (1/N) Σ_n g_{n,i} a_{n,j}²
    (a its input) and its bias (1/N) Σ_n g_{n,i}; a batch norm's γ_j gets (1/N) Σ_n g_{n,j} x̂_{n,j}² and β_j
    (1/N) Σ_n g_{n,j}. Weight decay γ adds γ to every entry.
    """
    if op.bn_mode != "eval":
        raise ValueError("exact_hessian_diagonal needs bn_mode='eval'")
    if op.loss_fn is not F.cross_entropy:
        raise ValueError("exact_hessian_diagonal handles the mean cross-entropy only")
    model = copy.deepcopy(op.model).double().eval()  # float64, the operator's own batch-norm statistics
    layers = _layers(model)
    names = {id(p): n for n, p in model.named_parameters()}
    diag = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    n_total = op.num_examples
    for a in range(0, n_total, chunk):
        x = op.inputs[a:a + chunk].double()
        saved = {}

        def hook(m, inp, out):
            saved[m] = (inp[0].detach(), out)

        handles = [m.register_forward_hook(hook) for m in layers]
        with torch.enable_grad():
            logits = model(x)
            for h in handles:
                h.remove()
            p = torch.softmax(logits.detach(), dim=1)
            lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, C, C)
            outs = [saved[m][1] for m in layers]
            deltas = [[] for _ in layers]
            for c in range(logits.shape[1]):
                gs = torch.autograd.grad(logits[:, c].sum(), outs, retain_graph=True)
                for k, g in enumerate(gs):
                    deltas[k].append(g)
        for k, m in enumerate(layers):
            d = torch.stack(deltas[k], dim=1)  # (n, C, width): per example, the signal of each logit
            g = torch.einsum("nci,ncd,ndi->ni", d, lam, d)
            inp = saved[m][0]
            if isinstance(m, nn.Linear):
                diag[names[id(m.weight)]] += g.T @ inp.pow(2)
                if m.bias is not None:
                    diag[names[id(m.bias)]] += g.sum(0)
            else:
                xhat = (inp - m.running_mean) / torch.sqrt(m.running_var + m.eps)
                if m.weight is not None:
                    diag[names[id(m.weight)]] += (g * xhat.pow(2)).sum(0)
                if m.bias is not None:
                    diag[names[id(m.bias)]] += g.sum(0)
    wanted = [n for n, p in op.model.named_parameters() if p.requires_grad]
    out = torch.cat([diag[n].reshape(-1) / n_total for n in wanted]).numpy()
    return out + op.weight_decay


def check_diagonal(op: HessianOperator, diag: np.ndarray, per_tensor: int = 2, rng=0) -> float:
    """The largest relative difference between ``diag`` and e_iᵀHe_i by the operator's HVPs, at ``per_tensor``
    random coordinates of every parameter tensor (each relative to the largest |e_iᵀHe_i| of its tensor)."""
    rng = np.random.default_rng(rng)
    worst, start = 0.0, 0
    for size in op.sizes:
        idx = rng.choice(size, size=min(per_tensor, size), replace=False) + start
        scale = max(float(np.abs(diag[start:start + size]).max()), np.finfo(float).tiny)
        for i in idx:
            e = np.zeros(op.dim)
            e[i] = 1.0
            worst = max(worst, abs(float(op.matvec(e)[i]) - float(diag[i])) / scale)
        start += size
    return worst


def coverage_line(name: str, rows: list[tuple[float, float]], exact: float, confidence: float) -> str:
    """Coverage of ``rows`` = [(estimate, halfwidth)] against ``exact``, the binomial range, the mean relative
    deviation and its z."""
    n = len(rows)
    hits = sum(abs(e - exact) <= h for e, h in rows)
    lo, hi = (int(b) for b in binom.interval(0.95, n, confidence))
    dev = np.array([(e - exact) / exact for e, _ in rows])
    se = float(dev.std(ddof=1) / math.sqrt(n))
    return (f"{name}: coverage {hits}/{n} (a true {100 * confidence:g} % coverage gives {lo} to {hi} of "
            f"{n} with probability >= 95 %); mean relative deviation {100 * dev.mean():+.3f} % +- "
            f"{100 * se:.3f} % (z = {dev.mean() / se:+.2f}); mean half-width "
            f"{100 * np.mean([h / abs(e) for e, h in rows]):.2f} %")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=24, help="probe seeds of the estimator (default 24)")
    p.add_argument("--rtol", type=float, default=0.03, help="relative half-width asked for (default 0.03)")
    p.add_argument("--threads", type=int, default=1, help="torch's and BLAS's threads (default 1)")
    p.add_argument("--stats", action="store_true", help="also calibrate hessian_stats at trace_rtol=--rtol")
    p.add_argument("--quick", action="store_true", help="width 1, 1 024 examples (a smoke test)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        return run(args)


def run(args) -> int:
    from curvature_speed import trained_model

    flags = environment()["cpu_flags"]
    print(f"CPU: avx512f {'present' if 'avx512f' in flags else 'absent'} ({' '.join(flags)}); torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    width, m = (1.0, 1024) if args.quick else (2.0, 4096)
    model, data, what = trained_model("mlp", width, 1 if args.quick else 2)
    x, y = data.measurement_set(m, seed=1)
    print(f"mlp width {width:g} ({count_parameters(model)} parameters), trained on {what}; {m} examples, eval mode "
          f"(running statistics recomputed on them)", flush=True)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    print(f"measured loss {op.loss():.6g}", flush=True)
    t0 = time.perf_counter()
    diag = exact_hessian_diagonal(op)
    exact = float(diag.sum())
    print(f"exact Tr(H) = {exact:.8g} (Gauss-Newton diagonal in float64, {time.perf_counter() - t0:.1f} s)",
          flush=True)
    print(f"check: diag vs e_i'He_i at 2 coordinates of each of {len(op.sizes)} tensors: largest relative "
          f"difference {check_diagonal(op, diag):.1e}", flush=True)
    ref, t = None, time.perf_counter()
    ref = top_eigenvalues(model, F.cross_entropy, x, y, k=20, batch_size=1024, tol=1e-10, rng=1)
    print(f"top 20 eigenpairs: {ref.matvecs} HVPs, {time.perf_counter() - t:.0f} s, converged {ref.converged}; "
          f"their sum {float(ref.eigenvalues.sum()):.6g}", flush=True)
    # What the old deflated part (the sum of these eigenvalues) would miss on an operator with the model's stored
    # batch-norm statistics instead of the recomputed ones: Tr(V'H_stored V) by 20 HVPs, and the exact traces.
    stored = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024, recalibrate=False)
    v = ref.eigenvectors
    t_stored = float(np.einsum("ij,ij->", v, np.column_stack([stored.matvec(v[:, i]) for i in range(v.shape[1])])))
    exact_stored = float(exact_hessian_diagonal(stored).sum())
    print(f"stored batch-norm statistics: exact Tr(H) = {exact_stored:.8g}; Tr(V'HV) of the top 20 (recomputed "
          f"statistics) on it {t_stored:.6g}, against their eigenvalue sum {float(ref.eigenvalues.sum()):.6g}: "
          f"{100 * (float(ref.eigenvalues.sum()) - t_stored) / exact_stored:+.3f} % of Tr(H)", flush=True)
    rows = []
    for seed in range(args.seeds):
        o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
        t = time.perf_counter()
        r = adaptive_trace(o, rtol=args.rtol, confidence=0.95, max_matvecs=3000,
                           deflate=(ref.eigenvalues, ref.eigenvectors), rng=1000 + seed, block=1)
        rows.append((r.estimate, r.halfwidth))
        print(f"adaptive_trace seed {1000 + seed}: {r.estimate:.6g} +- {r.halfwidth:.3g} ({r.probes} probes + "
              f"{r.deflated} for Tr(Q'HQ) = {r.deflated_trace:.6g}, "
              f"reached {r.reached}, {time.perf_counter() - t:.0f} s); covers "
              f"{abs(r.estimate - exact) <= r.halfwidth}", flush=True)
    print(coverage_line(f"adaptive_trace +-{100 * args.rtol:g} % deflated by the top 20", rows, exact, 0.95),
          flush=True)
    if args.stats:
        rows = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            hs = hessian_stats(HessianOperator(model, F.cross_entropy, x, y, batch_size=1024), trace_rtol=args.rtol,
                               rng=2000 + seed)
            rows.append((hs.trace, hs.trace_halfwidth))
            print(f"hessian_stats seed {2000 + seed}: {hs.trace:.6g} +- {hs.trace_halfwidth:.3g} ({hs.matvecs} HVPs, "
                  f"{hs.deflated} deflated, plain weight {hs.trace_plain_weight:+.2f}, "
                  f"{time.perf_counter() - t:.0f} s); covers {abs(hs.trace - exact) <= hs.trace_halfwidth}",
                  flush=True)
        print(coverage_line(f"hessian_stats trace_rtol={args.rtol:g}", rows, exact, 0.95), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
