r"""Curvature and gradient noise at a trained model, measured the same way every time and said what was measured.

The measured loss is L(θ) = Σ_b (n_b/N) ℓ_b(θ) over a fixed, ordered measurement set cut into batches of
``batch_size`` (the last, partial batch weighted by its size), plus (γ/2)‖θ‖² only when ``weight_decay=γ`` is
given. Batch norm is handled by an explicit policy:

* ``bn_mode="eval"``: running statistics recomputed on ``bn_inputs`` (default the measurement inputs; pass the
  training set) with a cumulative average, then eval mode: L is a plain function of θ, independent of batching.
* ``bn_mode="train"``: batch statistics of each measurement batch of the fixed ``batch_size`` (what SGD sees);
  running statistics are neither used nor updated.

Every measurement works on a deep copy of the model (the user's parameters, buffers and train/eval flag are never
touched), with TF32 off while measuring, and dot products and norms accumulated in float64. Existing tools get
this wrong in various ways (PyHessian forces eval mode without recalibration and defaults to CUDA; BackPACK refuses
batch norm in train mode; some weight a partial last batch like a full one or draw a new minibatch at every
matvec), which is why the operator is written here; the linear algebra is scipy's (``eigsh`` on a
``LinearOperator``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nets.evaluation import batch_slices, measurement_precision
from sde.diagnostics import noise_scale

__all__ = ["HessianOperator", "HessianStats", "hessian_stats", "GradientNoise", "gradient_noise",
           "recalibrate_bn", "lanczos_lambda_max", "power_iteration", "hutchinson", "hutchpp", "BN_MODES"]

BN_MODES = ("eval", "train")
HVP_METHODS = ("reverse-over-reverse", "reverse-over-forward")
#: Largest sub-batch of an eval-mode HVP of a convolutional model (see ``HessianOperator``).
HVP_CHUNK = 64


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
    """Recompute every batch norm's running statistics as the cumulative average over ``inputs`` (in batches of
    ``batch_size``), in place. Dropout stays off."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
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


def _copy_for_measurement(model, *, bn_mode, bn_inputs, batch_size, dtype, device) -> nn.Module:
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
        for bn in m.modules():
            if isinstance(bn, _BatchNorm):
                # Batch statistics only; no buffer is read or written, so L is a function of θ alone.
                bn.track_running_stats = False
                bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    return m


class HessianOperator:
    """Hessian-vector products of the measured loss (see the module docstring) at the model's parameters.

    Args:
        model: the network (left untouched: a copy is measured).
        loss_fn: ``loss_fn(outputs, targets)``, the mean over a batch (e.g. ``torch.nn.functional.cross_entropy``).
        inputs, targets: the fixed, ordered measurement set.
        batch_size: measurement batch size (in train-mode batch norm, the batch size whose statistics are used).
        bn_mode: ``"eval"`` or ``"train"``.
        weight_decay: γ: adds (γ/2)‖θ‖² to the measured loss (and γI to the Hessian); 0 leaves it out.
        bn_inputs: eval mode: the data on which the running statistics are recomputed (default ``inputs``);
            ``recalibrate=False`` keeps the model's own running statistics.
        dtype: measure in this dtype (e.g. ``torch.float64`` for exact checks); default the model's.
        device: default the model's.
        hvp_method: ``"reverse-over-reverse"`` (double backward), ``"reverse-over-forward"`` (``torch.func``: the
            gradient of a forward-mode directional derivative) or ``"auto"``: reverse-over-forward for models with
            convolutions, where it measured 2.7x a gradient against 3.4x on this CPU (ResNet56), and
            reverse-over-reverse otherwise (MLP: 2.7x against 3.3x) and always for train-mode batch norm (see
            below). Both are exact; the choice is fixed per operator, so every matvec of a measurement uses the
            same arithmetic.
    """

    def __init__(self, model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, bn_mode: str = "eval",
                 weight_decay: float = 0.0, bn_inputs=None, recalibrate: bool = True, dtype=None, device=None,
                 hvp_method: str = "auto"):
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
        train_bn = bn_mode == "train" and any(isinstance(m, _BatchNorm) for m in self.model.modules())
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
        # In eval mode the loss does not depend on how the set is cut, so HVPs of convolutional models go through
        # sub-batches of at most HVP_CHUNK examples: their second-order graphs then stay in cache. Measured on this
        # CPU (ResNet56, 256 examples): reverse-over-forward costs 2.9-3.1 gradients at 32-128 examples per
        # sub-batch and 6.7 at 256. In train mode the batch is part of the loss and is kept.
        self.hvp_batch = min(self.batch_size, HVP_CHUNK) if (convolutional and bn_mode == "eval") \
            else self.batch_size

    # ------------------------------------------------------------------------------------------- conversions
    def to_list(self, vec) -> list[torch.Tensor]:
        """A flat vector (numpy or torch) as tensors shaped like the parameters, in the measurement dtype."""
        v = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
        v = v.to(device=self.device, dtype=self.dtype)
        return [c.view(s) for c, s in zip(torch.split(v, self.sizes), self.shapes)]

    @staticmethod
    def flatten(tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _weightedbatch_slices(self, batch_size: int | None = None):
        for a, b in batch_slices(self.num_examples, batch_size or self.batch_size):
            yield self.inputs[a:b], self.targets[a:b], (b - a) / self.num_examples

    # ------------------------------------------------------------------------------------------- products
    def loss(self) -> float:
        """The measured loss L(θ), accumulated in float64."""
        total = 0.0
        with torch.no_grad(), measurement_precision():
            for xb, yb, w in self._weightedbatch_slices():
                total += w * float(self.loss_fn(self.model(xb), yb).double())
            if self.weight_decay:
                total += 0.5 * self.weight_decay * sum(float((p.double() ** 2).sum()) for p in self.params)
        return total

    def gradient(self) -> torch.Tensor:
        """∇L(θ) as a flat float64 tensor."""
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        with measurement_precision():
            for xb, yb, w in self._weightedbatch_slices():
                g = torch.autograd.grad(self.loss_fn(self.model(xb), yb) * w, self.params)
                for a, gi in zip(acc, g):
                    a += gi.double()
        out = self.flatten(acc)
        if self.weight_decay:
            out += self.weight_decay * self.flatten([p.detach().double() for p in self.params])
        return out

    def hvp(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """H v for v shaped like the parameters; returns float64 tensors (see ``hvp_method``)."""
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        with measurement_precision():
            if self.hvp_method == "reverse-over-reverse":
                for xb, yb, w in self._weightedbatch_slices(self.hvp_batch):
                    loss = self.loss_fn(self.model(xb), yb) * w
                    g = torch.autograd.grad(loss, self.params, create_graph=True)
                    dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
                    hv = torch.autograd.grad(dot, self.params)
                    for a, h in zip(acc, hv):
                        a += h.double()
            else:
                from torch.func import functional_call, grad, jvp

                names = [n for n, p in self.model.named_parameters() if p.requires_grad]
                params = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
                buffers = dict(self.model.named_buffers())
                tangent = dict(zip(names, v))
                for xb, yb, w in self._weightedbatch_slices(self.hvp_batch):
                    def loss(p, xb=xb, yb=yb, w=w):
                        return self.loss_fn(functional_call(self.model, (p, buffers), (xb,)), yb) * w

                    hv = grad(lambda q: jvp(loss, (q,), (tangent,))[1])(params)
                    for a, n in zip(acc, names):
                        a += hv[n].double()
        if self.weight_decay:
            for a, vi in zip(acc, v):
                a += self.weight_decay * vi.double()
        self.matvecs += 1
        return acc

    def matvec(self, vec) -> np.ndarray:
        """H v for a flat numpy vector, as float64 numpy."""
        return self.flatten(self.hvp(self.to_list(vec))).cpu().numpy()

    def as_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        return scipy.sparse.linalg.LinearOperator((self.dim, self.dim), matvec=self.matvec, rmatvec=self.matvec,
                                                  dtype=np.float64)

    def determinism(self, rng: np.random.Generator | None = None) -> float:
        """Relative difference of two matvecs with the same vector (0 when the operator is deterministic)."""
        rng = np.random.default_rng(rng)
        v = rng.choice([-1.0, 1.0], size=self.dim)
        a, b = self.matvec(v), self.matvec(v)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.finfo(float).tiny))


# ------------------------------------------------------------------------------------------- estimators
def lanczos_lambda_max(op: HessianOperator, *, tol: float = 1e-4, maxiter: int | None = None,
                       rng=None) -> tuple[float, bool]:
    """The largest (algebraic) eigenvalue by Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``).
    Returns ``(lambda_max, converged)``."""
    rng = np.random.default_rng(rng)
    v0 = rng.standard_normal(op.dim)
    if op.dim <= 2:
        dense = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
        return float(np.linalg.eigvalsh(0.5 * (dense + dense.T))[-1]), True
    try:
        vals = scipy.sparse.linalg.eigsh(op.as_linear_operator(), k=1, which="LA", tol=tol, v0=v0,
                                         maxiter=maxiter or max(100, 20), return_eigenvectors=False)
        return float(vals[0]), True
    except scipy.sparse.linalg.ArpackNoConvergence as exc:
        vals = exc.eigenvalues
        return (float(vals[0]) if len(vals) else math.nan), False


def power_iteration(op: HessianOperator, *, iters: int = 100, tol: float = 1e-4, rng=None) -> tuple[float, int]:
    """The eigenvalue of largest magnitude by power iteration (Rayleigh quotient), a cross-check on Lanczos.
    Stops when the estimate changes by less than ``tol`` relative. Returns ``(estimate, iterations)``."""
    rng = np.random.default_rng(rng)
    v = rng.standard_normal(op.dim)
    v /= np.linalg.norm(v)
    est = 0.0
    for k in range(1, iters + 1):
        hv = op.matvec(v)
        new = float(v @ hv)
        norm = np.linalg.norm(hv)
        if norm == 0.0:
            return 0.0, k
        v = hv / norm
        if k > 1 and abs(new - est) <= tol * abs(new):
            return new, k
        est = new
    return est, iters


def _rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def hutchinson(op: HessianOperator, num_probes: int, *, rng=None) -> dict:
    """Tr(H) = E[vᵀHv] and ‖H‖_F² = E‖Hv‖² with Rademacher v, from the same ``num_probes`` matvecs.

    Returns the estimates with standard errors over probes (‖H‖_F's by the delta method, se(F²)/(2F)).
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")
    rng = np.random.default_rng(rng)
    quad, sq = np.empty(num_probes), np.empty(num_probes)
    for i in range(num_probes):
        v = _rademacher(rng, op.dim)
        hv = op.matvec(v)
        quad[i] = v @ hv
        sq[i] = hv @ hv
    tr, tr_se = float(quad.mean()), float(quad.std(ddof=1) / math.sqrt(num_probes))
    f2, f2_se = float(sq.mean()), float(sq.std(ddof=1) / math.sqrt(num_probes))
    frob = math.sqrt(max(f2, 0.0))
    return dict(trace=tr, trace_stderr=tr_se, frobenius=frob,
                frobenius_stderr=f2_se / (2.0 * frob) if frob > 0 else math.inf, probes=quad, squares=sq)


def hutchpp(op: HessianOperator, num_matvecs: int, *, rng=None) -> tuple[float, float]:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a rank-k sketch Q of H taken exactly, Hutchinson on the
    rest; k = ``num_matvecs`` // 3. Returns ``(trace, stderr)``, the error from the Hutchinson part's probes."""
    k = num_matvecs // 3
    if k < 2:
        raise ValueError(f"num_matvecs must be >= 6 for Hutch++ with a standard error, got {num_matvecs}")
    rng = np.random.default_rng(rng)
    s = _rademacher(rng, (op.dim, k))
    y = np.column_stack([op.matvec(s[:, i]) for i in range(k)])
    q, _ = np.linalg.qr(y)
    t1 = float(sum(q[:, i] @ op.matvec(q[:, i]) for i in range(q.shape[1])))
    g = _rademacher(rng, (op.dim, k))
    g = g - q @ (q.T @ g)
    vals = np.array([g[:, i] @ op.matvec(g[:, i]) for i in range(k)])
    return t1 + float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(k))


@dataclass
class HessianStats:
    """What ``hessian_stats`` measured; every stochastic estimate carries its standard error."""

    lambda_max: float
    lambda_max_power: float
    lanczos_converged: bool
    trace: float
    trace_stderr: float
    trace_hutchpp: float
    trace_hutchpp_stderr: float
    frobenius: float
    frobenius_stderr: float
    loss: float
    num_params: int
    num_examples: int
    batch_size: int
    bn_mode: str
    weight_decay: float
    num_probes: int
    determinism: float
    matvecs: int
    seconds: float
    dtype: str = "float32"
    hvp_method: str = ""
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def hessian_stats(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, bn_mode: str = "eval",
                  weight_decay: float = 0.0, num_probes: int = 32, rng=None, bn_inputs=None, recalibrate=True,
                  dtype=None, device=None, lanczos_tol: float = 1e-4, power_iters: int = 100,
                  hutchpp_matvecs: int | None = None, hvp_method: str = "auto") -> HessianStats:
    """λ_max (Lanczos, with power iteration as a cross-check), Tr(H) (Hutchinson and Hutch++) and ‖H‖_F (by
    E‖Hv‖²) of the measured loss; see ``HessianOperator`` for the arguments. ``rng`` seeds every probe."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(rng)
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode,
                         weight_decay=weight_decay, bn_inputs=bn_inputs, recalibrate=recalibrate, dtype=dtype,
                         device=device, hvp_method=hvp_method)
    notes = []
    det = op.determinism(rng)
    if det > 1e-4:
        notes.append(f"matvecs are not deterministic (relative difference {det:.2g}): a layer draws randomness "
                     "or a non-deterministic kernel is in use")
    lam, conv = lanczos_lambda_max(op, tol=lanczos_tol, rng=rng)
    lam_p, _ = power_iteration(op, iters=power_iters, tol=lanczos_tol, rng=rng)
    if not conv:
        notes.append("Lanczos did not converge; lambda_max is its best estimate")
    if abs(lam_p - lam) > 1e-2 * abs(lam):
        notes.append(f"power iteration ({lam_p:.6g}) and Lanczos ({lam:.6g}) differ by more than 1 %: a negative "
                     "eigenvalue of larger magnitude, or a small spectral gap")
    h = hutchinson(op, num_probes, rng=rng)
    tpp, tpp_se = hutchpp(op, hutchpp_matvecs or max(6, num_probes), rng=rng)
    return HessianStats(lambda_max=lam, lambda_max_power=lam_p, lanczos_converged=conv, trace=h["trace"],
                        trace_stderr=h["trace_stderr"], trace_hutchpp=tpp, trace_hutchpp_stderr=tpp_se,
                        frobenius=h["frobenius"], frobenius_stderr=h["frobenius_stderr"], loss=op.loss(),
                        num_params=op.dim, num_examples=op.num_examples, batch_size=op.batch_size,
                        bn_mode=bn_mode, weight_decay=weight_decay, num_probes=num_probes, determinism=det,
                        matvecs=op.matvecs, seconds=time.perf_counter() - t0, dtype=str(op.dtype).split(".")[-1],
                        hvp_method=op.hvp_method, notes=notes)


# ------------------------------------------------------------------------------------------- gradient noise
@dataclass
class GradientNoise:
    """Tr(C) of the per-example gradient covariance over the measurement set, ‖G‖² and the noise scale
    B_simple = Tr(C)/‖G‖², each with a standard error; ``method`` says how they were obtained."""

    trace_c: float
    trace_c_stderr: float
    grad_sq: float
    grad_sq_stderr: float
    noise_scale: float
    noise_scale_stderr: float
    method: str
    bn_mode: str
    num_examples: int
    seconds: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _per_example(op: HessianOperator, chunk: int = 64) -> GradientNoise:
    from torch.func import functional_call, grad, vmap

    t0 = time.perf_counter()
    model = op.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return op.loss_fn(out, y.unsqueeze(0))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
    mean = op.gradient()
    if op.weight_decay:  # the noise does not include the deterministic weight-decay term
        mean = mean - op.weight_decay * op.flatten([p.detach().double() for p in op.params])
    sq, dots = [], []
    with measurement_precision():
        for a, b in batch_slices(op.num_examples, chunk):
            g = per_grad(params, op.inputs[a:b], op.targets[a:b])
            flat = torch.cat([g[n].reshape(b - a, -1).double() for n in names], dim=1)
            sq.append((flat * flat).sum(dim=1))
            dots.append(flat @ mean)
    sq, dots = torch.cat(sq).cpu().numpy(), torch.cat(dots).cpu().numpy()
    g2 = float(mean @ mean)
    n = op.num_examples
    tr = float(sq.mean() - g2)
    # Influence function of Tr(C) = E‖g‖² − ‖E g‖²: ψ_n = ‖g_n‖² − 2 g_n·ḡ.
    tr_se = float(np.std(sq - 2.0 * dots, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    g2_se = float(np.std(2.0 * dots, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    ns = tr / g2 if g2 > 0 else math.inf
    # Delta method for the ratio, with ψ for Tr(C) and 2 g_n·ḡ for ‖G‖².
    ns_se = float(np.std((sq - 2.0 * dots) - ns * 2.0 * dots, ddof=1) / math.sqrt(n) / g2) if g2 > 0 else math.inf
    return GradientNoise(trace_c=tr, trace_c_stderr=tr_se, grad_sq=g2, grad_sq_stderr=g2_se, noise_scale=ns,
                         noise_scale_stderr=ns_se, method="per_example", bn_mode=op.bn_mode, num_examples=n,
                         seconds=time.perf_counter() - t0)


def _two_batch(model, loss_fn, inputs, targets, *, bn_mode, b_small, b_big, pairs, rng, dtype, device, bn_inputs,
               recalibrate) -> GradientNoise:
    t0 = time.perf_counter()
    n = int(inputs.shape[0])
    rng = np.random.default_rng(rng)
    op = HessianOperator(model, loss_fn, inputs, targets, batch_size=b_big, bn_mode=bn_mode, bn_inputs=bn_inputs,
                         recalibrate=recalibrate, dtype=dtype, device=device)

    def sq_norm(b):
        idx = torch.as_tensor(np.sort(rng.choice(n, size=b, replace=False)), device=op.device)
        with measurement_precision():
            g = torch.autograd.grad(op.loss_fn(op.model(op.inputs[idx]), op.targets[idx]), op.params)
        return float(sum((gi.double() ** 2).sum() for gi in g))

    small = np.array([sq_norm(b_small) for _ in range(pairs)])
    big = np.array([sq_norm(b_big) for _ in range(pairs)])
    est = noise_scale(small, big, b_small, b_big, dataset_size=n)
    return GradientNoise(trace_c=est.trace_sigma, trace_c_stderr=est.trace_sigma_stderr, grad_sq=est.grad_sq,
                         grad_sq_stderr=est.grad_sq_stderr, noise_scale=est.b_simple,
                         noise_scale_stderr=est.b_simple_stderr, method="two_batch", bn_mode=bn_mode,
                         num_examples=n, seconds=time.perf_counter() - t0,
                         details=dict(b_small=b_small, b_big=b_big, pairs=pairs))


def gradient_noise(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int, method: str = "auto",
                   bn_mode: str = "eval", weight_decay: float = 0.0, b_small: int | None = None,
                   pairs: int = 64, rng=None, bn_inputs=None, recalibrate=True, dtype=None,
                   device=None) -> GradientNoise:
    """Tr(C) of the per-example gradient covariance on the measurement set, ‖G‖² and B_simple.

    ``method="per_example"``: per-example gradients by ``torch.func`` (``vmap`` of ``grad``), exact on the set
    (the standard error is that of the set as a sample); defined when no layer couples the examples of a batch,
    i.e. not for batch norm in train mode. ``method="two_batch"``: McCandlish et al.'s unbiased estimators from
    ``pairs`` batches of ``b_small`` (default ``batch_size // 8``, at least 2) and of ``batch_size`` drawn without
    replacement from the set, ``sde.diagnostics.noise_scale``; it also works in train-mode batch norm, where it
    measures the noise of the minibatch gradients SGD actually takes. ``"auto"``: per-example when defined.
    """
    if method not in ("auto", "per_example", "two_batch"):
        raise ValueError(f"method must be 'auto', 'per_example' or 'two_batch', got {method!r}")
    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    if method == "auto":
        method = "two_batch" if (bn_mode == "train" and has_bn) else "per_example"
    if method == "per_example":
        if bn_mode == "train" and has_bn:
            raise ValueError("per-example gradients are not defined for batch norm in train mode (the examples "
                             "of a batch are coupled); use method='two_batch' or bn_mode='eval'")
        op = HessianOperator(model, loss_fn, inputs, targets, batch_size=batch_size, bn_mode=bn_mode,
                             weight_decay=weight_decay, bn_inputs=bn_inputs, recalibrate=recalibrate, dtype=dtype,
                             device=device)
        return _per_example(op)
    n = int(inputs.shape[0])
    b_small = b_small or max(2, batch_size // 8)
    if not 1 <= b_small < batch_size <= n:
        raise ValueError(f"need 1 <= b_small < batch_size <= the measurement set size {n}, got b_small={b_small},"
                         f" batch_size={batch_size}")
    return _two_batch(model, loss_fn, inputs, targets, bn_mode=bn_mode, b_small=b_small, b_big=batch_size,
                      pairs=pairs, rng=rng, dtype=dtype, device=device, bn_inputs=bn_inputs,
                      recalibrate=recalibrate)
