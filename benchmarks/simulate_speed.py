"""Speed of the simulators against a plain vectorised numpy loop, in the same process.

Benchmark case (issue 2): diagonal H, d = 100, eigenvalues log-spaced in [0.01, 1], eta = 0.1, S = 10, 256 chains;
the same spectrum in a random rotation (C = H, so it commutes and runs the eigenbasis kernel); and a rotation with a
non-commuting C (the dense-noise kernel), compared with the cost of its matrix products alone.
Prints ns per (chain x dimension x step). Run: ``make bench`` or ``python benchmarks/simulate_speed.py [--dim D]``.

Why the Gaussian kernels draw their normals as they do (``sde/_random.py``), as measured on the 2-core development
VM (AMD Zen 4, AVX-512) when the generator was chosen:

Why not a ziggurat (numpy's method, and this module's until the kernels were vectorised): the Gaussian kernels draw
d normals per chain and step, and at d = 100 the draws cost a third of the dense kernel's matrix products. The
ziggurat is fast per draw but serial (a table lookup and a rare rejection branch per draw, a xoshiro state carried
from draw to draw): LLVM cannot put it in SIMD registers. Here every draw is a pure function of (key, counter):
SplitMix64's output function applied to a Weyl sequence (Steele, Lea & Flood 2014; it passes BigCrush). Box–Muller
turns the draws into normals with branch-free ports of fdlibm's log, sin and cos kernels (within 1 ulp). A block
of draws is then one loop that LLVM vectorises (8 lanes with AVX-512): measured 0.52–0.54 ns per normal on 2 cores
against 0.93 for the ziggurat, and the kernels' loops around it vectorise too. Each chain owns a key
(64 random bits) and a counter of draws. Streams of different keys are stretches of one period-2^64 sequence;
two overlap with probability about chains² × draws / 2^64 (1e-9 for 256 chains of 4e5 draws).

Why not float32, which would double the lanes: measured only 1.3x faster here (the 64-bit draws dominate), for
normals accurate to 1e-7 instead of 1e-16. Why not a SIMD ziggurat: a gather from a 256-entry table costs 1.4 cycles
per element on this CPU (Zen 4), two per draw, more than the whole Box–Muller. Why Box–Muller in four dimensions: in
two (one log per 2 normals) a normal cost 1.13 ns on one core, of which the log 0.48, sin and cos 0.25, the
SplitMix64 draws 0.25 and the square root 0.08; with one log per 4 normals it costs 1.00–1.07 ns. Six dimensions
(one log per 6 normals, but 8 draws and 4 square roots) measured no faster.
"""

from __future__ import annotations

import argparse
import math
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from quadratic import Quadratic, logspace
from sde import _kernels, _random, simulate

D, CHAINS, ETA, S = 100, 256, 0.1, 10
STEPS = 4000


ROUNDS = 7


def interleaved_best(fns, rounds=ROUNDS):
    """Best (minimum) wall time of each function over ``rounds`` rounds, the functions taking turns in every round.

    This VM's neighbours make a single timing vary by up to 2x; taking turns exposes every candidate to the same
    background, and the minimum (as ``timeit`` recommends) is the run least disturbed by it.
    """
    best = [math.inf] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            # Let the previous candidate's thread pools go idle first: OpenBLAS workers spin for a while after a
            # multi-threaded product and would otherwise slow whichever candidate runs next.
            time.sleep(0.3)
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


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


@numba.njit(parallel=True)
def _products_in_cache(chains, steps, fac, out):
    rows = _kernels.BLOCK_ROWS
    d = fac.shape[0]
    for c in numba.prange(chains):
        eps = np.full((rows, d), 0.5)
        acc = 0.0
        for _ in range(0, steps, rows):
            acc += np.dot(eps, fac)[0, 0]
        out[c] = acc


@numba.njit(parallel=True)
def _sum_block_normals(streams, count, n, out):
    # The kernels' normals alone: blocks of n = BLOCK_ROWS x d draws, as the kernels draw them, summed.
    for c in numba.prange(streams.shape[0]):
        buf = np.empty(n)
        acc = 0.0
        for _ in range(count // n):
            streams[c, 1] = _random.normal_block(streams[c, 0], streams[c, 1], buf, n)
            acc += buf[0]
        out[c] = acc


def main(argv=None) -> None:
    global D
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=D,
                        help=f"dimension d (default {D}, the issue's case; the dense kernel's matrix products grow "
                             "as d², its normals as d)")
    D = parser.parse_args(argv).dim
    if D < 2:
        parser.error(f"--dim must be >= 2, got {D}")
    per = CHAINS * D * STEPS
    rng = np.random.default_rng(0)
    lam = logspace(0.01, 1.0, D)
    diag = Quadratic.from_spectrum(lam)
    rot = Quadratic.from_spectrum(lam, rotate=True, rng=rng)
    a = rng.standard_normal((D, D))
    noncomm = Quadratic(rot.hessian, noise_covariance=a @ a.T / D)
    # Warm up (compile or load from cache) before timing.
    for q in (diag, rot, noncomm):
        simulate(q, ETA, S, steps=20, chains=CHAINS, rng=1, burn_in=0)
    print(f"numba threads: {numba.get_num_threads()}; {CHAINS} chains x d={D} x {STEPS} steps; "
          f"figures in ns per (chain x dimension x step), best of {ROUNDS} interleaved rounds\n")

    streams = _random.seed_streams(np.random.default_rng(2), CHAINS)
    out = np.empty(CHAINS)
    _sum_block_normals(streams, 2 * _kernels.BLOCK_ROWS * D, _kernels.BLOCK_ROWS * D, out)
    eps = np.empty((CHAINS, D))
    g = np.random.default_rng(3)

    def numpy_normals():
        for _ in range(STEPS // 4):
            g.standard_normal(out=eps)

    # The dense kernel's matrix products alone, done two ways: as the kernel does them (each chain multiplies
    # blocks of BLOCK_ROWS steps' normals, in cache, BLAS on one thread, chains in parallel), and as one large
    # BLAS product over all chains per block of steps (the design before the fused kernel).
    fac = np.linalg.cholesky(noncomm.noise_covariance).T.copy()
    block = max(1, 2**24 // (CHAINS * D))
    e = np.random.default_rng(6).standard_normal((CHAINS * block, D))
    _products_in_cache(2, 2 * _kernels.BLOCK_ROWS, fac, out)

    def products():
        for _ in range(STEPS // block):
            e @ fac

    def products_in_cache():
        with threadpool_limits(limits=1, user_api="blas"):
            _products_in_cache(CHAINS, STEPS, fac, out)

    cases = {
        "normals alone, sde._random (parallel)": (
            lambda: _sum_block_normals(streams, D * STEPS, _kernels.BLOCK_ROWS * D, out), per),
        "normals alone, numpy Generator": (numpy_normals, per / 4),
        "products alone, one large BLAS product": (products, CHAINS * block * D * (STEPS // block)),
        "products alone, as the kernel does them": (products_in_cache, per),
    }
    for name, q in (("diagonal", diag), ("rotated, C = H (commuting)", rot),
                    ("rotated, non-commuting C (dense kernel)", noncomm)):
        cases[name] = (lambda q=q: simulate(q, ETA, S, steps=STEPS, chains=CHAINS, rng=5), per)
        cases[name + " numpy"] = (lambda q=q: numpy_loop(q, STEPS // 4, np.random.default_rng(4)), per / 4)
    best = interleaved_best([fn for fn, _ in cases.values()])
    ns = {name: t / count * 1e9 for (name, (_, count)), t in zip(cases.items(), best)}

    for name in ("normals alone, sde._random (parallel)", "normals alone, numpy Generator"):
        print(f"{name:<52} {ns[name]:8.2f}")
    print(f"\n{'case':<44} {'ours':>8} {'numpy':>8} {'speed-up':>9}")
    for name in ("diagonal", "rotated, C = H (commuting)", "rotated, non-commuting C (dense kernel)"):
        ours, base = ns[name], ns[name + " numpy"]
        print(f"{name:<44} {ours:8.2f} {base:8.2f} {base / ours:8.1f}x")
    t_dense = ns["rotated, non-commuting C (dense kernel)"]
    print()
    for name in ("products alone, as the kernel does them", "products alone, one large BLAS product"):
        print(f"dense kernel / its {name}: {t_dense:.2f} / {ns[name]:.2f} = {t_dense / ns[name]:.2f}x")


if __name__ == "__main__":
    main()
