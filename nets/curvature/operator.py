r"""The measured loss and its Hessian-vector products, with an explicit batch-norm policy.

The measured loss is L(θ) = Σ_b (n_b/N) ℓ_b(θ) over a fixed, ordered measurement set cut into batches of
``batch_size`` (the last, partial batch weighted by its size), plus (γ/2)‖θ‖² only when ``weight_decay=γ`` is
given. Batch norm is handled by an explicit policy:

* ``bn_mode="eval"``: running statistics recomputed on ``bn_inputs`` (default the measurement inputs; pass the
  training set) with a cumulative average, then eval mode: L is a plain function of θ, independent of batching.
* ``bn_mode="train"``: batch statistics of each measurement batch of the fixed ``batch_size`` (what SGD sees);
  running statistics are neither used nor updated.

Every measurement works on a deep copy of the model (the user's parameters, buffers and train/eval flag are never
touched), with TF32 off while measuring, and dot products and norms accumulated in float64. The operator is written
here, rather than taken from a library, so that this policy, the weighting of a partial last batch and the fixed
batches hold for every matvec; the linear algebra on top of it is scipy's (``eigsh`` on a ``LinearOperator``).

As in curvlinops, every product derives from one primitive, ``HessianOperator._matmat``: a block of b directions
through the measurement batches (``_matmat_batch``: one batch of data, where the choice between a batched pass under
vmap and one direction at a time is made), with the weighting of the batches, the weight decay and the count of
products in that one place; ``hvp``, ``hvp_block``, ``matvec`` and ``matmat`` are views of it, and the loss and the
gradient go through the same weighted batches (``_weighted_batches``).
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn

from nets.evaluation import batch_slices, measurement_precision

__all__ = ["BN_MODES", "HVP_METHODS", "HVP_CHUNK", "PROBE_BLOCK", "PROBE_BLOCK_RESULT", "HessianOperator",
           "recalibrate_bn", "batch_norm_layers"]

#: The batch-norm policies (see the module docstring).
BN_MODES = ("eval", "train")
#: The exact ways of taking a Hessian-vector product (see ``HessianOperator``).
HVP_METHODS = ("reverse-over-reverse", "reverse-over-forward")
#: Largest sub-batch of an eval-mode HVP of a convolutional model (see ``HessianOperator``).
HVP_CHUNK = 64
#: The measurement behind ``PROBE_BLOCK`` and the convolutional models' one probe per pass (seconds per HVP of
#: ``matvec`` looped against ``matmat`` with 4, 8 and 16 probes per pass, and the CPU's flags): written by
#: ``python benchmarks/curvature_speed.py --blocks-json benchmarks/results/curvature_block.json``.
PROBE_BLOCK_RESULT = "benchmarks/results/curvature_block.json"
#: Probes per pass over the measurement set (``matmat``) for fully connected models: the fastest block size per HVP
#: in ``PROBE_BLOCK_RESULT``. Convolutional models take one probe per pass (``HessianOperator.probe_block``), for
#: blocks cost more than they saved there (the same file).
PROBE_BLOCK = 8

# torch's common base of every batch norm (1d, 2d, 3d, sync, lazy); torch has no public name for it.
_BATCH_NORM = nn.modules.batchnorm._BatchNorm


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (any dimension, synchronised or lazy), in ``model.modules()`` order.

    Args:
        model: any network.

    Returns:
        The list of its batch-norm modules; empty when it has none.
    """
    return [m for m in model.modules() if isinstance(m, _BATCH_NORM)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
    """Recompute every batch norm's running statistics as the cumulative average over ``inputs``, in place.

    Batches of one example are skipped (batch norm in train mode cannot normalise them); dropout stays off and the
    model's train/eval flag and the layers' momenta are restored afterwards.

    Args:
        model: the network whose batch-norm buffers are overwritten (a model without batch norm is left alone).
        inputs: the data, fed in order in batches of ``batch_size``.
        batch_size: examples per forward pass.
    """
    bns = batch_norm_layers(model)
    if not bns:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    _dropout_off(model)
    for a, b in batch_slices(inputs.shape[0], batch_size):
        if b - a > 1:
            model(inputs[a:b])
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)


def _dropout_off(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


def _copy_for_measurement(model: nn.Module, *, bn_mode: str, bn_inputs, batch_size: int, dtype,
                          device) -> nn.Module:
    """A deep copy of ``model`` set up for measuring under the batch-norm policy ``bn_mode``.

    ``"eval"``: the copy's running statistics are recomputed on ``bn_inputs`` (``recalibrate_bn``; kept as they
    are when ``bn_inputs`` is None) and the copy is put in eval mode. ``"train"``: train mode with dropout off and
    every batch norm using batch statistics only, with its running buffers removed, so that the loss is a function
    of θ alone.

    Args:
        model: the network (not modified).
        bn_mode: one of ``BN_MODES``.
        bn_inputs: eval mode: data for the running statistics, or None to keep the model's own.
        batch_size: batch size of the recalibration.
        dtype: the copy's dtype, or None for the model's.
        device: the copy's device.

    Returns:
        The prepared copy.

    Raises:
        ValueError: when ``bn_mode`` is not one of ``BN_MODES``.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    m = copy.deepcopy(model)
    m.to(device=device)
    if dtype is not None:
        m.to(dtype=dtype)
    if bn_mode == "eval":
        if bn_inputs is not None:
            recalibrate_bn(m, bn_inputs.to(device=device, dtype=dtype or bn_inputs.dtype), batch_size)
        m.eval()
    else:
        m.train()
        _dropout_off(m)
        for bn in batch_norm_layers(m):
            # Batch statistics only; no buffer is read or written, so L is a function of θ alone.
            bn.track_running_stats = False
            bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    return m


class HessianOperator:
    r"""Hessian-vector products of the measured loss (see the module docstring) at the model's parameters.

    A matvec costs one pass over the measurement set; ``matvecs`` counts them. For a linear least-squares model,
    L(w) = mean_n (x_nᵀw − y_n)², the Hessian is 2XᵀX/N:

    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    >>> op = HessianOperator(nn.Linear(2, 1, bias=False), nn.functional.mse_loss, x, y, batch_size=2,
    ...                      dtype=torch.float64)
    >>> h = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
    >>> bool(np.allclose(h, 2 * (x.T @ x).numpy() / 5)), op.matvecs
    (True, 2)

    Args:
        model: the network (left untouched: a copy is measured).
        loss_fn: ``loss_fn(outputs, targets)``, the mean over a batch (e.g. ``torch.nn.functional.cross_entropy``).
        inputs, targets: the fixed, ordered measurement set.
        batch_size: measurement batch size (in train-mode batch norm, the batch size whose statistics are used).
        bn_mode: ``"eval"`` or ``"train"``.
        weight_decay: γ: adds (γ/2)‖θ‖² to the measured loss (and γI to the Hessian); 0 leaves it out.
        bn_inputs: eval mode: the data on which the running statistics are recomputed (default ``inputs``).
        recalibrate: False keeps the model's own running statistics.
        dtype: measure in this dtype (e.g. ``torch.float64`` for exact checks); default the model's.
        device: default the model's.
        hvp_method: ``"reverse-over-reverse"`` (double backward), ``"reverse-over-forward"`` (``torch.func``: the
            gradient of a forward-mode directional derivative) or ``"auto"``: reverse-over-forward for models with
            convolutions, where it is the faster of the two, and reverse-over-reverse otherwise and always for
            train-mode batch norm (see below); ``benchmarks/nets_speed.py`` measures both. Both are exact; the
            choice is fixed per operator, so every matvec of a measurement uses the same arithmetic. ``matmat``
            (several vectors in one pass) has its own, ``block_method`` (see ``hvp_block``), equal to ``matvec``'s
            to rounding.

    Raises:
        ValueError: for an empty or mismatched measurement set, ``batch_size < 1``, ``weight_decay < 0``, a
            train-mode batch of one example, a model without trainable parameters, an unknown ``bn_mode`` or
            ``hvp_method``, or reverse-over-forward with train-mode batch norm.
    """

    def __init__(self, model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, bn_mode: str = "eval",
                 weight_decay: float = 0.0, bn_inputs=None, recalibrate: bool = True, dtype=None, device=None,
                 hvp_method: str = "auto"):
        # Long because it validates every argument before the (costly) copy, then fixes the HVP arithmetic.
        n = int(inputs.shape[0])
        if n < 1 or targets.shape[0] != n:
            raise ValueError(f"inputs and targets must hold the same number (>= 1) of examples, got {n} and "
                             f"{targets.shape[0]}")
        if not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if bn_mode == "train" and any(b - a < 2 for a, b in batch_slices(n, batch_size)):
            raise ValueError(f"bn_mode='train' needs every measurement batch to hold >= 2 examples; with {n} "
                             f"examples and batch_size={batch_size} the last holds 1: choose another batch size")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameters that require gradients")
        # Non-finite numbers would reach ARPACK/LAPACK and fail there with an unrelated message ("DLASCL parameter
        # number 4 had an illegal value"); say what is wrong before any solver runs.
        bad = [name for name, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:
            raise ValueError(f"the model's parameters are not finite (NaN or inf in {', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''}): a diverged run has no curvature to measure")
        if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            raise ValueError("inputs contain NaN or inf")
        if bn_inputs is not None and bn_inputs.is_floating_point() and not bool(torch.isfinite(bn_inputs).all()):
            raise ValueError("bn_inputs contain NaN or inf")
        device = torch.device(device) if device is not None else params[0].device
        self.bn_mode = bn_mode
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.num_examples = n
        self.model = _copy_for_measurement(model, bn_mode=bn_mode,
                                           bn_inputs=(inputs if bn_inputs is None else bn_inputs)
                                           if recalibrate else None,
                                           batch_size=batch_size, dtype=dtype, device=device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.dtype = self.params[0].dtype
        #: Which batch-norm statistics the measured loss uses, in words (part of every result).
        if not batch_norm_layers(self.model):
            self.bn_statistics = "no batch norm"
        elif bn_mode == "train":
            self.bn_statistics = f"batch statistics of each measurement batch of {int(batch_size)}"
        elif recalibrate:
            used = int((inputs if bn_inputs is None else bn_inputs).shape[0])
            self.bn_statistics = f"running statistics recomputed on {used} inputs"
        else:
            self.bn_statistics = "the model's stored running statistics"
        self.device = device
        self.inputs = inputs.to(device=device, dtype=self.dtype if inputs.is_floating_point() else inputs.dtype)
        self.targets = targets.to(device=device)
        self.loss_fn = loss_fn
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = int(sum(self.sizes))
        self.matvecs = 0
        # torch's forward-mode batch norm in training mode gives wrong second derivatives when differentiated
        # again (silently; pytorch/pytorch#196699; tests/test_nets.py shows it on a hand-written network), so
        # reverse-over-forward is refused there. Double backward is correct to second order (#186256 concerns
        # third order and beyond).
        train_bn = bn_mode == "train" and bool(batch_norm_layers(self.model))
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules())
        if hvp_method == "auto":
            hvp_method = "reverse-over-forward" if (convolutional and not train_bn) else "reverse-over-reverse"
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method must be 'auto' or one of {HVP_METHODS}, got {hvp_method!r}")
        if hvp_method == "reverse-over-forward" and train_bn:
            raise ValueError("hvp_method='reverse-over-forward' is wrong for batch norm in train mode (torch's "
                             "forward-mode batch norm has incorrect second derivatives, pytorch/pytorch#196699); "
                             "use 'reverse-over-reverse' or 'auto'")
        self.hvp_method = hvp_method
        #: How ``hvp_block`` batches several directions (forward mode is refused for train-mode batch norm, as
        #: above); ``block_fallback``: None, or why the block fell back to a loop of ``hvp``.
        self.block_method = "reverse-over-reverse" if train_bn else "forward-over-reverse"
        self.block_fallback: str | None = None
        # In eval mode the loss does not depend on how the set is cut, so HVPs of convolutional models go through
        # sub-batches of at most HVP_CHUNK examples: their second-order graphs then stay in cache, which is faster
        # (see benchmarks/nets_speed.py). In train mode the batch is part of the loss and is kept.
        self.hvp_batch = min(self.batch_size, HVP_CHUNK) if (convolutional and bn_mode == "eval") \
            else self.batch_size
        #: Probes per ``matmat`` pass that the estimators use (``trace.apply_block``): ``PROBE_BLOCK`` for fully
        #: connected models, one for convolutional ones (the measurement: ``PROBE_BLOCK_RESULT``).
        self.probe_block = 1 if convolutional else PROBE_BLOCK

    # ------------------------------------------------------------------------------------------- conversions
    def to_list(self, vec) -> list[torch.Tensor]:
        """A flat vector (numpy or torch) as tensors shaped like the parameters, in the measurement dtype.

        Args:
            vec: a vector of length ``dim``.

        Returns:
            One tensor per trainable parameter, on the measurement device (views of one converted copy).
        """
        v = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
        v = v.to(device=self.device, dtype=self.dtype)
        return [c.view(s) for c, s in zip(torch.split(v, self.sizes), self.shapes)]

    @staticmethod
    def flatten(tensors) -> torch.Tensor:
        """The tensors (e.g. shaped like the parameters) concatenated into one flat tensor, in order."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def _weighted_batches(self, batch_size: int | None = None):
        """The measurement set in its fixed order, cut into batches of ``batch_size`` (default the operator's), each
        with its weight n_b/N in the measured loss: the one loop over the data and the one place of the weights."""
        for a, b in batch_slices(self.num_examples, batch_size or self.batch_size):
            yield self.inputs[a:b], self.targets[a:b], (b - a) / self.num_examples

    # ------------------------------------------------------------------------------------------- the primitive
    def _matmat(self, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        r"""H V for b directions: the operator's one product, from which ``hvp``, ``hvp_block``, ``matvec`` and
        ``matmat`` all derive (as curvlinops derives everything from its ``_matmat``).

        It sums ``_matmat_batch`` (w_b·H_b V for one batch of data) over the measurement batches of ``hvp_batch``
        with their weights, in float64, then adds γV for weight decay and counts b products: the weighting, the
        weight decay and the counter live here only.

        Args:
            vs: tensors of shape ``(b, *parameter.shape)``, in the measurement dtype.

        Returns:
            H v for each of the b directions, as float64 tensors of the same shapes; ``matvecs`` grows by b.
        """
        b = int(vs[0].shape[0])
        acc = [torch.zeros((b, *p.shape), dtype=torch.float64, device=self.device) for p in self.params]
        with measurement_precision():
            for xb, yb, w in self._weighted_batches(self.hvp_batch):
                for a, h in zip(acc, self._matmat_batch(xb, yb, w, vs)):
                    a += h.double()
        if self.weight_decay:
            for a, vi in zip(acc, vs):
                a += self.weight_decay * vi.double()
        self.matvecs += b
        return acc

    def _matmat_batch(self, xb, yb, w: float, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """w·H_b V on one batch of data (x_b, y_b) for b directions (``vs``, shapes ``(b, *parameter.shape)``).

        The choice of arithmetic lives here: one direction goes by ``hvp_method``; several go in one batched pass
        by ``block_method`` under torch's vmap, unless vmap cannot batch the model (an operation without a
        batching rule, or the b-fold memory does not fit): then, for the rest of the operator's life
        (``block_fallback`` says why), one direction at a time by ``hvp_method``.
        """
        b = int(vs[0].shape[0])
        if b > 1 and self.block_fallback is None:
            try:
                return self._batched_product(xb, yb, w, vs)
            except (RuntimeError, NotImplementedError) as exc:  # torch's vmap and out-of-memory errors
                self.block_fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        out = [self._single_product(xb, yb, w, [v[i] for v in vs]) for i in range(b)]
        return [torch.stack([o[j] for o in out]) for j in range(len(vs))]

    def _single_product(self, xb, yb, w: float, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """w·H_b v for one direction by ``hvp_method``: double backward, or the gradient of a forward-mode
        directional derivative (``torch.func``)."""
        if self.hvp_method == "reverse-over-reverse":
            loss = self.loss_fn(self.model(xb), yb) * w
            g = torch.autograd.grad(loss, self.params, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
            return list(torch.autograd.grad(dot, self.params))
        from torch.func import grad, jvp

        names, params, loss_of = self.functional()
        loss = loss_of(xb, yb, w)
        hv = grad(lambda q: jvp(loss, (q,), (dict(zip(names, v)),))[1])(params)
        return [hv[n] for n in names]

    def _batched_product(self, xb, yb, w: float, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """w·H_b V for b directions in one pass by ``block_method``: ``torch.func.vmap`` over the tangents of
        ``jvp(grad(L))`` (forward-over-reverse), or double backward with the b cotangents batched
        (``is_grads_batched``, torch's vmap over the second backward)."""
        if self.block_method == "reverse-over-reverse":
            loss = self.loss_fn(self.model(xb), yb) * w
            g = torch.autograd.grad(loss, self.params, create_graph=True)
            return list(torch.autograd.grad(g, self.params, grad_outputs=vs, is_grads_batched=True))
        from torch.func import grad, jvp, vmap

        names, params, loss_of = self.functional()
        loss = loss_of(xb, yb, w)
        hv = vmap(lambda t: jvp(grad(loss), (params,), (t,))[1])(dict(zip(names, vs)))
        return [hv[n] for n in names]

    # ------------------------------------------------------------------------------------------- derived products
    def hvp(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """H v by ``hvp_method`` (``_matmat`` of one direction).

        Args:
            v: tensors shaped like the parameters (``to_list``), in the measurement dtype.

        Returns:
            H v as float64 tensors shaped like the parameters; ``matvecs`` grows by one.
        """
        return [h[0] for h in self._matmat([vi.unsqueeze(0) for vi in v])]

    def matvec(self, vec) -> np.ndarray:
        """H v for a flat vector of length ``dim`` (numpy or torch), returned as a float64 numpy array."""
        return self.matvec_tensor(torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)) \
            .cpu().numpy()

    def matvec_tensor(self, vec: torch.Tensor) -> torch.Tensor:
        """H v for a flat tensor of length ``dim``, as a flat float64 tensor on the operator's device: the device
        path of ``matvec`` (nothing goes through the host; the Lanczos runs and the trace estimators use it)."""
        return self.flatten(self.hvp(self.to_list(vec)))

    def hvp_block(self, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """H applied to b directions in one pass over the measurement set (``_matmat``: ``block_method`` under
        vmap, or b products by ``hvp_method`` where vmap cannot batch the model; ``block_fallback`` says why).

        Args:
            vs: tensors of shape ``(b, *parameter.shape)``, in the measurement dtype.

        Returns:
            H v for each of the b directions, as float64 tensors of the same shapes; ``matvecs`` grows by b.
        """
        return self._matmat(vs)

    def matmat(self, mat) -> np.ndarray:
        """H V for a ``(dim, b)`` matrix (numpy or torch) in one pass (``hvp_block``), as a float64 numpy array.

        Equal to the columns' ``matvec`` to rounding (another order of the same sums); ``matvecs`` grows by b.
        """
        v = torch.as_tensor(np.asarray(mat) if not isinstance(mat, torch.Tensor) else mat)
        return self.matmat_tensor(v).cpu().numpy()

    def matmat_tensor(self, mat: torch.Tensor) -> torch.Tensor:
        """H V for a ``(dim, b)`` tensor in one pass (``hvp_block``), as a ``(dim, b)`` float64 tensor on the
        operator's device: the device path of ``matmat`` (the Krylov bases, probes and projections of
        ``nets.curvature`` stay on the device and only scalars come back to the host)."""
        if mat.ndim != 2 or mat.shape[0] != self.dim:
            raise ValueError(f"matmat needs a ({self.dim}, b) matrix, got shape {tuple(mat.shape)}")
        vt = mat.T.to(device=self.device, dtype=self.dtype)
        b = vt.shape[0]
        vs = [c.reshape(b, *s) for c, s in zip(torch.split(vt, self.sizes, dim=1), self.shapes)]
        return torch.cat([h.reshape(b, -1) for h in self.hvp_block(vs)], dim=1).T

    # ------------------------------------------------------------------------------------------- loss, gradient
    def loss(self) -> float:
        """The measured loss L(θ), weight decay included when it is set, accumulated in float64 over the weighted
        batches of ``_weighted_batches`` on the operator's device and read back once."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad(), measurement_precision():
            for xb, yb, w in self._weighted_batches():
                total += w * self.loss_fn(self.model(xb), yb).double()
            if self.weight_decay:
                sq = torch.zeros((), dtype=torch.float64, device=self.device)
                for p in self.params:
                    sq += (p.double() ** 2).sum()
                total += 0.5 * self.weight_decay * sq
        return float(total)

    def gradient(self) -> torch.Tensor:
        """∇L(θ), weight decay included when it is set, as a flat float64 tensor of length ``dim`` (the weighted
        batches of ``_weighted_batches``)."""
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        with measurement_precision():
            for xb, yb, w in self._weighted_batches():
                g = torch.autograd.grad(self.loss_fn(self.model(xb), yb) * w, self.params)
                for a, gi in zip(acc, g):
                    a += gi.double()
        out = self.flatten(acc)
        if self.weight_decay:
            out += self.weight_decay * self.flatten([p.detach().double() for p in self.params])
        return out

    def functional(self):
        """The measured model as a function of its parameters, for ``torch.func``: ``(names, params, loss_of)``
        with the trainable parameters' names, their detached values (a dict) and ``loss_of(x, y, w)``, the map
        p ↦ w·loss_fn(model_p(x), y) at the operator's fixed buffers (batch-norm statistics)."""
        from torch.func import functional_call

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = dict(self.model.named_buffers())

        def loss_of(xb, yb, w=1.0, reduction=None):
            kw = {} if reduction is None else {"reduction": reduction}
            return lambda p: self.loss_fn(functional_call(self.model, (p, buffers), (xb,)), yb, **kw) * w

        return names, params, loss_of

    def as_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """H as a symmetric float64 ``scipy.sparse.linalg.LinearOperator`` of shape ``(dim, dim)`` (for ``eigsh``)."""
        return scipy.sparse.linalg.LinearOperator((self.dim, self.dim), matvec=self.matvec, rmatvec=self.matvec,
                                                  dtype=np.float64)

    def determinism(self, *, rng) -> float:
        """Relative difference ‖a − b‖/‖a‖ of two matvecs with the same random ±1 vector.

        Args:
            rng: a Generator or a seed for the vector.

        Returns:
            0.0 when the operator is deterministic; larger when a layer draws randomness or a kernel is not
            deterministic.
        """
        rng = np.random.default_rng(rng)
        v = rng.choice([-1.0, 1.0], size=self.dim)
        a, b = self.matvec(v), self.matvec(v)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.finfo(float).tiny))
