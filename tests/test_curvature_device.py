"""The curvature estimators keep their vectors where the operator computes (issue 23 item 5): Krylov bases, probes,
projections and products stay torch tensors on the operator's device, and only scalars come back to the host."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn import functional as F  # noqa: E402

from nets import models  # noqa: E402
from nets.curvature import (  # noqa: E402
    HessianOperator,
    gradient_noise,
    hessian_stats,
    noise_hessian_alignment,
    spectral_density,
    top_eigenvalues,
)
from nets.curvature.eigenvalues import power_iteration  # noqa: E402
from nets.curvature.trace import Deflation, adaptive_trace, hutchinson, hutchpp, trace_and_frobenius  # noqa: E402


def _problem(seed=0, n=40):
    torch.manual_seed(seed)
    model = models.MLP((1, 4, 4), 3, hidden=12, depth=3, batch_norm=True)
    return model, torch.randn(n, 1, 4, 4), torch.randint(0, 3, (n,))


def _readbacks(monkeypatch):
    """The sizes of the tensors read back to numpy while the patch is in place."""
    sizes = []
    numpy, array = torch.Tensor.numpy, torch.Tensor.__array__

    def counted_numpy(self, *args, **kwargs):
        sizes.append(self.numel())
        return numpy(self, *args, **kwargs)

    def counted_array(self, *args, **kwargs):
        sizes.append(self.numel())
        return array(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", counted_numpy)
    monkeypatch.setattr(torch.Tensor, "__array__", counted_array)
    return sizes


def _scalar_reads(monkeypatch):
    """The number of tensors read back as Python numbers (``float(t)``, ``t.item()``) while the patch is in place."""
    count = [0]
    as_float, item = torch.Tensor.__float__, torch.Tensor.item

    def counted_float(self):
        count[0] += 1
        return as_float(self)

    def counted_item(self):
        count[0] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counted_float)
    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    return count


def test_matmat_tensor_is_matmat_on_the_device():
    model, x, y = _problem()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, dtype=torch.float64)
    v = np.random.default_rng(0).standard_normal((op.dim, 3))
    t = op.matmat_tensor(torch.from_numpy(v))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device == op.device
    np.testing.assert_array_equal(t.numpy(), op.matmat(v))
    np.testing.assert_array_equal(op.matvec_tensor(torch.from_numpy(v[:, 0])).numpy(), op.matvec(v[:, 0]))
    with pytest.raises(ValueError, match="matrix"):
        op.matmat_tensor(torch.zeros(op.dim - 1, 2, dtype=torch.float64))


def test_the_estimators_read_back_scalars_only(monkeypatch):
    # Before, every product went through op.matvec/op.matmat (a parameter-sized copy to the host and back) and
    # the Lanczos basis, the probes and the projections were numpy arrays on the host.
    model, x, y = _problem()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, dtype=torch.float64)
    big = op.dim // 4  # larger than any per-probe or per-step block of scalars, smaller than a vector

    def refuse(*args, **kwargs):
        raise AssertionError("a host product (matvec/matmat) was used")

    monkeypatch.setattr(op, "matvec", refuse)
    monkeypatch.setattr(op, "matmat", refuse)
    sizes = _readbacks(monkeypatch)
    st = hessian_stats(op, rng=0, trace_rtol=0.2, cross_check=True, hutchpp_matvecs=9)
    hutchinson(op, 4, rng=1)
    hutchpp(op, 6, rng=2)
    power_iteration(op, iters=5, rng=3)
    adaptive_trace(op, rtol=0.5, rng=4)
    adaptive_trace(op, rtol=0.5, rng=4, deflate=(np.ones(2), np.eye(op.dim)[:, :2]))
    trace_and_frobenius(op, rtol=0.5, rng=5, deflation=Deflation.from_vectors(op, np.eye(op.dim)[:, :2]))
    assert st.lanczos_steps > 1 and st.num_probes >= 10
    assert max(sizes) < big, (max(sizes), op.dim)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_spectrum_and_density_run_on_the_operators_device(monkeypatch, bn_mode):
    model, x, y = _problem(1)
    kw = dict(batch_size=10, bn_mode=bn_mode, dtype=torch.float64)
    calls = []
    original = HessianOperator.matvec_tensor

    def counted(self, v):
        calls.append(v.device)
        return original(self, v)

    monkeypatch.setattr(HessianOperator, "matvec_tensor", counted)
    monkeypatch.setattr(HessianOperator, "matvec", lambda self, v: pytest.fail("host matvec used"))
    top = top_eigenvalues(model, F.cross_entropy, x, y, k=2, rng=0, **kw)
    assert top.converged and isinstance(top.eigenvectors, np.ndarray) and top.eigenvectors.shape[1] == 2
    np.testing.assert_allclose(top.eigenvectors.T @ top.eigenvectors, np.eye(2), atol=1e-10)
    d = spectral_density(model, F.cross_entropy, x, y, num_runs=2, num_steps=6, rng=1, **kw)
    assert np.allclose(d.weights.sum(axis=1), 1.0) and d.matvecs == 12
    assert len(calls) == top.matvecs + 12 and all(c == torch.device("cpu") for c in calls)


def test_the_noise_and_the_alignment_read_back_scalars_only(monkeypatch):
    # Before, noise_hessian_alignment read every chunk of per-example gradients back to numpy (an N x dim array),
    # built the Gram matrix, took the N products through op.matvec (a vector to the host and back each) and the
    # eigenvectors of C on the host.
    model, x, y = _problem()
    big = HessianOperator(model, F.cross_entropy, x, y, batch_size=10).dim // 4
    assert x.shape[0] < big

    def refuse(*args, **kwargs):
        raise AssertionError("a host product (matvec/matmat) was used")

    monkeypatch.setattr(HessianOperator, "matvec", refuse)
    monkeypatch.setattr(HessianOperator, "matmat", refuse)
    sizes = _readbacks(monkeypatch)
    per = gradient_noise(model, F.cross_entropy, x, y, batch_size=10, method="per_example", rng=0,
                         dtype=torch.float64)
    two = gradient_noise(model, F.cross_entropy, x, y, batch_size=10, method="two_batch", bn_mode="train",
                         b_small=3, pairs=4, rng=1)
    al = noise_hessian_alignment(model, F.cross_entropy, x, y, batch_size=10, k=2, frobenius_probes=4, rng=2,
                                 dtype=torch.float64)
    assert per.trace_c > 0 and two.details["pairs"] == 4 and 0 <= al.overlap <= 1 + 1e-12
    assert al.matvecs >= x.shape[0] and len(al.eigenvalues_c) == 2
    assert max(sizes) < big, (max(sizes), big)


def test_the_loss_and_the_two_batch_noise_read_back_once(monkeypatch):
    # Before: one float() per measurement batch (and per parameter with weight decay) in HessianOperator.loss, one
    # per batch gradient in the two-batch noise.
    model, x, y = _problem()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, weight_decay=0.01, dtype=torch.float64)
    reads = _scalar_reads(monkeypatch)
    sizes = _readbacks(monkeypatch)
    loss = op.loss()
    assert reads[0] == 1 and not sizes and loss > 0
    reads[0] = 0
    gradient_noise(model, F.cross_entropy, x, y, batch_size=10, method="two_batch", bn_mode="train", b_small=3,
                   pairs=4, rng=1)
    assert reads[0] == 0 and sizes == [8]  # the 2 x 4 squared norms, in one read
