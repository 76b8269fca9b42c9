"""The one SGD step of ``nets`` (training, the stationary phase) and its fluctuation–dissipation observables."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nets.sgd import make_optimizer, sgd_step  # noqa: E402
from sde.diagnostics import FDRMonitor  # noqa: E402
from sgd_noise_common.stats import sidak_z as z_critical  # noqa: E402


def _stationary_fdr(momentum, dampening, weight_decay, *, steps=12000, burn_in=2000, seed=0):
    """FDR summary of SGD on a small least-squares network (nn.Linear, mean squared error) after burn-in."""
    g = torch.Generator().manual_seed(seed)
    n, d = 256, 6
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 1, generator=g,
                                                                                   dtype=torch.float64)
    model = torch.nn.Linear(d, 1).double()
    opt = make_optimizer(model, eta=0.02, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    mon = FDRMonitor(0.02, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    idx_all = torch.randint(0, n, (burn_in + steps, 8), generator=g)
    for k in range(burn_in + steps):
        idx = idx_all[k]
        _, obs = sgd_step(model, opt, x[idx], y[idx], loss_fn=torch.nn.functional.mse_loss, observe=k >= burn_in)
        if obs is not None:
            mon.record(obs.o_left, obs.o_right)
    return mon.summary()


@pytest.mark.parametrize("momentum,dampening,weight_decay", [(0.0, 0.0, 0.0), (0.9, 0.5, 0.01), (0.0, 0.5, 0.0)])
def test_fdr_ratio_is_one_at_stationarity_with_dampening(momentum, dampening, weight_decay):
    # Yaida's relation <O_L> = <O_R> with O_R = eta(1+mu)/(2(1-d)) |b'|^2 holds at any stationary state; the
    # 1/(1-d) factor was missing from the torch copy before (a dampened run then read 1/(1-d) = 2, not 1).
    s = _stationary_fdr(momentum, dampening, weight_decay)
    z = z_critical(0.999, 2)
    assert abs(s.ratio - 1.0) < z * s.ratio_stderr, (s.ratio, s.ratio_stderr)
    if dampening and momentum:
        # Without the factor (the old formula) the same run is many standard errors off: the test can fail.
        wrong = s.o_left / (s.o_right * (1.0 - dampening))
        assert abs(wrong - 1.0) > z * s.ratio_stderr / (1.0 - dampening)
        assert math.isclose(wrong, 1.0 / (1.0 - dampening), rel_tol=0.1)


def test_numpy_sgd_direction_is_torch_sgd():
    # sde.optim.sgd_direction (the checks' SGD on quadratics) against torch.optim.SGD, float64, four steps.
    from sde.optim import sgd_direction

    rng = np.random.default_rng(0)
    theta0, grads = rng.standard_normal(5), rng.standard_normal((4, 5))
    for mu, damp, wd in [(0.0, 0.0, 0.0), (0.9, 0.3, 0.01), (0.5, 0.0, 0.1), (0.0, 0.5, 0.2)]:
        p = torch.nn.Parameter(torch.tensor(theta0))
        opt = torch.optim.SGD([p], lr=0.1, momentum=mu, dampening=damp, weight_decay=wd)
        theta, buf = theta0.copy(), np.zeros(5)
        for k, g in enumerate(grads):
            p.grad = torch.tensor(g)
            opt.step()
            step, buf = sgd_direction(g, theta, buf, momentum=mu, dampening=damp, weight_decay=wd, first=k == 0)
            theta = theta - 0.1 * step
        np.testing.assert_allclose(theta, p.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_sgd_step_is_torch_sgd():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    opt_a = make_optimizer(a, eta=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)
    for _ in range(3):
        sgd_step(a, opt_a, x, y, loss_fn=torch.nn.functional.cross_entropy, observe=True)
        opt_b.zero_grad()
        torch.nn.functional.cross_entropy(b(x), y).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert np.isfinite(float(sgd_step(a, opt_a, x, y, loss_fn=torch.nn.functional.cross_entropy, lr=0.05)[0]))
    assert opt_a.param_groups[0]["lr"] == 0.05


_READBACKS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "__array__")


def _count_readbacks(monkeypatch):
    """Count the tensor methods that read a value back to the host (a synchronisation with a GPU)."""
    calls = []
    for name in _READBACKS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.01)])
def test_an_observed_step_reads_nothing_back(monkeypatch, momentum, weight_decay):
    # Issue 23 item 4: the observables were read back with float() two or three times per parameter tensor per
    # step (about 22 synchronisations a step for the batch-norm MLP on a GPU). They stay device tensors now, and
    # a monitor reads them only when it summarises. The numbers are the same float64 sums, in the same order.
    from nets.models import MLP

    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, hidden=6, depth=3, batch_norm=True)
    twin = MLP((1, 4, 4), 3, hidden=6, depth=3, batch_norm=True)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    opt = make_optimizer(model, eta=0.1, momentum=momentum, weight_decay=weight_decay)
    opt_twin = make_optimizer(twin, eta=0.1, momentum=momentum, weight_decay=weight_decay)
    mon = FDRMonitor(0.1, momentum=momentum, weight_decay=weight_decay)
    calls = _count_readbacks(monkeypatch)
    observed = []
    for _ in range(3):
        _, obs = sgd_step(model, opt, x, y, loss_fn=torch.nn.functional.cross_entropy, observe=True)
        mon.record(obs.o_left, obs.o_right)
        observed.append(obs)
    assert calls == [], calls
    monkeypatch.undo()
    for obs in observed:
        for v in (obs.o_left, obs.o_right, obs.grad_sq):
            assert isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype == torch.float64
    # The reference: the same sums as Python floats, parameter by parameter (the old arithmetic), bit for bit.
    factor = 0.5 * 0.1 * (1 + momentum)
    for obs in observed:
        twin.train()
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        opt_twin.zero_grad(set_to_none=True)
        loss.backward()
        o_left = grad_sq = 0.0
        for p in twin.parameters():
            t = p.detach().double()
            g = p.grad.double() + weight_decay * t
            o_left += float((t * g).sum())
            grad_sq += float((g * g).sum())
        opt_twin.step()
        buf_sq = grad_sq if not momentum else sum(
            float(opt_twin.state[p]["momentum_buffer"].double().pow(2).sum()) for p in twin.parameters())
        assert float(obs.o_left) == o_left and float(obs.grad_sq) == grad_sq
        assert float(obs.o_right) == factor * buf_sq
    left, right = mon.records()
    assert [float(v[0]) for v in left] == [float(o.o_left) for o in observed]
    assert [float(v[0]) for v in right] == [float(o.o_right) for o in observed]
