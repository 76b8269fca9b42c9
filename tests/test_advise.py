"""``nets.advise`` (issue 21): the advisor's predicted curves against a direct simulation on the quadratic network,
where its surrogate is exact; the finite-data, stability and discreteness rows against closed forms; the CLI's
refusals; and a smoke ``--verify`` with the JSON the issue names."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from cases import half_mse, linear_problem, run_cli
from scipy.stats import norm

from nets.advise import Advice, advise, check_betas, default_betas
from nets.advise.__main__ import main as advise_main
from nets.basin import linearised_covariance, set_flat_parameters
from quadratic.sampling import batch_noise_factor


@pytest.fixture(scope="module")
def quadratic_advice():
    """The quadratic network (least squares, N = 48, P = 4) away from its minimum, with momentum and weight
    decay, every direction exact (top_k = P, no bulk)."""
    p, model, x, y = linear_problem(n=48, spectrum=(4.0, 2.0, 1.0, 0.5), seed=6, noise_std=2.0)
    theta0 = p.minimum + np.random.default_rng(1).normal(0.0, 0.4, p.dim)
    set_flat_parameters(model, theta0)
    a = advise(model, half_mse, x, y, eta=0.1, batch_size=4, momentum=0.5, weight_decay=0.01, betas=(1, 2, 4, 8, 16),
               top_k=4, examples=48, horizon=96, density_runs=2, density_steps=4, sharpness_batches=16, seed=0)
    return p, model, x, y, theta0, a


def test_predicted_curves_equal_a_direct_simulation(quadratic_advice):
    """Where the surrogate is exact (per-example losses quadratic, k = P), each β's predicted loss at every
    checkpoint equals the mean over 20 000 simulated SGD chains (torch's momentum and weight decay, batches of βS
    drawn without replacement afresh every step) within z standard errors, 99 % jointly over all the points
    (Šidák), fixed seed."""
    p, model, x, y, theta0, a = quadratic_advice
    xs, ys = p.inputs, p.targets
    gamma, mu, chains = 0.01, 0.5, 20_000
    rng = np.random.default_rng(5)
    points, z_all = 0, []
    for row in a.rows:
        if row.impossible:
            continue
        s, eta = row.batch_size, row.eta
        theta = np.tile(theta0, (chains, 1))
        buf = np.zeros_like(theta)
        seen, losses = 0, []
        for target in a.checkpoints:
            while seen + s <= target:
                idx = np.argsort(rng.random((chains, xs.shape[0])), axis=1)[:, :s]
                xb, yb = xs[idx], ys[idx]
                g = np.einsum("cbi,cb->ci", xb, np.einsum("cbi,ci->cb", xb, theta) - yb) / s + gamma * theta
                buf = mu * buf + g
                theta = theta - eta * buf
                seen += s
            resid = theta @ xs.T - ys
            losses.append(0.5 * np.mean(resid ** 2, axis=1) + 0.5 * gamma * np.sum(theta ** 2, axis=1))
        losses = np.array(losses).T  # chains x checkpoints
        mean, se = losses.mean(axis=0), losses.std(axis=0, ddof=1) / math.sqrt(chains)
        z_all += list((mean - np.array(row.predicted_curve)) / se)
        points += len(a.checkpoints)
    z = norm.ppf(1 - (1 - 0.99 ** (1 / points)) / 2)
    assert np.all(np.abs(z_all) < z), np.round(z_all, 2)


def test_rows_against_closed_forms(quadratic_advice):
    p, model, x, y, theta0, a = quadratic_advice
    n, s0 = 48, 4
    m = a.measurements
    assert m.dataset_size == n and m.num_params == 4 and m.bulk_nodes == ()
    for row in a.rows:
        assert row.eta == pytest.approx(row.beta * 0.1) and row.batch_size == int(row.beta * s0)
        if row.batch_size > n:
            assert row.impossible and math.isinf(row.predicted_deviation)
            continue
        assert not row.impossible
        # Finite data: κ(βS)·β/κ(S) = (N − βS)/(N − S).
        kb = batch_noise_factor(row.batch_size, n, sampling="without")
        assert row.kappa_factor == pytest.approx(kb * row.beta / batch_noise_factor(s0, n, sampling="without"))
        assert row.kappa_factor == pytest.approx((n - row.batch_size) / (n - s0))
        # Stability: the linearised law's own margin at (βη, βS) on all the data.
        lin = linearised_covariance(model, half_mse, x, y, eta=row.eta, batch_size=row.batch_size, momentum=0.5,
                                    weight_decay=0.01)
        assert row.stability_margin == pytest.approx(lin.spectral_radius, rel=1e-6)
        assert row.stable == (lin.spectral_radius < 1)
        # Discreteness along λ_max with momentum μ: the stationary variance ratio SGD/SDE − 1 of one direction.
        lam, eta, mu = m.lambda_max, row.eta, 0.5
        if eta * lam < 2 * (1 + mu):
            # 1-D torch momentum, exact: Var_SGD / Var_SDE = (1 + μ)(2(1 − μ)/η)... written via the Lyapunov sum.
            a_mat = np.array([[1 - eta * lam, -eta * mu], [lam, mu]])
            b = np.array([-eta, 1.0])
            cov = np.zeros((2, 2))
            for _ in range(20_000):
                cov = a_mat @ cov @ a_mat.T + np.outer(b, b)
            sde = (eta / (1 - mu)) / (2 * lam)
            assert row.discrete_correction == pytest.approx(cov[0, 0] / sde - 1, rel=1e-6)
        else:
            assert math.isinf(row.discrete_correction)
    assert a.rows[0].predicted_deviation == 0.0
    first = next((r for r in a.rows if r.predicted_deviation > a.tol), None)
    assert (a.beta_star == first.beta) if first else math.isnan(a.beta_star)


def test_advice_round_trips_through_json(quadratic_advice):
    a = quadratic_advice[-1]
    from sgd_noise_common.files import jsonable

    d = json.loads(json.dumps(jsonable(a.to_dict())))
    assert set(d["beta_star"]) == {"predicted", "mechanism", "measured"} and d["beta_star"]["measured"] is None
    back = Advice.from_dict(d)
    assert back.rows == a.rows or all(
        r1.predicted_curve == pytest.approx(r2.predicted_curve) for r1, r2 in zip(back.rows, a.rows))
    assert back.measurements.lambda_max == a.measurements.lambda_max
    assert math.isinf(back.rows[-1].predicted_deviation) == math.isinf(a.rows[-1].predicted_deviation)


def test_betas_are_checked():
    assert default_betas(50, 2000) == (1, 2, 4, 8, 16, 32) and default_betas(50, 40) == (1,)
    for bad, what in (((1, 0.5), ">= 1"), ((1, 4, 2), "increasing"), ((2, 4), "start at 1"), ((), "at least one"),
                      ((1, math.inf), "finite")):
        with pytest.raises(ValueError, match=what):
            check_betas(bad)


# ---------------------------------------------------------------------------------------------- the command line
def test_the_cli_refuses_bad_input_before_any_work(finished_run, tmp_path, capsys):
    out = tmp_path / "adv"
    for argv, what in (([str(finished_run), "--out", str(out), "--betas", "1,0.5"], "--betas"),
                       ([str(finished_run), "--out", str(out), "--betas", "1,4,2"], "increasing"),
                       ([str(finished_run), "--out", str(out), "--betas", "1,x"], "--betas"),
                       ([str(finished_run), "--out", str(out), "--tol", "0"], "--tol"),
                       ([str(finished_run), "--out", str(out), "--seeds", "0"], "--seeds"),
                       ([str(tmp_path / "nowhere"), "--out", str(out)], "not a run folder")):
        got = run_cli(advise_main, argv, capsys)
        assert got.code == 2 and what in got.err, (argv, got.err)
    assert not out.exists()
    # An unfinished run (no result.json), a diverged one, an unknown model.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "result.json").unlink()
    got = run_cli(advise_main, [str(unfinished), "--out", str(out)], capsys)
    assert got.code == 2 and "has not finished" in got.err
    diverged = tmp_path / "diverged"
    shutil.copytree(finished_run, diverged)
    res = json.loads((diverged / "result.json").read_text())
    res["diverged"] = {"step": 3, "loss": "inf"}
    res.pop("model_sha256", None)
    (diverged / "result.json").write_text(json.dumps(res))
    got = run_cli(advise_main, [str(diverged), "--out", str(out)], capsys)
    assert got.code == 2 and "diverged" in got.err
    unknown = tmp_path / "unknown"
    shutil.copytree(finished_run, unknown)
    for name in ("config.json", "result.json"):
        d = json.loads((unknown / name).read_text())
        (d["config"] if name == "result.json" else d)["model"] = "transformer"
        (unknown / name).write_text(json.dumps(d))
    got = run_cli(advise_main, [str(unknown), "--out", str(out)], capsys)
    assert got.code == 2 and "model" in got.err
    # A folder sgd-noise did not write, holding a file the advisor would write.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.md").write_text("mine")
    got = run_cli(advise_main, [str(finished_run), "--out", str(foreign)], capsys)
    assert got.code == 2 and "--out" in got.err and (foreign / "report.md").read_text() == "mine"


def test_a_smoke_verify_writes_the_advice(finished_run, tmp_path, capsys):
    out = tmp_path / "adv"
    argv = [str(finished_run), "--out", str(out), "--examples", "128", "--top-k", "2", "--epochs", "0.5",
            "--betas", "1,2,4,128", "--verify", "--seeds", "2", "--quiet"]
    got = run_cli(advise_main, argv, capsys)
    assert got.code in (0, 1), got.err
    d = json.loads((out / "advice.json").read_text())
    assert set(d["beta_star"]) == {"predicted", "mechanism", "measured"}
    assert "b_simple" in d and "lambda_max" in d
    rows = d["rows"]
    assert [r["beta"] for r in rows] == [1, 2, 4, 128]
    for r in rows:
        for key in ("beta", "eta", "batch_size", "impossible", "stable", "stability_margin", "kappa_factor",
                    "discrete_correction", "predicted_deviation", "measured_deviation"):
            assert key in r
    big = rows[-1]
    assert big["impossible"] and big["batch_size"] == 128 * 32  # more than the N = 2048 examples
    assert all(r["measured_deviation"] is not None for r in rows[:-1])
    assert (out / "report.md").read_text().startswith("# Advice") and (out / "advise.png").stat().st_size > 0
    assert "beta" in got.out and "predicted beta*" in got.out
    # A rerun with the same settings reuses the prediction (and the verification).
    again = run_cli(advise_main, argv[:-1], capsys)
    assert again.code == got.code
    assert json.loads((out / "advice.json").read_text())["rows"] == rows


def test_batches_that_cannot_share_checkpoints_are_refused():
    from nets.advise.core import check_betas_for

    check_betas_for((1, 2, 4, 8), 50, 2000)  # 400 divides nothing bigger: fine
    with pytest.raises(ValueError, match="not a whole batch"):
        check_betas_for((1, 1.5), 5, 100)
    with pytest.raises(ValueError, match="no common multiple within N"):
        check_betas_for((1, 3, 7), 32, 300)


def test_verify_refuses_what_the_advice_did_not_model(quadratic_advice):
    from nets.advise import verify

    p, model, x, y, theta0, a = quadratic_advice
    with pytest.raises(ValueError, match="dampening"):
        verify(a, model, half_mse, x, y, seeds=1, dampening=0.5)
    with pytest.raises(ValueError, match="advice is for N"):
        verify(a, model, half_mse, x[:40], y[:40], seeds=1)


def test_the_plan_lists_the_work_and_writes_nothing(finished_run, tmp_path, capsys):
    out = tmp_path / "adv"
    got = run_cli(advise_main, [str(finished_run), "--out", str(out), "--examples", "128", "--top-k", "2",
                                "--verify", "--seeds", "2", "--plan"], capsys)
    assert got.code == 0, got.err
    assert "plan: total" in got.err and "beta 2: eta" in got.err and not out.exists()
