"""Batch sharpness (``nets.curvature.batch_sharpness``, issue 20) against the enumeration of every batch of a tiny
least-squares model: a linear model with the half-squared loss, where g_B = X_Bᵀ(X_Bw − y_B)/S and H_B = X_BᵀX_B/S.
The statistical test states its confidence, and a mutated formula (the expectation of the per-batch ratio instead
of the ratio of expectations) fails the same test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from cases import half_mse
from torch import nn
from torch.nn import functional as F

from nets import models
from nets.curvature import BatchSharpness, batch_sharpness
from sgd_noise_common.stats import sidak_z

N, S = 8, 3

def tiny_problem(seed=1):
    """N = 8 examples in 2-D with unequal feature scales (the per-batch ratio then varies and correlates with ‖g_B‖,
    so the two averages differ), and the model at a point away from the minimum."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 2)) * np.array([2.0, 0.5])
    y = 2.0 * rng.standard_normal(N)
    w = np.array([0.3, -0.2])
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w).reshape(1, 2))
    return x, y, w, model


def enumerated(x, y, w, s, gamma=0.0):
    """g_Bᵀ(H_B + γI)g_B and ‖g_B‖² of every one of the C(N, S) batches, in numpy."""
    nums, dens = [], []
    for b in itertools.combinations(range(x.shape[0]), s):
        xb = x[list(b)]
        g = xb.T @ (xb @ w - y[list(b)]) / s + gamma * w
        h = xb.T @ xb / s + gamma * np.eye(x.shape[1])
        nums.append(g @ h @ g)
        dens.append(g @ g)
    return np.array(nums), np.array(dens)


@pytest.mark.parametrize("hvp_method", ["reverse-over-reverse", "reverse-over-forward"])
@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_exact_mode_is_the_enumerated_ratio_of_expectations(hvp_method, gamma):
    x, y, w, model = tiny_problem()
    nums, dens = enumerated(x, y, w, S, gamma)
    out = batch_sharpness(model, half_mse, torch.tensor(x), torch.tensor(y), batch_size=S, rng=0, exact=True,
                          weight_decay=gamma, hvp_method=hvp_method)
    assert isinstance(out, BatchSharpness) and out.exact and out.batches == 56 and out.stderr == 0.0
    assert out.estimate == pytest.approx(nums.mean() / dens.mean(), rel=1e-12)
    assert out.numerator == pytest.approx(nums.mean(), rel=1e-12)
    assert out.denominator == pytest.approx(dens.mean(), rel=1e-12)
    assert out.mean_of_ratios == pytest.approx(np.mean(nums / dens), rel=1e-12)
    np.testing.assert_allclose(out.numerators, nums, rtol=1e-12)
    assert "numerators" not in out.to_dict() and out.to_dict()["estimate"] == out.estimate


def test_sampled_batches_agree_with_the_enumeration_and_the_mutated_formula_fails():
    """2 000 batches drawn independently (seed 0): the estimate lies within z·stderr of the exact ratio of
    expectations, z at 99.9 % two-sided. The expectation of the per-batch ratio (a mutated formula), whether taken
    from the same sampled batches or exactly, is rejected by the same test (here by more than 20 standard errors)."""
    x, y, w, model = tiny_problem()
    nums, dens = enumerated(x, y, w, S)
    exact = nums.mean() / dens.mean()
    out = batch_sharpness(model, half_mse, torch.tensor(x), torch.tensor(y), batch_size=S, rng=0, batches=2000)
    assert out.batches == 2000 and not out.exact and out.stderr > 0
    z = sidak_z(0.999, 1)
    assert abs(out.estimate - exact) < z * out.stderr, (out.estimate, exact, out.stderr)
    assert abs(out.numerator - nums.mean()) < z * out.numerator_stderr
    assert abs(out.denominator - dens.mean()) < z * out.denominator_stderr
    # The mutation: E_B[g_BᵀH_Bg_B/‖g_B‖²] in place of E_B[g_BᵀH_Bg_B]/E_B[‖g_B‖²].
    mutated = float(np.mean(out.numerators / out.denominators))
    assert mutated == pytest.approx(out.mean_of_ratios)
    assert abs(mutated - exact) > z * out.stderr
    assert abs(out.estimate - np.mean(nums / dens)) > 20 * out.stderr


def test_a_network_measures_on_its_device_and_reads_back_once(monkeypatch):
    """On an MLP (train-mode batch norm: each batch normalised by its own statistics, as in SGD's step) the
    per-batch numbers stay on the device and come back in one read-back; the exact and the double-backward products
    agree with torch.func's, and the user's model is left as it was."""
    torch.manual_seed(0)
    model = models.MLP((1, 3, 3), 3, hidden=8, depth=2, batch_norm=True).double()
    x, y = torch.randn(12, 1, 3, 3, dtype=torch.float64), torch.randint(0, 3, (12,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = []
    numpy = torch.Tensor.numpy

    def counted(self, *args, **kwargs):
        sizes.append(self.numel())
        return numpy(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", counted)
    out = batch_sharpness(model, F.cross_entropy, x, y, batch_size=4, rng=3, batches=10, bn_mode="train")
    assert sizes == [20] and np.isfinite(out.estimate) and out.bn_mode == "train"
    monkeypatch.undo()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    plain = models.MLP((1, 3, 3), 3, hidden=8, depth=2).double()
    a, b = (batch_sharpness(plain, F.cross_entropy, x, y, batch_size=4, rng=3, batches=10, hvp_method=m)
            for m in ("reverse-over-reverse", "reverse-over-forward"))
    np.testing.assert_allclose(a.numerators, b.numerators, rtol=1e-10)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-10)


def test_bad_arguments_are_named():
    x, y, _, model = tiny_problem()
    xt, yt = torch.tensor(x), torch.tensor(y)
    with pytest.raises(ValueError, match="batch_size"):
        batch_sharpness(model, half_mse, xt, yt, batch_size=9, rng=0)
    with pytest.raises(ValueError, match="batches"):
        batch_sharpness(model, half_mse, xt, yt, batch_size=3, rng=0, batches=1)
    with pytest.raises(ValueError, match="rng is required"):
        batch_sharpness(model, half_mse, xt, yt, batch_size=3, rng=None)
    big = torch.zeros(40, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="MAX_ENUMERATED"):
        batch_sharpness(model, half_mse, big, torch.zeros(40, dtype=torch.float64), batch_size=20, rng=0,
                        exact=True)
