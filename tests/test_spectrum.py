"""Top-k eigenpairs to a requested accuracy and the SLQ density, on small float64 networks
whose Hessian is formed exactly (the operator itself is checked against torch.func.hessian in test_nets.py)."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nets.curvature import HessianOperator, spectral_density, top_eigenvalues  # noqa: E402
from nets.curvature.lanczos import extreme_eigenpairs  # noqa: E402
from sgd_noise_common.stats import sidak_z as z_critical  # noqa: E402


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def _dense(model, x, y):
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=16, dtype=torch.float64)
    h = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
    return 0.5 * (h + h.T)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_top_k_eigenvalues_to_1e8(which):
    model, x, y = _problem()
    exact = np.linalg.eigvalsh(_dense(model, x, y))
    want = exact[::-1][:4] if which == "largest" else exact[:4]
    res = top_eigenvalues(model, F.cross_entropy, x, y, k=4, batch_size=16, which=which, tol=1e-10,
                          dtype=torch.float64, rng=0)
    assert res.converged and res.bn_statistics == "no batch norm"
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-8, atol=1e-10 * abs(exact).max())
    assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=which == "largest")
    # The residual bound is a bound: every eigenvalue lies within its residual of an exact eigenvalue.
    assert np.all(np.abs(res.eigenvalues - want) <= res.residuals + 1e-12)
    v = res.eigenvectors
    np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-8)


def test_the_stopping_rule_is_the_requested_accuracy():
    # A spectrum with a small gap: a loose tol stops early with a residual within tol; a tight one continues.
    ev = np.concatenate([[10.0, 9.99], np.linspace(0.1, 5.0, 200)])
    h = np.diag(ev)
    loose = extreme_eigenpairs(lambda v: h @ v, 202, k=1, tol=1e-3, rng=1)
    tight = extreme_eigenpairs(lambda v: h @ v, 202, k=1, tol=1e-12, rng=1)
    assert loose.converged and loose.residuals[0] <= 1e-3 * loose.eigenvalues[0]
    # Kahan: an eigenvalue lies within the residual of the Ritz value (here 9.99, closer than the gap to 10).
    assert np.min(np.abs(ev - loose.eigenvalues[0])) <= loose.residuals[0]
    assert tight.matvecs > loose.matvecs and abs(tight.eigenvalues[0] - 10.0) < 1e-10


def test_slq_moments_within_their_error():
    model, x, y = _problem(1)
    h = _dense(model, x, y)
    n = h.shape[0]
    d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=40, num_steps=12,
                         dtype=torch.float64, rng=3)
    assert d.nodes.shape == d.weights.shape == (40, 12)
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, atol=1e-12)
    z = z_critical(0.999, 3)  # three moments, Šidák at 99.9 %
    for p in (1, 2, 3):
        exact = np.trace(np.linalg.matrix_power(h, p)) / n
        est, se = d.moment(p)
        assert abs(est - exact) < z * se, (p, est, exact, se)


def test_slq_density_approaches_the_spectrum_as_runs_grow():
    model, x, y = _problem(2)
    ev = np.linalg.eigvalsh(_dense(model, x, y))
    dist = {}
    for runs in (1, 32):
        w1 = []
        for seed in range(6):
            d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=runs, num_steps=10,
                                 dtype=torch.float64, rng=seed)
            w1.append(wasserstein_distance(d.nodes.ravel(), ev, d.weights.ravel()))
        dist[runs] = float(np.mean(w1))
    assert dist[32] < 0.5 * dist[1], dist


def test_density_is_normalised_and_plots(tmp_path):
    model, x, y = _problem(3)
    d = spectral_density(model, F.cross_entropy, x, y, batch_size=16, num_runs=3, num_steps=8,
                         dtype=torch.float64, rng=0)
    grid, dens = d.density()
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-3
    d.plot(tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 1000
    js = d.to_dict()
    assert set(js["moments"]) == {"m1", "m2", "m3"}


class _Dense:
    """A dense symmetric matrix as an operator (``dim``, ``matvec``)."""

    def __init__(self, h):
        self.h, self.dim = h, h.shape[0]

    def matvec(self, v):
        return self.h @ v


def _decaying(n=60, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = 10.0 * 0.85 ** np.arange(n)
    return q @ np.diag(lam) @ q.T, lam, q


def test_adaptive_trace_interval_covers_at_its_confidence():
    from nets.curvature import adaptive_trace

    h, lam, _ = _decaying()
    op, exact, runs = _Dense(h), lam.sum(), 200
    covered = sum(abs((r := adaptive_trace(op, rtol=0.05, confidence=0.9, rng=seed)).estimate - exact)
                  <= r.halfwidth for seed in range(runs))
    # Binomial(200, 0.9): coverage is not significantly below 90 % (one-sided, 99.9 %: mean 180, sd 4.24).
    assert covered >= 180 - 3.09 * 4.24, covered


def test_deflation_by_top_eigenpairs_needs_far_fewer_probes():
    from nets.curvature import adaptive_trace

    h, lam, q = _decaying()
    op, exact = _Dense(h), lam.sum()
    plain = [adaptive_trace(op, rtol=0.01, rng=s, max_matvecs=20000) for s in range(5)]
    defl = [adaptive_trace(op, rtol=0.01, rng=s, deflate=(lam[:8], q[:, :8])) for s in range(5)]
    assert all(r.reached for r in plain + defl)
    assert np.mean([r.probes for r in defl]) < 0.25 * np.mean([r.probes for r in plain])
    assert all(abs(r.estimate - exact) < 5 * r.stderr + 1e-12 for r in defl)


def test_epsilon_sharpness_equals_its_closed_form_on_a_quadratic():
    from nets.curvature import epsilon_sharpness

    rng = np.random.default_rng(0)
    n, d = 64, 5
    q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    s = np.array([3.0, 1.0, 0.5, 0.2, 0.05])
    x = q * np.sqrt(n * s)  # X^T X / N = diag(s): H = 2 diag(s) for the mean squared error
    y = x @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w_star)[None, :])
    xt, yt = torch.tensor(x), torch.tensor(y)[:, None]
    f0 = float(np.mean((x @ w_star - y) ** 2))
    for adaptive, eps in ((False, 1e-2), (True, 5e-2)):
        b = eps * (np.abs(w_star) if adaptive else np.abs(w_star) + 1.0)
        closed = float(np.sum(s * b * b)) / (1.0 + f0) * 100.0  # the rise ½ bᵀHb at the box's vertex
        out = epsilon_sharpness(model, F.mse_loss, xt, yt, batch_size=32, epsilon=eps, adaptive=adaptive,
                                maxiter=50, dtype=torch.float64, rng=0)
        assert out.sharpness == pytest.approx(closed, rel=1e-6), (adaptive, out, closed)
    assert torch.equal(model.weight, torch.tensor(w_star)[None, :])  # the model is untouched


def test_noise_hessian_alignment_on_least_squares():
    # Linear least squares, per-example loss (x_n.w - y_n)^2: g_n = 2 x_n r_n, H = 2 X^T X / N, both exact.
    from nets.curvature import noise_hessian_alignment

    rng = np.random.default_rng(4)
    n, d = 48, 6
    x = rng.standard_normal((n, d)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    y = x @ rng.standard_normal(d) + rng.standard_normal(n)
    w = rng.standard_normal(d) * 0.1  # away from the minimum: a non-trivial mean gradient
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w)[None, :])
    r = x @ w - y
    g = 2 * x * r[:, None]
    g -= g.mean(axis=0)
    c, h = g.T @ g / n, 2 * x.T @ x / n
    exact = np.trace(c @ h) / (np.linalg.norm(c) * np.linalg.norm(h))
    out = noise_hessian_alignment(model, F.mse_loss, torch.tensor(x), torch.tensor(y)[:, None], batch_size=16, k=2,
                                  frobenius_probes=400, tol=1e-12, dtype=torch.float64, rng=0)
    assert out.trace_ch == pytest.approx(np.trace(c @ h), rel=1e-10)
    assert out.frobenius_c == pytest.approx(np.linalg.norm(c), rel=1e-10)
    assert abs(out.cosine - exact) < z_critical(0.999, 1) * out.cosine_stderr
    vc, vh = np.linalg.eigh(c)[1][:, ::-1][:, :2], np.linalg.eigh(h)[1][:, ::-1][:, :2]
    assert out.overlap == pytest.approx(np.sum((vc.T @ vh) ** 2) / 2, abs=1e-8)


def test_landscape_slices_at_the_origin_and_on_a_quadratic(tmp_path):
    from nets.landscape import filter_normalized_direction, loss_slice

    model, x, y = _problem(5)
    d2 = loss_slice(model, F.cross_entropy, x, y, alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 3), rng=0)
    from nets.evaluation import evaluate

    assert d2.losses.shape == (5, 3) and d2.losses[2, 1] == pytest.approx(evaluate(model, F.cross_entropy, x, y)[0],
                                                                          rel=1e-12)
    d = filter_normalized_direction(model, rng=0)
    w = dict(model.named_parameters())
    for name, t in d.items():  # each filter (row) has its weight's norm; 1-D parameters get zero
        if t.dim() > 1:
            np.testing.assert_allclose(t.norm(dim=1).numpy(), w[name].detach().norm(dim=1).numpy(), rtol=1e-10)
        else:
            assert not t.any()
    d2.plot(tmp_path / "land.png")
    assert (tmp_path / "land.png").stat().st_size > 1000
    # On a quadratic (linear least squares at its minimum) the 1-D slice is symmetric: L(θ + αd) = L(θ - αd).
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((30, 4)), rng.standard_normal(30)
    lin = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.linalg.lstsq(xs, ys, rcond=None)[0])[None, :])
    xt, yt = torch.tensor(xs), torch.tensor(ys)[:, None]
    s1 = loss_slice(lin, F.mse_loss, xt, yt, alphas=np.linspace(-1, 1, 9), rng=2,
                    directions=[filter_normalized_direction(lin, rng=2)])
    np.testing.assert_allclose(s1.losses, s1.losses[::-1], rtol=1e-12)
    assert np.argmin(s1.losses) == 4


def test_measure_cli_writes_the_new_measurements(tmp_path, capsys):
    import json

    from nets import measure
    from nets import train as train_mod

    run = tmp_path / "run"
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", model="mlp", width=0.125, eta=0.05, batch_size=32,
                                epochs=1, synthetic_size=256)
    train_mod.train(cfg, run, progress=False, log=lambda m: None)
    code = measure.main([str(run), "--json", str(tmp_path / "m.json"), "--measure-size", "64", "--probes", "4",
                         "--top-k", "3", "--density", "--landscape", "2d", "--sharpness", "1e-3", "--alignment", "2",
                         "--no-cross-check", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "m.json").read_text())
    assert len(res["top_eigenvalues"]["eigenvalues"]) == 3 and res["top_eigenvalues"]["converged"]
    assert res["top_eigenvalues"]["eigenvalues"][0] == pytest.approx(res["hessian"]["lambda_max"], rel=1e-3)
    assert "m1" in res["density"]["moments"] and len(res["landscape"]["losses"]) == 21
    assert res["sharpness"]["sharpness"] >= 0 and -1 <= res["alignment"]["cosine"] <= 1
    assert (run / "density.png").is_file() and (run / "landscape.png").is_file()
    assert measure.main([str(run), "--json", str(tmp_path / "m2.json"), "--alignment", "2", "--bn-mode", "train",
                         "--device", "cpu"]) == 2
