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
import torch
from torch import nn

from nets.curvature import recalibrate_bn
from nets.evaluation import evaluate

__all__ = ["Interpolation", "interpolate", "Slice", "loss_slice", "filter_normalized_direction"]


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
                batch_size: int = 1000, bn_inputs=None, more_sets: dict | None = None):
    """Loss and accuracy of θ(α) for each α (default 31 points in [−1, 2], which include 0 and 1).

    Args:
        model_a, model_b: two models of the same architecture (α = 0 is A, α = 1 is B).
        loss_fn: mean loss over a batch.
        inputs, targets: where the loss is evaluated (training or test set).
        alphas: the coefficients.
        batch_size: evaluation (and recalibration) batch size.
        bn_inputs: if given, recompute the batch-norm statistics of every θ(α) on these inputs.
        more_sets: ``{name: (inputs, targets)}``, further sets evaluated at the same θ(α), with the batch-norm
            statistics recomputed once per α for all of them (fig4's training and test lines).

    Returns:
        The ``Interpolation`` on ``inputs``; with ``more_sets``, ``(that, {name: Interpolation})``.
    """
    alphas = np.linspace(-1.0, 2.0, 31) if alphas is None else np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas)):
        raise ValueError("alphas must be a non-empty 1-D array of finite numbers")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("model_a and model_b must have the same architecture (state dicts differ)")
    sets = {None: (inputs, targets), **(more_sets or {})}
    work = copy.deepcopy(model_a)
    losses = {name: [] for name in sets}
    accs = {name: [] for name in sets}
    clamped = []
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
        for name, (x, y) in sets.items():
            loss, acc = evaluate(work, loss_fn, x, y, batch_size=batch_size)
            losses[name].append(loss)
            accs[name].append(acc)
    out = {name: Interpolation(alphas, np.array(losses[name]), np.array(accs[name]), bn_inputs is not None,
                               sorted(set(clamped))) for name in sets}
    first = out.pop(None)
    return first if more_sets is None else (first, out)


def filter_normalized_direction(model: nn.Module, *, rng, ignore_1d: bool = True) -> dict:
    """A random direction in parameter space with filter normalisation (Li, Xu, Taylor, Studer & Goldstein,
    NeurIPS 2018, "Visualizing the Loss Landscape of Neural Nets"): Gaussian entries, each filter (each output unit
    or channel: a row of the weight's first axis) rescaled to the norm of the model's filter, so that a step of 1
    moves every filter by its own size. Biases and batch-norm parameters (1-D tensors) get 0 with ``ignore_1d``,
    as Li et al. do.

    Returns:
        ``{name: tensor}`` over the trainable parameters, in float64, each on its parameter's device. The Gaussian
        numbers are drawn by a CPU generator (the same directions, up to rounding, on every device) and then moved.
    """
    g = torch.Generator().manual_seed(int(np.random.default_rng(rng).integers(0, 2**62)))
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        w = p.detach().double()
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if ignore_1d else \
                torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.device)
            continue
        d = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.device)
        dn = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        out[name] = d * (wn / dn).reshape(-1, *([1] * (w.dim() - 1)))
    return out


@dataclass
class Slice:
    """Loss and accuracy on a grid θ + αd₁ (+ βd₂), and how batch norm was handled.

    Attributes:
        alphas, betas: the grid's coordinates (``betas`` is ``None`` for a 1-D slice).
        losses, accuracies: ``(len(alphas),)`` or ``(len(alphas), len(betas))``.
        bn: ``"recomputed on N inputs"`` or ``"carried (the model's running statistics)"``.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    accuracies: np.ndarray
    bn: str

    def to_dict(self) -> dict:
        """As JSON-ready lists."""
        return {"alphas": self.alphas.tolist(), "betas": None if self.betas is None else self.betas.tolist(),
                "losses": self.losses.tolist(), "accuracies": self.accuracies.tolist(), "bn": self.bn}

    def plot(self, path, *, title: str = "loss landscape") -> None:
        """1-D: the loss against α; 2-D: a contour plot and a surface of log10 loss; saved atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sgd_noise_common.files import save_figure_atomic

        if self.betas is None:
            fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
            ax.plot(self.alphas, self.losses, "-o", ms=3)
            ax.set(xlabel="alpha (filter-normalised direction)", ylabel="loss", yscale="log", title=title)
        else:
            fig = plt.figure(figsize=(11, 4.6), constrained_layout=True)
            ax = fig.add_subplot(1, 2, 1)
            a, b = np.meshgrid(self.alphas, self.betas, indexing="ij")
            z = np.log10(np.maximum(self.losses, 1e-12))
            cs = ax.contour(a, b, z, levels=20)
            ax.clabel(cs, fontsize=6)
            ax.plot([0], [0], "k+", ms=10)
            ax.set(xlabel="alpha", ylabel="beta", title=f"{title}: log10 loss")
            ax3 = fig.add_subplot(1, 2, 2, projection="3d")
            ax3.plot_surface(a, b, z, cmap="viridis", linewidth=0)
            ax3.set(xlabel="alpha", ylabel="beta", zlabel="log10 loss")
        save_figure_atomic(fig, path, dpi=120)


def loss_slice(model: nn.Module, loss_fn, inputs, targets, *, directions=None, alphas=None, betas=None,
               rng, batch_size: int = 1000, bn_inputs=None) -> Slice:
    """The loss and accuracy around ``model`` along one or two directions (1-D or 2-D slice, Li et al. 2018).

    Args:
        model: the centre θ (not modified: a copy is evaluated).
        loss_fn, inputs, targets: where the loss is evaluated.
        directions: one or two ``{name: tensor}`` directions (moved to the model's device); default
            filter-normalised random ones (two when ``betas`` is given).
        alphas, betas: coordinates along each direction (default 21 points in [−1, 1]; ``betas=None``: 1-D).
        rng: a Generator or a seed for the default directions.
        batch_size: evaluation (and recalibration) batch size.
        bn_inputs: recompute the batch-norm statistics at every point on these inputs; ``None`` carries the
            model's running statistics (stated in the result).
    """
    alphas = np.linspace(-1.0, 1.0, 21) if alphas is None else np.asarray(alphas, dtype=np.float64)
    betas = None if betas is None else np.asarray(betas, dtype=np.float64)
    rng = np.random.default_rng(rng)
    want = 1 if betas is None else 2
    if directions is None:
        directions = [filter_normalized_direction(model, rng=rng) for _ in range(want)]
    if len(directions) != want:
        raise ValueError(f"directions: need {want} for a {want}-D slice, got {len(directions)}")
    work = copy.deepcopy(model)
    base = {n: p.detach().double().clone() for n, p in work.named_parameters() if p.requires_grad}
    directions = [{n: torch.as_tensor(d[n], device=base[n].device) for n in base} for d in directions]
    shape = (alphas.size,) if betas is None else (alphas.size, betas.size)
    losses, accs = np.empty(shape), np.empty(shape)
    for idx in np.ndindex(*shape):
        coef = [alphas[idx[0]]] + ([] if betas is None else [betas[idx[1]]])
        with torch.no_grad():
            for name, p in work.named_parameters():
                if name in base:
                    value = base[name] + sum(c * d[name] for c, d in zip(coef, directions))
                    p.copy_(value.to(device=p.device, dtype=p.dtype))
        if bn_inputs is not None:
            recalibrate_bn(work, bn_inputs, batch_size)
        losses[idx], accs[idx] = evaluate(work, loss_fn, inputs, targets, batch_size=batch_size)
    bn = f"recomputed on {int(bn_inputs.shape[0])} inputs" if bn_inputs is not None else \
        "carried (the model's running statistics)"
    return Slice(alphas, betas, losses, accs, bn)
