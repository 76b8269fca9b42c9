r"""How far the gradient-noise covariance C is from the Hessian H, beyond the ratio of their traces (the paper's
Assumption 2 is C = H).

* The cosine of the two matrices, Tr(CH)/(‖C‖_F‖H‖_F) (1 when C ∝ H): with the centred per-example gradients G
  (rows g_n − ḡ, N examples), C = GᵀG/N, Tr(CH) = (1/N)Σ_n g_nᵀHg_n (N Hessian-vector products) and
  ‖C‖_F = ‖GGᵀ‖_F/N from the N×N Gram matrix; ‖H‖_F by Hutchinson, with its standard error.
* The overlap of the top-k eigenspaces, ‖V_Cᵀ V_H‖_F²/k ∈ [0, 1] (1 when they coincide): V_H by Lanczos
  (``nets.curvature.lanczos``), V_C from the Gram matrix's eigenvectors (C's nonzero spectrum is the Gram's).

C here is the covariance over the N examples passed (the measurement set), not over the whole training set: a
sample of it, whose rank is at most N − 1.

Everything is computed where the operator computes (``HessianOperator.device``), in float64: the per-example
gradients, their N Hessian-vector products (``matvec_tensor``), the Gram matrix and the eigenvectors; only scalars
and the k eigenvalues are read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nets.curvature.arrays import to_host
from nets.curvature.lanczos import extreme_eigenpairs
from nets.curvature.noise import per_example_gradients
from nets.curvature.operator import HessianOperator
from nets.curvature.trace import hutchinson
from sgd_noise_common.results import Result

__all__ = ["NoiseHessianAlignment", "noise_hessian_alignment"]


@dataclass(frozen=True)
class NoiseHessianAlignment(Result):
    """C against H beyond their traces (``noise_hessian_alignment``).

    Attributes:
        cosine, cosine_stderr: Tr(CH)/(‖C‖_F‖H‖_F) (1 when C ∝ H), its standard error from ‖H‖_F's.
        overlap: ‖V_Cᵀ V_H‖_F²/k of the top-``k`` eigenspaces, in [0, 1].
        trace_ch: Tr(CH); frobenius_c: ‖C‖_F; frobenius_h, frobenius_h_stderr: ‖H‖_F by Hutchinson; trace_c: Tr(C).
        eigenvalues_c, eigenvalues_h: the top-``k`` eigenvalues of C and of H.
        k, num_examples: the eigenspaces' dimension and the examples N; matvecs, seconds: the cost.
        bn_statistics: which batch-norm statistics the measured loss used.
    """

    cosine: float
    cosine_stderr: float
    overlap: float
    trace_ch: float
    frobenius_c: float
    frobenius_h: float
    frobenius_h_stderr: float
    trace_c: float
    eigenvalues_c: list
    eigenvalues_h: list
    k: int
    num_examples: int
    matvecs: int
    seconds: float
    bn_statistics: str


def noise_hessian_alignment(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, k: int = 5,
                            bn_mode: str = "eval", frobenius_probes: int = 32, tol: float = 1e-4, rng,
                            **operator_kwargs) -> NoiseHessianAlignment:
    """The cosine Tr(CH)/(‖C‖_F‖H‖_F) and the top-``k`` eigenspace overlap of C and H on ``inputs``.

    Args:
        model, loss_fn, inputs, targets, batch_size, bn_mode, operator_kwargs: as for ``HessianOperator``; the
            per-example gradients need a loss that is a plain function of each example (``bn_mode="eval"``).
        k: the eigenspaces' dimension (at most N − 1).
        frobenius_probes: Hutchinson probes for ‖H‖_F.
        tol: Lanczos's relative accuracy for H's top-k eigenvalues.
        rng: a Generator or a seed.

    Returns:
        A ``NoiseHessianAlignment``.
    """
    if bn_mode != "eval":
        raise ValueError("bn_mode must be 'eval': per-example gradients of train-mode batch norm are not defined")
    t0 = time.perf_counter()
    rng = np.random.default_rng(rng)
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode, **operator_kwargs)
    # On the operator's device, in float64: the per-example gradients, the N products H g_n (matvec_tensor), the
    # Gram matrix, its eigenvectors and C's; only scalars and the k eigenvalues come back.
    g = torch.cat(list(per_example_gradients(op)))
    n = int(g.shape[0])
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must lie in [1, {n - 1}] (N - 1 for N = {n} examples), got {k}")
    g -= g.mean(dim=0)
    # One product per example by hvp_method, as before: blocks (matmat_tensor) would take N/probe_block passes
    # instead of N, but change Tr(CH) of a float32 model by float32 rounding (4e-8 relative, measured).
    trace_ch = float(torch.stack([gi @ op.matvec_tensor(gi) for gi in g]).mean())
    gram = g @ g.T / n
    frob_c = float(torch.linalg.matrix_norm(gram))
    h = hutchinson(op, frobenius_probes, rng=rng).frobenius
    top_h = extreme_eigenpairs(op.matvec_tensor, op.dim, k=k, tol=tol, rng=rng, device=op.device,
                               vectors_on_device=True)
    s, u = torch.linalg.eigh(gram)
    s, u = s.flip(0)[:k], u.flip(1)[:, :k]
    v_c = g.T @ u / torch.sqrt(n * s.clamp_min(1e-300))  # unit eigenvectors of C from those of the Gram matrix
    overlap = float(((v_c.T @ top_h.eigenvectors) ** 2).sum() / k)
    cosine = trace_ch / (frob_c * h.estimate)
    eigenvalues_c = to_host(s).tolist()
    return NoiseHessianAlignment(
        cosine=cosine, cosine_stderr=abs(cosine) * h.stderr / h.estimate,
        overlap=overlap, trace_ch=trace_ch, frobenius_c=frob_c, frobenius_h=h.estimate, frobenius_h_stderr=h.stderr,
        trace_c=float(torch.trace(gram)), eigenvalues_c=eigenvalues_c, eigenvalues_h=top_h.eigenvalues.tolist(), k=k,
        num_examples=n, matvecs=op.matvecs, seconds=time.perf_counter() - t0, bn_statistics=op.bn_statistics)
