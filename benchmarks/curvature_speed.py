"""Hessian-vector products and matvec counts to a stated accuracy, on a trained batch-norm MLP (issue 13).

The model: the 4-layer batch-norm MLP at width 2 (hidden 512, 932 362 parameters), trained 2 epochs on real
Fashion-MNIST (synthetic data of its shape when the files are not installed), measured on 4 096 training examples in
eval mode (running statistics recomputed on them). The unit is the time of one full gradient over the measurement set
in the same process. Printed, beside the CPU's vector extensions (avx512f or not) and torch's threads:

* one HVP in gradients, by double backward (reverse-over-reverse) and by ``torch.func`` (reverse-over-forward);
* blocked probes: the time per HVP of ``matvec`` in a loop against ``matmat`` with b = 4, 8, 16 columns in one
  pass, interleaved in the same process (the best of 3 rounds each), and the ratio;
* λ_max: a reference (Lanczos to 1e-10), then ARPACK (``lanczos_lambda_max``, tol 1e-4, the old default) and
  the residual-stopped Lanczos (``top_eigenvalues``, tol 1e-6): matvecs, seconds, relative error;
* Tr(H) to ±1 % at 95 %: ``adaptive_trace`` deflated by the top 20 eigenpairs, and plain Hutchinson: run to the
  target with ``--quick``; at full size (thousands of HVPs, an hour here) its count is estimated from the spread of
  ``--plain-probes`` (200) probes, (1.96 s / (0.01 Tr))², and said to be an estimate;
* ``hessian_stats``: the old defaults (ARPACK to 1e-4, the power-iteration cross-check, 32 Hutchinson probes and
  Hutch++ with 32 matvecs, reproduced by calling those estimators) against today's defaults (λ_max to a residual of
  1e-4, Tr(H) and ‖H‖_F to ±5 % at 95 %) and against today's at the accuracy the old defaults reached: HVPs,
  seconds, the intervals' relative half-widths, and the ratios.

With ``--model resnet56``: the paper's ResNet56 (width 1) trained one epoch on 2 048 synthetic CIFAR-shaped images
(CIFAR-10 cannot be had on this machine), measured on 128 examples, the top 5 eigenpairs and Tr(H) to ±5 %.

Run: ``python benchmarks/curvature_speed.py [--quick] [--threads N] [--model resnet56]`` (``--quick``: width 1,
1 024 examples, for a smoke test). ``--blocks-json PATH`` measures the blocked probes alone, on the MLP at full size
and on ResNet56, and writes them with the CPU's flags to PATH: ``benchmarks/results/curvature_block.json`` is the
measurement that ``nets.curvature.operator.PROBE_BLOCK`` cites (``OMP_NUM_THREADS=1 python
benchmarks/curvature_speed.py --threads 1 --blocks-json benchmarks/results/curvature_block.json``). Timings vary
by ±20 % between runs on a shared 2-core machine, and by far more
when another process keeps the cores busy (torch's threads then wait on each other: ``--threads 1`` is the steadier
figure); the HVP counts do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import t as student
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from nets.curvature import HessianOperator, adaptive_trace, hessian_stats, top_eigenvalues
from nets.curvature.eigenvalues import lanczos_lambda_max, power_iteration
from nets.curvature.trace import hutchinson, hutchpp
from nets.data import DataError, load_fashion_mnist, synthetic
from nets.models import build_model, count_parameters
from nets.sgd import make_optimizer, sgd_step
from sgd_noise_common.environment import environment


def trained_model(kind: str, width: float, epochs: int):
    """The benchmark's model, trained ``epochs`` epochs at η = 0.1, S = 128: the MLP on Fashion-MNIST (synthetic data
    of its shape when the files are not installed), or ResNet56 on synthetic data of CIFAR-10's shape (CIFAR-10
    cannot be had on this machine)."""
    if kind == "resnet56":
        data, what = synthetic((3, 32, 32), train_size=2048, seed=0), "synthetic data of CIFAR-10's shape"
    else:
        try:
            data, what = load_fashion_mnist(None), "Fashion-MNIST"
        except DataError:
            data, what = synthetic((1, 28, 28), train_size=20000, seed=0), "synthetic data of Fashion-MNIST's shape"
    model = build_model(kind, data.input_shape, 10, width=width, seed=0)
    opt = make_optimizer(model, eta=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(data.train_size, generator=g)
        for a in range(0, data.train_size - 127, 128):
            idx = perm[a:a + 128]
            sgd_step(model, opt, data.x_train[idx], data.y_train[idx], loss_fn=F.cross_entropy)
    return model, data, what


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def blocked_probes(op, rng, rounds: int = 3) -> dict:
    """Seconds per HVP: ``matvec`` looped (8 columns) and ``matmat`` with 4, 8, 16 columns, interleaved, the best
    of ``rounds`` rounds each (the best is the least disturbed by other processes)."""
    v = rng.standard_normal((op.dim, 16))
    op.matvec(v[:, 0])
    op.matmat(v[:, :2])  # warm-up: vmap traces the model once
    best = {}
    for _ in range(rounds):
        _, t = timed(lambda: [op.matvec(v[:, i]) for i in range(8)])
        best["loop"] = min(best.get("loop", math.inf), t / 8)
        for b in (4, 8, 16):
            _, t = timed(lambda b=b: op.matmat(v[:, :b]))
            best[b] = min(best.get(b, math.inf), t / b)
    return best


def old_defaults(model, x, y, batch_size):
    """``hessian_stats`` as its defaults were before issue 13's rebuild, by calling the estimators it ran: the
    determinism probe, ARPACK to 1e-4, power iteration (100 iterations, 1e-4), Hutchinson with 32 probes and
    Hutch++ with 32 matvecs. Returns (HVPs, seconds, λ_max, Hutchinson's ``TraceAndFrobenius``, Hutch++'s
    ``TraceEstimate``, the relative half-widths at 95 % of Hutchinson's Tr(H) and ‖H‖_F and of Hutch++'s Tr(H))."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=batch_size)
    op.loss()
    op.determinism(rng=rng)
    lam, _ = lanczos_lambda_max(op, tol=1e-4, rng=rng)
    power_iteration(op, iters=100, tol=1e-4, rng=rng)
    h = hutchinson(op, 32, rng=rng, block=1)
    tpp = hutchpp(op, 32, rng=rng)
    seconds = time.perf_counter() - t0
    t31, t9 = student.isf(0.025, 31), student.isf(0.025, 9)  # Student's t: 32 probes; Hutch++'s 10
    widths = (t31 * h.trace.stderr / abs(h.trace.estimate), t31 * h.frobenius.stderr / h.frobenius.estimate,
              t9 * tpp.stderr / abs(tpp.estimate))
    return op.matvecs, seconds, lam, h, tpp, widths


def main(argv=None) -> int:
    """Train, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small model and measurement set (smoke test)")
    p.add_argument("--threads", type=int, default=2, help="torch's and BLAS's CPU threads (default 2)")
    p.add_argument("--model", choices=("mlp", "resnet56"), default="mlp",
                   help="mlp (default) or resnet56: the paper's ResNet56 on 128 synthetic CIFAR-shaped examples, "
                        "Tr(H) to +-5 %%")
    p.add_argument("--blocks-json", metavar="PATH", default=None,
                   help="measure only the blocked probes (the MLP at full size, 3 rounds, and ResNet56 on 128 "
                        "examples, 1 round) and write them with the CPU's flags to PATH")
    p.add_argument("--plain-probes", type=int, default=None,
                   help="plain Hutchinson from this many probes, its count for +-1 %% estimated from their spread "
                        "(default: 200 at full size; with --quick it runs to +-1 %%)")
    args = p.parse_args(argv)
    if args.plain_probes is None:
        args.plain_probes = 0 if args.quick else (30 if args.model == "resnet56" else 200)
    if args.plain_probes == 1 or args.plain_probes < 0:
        p.error(f"--plain-probes must be 0 or >= 2, got {args.plain_probes}")
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):  # numpy's products beside torch's
        return blocks(args) if args.blocks_json else run(args)


def blocks(args) -> int:
    """The blocked-probe measurement alone, written to ``--blocks-json`` (the figure ``PROBE_BLOCK`` cites)."""
    env = environment()
    out = {"what": "seconds per Hessian-vector product: matvec looped (8 vectors) against matmat with b vectors in "
                   "one pass over the measurement set (eval mode; the best of the rounds, interleaved); speedup = "
                   "looped / matmat",
           "command": f"OMP_NUM_THREADS=1 python benchmarks/curvature_speed.py --threads {args.threads} "
                      f"--blocks-json {args.blocks_json}",
           "cpu_model": _cpu_model(), "cpu_flags": env["cpu_flags"], "torch": torch.__version__,
           "threads": torch.get_num_threads(), "models": {}}
    for kind, width, m, epochs, rounds in (("mlp", 2.0, 4096, 2, 3), ("resnet56", 1.0, 128, 1, 1)):
        model, data, what = trained_model(kind, width, epochs)
        x, y = data.measurement_set(m, seed=1)
        op = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
        t0 = time.perf_counter()
        best = blocked_probes(op, np.random.default_rng(0), rounds=rounds)
        out["models"][kind] = {
            "model": f"{kind} width {width:g}, {count_parameters(model)} parameters, trained {epochs} epoch(s) on "
                     f"{what}", "examples": m, "block_method": op.block_method, "rounds": rounds,
            "probe_block": op.probe_block, "seconds_per_hvp": {"looped": best["loop"],
                                                               **{str(b): best[b] for b in (4, 8, 16)}},
            "speedup": {str(b): best["loop"] / best[b] for b in (4, 8, 16)},
            "wall_seconds": time.perf_counter() - t0}
        print(kind, json.dumps(out["models"][kind]), flush=True)
    Path(args.blocks_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.blocks_json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.blocks_json}")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        return ""


def run(args) -> int:
    """The measurements of ``main``, printed."""
    if args.model == "resnet56":  # the paper's ResNet56 at a reduced measurement set, one epoch of training
        width, m, epochs, k_ref, rtol = 1.0, 128, 1, 5, 0.05
    else:
        width, m, epochs, k_ref, rtol = (1.0, 1024, 1, 20, 0.01) if args.quick else (2.0, 4096, 2, 20, 0.01)
    flags = environment()["cpu_flags"]
    print(f"CPU: avx512f {'present' if 'avx512f' in flags else 'absent'} ({' '.join(flags)}); torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    model, data, what = trained_model(args.model, width, epochs)
    x, y = data.measurement_set(m, seed=1)
    print(f"{args.model} width {width:g} ({count_parameters(model)} parameters), trained {epochs} epoch(s) on {what}; "
          f"{m} examples, eval mode")
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    for _ in range(2):
        op.gradient()
    _, t_grad = timed(op.gradient)
    print(f"one gradient: {t_grad:.3f} s (the unit)")
    rng = np.random.default_rng(0)
    for method in ("reverse-over-reverse", "reverse-over-forward"):
        o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024, hvp_method=method)
        v = rng.standard_normal(o.dim)
        o.matvec(v)
        _, t = timed(lambda: [o.matvec(v) for _ in range(3)])
        print(f"one HVP, {method}: {t / 3:.3f} s = {t / 3 / t_grad:.2f} gradients")
    best = blocked_probes(op, rng)
    print(f"blocked probes (matmat, {op.block_method} under torch.func.vmap), seconds per HVP: matvec looped "
          f"{best['loop']:.4f}; " + "; ".join(f"b = {b}: {best[b]:.4f} ({best['loop'] / best[b]:.2f}x)"
                                                for b in (4, 8, 16)))
    ref = top_eigenvalues(model, F.cross_entropy, x, y, k=k_ref, batch_size=1024, tol=1e-10, rng=1)
    lam_ref = float(ref.eigenvalues[0])
    print(f"reference: lambda_max = {lam_ref:.10g} ({ref.matvecs} HVPs, converged {ref.converged})")
    o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    (lam_a, _), t = timed(lambda: lanczos_lambda_max(o, rng=0))
    print(f"ARPACK eigsh (tol 1e-4): {o.matvecs} HVPs, {t:.1f} s ({t / t_grad:.0f} gradients), relative error "
          f"{abs(lam_a - lam_ref) / lam_ref:.1e}")
    for tol in (1e-4, 1e-6):
        res, t = timed(lambda: top_eigenvalues(model, F.cross_entropy, x, y, k=1, batch_size=1024, tol=tol, rng=0))
        print(f"residual-stopped Lanczos (tol {tol:g}): {res.matvecs} HVPs, {t:.1f} s ({t / t_grad:.0f} gradients), "
              f"relative error {abs(res.eigenvalues[0] - lam_ref) / lam_ref:.1e}")
    o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    deflated, t = timed(lambda: adaptive_trace(o, rtol=rtol, confidence=0.95, max_matvecs=3000,
                                               deflate=(ref.eigenvalues, ref.eigenvectors), rng=3))
    print(f"Tr(H) to +-{100 * rtol:g} % at 95 %, deflated by the top {k_ref}: {deflated.estimate:.5g} +- "
          f"{deflated.halfwidth:.3g} "
          f"({deflated.probes} HVPs, reached {deflated.reached}), {t:.1f} s ({t / t_grad:.0f} gradients); the "
          f"top {k_ref} eigenpairs cost {ref.matvecs} HVPs once")
    o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    if args.plain_probes:
        # Plain Hutchinson to +-1 % takes thousands of HVPs at full size (an hour here): from a fixed number of
        # probes, the count it needs is (t s / (0.01 Tr))^2 by its own sample spread s, stated as an estimate.
        r, t = timed(lambda: hutchinson(o, args.plain_probes, rng=3))
        s = float(np.std(r.trace.samples, ddof=1))
        need = (1.96 * s / (rtol * abs(deflated.estimate))) ** 2
        spent = deflated.probes + ref.matvecs
        print(f"Tr(H) to +-{100 * rtol:g} % at 95 %, plain Hutchinson: {args.plain_probes} probes give "
              f"{r.trace.estimate:.5g} +- {1.96 * r.trace.stderr:.3g} in {t:.1f} s; their spread {s:.4g} means about "
              f"{need:.0f} HVPs ({need * t / args.plain_probes:.0f} s) for +-{100 * rtol:g} %, against {spent} "
              f"deflated (eigenpairs included): {need / spent:.1f}x fewer")
    else:
        r, t = timed(lambda: adaptive_trace(o, rtol=rtol, confidence=0.95, max_matvecs=3000, rng=3))
        print(f"Tr(H) to +-{100 * rtol:g} % at 95 %, plain Hutchinson: {r.estimate:.5g} +- {r.halfwidth:.3g} "
              f"({r.probes} HVPs, reached {r.reached}), {t:.1f} s ({t / t_grad:.0f} gradients); against the "
              f"deflated {deflated.probes + ref.matvecs} (eigenpairs included): "
              f"{r.probes / (deflated.probes + ref.matvecs):.1f}x fewer")
    n_old, t_old, lam_old, h_old, tpp_old, w_old = old_defaults(model, x, y, 1024)
    print(f"hessian_stats, old defaults (ARPACK 1e-4, power iteration, 32 Hutchinson probes, Hutch++ 32): {n_old} "
          f"HVPs, {t_old:.1f} s; lambda_max {lam_old:.6g}, Tr(H) {h_old.trace.estimate:.5g} +- {100 * w_old[0]:.1f} % "
          f"(Hutch++ {tpp_old.estimate:.5g} +- {100 * w_old[2]:.1f} %), |H|_F {h_old.frobenius.estimate:.5g} +- "
          f"{100 * w_old[1]:.1f} % at 95 %")
    runs = (("today's defaults", {}), (f"today's at the old accuracy (+-{100 * w_old[0]:.1f} %)",
                                       {"trace_rtol": float(w_old[0])}))
    for name, kw in runs:
        hs, t = timed(lambda: hessian_stats(HessianOperator(model, F.cross_entropy, x, y, batch_size=1024), rng=0,
                                            **kw))
        print(f"hessian_stats, {name}: {hs.matvecs} HVPs ({hs.lanczos_steps} Lanczos, {hs.num_probes} probes), "
              f"{t:.1f} s; lambda_max {hs.lambda_max:.6g} (residual {hs.lambda_max_residual / hs.lambda_max:.1e}), "
              f"Tr(H) {hs.trace:.5g} +- {100 * hs.trace_halfwidth / abs(hs.trace):.1f} %, |H|_F "
              f"{hs.frobenius:.5g} +- {100 * hs.frobenius_halfwidth / hs.frobenius:.1f} % at 95 %; against the old "
              f"defaults {n_old / hs.matvecs:.1f}x fewer HVPs, {t_old / t:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
