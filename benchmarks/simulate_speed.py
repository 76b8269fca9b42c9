"""Speed of the simulators against a plain vectorised numpy loop, in the same process.

Benchmark case (issue 2): diagonal H, d = 100, eigenvalues log-spaced in [0.01, 1], eta = 0.1, S = 10, 256 chains;
the same spectrum in a random rotation (C = H, so it commutes and runs the eigenbasis kernel); and a rotation with a
non-commuting C (the dense-noise kernel), compared with the cost of its matrix products alone.
Prints ns per (chain x dimension x step). Run: ``make bench`` or ``python benchmarks/simulate_speed.py``.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from quadratic import Quadratic, logspace
from sde import _kernels, _random, simulate

D, CHAINS, ETA, S = 100, 256, 0.1, 10
STEPS = 4000


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def numpy_loop(q: Quadratic, steps: int, rng) -> float:
    """The plain baseline: theta <- theta - eta (theta - theta*) H + (eta/sqrt(S)) eps R^T, numpy Generator draws."""
    theta = np.zeros((CHAINS, D))
    eps = np.empty((CHAINS, D))
    diag = q.is_diagonal
    lam = np.diag(q.hessian)
    r = np.linalg.cholesky(q.noise_covariance + 1e-15 * np.eye(D)).T
    acc = 0.0
    for _ in range(steps):
        rng.standard_normal(out=eps)
        if diag:
            theta -= ETA * lam * theta
            theta += ETA / np.sqrt(S) * np.sqrt(lam) * eps
            acc += 0.5 * np.sum(lam * theta * theta)
        else:
            theta -= ETA * (theta @ q.hessian)
            theta += ETA / np.sqrt(S) * (eps @ r)
            acc += 0.5 * np.sum((theta @ q.hessian) * theta)
    return acc


def main() -> None:
    per = CHAINS * D * STEPS
    rng = np.random.default_rng(0)
    lam = logspace(0.01, 1.0, D)
    diag = Quadratic.from_spectrum(lam)
    rot = Quadratic.from_spectrum(lam, rotate=True, rng=rng)
    a = rng.standard_normal((D, D))
    noncomm = Quadratic(rot.hessian, noise_covariance=a @ a.T / D)
    # Warm up (compile or load from cache) before timing.
    for q in (diag, rot, noncomm):
        simulate(q, ETA, S, steps=20, chains=CHAINS, rng=1)
    print(f"numba threads: {numba.get_num_threads()}; {CHAINS} chains x d={D} x {STEPS} steps; "
          "figures in ns per (chain x dimension x step), best of 3\n")

    states = _random.seed_states(np.random.default_rng(2), CHAINS)
    out = np.empty(CHAINS)
    kt, wt, ft = _random.tables()
    t_normals = best_of(lambda: _kernels.sum_normals(states, D * STEPS, out, kt, wt, ft)) / per * 1e9
    eps = np.empty((CHAINS, D))
    g = np.random.default_rng(3)

    def numpy_normals():
        for _ in range(STEPS):
            g.standard_normal(out=eps)

    t_np_normals = best_of(numpy_normals) / per * 1e9
    print(f"{'normals alone, sde._random (parallel)':<52} {t_normals:8.2f}")
    print(f"{'normals alone, numpy Generator':<52} {t_np_normals:8.2f}\n")

    rows = []
    for name, q in (("diagonal", diag), ("rotated, C = H (commuting)", rot)):
        t_np = best_of(lambda: numpy_loop(q, STEPS // 4, np.random.default_rng(4)), 2) / (per / 4) * 1e9
        t_ours = best_of(lambda: simulate(q, ETA, S, steps=STEPS, chains=CHAINS, rng=5)) / per * 1e9
        rows.append((name, t_ours, t_np))
    # Non-commuting: the dense-noise kernel against its matrix products alone (same shapes, same blocking).
    t_np = best_of(lambda: numpy_loop(noncomm, STEPS // 4, np.random.default_rng(4)), 2) / (per / 4) * 1e9
    t_dense = best_of(lambda: simulate(noncomm, ETA, S, steps=STEPS, chains=CHAINS, rng=5)) / per * 1e9
    rows.append(("rotated, non-commuting C (dense kernel)", t_dense, t_np))
    block = max(1, 2**24 // (CHAINS * D))
    e = np.random.default_rng(6).standard_normal((CHAINS * block, D))
    fac = np.linalg.cholesky(noncomm.noise_covariance).T.copy()

    def products():
        for _ in range(STEPS // block):
            e @ fac

    t_gemm = best_of(products) / (CHAINS * block * D * (STEPS // block)) * 1e9
    print(f"{'case':<44} {'ours':>8} {'numpy':>8} {'speed-up':>9}")
    for name, ours, base in rows:
        print(f"{name:<44} {ours:8.2f} {base:8.2f} {base / ours:8.1f}x")
    print(f"\ndense kernel / its matrix products alone: {t_dense:.2f} / {t_gemm:.2f} = {t_dense / t_gemm:.2f}x")


if __name__ == "__main__":
    main()
