"""The cost of ``nets.basin.linearised_covariance`` on the eq7 small MLP (issue 20: at most 60 s on 2 cores).

The model: eq7's network at small scale, the MLP of Fig. 3 without batch norm at width 0.25 (hidden 64, 59 210
parameters), on 5 000 training examples (Fashion-MNIST when installed, synthetic data of its shape otherwise; the
cost does not depend on the values), at its initial parameters with eq7's weight decay 1e-2 (the cost does not
depend on where it is taken either). k = 8 orthonormal directions (random: the cost is the same for eigenvectors).

Printed, beside the CPU's vector extensions, torch's threads and the load average (a shared machine's other jobs
slow every figure): the seconds of

* ``projected_curvatures``: the per-example gradient and curvature along the 8 directions, k(k+1)/2 = 36
  forward-over-forward passes under ``vmap`` per chunk of examples, in float64 (the default) and float32;
* the whole ``linearised_covariance`` (the measurement copy, the curvatures, the law, ρ), plain SGD and momentum 0.9.

Run: ``OMP_NUM_THREADS=1 python benchmarks/linearised_speed.py --threads 1`` (``--examples``, ``--k``, ``--chunk``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch.nn import functional as F

from nets.basin import linearised_covariance, projected_curvatures
from nets.curvature import HessianOperator
from nets.data import DataError, load_fashion_mnist, synthetic
from nets.models import build_model, count_parameters
from sgd_noise_common.environment import environment


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--chunk", type=int, default=1000)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data, what = load_fashion_mnist(None), "Fashion-MNIST"
    except DataError:
        data, what = synthetic((1, 28, 28), train_size=args.examples, seed=0), "synthetic data of Fashion-MNIST's shape"
    x, y = data.x_train[:args.examples], data.y_train[:args.examples]
    model = build_model("mlp", data.input_shape, 10, width=0.25, batch_norm=False, seed=0)
    dim = count_parameters(model)
    v = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, args.k)))[0]
    env = environment()
    print(f"eq7 small MLP: {dim} parameters, {x.shape[0]} examples of {what}, k = {args.k} directions, chunk "
          f"{args.chunk}")
    print(f"CPU flags {' '.join(env['cpu_flags'])} (avx512f: {'avx512f' in env['cpu_flags']}); torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores")
    for dtype in (torch.float64, torch.float32):
        op = HessianOperator(model, F.cross_entropy, x, y, batch_size=args.chunk, dtype=dtype)
        t0 = time.perf_counter()
        projected_curvatures(op, v, chunk=args.chunk)
        print(f"projected_curvatures, {str(dtype).split('.')[-1]}: {time.perf_counter() - t0:.1f} s")
    for mu in (0.0, 0.9):
        r = linearised_covariance(model, F.cross_entropy, x, y, eta=0.1, batch_size=16, momentum=mu,
                                  weight_decay=1e-2, directions=v, chunk=args.chunk)
        print(f"linearised_covariance, momentum {mu:g}: {r.seconds:.1f} s (rho = {r.spectral_radius:.4f}, "
              f"stable {r.stable})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
