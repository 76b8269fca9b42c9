"""``hessian_stats`` to a stated accuracy and the blocked Hessian-vector products, on small
float64 networks whose Hessian is formed exactly (the operator itself is checked against torch.func.hessian in
test_nets.py)."""

import math

import numpy as np
import pytest
from scipy.stats import binom

torch = pytest.importorskip("torch")

from test_spectrum import _decaying, _Dense, _dense, _problem  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nets import models  # noqa: E402
from nets.curvature import Deflation, HessianOperator, hessian_stats, hutchinson, trace_and_frobenius  # noqa: E402
from nets.curvature.lanczos import lanczos  # noqa: E402
from nets.curvature.stats import operator_stats  # noqa: E402
from nets.curvature.trace import probe_samples  # noqa: E402
from sgd_noise_common.stats import sidak_z as z_critical  # noqa: E402


def _bn_mlp(seed=1, n=40):
    torch.manual_seed(seed)
    return models.MLP((1, 3, 3), 3, hidden=5, depth=3, batch_norm=True), torch.randn(n, 1, 3, 3), \
        torch.randint(0, 3, (n,))


def _bn_conv(seed=2, n=70):
    # 70 examples: eval-mode HVPs of a convolutional model run in sub-batches of HVP_CHUNK = 64, so two of them.
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    return m, torch.randn(n, 1, 3, 3), torch.randint(0, 3, (n,))


# Each case: a model maker, the operator's keywords and the block arithmetic expected.
MATMAT_CASES = {
    "tanh-mlp": (lambda: _problem(0), dict(batch_size=16), "forward-over-reverse"),
    "bn-eval-decay": (_bn_mlp, dict(batch_size=10, weight_decay=0.1), "forward-over-reverse"),
    "bn-train-decay": (_bn_mlp, dict(batch_size=10, bn_mode="train", weight_decay=0.1), "reverse-over-reverse"),
    "bn-eval-stored": (_bn_mlp, dict(batch_size=10, recalibrate=False, hvp_method="reverse-over-forward"),
                       "forward-over-reverse"),
    "conv-bn-eval": (_bn_conv, dict(batch_size=70), "forward-over-reverse"),
}


@pytest.mark.parametrize("case", sorted(MATMAT_CASES))
def test_matmat_equals_the_columns_matvecs(case):
    make, kw, method = MATMAT_CASES[case]
    model, x, y = make()
    op = HessianOperator(model, F.cross_entropy, x, y, dtype=torch.float64, **kw)
    v = np.random.default_rng(0).standard_normal((op.dim, 5))
    cols = np.column_stack([op.matvec(v[:, i]) for i in range(5)])
    before = op.matvecs
    block = op.matmat(v)
    assert op.block_method == method and op.block_fallback is None and op.matvecs == before + 5
    # float64, the same sums in another order: rounding only.
    np.testing.assert_allclose(block, cols, rtol=0, atol=1e-10 * np.abs(cols).max())


def test_matmat_falls_back_to_a_loop_when_vmap_fails(monkeypatch):
    model, x, y = _bn_mlp()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, dtype=torch.float64)
    v = np.random.default_rng(1).standard_normal((op.dim, 3))
    want = op.matmat(v)

    def refuse(*args):
        raise RuntimeError("vmap: no batching rule for this operator\nmore")

    monkeypatch.setattr(op, "_batched_product", refuse)
    np.testing.assert_allclose(op.matmat(v), want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert op.block_fallback == "RuntimeError: vmap: no batching rule for this operator"
    with pytest.raises(ValueError, match="matrix"):
        op.matmat(v[:5])


def test_the_block_size_does_not_change_hutchinson():
    model, x, y = _bn_mlp()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, dtype=torch.float64)
    one, five = hutchinson(op, 12, rng=0, block=1), hutchinson(op, 12, rng=0, block=5)
    for k in ("trace", "frobenius"):
        for f in ("estimate", "stderr"):
            assert getattr(getattr(five, k), f) == pytest.approx(getattr(getattr(one, k), f), rel=1e-12), (k, f)


def _lanczos_deflation(h, steps, seed=0):
    last = {}

    def matvec(v):
        last["hq"] = h @ v
        return last["hq"].copy()

    run = lanczos(matvec, h.shape[0], steps=steps, v0=np.random.default_rng(seed).standard_normal(h.shape[0]))
    return Deflation.from_lanczos(run, last["hq"])


def test_deflation_identities_on_a_network_hessian():
    model, x, y = _problem(0)
    h = _dense(model, x, y)
    d = _lanczos_deflation(h, 9)
    q, t, r = d.basis, d.projected, d.remainder
    scale = np.abs(h).max()
    # The Lanczos relation HQ = QT + r e_mᵀ with r ⟂ Q, to rounding.
    np.testing.assert_allclose(q.T @ h @ q, t, atol=1e-12 * scale)
    np.testing.assert_allclose(h @ q, q @ t + np.outer(r, np.eye(9)[-1]), atol=1e-12 * scale)
    assert np.abs(q.T @ r).max() < 1e-12 * scale
    # The two splits: Tr(H) = Tr(T) + Tr(PHP) and |H|_F^2 = |T|_F^2 + |r|^2 + Tr(P H^2 P), exactly.
    p = np.eye(h.shape[0]) - q @ q.T
    assert d.trace + np.trace(p @ h @ p) == pytest.approx(np.trace(h), rel=1e-12)
    assert d.frobenius_sq + np.trace(p @ h @ h @ p) == pytest.approx(np.sum(h * h), rel=1e-12)
    # Each probe's four samples, from the one product H(Pv), against the products taken directly.
    v = np.random.default_rng(3).choice([-1.0, 1.0], size=(h.shape[0], 4))
    s = probe_samples(_Dense(h), v, d)
    hv, u = h @ v, p @ v
    np.testing.assert_allclose(s.tr_plain, np.einsum("ij,ij->j", v, hv), rtol=1e-12)
    np.testing.assert_allclose(s.f2_plain, np.einsum("ij,ij->j", hv, hv), rtol=1e-12)
    np.testing.assert_allclose(s.tr_defl, np.einsum("ij,ij->j", u, h @ u), rtol=1e-10, atol=1e-14 * scale)
    np.testing.assert_allclose(s.f2_defl, np.einsum("ij,ij->j", h @ u, h @ u), rtol=1e-12)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_hessian_stats_states_what_it_guarantees(bn_mode):
    model, x, y = _bn_mlp()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, bn_mode=bn_mode, dtype=torch.float64)
    h = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
    h = 0.5 * (h + h.T)
    ev = np.linalg.eigvalsh(h)
    st = hessian_stats(HessianOperator(model, F.cross_entropy, x, y, batch_size=10, bn_mode=bn_mode,
                                       dtype=torch.float64), trace_rtol=0.1, rng=5)
    # λ_max: a Ritz value (never above λ_max), within its residual of an eigenvalue, the residual within lambda_tol.
    assert st.lanczos_converged and st.lambda_max_residual <= st.lambda_tol * st.lambda_max
    assert st.lambda_max <= ev[-1] * (1 + 1e-12)
    assert np.min(np.abs(ev - st.lambda_max)) <= st.lambda_max_residual
    assert st.lambda_max == pytest.approx(ev[-1], rel=st.lambda_tol)
    # Tr(H) and |H|_F within their errors (99.9 %, Šidák over two), the intervals as narrow as stated.
    z = z_critical(0.999, 2)
    assert abs(st.trace - np.trace(h)) <= z * st.trace_stderr
    assert abs(st.frobenius - np.linalg.norm(h)) <= z * st.frobenius_stderr
    assert st.reached and st.trace_halfwidth <= 0.1 * abs(st.trace) and st.frobenius_halfwidth <= 0.1 * st.frobenius
    assert st.confidence == 0.95 and st.trace_rtol == 0.1 and st.num_probes >= 10
    assert st.matvecs == st.lanczos_steps + 1 + st.num_probes and st.deflated == st.lanczos_steps
    assert st.bn_statistics == op.bn_statistics and op.bn_statistics in st.guarantee
    assert f"{st.lambda_max:.6g}" in st.guarantee and "95 %" in st.guarantee and "NOT" not in st.guarantee
    assert math.isnan(st.lambda_max_power) and math.isnan(st.trace_hutchpp) and st.notes == []


def test_every_option_reaches_the_result():
    model, x, y = _bn_mlp()
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10, weight_decay=0.01, bn_inputs=x[:20],
                         recalibrate=True, dtype=torch.float64, device="cpu", hvp_method="reverse-over-reverse")
    st = hessian_stats(op, min_probes=4, rng=np.random.default_rng(0), lambda_tol=1e-6, power_iters=200,
                       cross_check=True, hutchpp_matvecs=12, trace_rtol=0.2)
    assert st.lambda_tol == 1e-6 and st.lambda_max_residual <= 1e-6 * st.lambda_max
    assert math.isfinite(st.lambda_max_power) and math.isfinite(st.trace_hutchpp) and st.num_probes >= 4
    assert st.bn_statistics == "running statistics recomputed on 20 inputs" and st.hvp_method == "reverse-over-reverse"
    assert st.weight_decay == 0.01 and st.dtype == "float64" and st.matvecs == op.matvecs
    d = st.to_dict()
    for k in ("lambda_max", "trace", "trace_stderr", "frobenius", "frobenius_stderr", "loss", "num_params", "matvecs",
              "seconds", "notes", "lambda_max_power", "trace_hutchpp", "trace_hutchpp_stderr", "guarantee"):
        assert k in d, k
    stored = hessian_stats(HessianOperator(model, F.cross_entropy, x, y, batch_size=10, recalibrate=False),
                           trace_rtol=0.5, rng=0)
    assert stored.bn_statistics == "the model's stored running statistics"
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=10)
    with pytest.raises(ValueError, match="lambda_tol"):
        hessian_stats(op, lambda_tol=0.0, rng=0)
    with pytest.raises(ValueError, match="min_probes"):
        hessian_stats(op, min_probes=1, rng=0)
    # The model-and-data form is gone; the error says how to build the operator.
    with pytest.raises(TypeError, match="HessianOperator"):
        hessian_stats(model, rng=0)


# Calibration cases: the exact Hessian of a small network (about 180 probes to +-10 %), and a spectrum decaying as
# 0.85^i (10 to 50 probes to +-5 %: early stopping, where the sequential rule lowers the coverage most).
CALIBRATION = {"network": (lambda: _dense(*_problem(0)), 1e-4, 0.1), "decaying": (lambda: _decaying()[0], 1e-2, 0.05)}


@pytest.mark.parametrize("case", sorted(CALIBRATION))
def test_intervals_cover_at_their_confidence_over_seeds(case):
    # The whole pipeline of hessian_stats (operator_stats) on an exact Hessian, 300 seeds.
    make, lambda_tol, rtol = CALIBRATION[case]
    h = make()
    ev = np.linalg.eigvalsh(h)
    exact_tr, exact_f = np.trace(h), np.linalg.norm(h)
    runs, conf = 300, 0.9
    miss_tr = miss_f = 0
    for seed in range(runs):
        r = operator_stats(_Dense(h), lambda_tol=lambda_tol, trace_rtol=rtol, confidence=conf, min_probes=10,
                           max_probes=5000, rng=seed)
        assert r.reached and r.lambda_max <= ev[-1] * (1 + 1e-12)
        assert np.min(np.abs(ev - r.lambda_max)) <= r.lambda_max_residual
        miss_tr += abs(r.trace - exact_tr) > r.trace_halfwidth
        miss_f += abs(r.frobenius - exact_f) > r.frobenius_halfwidth
    # Misses ~ Binomial(300, 0.1) at the nominal coverage (mean 30): a one-sided test at 99.9 %, Šidák over the
    # two intervals, that the coverage is not below 90 % (the sequential stopping lowers it a little; 48 allowed).
    allowed = binom.isf(1 - math.sqrt(0.999), runs, 1 - conf)
    assert miss_tr <= allowed and miss_f <= allowed, (miss_tr, miss_f, allowed)


def test_the_combination_leans_on_the_better_sample():
    # A decaying spectrum: the samples deflated by the Krylov space vary least; H = 2I plus a little: plain
    # Hutchinson's (exact for a multiple of I) do. The fitted weight on plain Hutchinson says which.
    h, lam, _ = _decaying()
    r = trace_and_frobenius(_Dense(h), rtol=0.01, deflation=_lanczos_deflation(h, 10), rng=0)
    assert abs(r.trace.plain_weight) < 0.2 and r.reached
    flat = 2.0 * np.eye(60) + 1e-3 * h
    r = trace_and_frobenius(_Dense(flat), rtol=0.01, deflation=_lanczos_deflation(flat, 4), rng=0)
    assert abs(r.trace.plain_weight - 1) < 0.2 and r.probes == 10 and r.reached
    assert abs(r.trace.estimate - np.trace(flat)) <= r.trace.halfwidth


def test_exact_when_the_krylov_space_is_everything():
    h = np.diag([3.0, 1.0, -0.5, 0.25])
    r = operator_stats(_Dense(h), lambda_tol=1e-12, trace_rtol=0.01, confidence=0.95, min_probes=10,
                       max_probes=100, rng=0)
    assert r.num_probes == 0 and r.reached and r.trace_halfwidth == 0.0
    assert r.trace == pytest.approx(3.75, rel=1e-12) and r.frobenius == pytest.approx(np.linalg.norm(h))
    assert r.lambda_max == pytest.approx(3.0, rel=1e-12) and "exact" in r.guarantee


# A deflation whose pairs are not exact eigenpairs of the operator the probes go to. Eigenpairs of a
# perturbed matrix (as from an operator with other batch-norm statistics, another dtype or other data), and the same
# vectors not orthonormal: the split Tr(H) = Tr(QᵀHQ) + Tr(PHP) holds for any orthonormal Q, so the estimate must be
# unbiased whatever the pairs; taking Σλ for Tr(QᵀHQ), as adaptive_trace and from_eigenpairs once did, is not.
def _mismatched_pairs(k=8, seed=0):
    h, lam, q = _decaying(seed=seed)
    rng = np.random.default_rng(seed + 100)
    e = rng.standard_normal(h.shape)
    # Another operator: 5 % more curvature (as other batch-norm statistics can give) and a perturbation of about
    # 3 % of λ_max in norm that turns the eigenvectors.
    h_other = 1.05 * h + 0.3 * (e + e.T) / np.sqrt(2 * h.shape[0])
    lam_o, v_o = np.linalg.eigh(h_other)
    lam_o, v_o = lam_o[::-1][:k], v_o[:, ::-1][:, :k]
    skewed = v_o + 0.05 * rng.standard_normal(v_o.shape)  # no longer orthonormal
    return h, lam_o, v_o, skewed


def test_deflation_by_pairs_of_another_operator_is_unbiased():
    from nets.curvature import adaptive_trace

    h, lam_o, v_o, skewed = _mismatched_pairs()
    exact = np.trace(h)
    # The old deflated part, Σλ of the other operator, misses Tr(QᵀHQ) by far more than the intervals are wide.
    assert abs(lam_o.sum() - np.trace(v_o.T @ h @ v_o)) > 0.03 * exact
    runs, conf = 200, 0.9
    for vectors in (v_o, skewed):
        rows = [adaptive_trace(_Dense(h), rtol=0.02, confidence=conf, deflate=(lam_o, vectors), rng=seed)
                for seed in range(runs)]
        r0 = rows[0]
        assert r0.deflated == 8 and r0.matvecs == r0.probes + 8
        assert r0.eigenvalue_sum == pytest.approx(lam_o.sum())
        q = np.linalg.qr(vectors)[0]
        assert r0.deflated_trace == pytest.approx(np.trace(q.T @ h @ q), rel=1e-12)
        dev = np.array([r.estimate - exact for r in rows])
        covered = sum(abs(d) <= r.halfwidth for d, r in zip(dev, rows))
        # Coverage not below 90 % (misses ~ Binomial(200, 0.1), one-sided at 99.9 %), and no bias: the mean
        # deviation within 3.29 of its standard errors (99.9 %, two-sided), Šidák-free as each is its own claim.
        assert covered >= runs - binom.isf(0.001, runs, 1 - conf), covered
        assert abs(dev.mean()) <= 3.29 * dev.std(ddof=1) / np.sqrt(runs), (dev.mean(), dev.std(ddof=1))


def test_an_exact_deflation_from_any_vectors():
    h, lam_o, v_o, skewed = _mismatched_pairs()
    op = _Dense(h)
    d = Deflation.from_eigenpairs(lam_o, skewed, op=op)
    q, t, r = d.basis, d.projected, d.remainder
    scale = np.abs(h).max()
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-13)
    np.testing.assert_allclose(h @ q, q @ t + r, atol=1e-12 * scale)
    assert np.abs(q.T @ r).max() < 1e-12 * scale
    p = np.eye(h.shape[0]) - q @ q.T
    assert d.trace + np.trace(p @ h @ p) == pytest.approx(np.trace(h), rel=1e-12)
    assert d.frobenius_sq + np.trace(p @ h @ h @ p) == pytest.approx(np.sum(h * h), rel=1e-12)
    v = np.random.default_rng(3).choice([-1.0, 1.0], size=(h.shape[0], 4))
    s = probe_samples(op, v, d)
    hv = h @ v
    np.testing.assert_allclose(s.tr_plain, np.einsum("ij,ij->j", v, hv), rtol=1e-12)
    np.testing.assert_allclose(s.f2_plain, np.einsum("ij,ij->j", hv, hv), rtol=1e-12)
    # With the control variate too: over seeds, no bias in Tr(H) or |H|_F (the old from_eigenpairs, taking the
    # other operator's pairs as exact, is off by Σλ − Tr(QᵀHQ) in both samples).
    runs = 200
    rows = [trace_and_frobenius(op, rtol=0.02, confidence=0.9, deflation=d, rng=seed) for seed in range(runs)]
    for key, exact in (("trace", np.trace(h)), ("frobenius", np.linalg.norm(h))):
        dev = np.array([getattr(r, key).estimate - exact for r in rows])
        assert abs(dev.mean()) <= 3.29 * dev.std(ddof=1) / np.sqrt(runs), (key, dev.mean(), dev.std(ddof=1))
        covered = sum(abs(x) <= getattr(r, key).halfwidth for x, r in zip(dev, rows))
        assert covered >= runs - binom.isf(0.001, runs, 0.1), (key, covered)
