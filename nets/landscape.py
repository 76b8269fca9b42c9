"""The loss along the line between two models, θ(α) = (1 − α)θ_A + αθ_B (Goodfellow et al. 2015; the paper's
Fig. 4).

The whole state is interpolated: parameters and the floating-point batch-norm buffers (running mean and variance);
integer buffers (``num_batches_tracked``) are taken from model A. With ``bn_inputs`` given, each interpolated model's
batch-norm statistics are recomputed on those inputs first (running statistics interpolated linearly are not the
statistics of the interpolated network). Evaluation is in eval mode, on copies: neither model is changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from torch import nn

from nets.curvature import recalibrate_bn
from nets.evaluation import evaluate

__all__ = ["Interpolation", "interpolate"]


@dataclass
class Interpolation:
    """The loss and accuracy at each α of θ(α) = (1 − α)θ_A + αθ_B, and how batch norm was handled."""

    alphas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    recalibrated: bool
    #: α where a linearly interpolated running variance came out negative (α outside [0, 1], no recalibration)
    #: and was clamped to 0 before evaluation.
    clamped_alphas: list

    def to_dict(self) -> dict:
        """As JSON-ready lists."""
        return {"alphas": self.alphas.tolist(), "losses": self.losses.tolist(),
                "accuracies": self.accuracies.tolist(), "recalibrated": self.recalibrated,
                "clamped_alphas": list(self.clamped_alphas)}


def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn, inputs, targets, *, alphas=None,
                batch_size: int = 1000, bn_inputs=None) -> Interpolation:
    """Loss and accuracy of θ(α) for each α (default 31 points in [−1, 2], which include 0 and 1).

    Args:
        model_a, model_b: two models of the same architecture (α = 0 is A, α = 1 is B).
        loss_fn: mean loss over a batch.
        inputs, targets: where the loss is evaluated (training or test set).
        alphas: the coefficients.
        batch_size: evaluation (and recalibration) batch size.
        bn_inputs: if given, recompute the batch-norm statistics of every θ(α) on these inputs.
    """
    alphas = np.linspace(-1.0, 2.0, 31) if alphas is None else np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas)):
        raise ValueError("alphas must be a non-empty 1-D array of finite numbers")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("model_a and model_b must have the same architecture (state dicts differ)")
    work = copy.deepcopy(model_a)
    losses, accs, clamped = [], [], []
    for alpha in alphas:
        state = {}
        for k, va in sa.items():
            vb = sb[k]
            state[k] = ((1.0 - alpha) * va.double() + alpha * vb.double()).to(va.dtype) \
                if va.is_floating_point() else va.clone()
            if k.endswith("running_var") and bn_inputs is None and bool((state[k] < 0).any()):
                state[k] = state[k].clamp_min(0.0)
                clamped.append(float(alpha))
        work.load_state_dict(state)
        if bn_inputs is not None:
            recalibrate_bn(work, bn_inputs, batch_size)
        loss, acc = evaluate(work, loss_fn, inputs, targets, batch_size=batch_size)
        losses.append(loss)
        accs.append(acc)
    return Interpolation(alphas, np.array(losses), np.array(accs), bn_inputs is not None, sorted(set(clamped)))
