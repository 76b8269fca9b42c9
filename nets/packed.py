r"""Several networks of one architecture as one packed network, trained together (issue 22's batched training).

M members, each its own copy of the same architecture (its own weights, batch-norm statistics and batches), are
packed **channel-wise**: member m owns the m-th block of channels (features) of every layer. Then

* a convolution becomes a grouped convolution with ``groups = M·groups`` (the packed-ensembles construction);
* a linear layer becomes a batched matrix product over the members (``PackedLinear``);
* batch norm over M·C channels normalises each member's channels over that member's own batch, with its own
  running statistics; ReLU, pooling and ``flatten(1)`` act per channel, so they need no change;
* the input of a step is the members' batches side by side in the channel dimension, (S, M·C, H, W), each member
  reading its own S examples; the output (S, M·K) is the members' logits.

So one forward and backward pass computes every member's loss and gradients, which do not mix: member m's loss
depends on member m's parameters only. ``PackedSGD`` applies torch's SGD update (momentum, dampening, weight
decay) to each member with its own η, μ, d and γ. ``unpack_into`` writes the packed state back into M ordinary
models (and their optimisers' momentum buffers), which is how each member's evaluation, checkpoint and result are
those of a run trained alone (``nets.train.train_many``).

Which architectures: every module the toolkit's models use (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``,
activations, pooling, flatten), and ResNet's parameter-free shortcut, which pads channels per member
(``nets.models``' blocks read their ``members``). The arithmetic differs from M separate runs only by the order of
floating-point sums (grouped against separate convolutions, batched against separate matrix products):
``tests/test_packed.py`` holds every member's history to the same run trained alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PackedLinear", "pack_models", "unpack_into", "packed_inputs", "member_view", "PackedSGD",
           "PACKABLE"]


class PackedLinear(nn.Module):
    """M linear layers side by side: input (B, M·in) → output (B, M·out), member m's block by its own weights
    ``weight[m]`` (out × in) and ``bias[m]``."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x):
        b = x.shape[0]
        y = torch.bmm(x.reshape(b, self.members, self.in_features).transpose(0, 1),
                      self.weight.transpose(1, 2)).transpose(0, 1)  # (B, M, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(b, self.members * self.out_features)


#: The leaf modules ``pack_models`` knows (anything else with parameters or buffers is refused).
PACKABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Flatten, nn.MaxPool2d,
            nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _pack_leaf(mods: list[nn.Module]) -> nn.Module:
    m0, count = mods[0], len(mods)
    if isinstance(m0, nn.Linear):
        out = PackedLinear(count, m0.in_features, m0.out_features, m0.bias is not None)
        with torch.no_grad():
            out.weight.copy_(torch.stack([m.weight for m in mods]))
            if m0.bias is not None:
                out.bias.copy_(torch.stack([m.bias for m in mods]))
        return out.to(m0.weight.device, m0.weight.dtype)
    if isinstance(m0, nn.Conv2d):
        if m0.padding_mode != "zeros":
            raise ValueError("pack_models: only zero-padded convolutions can be packed")
        out = nn.Conv2d(count * m0.in_channels, count * m0.out_channels, m0.kernel_size, stride=m0.stride,
                        padding=m0.padding, dilation=m0.dilation, groups=count * m0.groups, bias=m0.bias is not None)
        with torch.no_grad():
            out.weight.copy_(torch.cat([m.weight for m in mods]))
            if m0.bias is not None:
                out.bias.copy_(torch.cat([m.bias for m in mods]))
        return out.to(m0.weight.device, m0.weight.dtype)
    if isinstance(m0, (nn.BatchNorm1d, nn.BatchNorm2d)):
        out = type(m0)(count * m0.num_features, eps=m0.eps, momentum=m0.momentum, affine=m0.affine,
                       track_running_stats=m0.track_running_stats)
        with torch.no_grad():
            for name, _ in list(out.named_parameters()) + list(out.named_buffers()):
                src = [getattr(m, name) for m in mods]
                if name == "num_batches_tracked":
                    out.num_batches_tracked.copy_(src[0])
                else:
                    getattr(out, name).copy_(torch.cat(src))
        ref = m0.weight if m0.affine else m0.running_mean
        return out.to(ref.device, ref.dtype) if ref is not None else out
    if isinstance(m0, PACKABLE):
        return copy.deepcopy(m0)
    raise ValueError(f"pack_models: cannot pack a {type(m0).__name__} (packable: "
                     f"{', '.join(t.__name__ for t in PACKABLE)})")


def _pack(mods: list[nn.Module]) -> nn.Module:
    m0 = mods[0]
    if isinstance(m0, PACKABLE):
        return _pack_leaf(mods)
    out = copy.copy(m0)  # the container's attributes (its forward, ``stride``, ``pad``, ...)
    out._modules = {name: _pack([m._modules[name] for m in mods]) for name in m0._modules}
    out._parameters = {}
    out._buffers = {}
    if m0._parameters or m0._buffers:
        raise ValueError(f"pack_models: {type(m0).__name__} holds its own parameters or buffers")
    if hasattr(m0, "members"):
        out.members = len(mods)
    return out


def pack_models(models: list[nn.Module]) -> nn.Module:
    """One packed network of ``models`` (the same architecture, each with its own state), in their train/eval mode.

    Raises:
        ValueError: fewer than one model, models of different architectures (their parameter and buffer shapes
            differ), or a module that cannot be packed.
    """
    if not models:
        raise ValueError("pack_models needs at least one model")
    shapes = [[(n, tuple(t.shape)) for n, t in m.state_dict().items()] for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("pack_models: the models must share one architecture (their state_dict shapes differ)")
    packed = _pack(list(models))
    packed.train(models[0].training)
    return packed


def _pairs(packed: nn.Module, model: nn.Module):
    """(packed module, member module) pairs over the two trees, leaves only."""
    if isinstance(model, PACKABLE):
        yield packed, model
        return
    for name in model._modules:
        yield from _pairs(packed._modules[name], model._modules[name])


def member_view(t: torch.Tensor, members: int) -> torch.Tensor:
    """A packed parameter or buffer as ``(members, -1)``: every packed tensor is member-major."""
    return t.reshape(members, -1)


def unpack_into(packed: nn.Module, models: list[nn.Module]) -> None:
    """Copy member m's block of every packed parameter and buffer into ``models[m]`` (in place)."""
    count = len(models)
    with torch.no_grad():
        for i, model in enumerate(models):
            for p_mod, m_mod in _pairs(packed, model):
                for name, t in list(m_mod.named_parameters(recurse=False)) + list(m_mod.named_buffers(recurse=False)):
                    src = getattr(p_mod, name)
                    if name == "num_batches_tracked":
                        t.copy_(src)
                    else:
                        t.copy_(member_view(src, count)[i].reshape(t.shape))


def packed_inputs(batches: list[torch.Tensor]) -> torch.Tensor:
    """The members' input batches (each (S, C, ...)) side by side in the channel dimension: (S, M·C, ...)."""
    return torch.cat(batches, dim=1)


class PackedSGD:
    """torch's SGD (``torch.optim.SGD`` without Nesterov) on a packed network, each member with its own η, μ,
    dampening and weight decay: per member, d = g + γθ; b = d on the first step, else μb + (1 − dampening)d; with
    μ = 0 no buffer; θ ← θ − ηb. ``set_lrs`` changes the members' η (schedules)."""

    def __init__(self, packed: nn.Module, *, lrs, momenta, dampenings, weight_decays):
        self.params = [p for p in packed.parameters() if p.requires_grad]
        self.members = len(lrs)
        dev = self.params[0].device
        dtype = self.params[0].dtype

        def column(values):
            return torch.as_tensor(values, dtype=dtype, device=dev).reshape(-1, 1)

        self.lr = column(lrs)
        self.mu, self.damp, self.wd = column(momenta), column(dampenings), column(weight_decays)
        self.use_momentum = bool((self.mu != 0).any())
        self.use_decay = bool((self.wd != 0).any())  # decided once: no device read-back per step
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def set_lrs(self, lrs) -> None:
        self.lr = torch.as_tensor(lrs, dtype=self.lr.dtype, device=self.lr.device).reshape(-1, 1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        m = self.members
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            pv, g = member_view(p, m), member_view(p.grad, m)
            d = g + self.wd * pv if self.use_decay else g
            if self.use_momentum:
                buf = self.buffers[k]
                if buf is None:
                    buf = d.clone()
                else:
                    buf = self.mu * buf + (1 - self.damp) * d
                self.buffers[k] = buf
                # Members without momentum step on d itself (torch keeps no buffer for them).
                d = torch.where(self.mu != 0, buf, d)
            pv.sub_(self.lr * d)

    def load_buffers(self, opts: list[torch.optim.SGD], models: list[nn.Module], packed: nn.Module) -> None:
        """Take the members' torch momentum buffers (``opts[m].state[p]["momentum_buffer"]``), when every member
        has one for every parameter (a resumed run), into the packed buffers."""
        if not self.use_momentum:
            return
        per_member = []
        for i, (opt, model) in enumerate(zip(opts, models)):
            bufs = {}
            for p_mod, m_mod in _pairs(packed, model):
                for name, t in m_mod.named_parameters(recurse=False):
                    state = opt.state.get(t, {})
                    if state.get("momentum_buffer") is None:
                        if float(self.mu[i]) != 0.0:
                            return  # a fresh start (no step taken yet): the packed buffers start empty too
                        bufs[(id(p_mod), name)] = torch.zeros_like(t)  # no momentum: torch keeps no buffer
                    else:
                        bufs[(id(p_mod), name)] = state["momentum_buffer"]
            per_member.append(bufs)
        index = {id(p): k for k, p in enumerate(self.params)}
        with torch.no_grad():
            for p_mod, _ in _pairs(packed, models[0]):
                for name, p in p_mod.named_parameters(recurse=False):
                    rows = [b[(id(p_mod), name)].reshape(-1) for b in per_member]
                    self.buffers[index[id(p)]] = torch.stack(rows).to(p.dtype)

    def store_buffers(self, opts: list[torch.optim.SGD], models: list[nn.Module], packed: nn.Module) -> None:
        """Write the packed momentum buffers back into each member's torch optimiser state, as torch would hold
        them after the same steps (members without momentum keep none)."""
        if not self.use_momentum or all(b is None for b in self.buffers):
            return
        index = {id(p): k for k, p in enumerate(self.params)}
        for i, (opt, model) in enumerate(zip(opts, models)):
            if float(self.mu[i]) == 0.0:
                continue
            for p_mod, m_mod in _pairs(packed, model):
                for name, t in m_mod.named_parameters(recurse=False):
                    buf = self.buffers[index[id(getattr(p_mod, name))]]
                    if buf is not None:
                        opt.state[t]["momentum_buffer"] = buf[i].reshape(t.shape).clone()


def packed_loss(logits: torch.Tensor, targets: torch.Tensor, members: int) -> torch.Tensor:
    """Each member's mean cross-entropy over its batch: logits (S, M·K), targets (S, M) → (M,)."""
    s = logits.shape[0]
    per = F.cross_entropy(logits.reshape(s * members, -1), targets.reshape(-1), reduction="none")
    return per.reshape(s, members).mean(dim=0)
