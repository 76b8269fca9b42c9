"""Per-example gradient norms without per-example gradients (``nets.curvature.noise._ghost_terms``), held to the
``vmap`` path on the batch-norm MLP (eval mode, with and without weight decay) and refused where they do not
apply (a convolution: the ``vmap`` path is used)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from nets.curvature import HessianOperator, gradient_noise
from nets.curvature.noise import _ghost_terms, per_example_gradients
from nets.models import build_model


@pytest.mark.parametrize("batch_norm, gamma", [(True, 0.0), (True, 0.01), (False, 0.0)])
def test_ghost_norms_equal_the_per_example_gradients(batch_norm, gamma):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    model = build_model("mlp", (1, 28, 28), 10, width=0.125, batch_norm=batch_norm, seed=1)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=32, weight_decay=gamma, dtype=torch.float64)
    mean = op.gradient() - gamma * op.flatten([p.detach().double() for p in op.params])
    sq, dots = _ghost_terms(op, mean, 40)
    flat = torch.cat(list(per_example_gradients(op, chunk=32)))
    assert torch.allclose(sq, (flat * flat).sum(dim=1), rtol=1e-10)
    assert torch.allclose(dots, flat @ mean, rtol=1e-9, atol=1e-14)
    # And through gradient_noise, on float32 as the sweeps measure it: Tr(C) as by the gradients themselves.
    noise = gradient_noise(model, F.cross_entropy, x, y, batch_size=32, method="per_example", rng=0)
    ref = ((flat - flat.mean(dim=0)) ** 2).sum(dim=1).mean()
    assert noise.trace_c == pytest.approx(float(ref), rel=1e-4)


def test_ghost_norms_decline_a_convolution():
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    model = build_model("vgg11", (1, 32, 32), 10, width=0.125, seed=0)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=8)
    assert _ghost_terms(op, op.gradient(), 8) is None
