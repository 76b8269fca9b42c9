"""The arrays of the curvature estimators live where the operator computes.

An operator with ``matmat_tensor`` (a ``HessianOperator``) takes and returns torch tensors on its ``device``: its
Krylov bases, probes, projections and accumulators are kept there as float64 tensors, and only scalars (one per
Lanczos step, one per probe) are read back to the host. Any other operator (a dense matrix in the tests, a numpy
callable) is served by numpy, as before. The helpers here are the one place where the two meet: the same float64
arithmetic in either library, so a CPU tensor gives the numpy numbers to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["device_of", "to_operator", "to_host", "vector_norm", "column_dots", "apply", "apply_one", "is_tensor"]


def is_tensor(a) -> bool:
    """Whether ``a`` is a torch tensor (else a numpy array)."""
    return isinstance(a, torch.Tensor)


def device_of(op):
    """The torch device of an operator that computes on tensors (one with ``matmat_tensor``), else None (numpy)."""
    return op.device if hasattr(op, "matmat_tensor") else None


def to_operator(a, device):
    """``a`` (numpy or torch) as float64 where the operator computes: a tensor on ``device``, or a numpy array when
    ``device`` is None. A numpy array goes to the device in one copy."""
    if device is None:
        return a.detach().cpu().numpy().astype(np.float64, copy=False) if is_tensor(a) \
            else np.asarray(a, dtype=np.float64)
    if not is_tensor(a):
        a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    return a.to(device=device, dtype=torch.float64)


def to_host(a) -> np.ndarray:
    """``a`` as a float64 numpy array (a tensor is copied back from its device)."""
    return a.detach().cpu().numpy() if is_tensor(a) else np.asarray(a, dtype=np.float64)


def vector_norm(a):
    """The Euclidean norm of all of ``a``'s entries, in ``a``'s library (a 0-d tensor, or a numpy float)."""
    return torch.linalg.vector_norm(a) if is_tensor(a) else np.linalg.norm(a)


def column_dots(a, b):
    """The columns' dot products Σ_i a_ij b_ij, in ``a``'s library."""
    return torch.einsum("ij,ij->j", a, b) if is_tensor(a) else np.einsum("ij,ij->j", a, b)


def apply(op, v):
    """H V for a ``(dim, b)`` block in the operator's own arrays: ``matmat_tensor`` for tensors, else ``matmat``
    (or column by column ``matvec``) for numpy."""
    if is_tensor(v):
        return op.matmat_tensor(v)
    if hasattr(op, "matmat"):
        return np.asarray(op.matmat(v), dtype=np.float64)
    return np.column_stack([op.matvec(v[:, i]) for i in range(v.shape[1])])


def apply_one(op, v):
    """H v for one vector in the operator's own arrays (``matvec_tensor`` for a tensor, else ``matvec``)."""
    return op.matvec_tensor(v) if is_tensor(v) else np.asarray(op.matvec(v), dtype=np.float64)
