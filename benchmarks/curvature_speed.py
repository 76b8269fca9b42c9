"""Hessian-vector products and matvec counts to a stated accuracy, on a trained batch-norm MLP (issue 13).

The model: the 4-layer batch-norm MLP at width 2 (hidden 512, 932 362 parameters), trained 2 epochs on real
Fashion-MNIST (synthetic data of its shape when the files are not installed), measured on 4 096 training examples in
eval mode (running statistics recomputed on them). The unit is the time of one full gradient over the measurement set
in the same process. Printed:

* one HVP in gradients, by double backward (reverse-over-reverse) and by ``torch.func`` (reverse-over-forward);
* λ_max: a reference (Lanczos to 1e-12), then ARPACK (``lanczos_lambda_max``, tol 1e-4, as ``hessian_stats``) and
  the residual-stopped Lanczos (``top_eigenvalues``, tol 1e-6): matvecs, seconds, relative error;
* Tr(H) to ±1 % at 95 %: ``adaptive_trace`` plain and deflated by the top 20 eigenpairs: matvecs, seconds, and the
  estimate against the deflated reference;
* ``hessian_stats`` with its defaults and without the power-iteration cross-check.

Run: ``python benchmarks/curvature_speed.py [--quick]`` (``--quick``: width 1, 1 024 examples, for a smoke test).
Timings vary by ±20 % between runs on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from nets.curvature import HessianOperator, adaptive_trace, hessian_stats, lanczos_lambda_max, top_eigenvalues
from nets.data import DataError, load_fashion_mnist, synthetic
from nets.models import build_model, count_parameters
from nets.sgd import make_optimizer, sgd_step


def trained_model(width: float, epochs: int):
    try:
        data = load_fashion_mnist(None)
        what = "Fashion-MNIST"
    except DataError:
        data = synthetic((1, 28, 28), train_size=20000, seed=0)
        what = "synthetic data of Fashion-MNIST's shape"
    model = build_model("mlp", (1, 28, 28), 10, width=width, seed=0)
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


def main(argv=None) -> int:
    """Train, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small model and measurement set (smoke test)")
    args = p.parse_args(argv)
    width, m = (1.0, 1024) if args.quick else (2.0, 4096)
    torch.set_num_threads(2)
    model, data, what = trained_model(width, 1 if args.quick else 2)
    x, y = data.measurement_set(m, seed=1)
    print(f"MLP width {width:g} ({count_parameters(model)} parameters), trained on {what}; {m} examples, eval mode")
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
    ref = top_eigenvalues(model, F.cross_entropy, x, y, k=20, batch_size=1024, tol=1e-10, rng=1)
    lam_ref = float(ref.eigenvalues[0])
    print(f"reference: lambda_max = {lam_ref:.10g} ({ref.matvecs} HVPs, converged {ref.converged})")
    o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    (lam_a, _), t = timed(lambda: lanczos_lambda_max(o, rng=0))
    print(f"ARPACK eigsh (tol 1e-4): {o.matvecs} HVPs, {t:.1f} s ({t / t_grad:.0f} gradients), relative error "
          f"{abs(lam_a - lam_ref) / lam_ref:.1e}")
    res, t = timed(lambda: top_eigenvalues(model, F.cross_entropy, x, y, k=1, batch_size=1024, tol=1e-6, rng=0))
    print(f"residual-stopped Lanczos (tol 1e-6): {res.matvecs} HVPs, {t:.1f} s ({t / t_grad:.0f} gradients), "
          f"relative error {abs(res.eigenvalues[0] - lam_ref) / lam_ref:.1e}")
    o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
    deflated = adaptive_trace(o, rtol=0.01, confidence=0.95, deflate=(ref.eigenvalues, ref.eigenvectors), rng=2)
    for name, kw in (("plain Hutchinson", {}), ("deflated by the top 20", {"deflate": (ref.eigenvalues,
                                                                                        ref.eigenvectors)})):
        o = HessianOperator(model, F.cross_entropy, x, y, batch_size=1024)
        r, t = timed(lambda: adaptive_trace(o, rtol=0.01, confidence=0.95, max_matvecs=3000, rng=3, **kw))
        print(f"Tr(H) to +-1 % at 95 %, {name}: {r['trace']:.5g} +- {r['halfwidth']:.3g} ({r['probes']} HVPs, "
              f"reached {r['reached']}), {t:.1f} s ({t / t_grad:.0f} gradients)")
    print(f"  (reference {deflated['trace']:.5g} +- {deflated['halfwidth']:.3g}; the top 20 eigenpairs cost "
          f"{ref.matvecs} HVPs once)")
    for cross in (True, False):
        hs, t = timed(lambda: hessian_stats(model, F.cross_entropy, x, y, batch_size=1024, rng=0, cross_check=cross))
        print(f"hessian_stats (defaults{'' if cross else ', cross_check=False'}): {hs.matvecs} HVPs, {t:.1f} s; "
              f"lambda_max {hs.lambda_max:.6g}, Tr(H) {hs.trace:.5g} +- {hs.trace_stderr:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
