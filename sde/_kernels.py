"""numba kernels: chains in parallel (``prange``), one random stream per chain (reproducible whatever the thread
count, see ``sde._random``), compiled once and cached on disk (``cache=True``).

The Gaussian kernels work in the eigenbasis of the drift H + γI, where the drift is diagonal; z = Vᵀ(θ − θ*).
Per step k and coordinate i, with per-coordinate drift a_i, force f_i (weight decay pulling to the origin) and noise
amplitude: plain  z ← z − h_k (a z + f) + amp_k n,  momentum  b ← μb + (a z + f) + amp_k n,  z ← z − h_k b,
where n is √c_i ε_i (commuting noise, the "eigen" path) or row i of F ε with F Fᵀ = Q (any noise, the "dense"
path, which multiplies a block of steps' normals by F in one small matrix product): ``gaussian_kernel``. Each chain
draws the normals of ``BLOCK_ROWS`` steps at once, in one vectorised loop (``sde._random.normal_block``), and the
update loops over i vectorise too. The loss ½ Σ λ_i z_i² is summed after burn-in into batch sums. The minibatch
kernel runs SGD on least squares with real minibatches (xoshiro256++ index draws).
"""

from __future__ import annotations

import hashlib
import pathlib

import numba as nb
import numpy as np

from sde import _random
from sde._random import next_double

# A loss above this (or NaN) means the chain has left every stationary law: stop before it overflows.
DIVERGED = 1e150


# Not inlined by numba (``inline="always"`` would re-lower the loop under the caller's flags, without "reassoc", and
# the sum would become a serial chain of dependent additions: measured 0.38 ns per (chain x dimension x step), more
# than the update itself). LLVM still inlines it, keeping the flags: the reduction vectorises.
@nb.njit(fastmath={"reassoc", "contract"})
def _half_weighted_norm(lam_half, z):
    acc = 0.0
    for i in range(z.size):
        acc += lam_half[i] * z[i] * z[i]
    return acc


@nb.njit(inline="always")
def _bookkeep(c, loss, step, burn_in, n_meas, batch_sums, rec_every, curve, status):
    """After-step bookkeeping of chain ``c``: batch sums after burn-in, the learning curve, divergence.
    Returns True when the chain diverged (``status[c]`` then holds the step)."""
    if not loss < DIVERGED:
        status[c] = step
        return True
    if step > burn_in:
        n_batches = batch_sums.shape[1]
        m = step - burn_in - 1
        batch_sums[c, (m * n_batches) // n_meas] += loss
    if rec_every > 0 and step % rec_every == 0:
        curve[c, step // rec_every] = loss
    return False


#: Steps per block: a chain draws the normals of ``BLOCK_ROWS`` steps at once (one vectorised loop), and the dense
#: path correlates them by one small matrix product. The block's normals and noise, 2 × ROWS × d doubles, stay in L2.
#: The streams' numbers depend on it (a block of n draws is a function of key, counter and n): changing it changes
#: the numbers a seed gives.
BLOCK_ROWS = 32


@nb.njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def gaussian_kernel(z, bm, a, force, scale, factor_t, lam_half, h, amp, mu, start, burn_in, n_meas, batch_sums,
                    rec_every, curve, status, streams):
    """Advance every chain ``h.size`` steps from global step ``start``; see the module docstring. The noise of
    step k is amp_k · scale ⊙ ε (H and C commute: ``scale`` = √c, ``factor_t`` empty) or amp_k · F ε (any C:
    ``scale`` = 1, ``factor_t`` = Fᵀ with F Fᵀ = Q). ``status[c]`` becomes the global step at which chain c diverged.

    Per chain and block of ``BLOCK_ROWS`` steps: draw the block's normals, correlate them by one small in-cache
    matrix product ε Fᵀ when F is given, then take the steps. Why fused by hand: one large BLAS product over all
    chains streams the noise through memory twice and costs more than the whole fused kernel. Call it with BLAS
    limited to one thread (``threadpoolctl``), since the parallelism is over chains.
    """
    chains, d = z.shape
    nsteps = h.size
    dense = factor_t.shape[0] > 0
    for c in nb.prange(chains):
        if status[c] != 0:
            continue
        key, counter = streams[c, 0], streams[c, 1]
        # Private copies of the chain's state: LLVM then knows they alias nothing (about 1.5x faster).
        zc = z[c].copy()
        bc = bm[c].copy()
        buf = np.empty(BLOCK_ROWS * d + 3)  # room to round a block up to a multiple of 4 normals
        eps = buf[:BLOCK_ROWS * d].reshape((BLOCK_ROWS, d))
        noise = np.empty((BLOCK_ROWS, d)) if dense else eps
        # Per-coordinate coefficients of the step, recomputed only when η_k or the noise amplitude changes (once
        # per call for a constant schedule), so that the update is two multiply-adds per coordinate.
        dec = np.empty(d)
        fo = np.empty(d)
        sc = np.empty(d)
        h_prev, a_prev = np.nan, np.nan
        diverged = False
        for j0 in range(0, nsteps, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, nsteps - j0)
            counter = _random.normal_block(key, counter, buf, rows * d + (-(rows * d)) % 4)
            if dense:
                np.dot(eps[:rows], factor_t, noise[:rows])
            for r in range(rows):
                j = j0 + r
                hk = h[j]
                ak = amp[j]
                if hk != h_prev or ak != a_prev:
                    for i in range(d):
                        dec[i] = 1.0 - hk * a[i]
                        fo[i] = hk * force[i]
                        sc[i] = ak * scale[i]
                    h_prev, a_prev = hk, ak
                e = noise[r]
                # One loop per case, so that no test sits inside the innermost loop.
                if mu == 0.0:
                    for i in range(d):
                        zc[i] = dec[i] * zc[i] - fo[i] + sc[i] * e[i]
                else:
                    for i in range(d):
                        bi = mu * bc[i] + a[i] * zc[i] + force[i] + sc[i] * e[i]
                        bc[i] = bi
                        zc[i] = zc[i] - hk * bi
                diverged = _bookkeep(c, _half_weighted_norm(lam_half, zc), start + j + 1, burn_in, n_meas,
                                     batch_sums, rec_every, curve, status)
                if diverged:
                    break
            if diverged:
                break
        z[c] = zc
        bm[c] = bc
        streams[c, 1] = counter


@nb.njit(cache=True)
def _uniform_index(s0, s1, s2, s3, n):
    # ⌊U·n⌋ with 53-bit U: the bias is below n·2^-53, far under any Monte Carlo error here.
    u, s0, s1, s2, s3 = next_double(s0, s1, s2, s3)
    i = np.int64(u * n)
    return min(i, n - 1), s0, s1, s2, s3


@nb.njit(cache=True)
def draw_batch(s0, s1, s2, s3, pc, pos, c, n, sb, sampling, out):
    """Write the indices of one batch of ``sb`` of ``n`` examples into ``out[:sb]``; returns the stream state.

    ``sampling``: 0 with replacement, 1 a fresh subset without replacement (partial Fisher–Yates on the chain's
    permutation ``pc``), 2 the next ``sb`` entries of an epoch's permutation, reshuffled (Fisher–Yates) when fewer
    than ``sb`` remain (the incomplete last batch is dropped).
    """
    if sampling == 2 and pos[c] + sb > n:
        for t in range(n - 1, 0, -1):
            r, s0, s1, s2, s3 = _uniform_index(s0, s1, s2, s3, t + 1)
            tmp = pc[t]
            pc[t] = pc[r]
            pc[r] = tmp
        pos[c] = 0
    for t in range(sb):
        if sampling == 0:
            idx, s0, s1, s2, s3 = _uniform_index(s0, s1, s2, s3, n)
        elif sampling == 1:
            r, s0, s1, s2, s3 = _uniform_index(s0, s1, s2, s3, n - t)
            r += t
            tmp = pc[t]
            pc[t] = pc[r]
            pc[r] = tmp
            idx = pc[t]
        else:
            idx = pc[pos[c] + t]
        out[t] = idx
    if sampling == 2:
        pos[c] += sb
    return s0, s1, s2, s3


@nb.njit(parallel=True, cache=True)
def draw_batches(states, n, sb, sampling, draws, out):
    """``draws`` consecutive batches per stream into ``out`` (streams, draws, sb): the sampler the kernel uses."""
    for c in nb.prange(states.shape[0]):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        pc = np.arange(n)
        pos = np.full(states.shape[0], n, dtype=np.int64)
        buf = np.empty(sb, dtype=np.int64)
        for k in range(draws):
            s0, s1, s2, s3 = draw_batch(s0, s1, s2, s3, pc, pos, c, n, sb, sampling, buf)
            for t in range(sb):
                out[c, k, t] = buf[t]
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3


# "reassoc" lets the dot products (residuals, the loss's quadratic form) vectorise instead of adding one term at a
# time: 2.1x faster at d = 50, S = 10 (sums change in the last bits only; no "nnan", so divergence is still seen).
@nb.njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def minibatch_kernel(theta, bm, x, y, theta_star, hess, etas, sizes, mu, gamma, sampling, perm, pos,
                     start, burn_in, thin, n_meas, batch_sums, rec_every, curve, status, states):
    """SGD with real minibatches on least squares: g_B = (1/S) Σ_{n∈B} x_n(x_nᵀθ − y_n) + γθ, batches drawn by
    ``draw_batch`` (``perm[c]`` and ``pos[c]`` are chain c's permutation and epoch position). The loss ½ δᵀHδ
    (O(d²)) is taken every ``thin`` steps after burn-in.
    """
    chains, d = theta.shape
    n = x.shape[0]
    nsteps = etas.size
    n_batches = batch_sums.shape[1]
    for c in nb.prange(chains):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        th = theta[c]
        bc = bm[c]
        pc = perm[c]
        g = np.empty(d)
        delta = np.empty(d)
        idx_buf = np.empty(sizes.max(), dtype=np.int64)
        if status[c] != 0:
            continue
        for j in range(nsteps):
            eta = etas[j]
            sb = sizes[j]
            for i in range(d):
                g[i] = 0.0
            s0, s1, s2, s3 = draw_batch(s0, s1, s2, s3, pc, pos, c, n, sb, sampling, idx_buf)
            for t in range(sb):
                idx = idx_buf[t]
                resid = -y[idx]
                for i in range(d):
                    resid += x[idx, i] * th[i]
                for i in range(d):
                    g[i] += resid * x[idx, i]
            inv = 1.0 / sb
            for i in range(d):
                gi = g[i] * inv + gamma * th[i]
                if mu != 0.0:
                    gi = mu * bc[i] + gi
                    bc[i] = gi
                th[i] -= eta * gi
            step = start + j + 1
            measure = step > burn_in and (step - burn_in) % thin == 0
            record = rec_every > 0 and step % rec_every == 0
            if measure or record or j == nsteps - 1:
                for i in range(d):
                    delta[i] = th[i] - theta_star[i]
                loss = 0.0
                for i in range(d):
                    row = 0.0
                    for k in range(d):
                        row += hess[i, k] * delta[k]
                    loss += delta[i] * row
                loss *= 0.5
                if not loss < DIVERGED:
                    status[c] = step
                    break
                if measure:
                    m = (step - burn_in) // thin - 1
                    batch_sums[c, (m * n_batches) // n_meas] += loss
                if record:
                    curve[c, step // rec_every] = loss
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3


def drop_stale_caches(dispatchers, dependency_digest: str) -> bool:
    """Empty the on-disk caches of ``dispatchers`` when ``dependency_digest`` differs from the one they were cached
    with; returns True when it emptied them.

    Why by hand: numba's cache checks only the time stamp of the file that defines a kernel (numba issue #1833,
    open), but these kernels compile in the code of ``sde._random`` too. After an edit there, a cached kernel would
    run the old code, silently. The digest is stored as an empty stamp file beside the cache.
    """
    caches = [d._cache for d in dispatchers if hasattr(getattr(d, "_cache", None), "flush")]
    if not caches:
        return False
    folder = pathlib.Path(caches[0]._cache_path)
    stamp = folder / f"{__name__.rsplit('.', 1)[-1]}.deps-{dependency_digest[:16]}"
    if stamp.exists():
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for cache in caches:
            cache.flush()
        for old in folder.glob(f"{__name__.rsplit('.', 1)[-1]}.deps-*"):
            old.unlink(missing_ok=True)
        stamp.touch()
    except OSError:  # a read-only install: numba then caches elsewhere or not at all
        return False
    return True


drop_stale_caches([gaussian_kernel, _uniform_index, draw_batch, draw_batches, minibatch_kernel],
                  hashlib.sha256(pathlib.Path(_random.__file__).read_bytes()).hexdigest())
