"""The checks beyond Eq. (7): each passes on its defaults (small settings here), each reports a failure when its
claim is made false, bad input exits 2 with one line, and the library estimators match exact values."""

import dataclasses
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadratic import Quadratic, batch_noise_factor
from sde import diagnostics, schedules, stationary_covariance, symbolic
from verification import __main__ as verify_all
from verification import breakdown, derive, fdr, invariance, noise_scale, ou_check

FAST = {
    "invariance": ["--chains", "128", "--spectrum", "logspace:0.05:1:20"],
    "breakdown": ["--chains", "32", "--dataset-size", "50,400", "--spectrum", "logspace:0.1:1:10"],
    "fdr": ["--chains", "64", "--steps", "1500", "--spectrum", "logspace:0.1:1:10"],
    "noise_scale": ["--pairs", "2000"],
    "derive": ["--quiet", "--points", "5"],
}
MODULES = {"invariance": invariance, "breakdown": breakdown, "fdr": fdr, "noise_scale": noise_scale,
           "derive": derive}


# ----------------------------------------------------------------------------------------------- library estimators
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), s=st.integers(1, 64), frac=st.floats(0.05, 0.95))
def test_fdr_is_exact_for_stationary_sgd_on_quadratics(seed, s, frac):
    # Plain SGD, minimum at the origin, any C: <θ·∇L> = Tr(HΣ) and <‖g_B‖²> = Tr(HΣH) + Tr(C)/S exactly, and the
    # relation <θ·∇L> = (η/2)<‖g_B‖²> must hold to rounding.
    rng = np.random.default_rng(seed)
    d = 4
    a = rng.standard_normal((d, d))
    q = Quadratic.from_spectrum(rng.uniform(0.1, 1.0, d), rotate=True, rng=rng)
    q = Quadratic(q.hessian, noise_covariance=a @ a.T / d)
    eta = frac * 2.0 / q.lambda_max
    sig = stationary_covariance(q, eta, s)
    h, c = q.hessian, q.noise_covariance
    left = np.trace(h @ sig)
    right = eta / 2.0 * (np.trace(h @ sig @ h) + np.trace(c) / s)
    assert left == pytest.approx(right, rel=1e-9)


def test_fdr_observables_follow_torch_conventions():
    theta = np.array([[1.0, 2.0]])
    grad = np.array([[0.5, -1.0]])
    buf = np.array([[3.0, 4.0]])
    o_l, o_r = diagnostics.fdr_observables(theta, grad, buf, eta=0.1, momentum=0.9, dampening=0.5,
                                           weight_decay=0.1)
    assert o_l[0] == pytest.approx(1.0 * 0.6 + 2.0 * (-0.8))  # θ·(g + γθ)
    assert o_r[0] == pytest.approx(0.5 * 0.1 * 1.9 / 0.5 * 25.0)
    with pytest.raises(ValueError, match="buffer"):
        diagnostics.fdr_observables(theta, grad, eta=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        diagnostics.FDRMonitor(0.1, momentum=1.0)


def test_fdr_monitor_batch_means_and_stationarity_flag():
    mon = diagnostics.FDRMonitor(0.1)
    for k in range(100):
        mon.record(1.0 + 0.01 * (-1) ** k, 1.0)
    s = mon.summary()
    assert s.stderr_method == "batch-means" and s.is_stationary() and s.ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="chain"):
        mon.record([1.0, 2.0], [1.0, 2.0])


@pytest.mark.parametrize("n", [None, 100])
def test_noise_scale_recovers_exact_expectations(n):
    # Feed E‖G_B‖² = |G|² + f(B) Tr(Σ) exactly (plus a symmetric jitter that averages out): the estimators are
    # linear in the inputs, so they must return |G|² and Tr(Σ) to rounding.
    g2, tr, b_s, b_b = 0.7, 12.0, 4, 64
    jitter = np.array([-1e-3, 1e-3] * 50)
    small = g2 + batch_noise_factor(b_s, n) * tr + jitter
    big = g2 + batch_noise_factor(b_b, n) * tr + jitter
    est = diagnostics.noise_scale(small, big, b_s, b_b, dataset_size=n)
    assert est.grad_sq == pytest.approx(g2, rel=1e-12) and est.trace_sigma == pytest.approx(tr, rel=1e-12)
    assert est.b_simple == pytest.approx(tr / g2, rel=1e-12)
    assert (n is None) == (batch_noise_factor(b_b, n) == 1 / b_b)


def test_noise_scale_bad_input():
    with pytest.raises(ValueError, match="b_small < b_big"):
        diagnostics.noise_scale([1, 2], [1, 2], 8, 8)
    with pytest.raises(ValueError, match="dataset_size"):
        diagnostics.noise_scale([1, 2], [1, 2], 8, 16, dataset_size=10)
    with pytest.raises(ValueError, match="same number"):
        diagnostics.noise_scale([1, 2, 3], [1, 2], 8, 16)
    assert diagnostics.smith_le_noise_scale(0.1, 10, 1000, momentum=0.9) == pytest.approx(0.1 * 99 / 0.1)


def test_by_examples_matches_ratio_per_example():
    wave = lambda e: float(schedules.triangular_wave(e, 1000, 0.25))  # noqa: E731
    lr = schedules.by_examples(wave, 0.2, 10, 5000, target="eta")
    bs = schedules.by_examples(wave, 0.2, 10, 5000, target="batch_size")
    # At matching examples seen, η/S agrees up to rounding S to an integer.
    ex = bs.examples[:-1]
    ratio_bs = bs.etas / bs.batch_sizes
    ratio_lr = np.interp(ex, lr.examples[:-1], lr.etas / lr.batch_sizes)
    assert np.max(np.abs(ratio_bs / ratio_lr - 1)) < 0.12  # S in [10, 40]: rounding error below 1/(2·10)+slack
    assert bs.steps < lr.steps and bs.examples[-1] >= 5000
    with pytest.raises(ValueError, match="factor"):
        schedules.by_examples(lambda e: 2.0, 0.1, 10, 100)
    with pytest.raises(ValueError, match="steps"):
        lr.values(0.1, 10, lr.steps + 1)


def test_curve_distance_and_break_point():
    rng = np.random.default_rng(0)
    b = np.exp(rng.standard_normal((4000, 30)) * 0.01) * np.linspace(1, 2, 30)
    a = 2.0 * b[::-1][:2000]
    # Noise of 1 % per chain, debiased: the distance of curves differing by a factor 2 is ln 2.
    assert invariance.curve_distance(a, b) == pytest.approx(math.log(2.0), abs=1e-3)
    assert invariance.curve_distance(b[:2000], b[2000:]) < 1e-3
    assert breakdown.break_point([1, 2, 4, 8], [1.0, 1.1, 1.3, 2.0], 0.2) == pytest.approx(2 * 2**0.5)
    assert breakdown.break_point([1, 2], [1.0, 1.05], 0.2) == math.inf


# ----------------------------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("name", list(MODULES))
def test_check_passes_and_writes_json(name, tmp_path, capsys):
    path = tmp_path / f"{name}.json"
    rc = MODULES[name].main(FAST[name] + ["--json", str(path), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(path.read_text())
    assert result["ok"] and result["claims"] and all(c["ok"] for c in result["claims"])
    # A must-fail case in each check (breakdown: where the invariance must break is itself its claim).
    assert any(not c["expected"] for c in result["claims"]) or name in ("derive", "breakdown")
    for fig in result["figures"]:
        assert (tmp_path / fig.split("/")[-1]).stat().st_size > 10_000


def test_invariance_fails_when_tolerance_too_tight_or_too_loose(capsys):
    # Too tight: equal-ratio curves (discretisation ~1 %) no longer count as equal. Too loose: the 2x-ratio control
    # is no longer told apart, so the check is not sensitive and must say so.
    assert invariance.main(FAST["invariance"] + ["--tolerance", "0.001"]) == 1
    assert "[FAIL] equal-ratio" in capsys.readouterr().out
    assert invariance.main(FAST["invariance"] + ["--tolerance", "5"]) == 1
    assert "[FAIL] different-ratio-control" in capsys.readouterr().out


def test_breakdown_fails_when_theory_predicts_no_break(monkeypatch, capsys):
    # A theory that says the loss stays at E_inv for every beta: the measurements must contradict it, and the
    # claim that the invariance breaks where predicted has nothing to stand on.
    real = breakdown.factors

    def invariant(*a, **kw):
        f = real(*a, **kw)
        return dict(f, total=1.0)

    monkeypatch.setattr(breakdown, "factors", invariant)
    assert breakdown.main(FAST["breakdown"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] measured-matches-exact" in out and "[FAIL] breaks-where-predicted" in out


def test_fdr_fails_with_wrong_momentum_factor(monkeypatch, capsys):
    # Drop the (1 + μ) factor of the momentum form: the momentum settings must fail.
    monkeypatch.setattr(diagnostics, "fdr_right_factor", lambda eta, momentum=0.0, dampening=0.0:
                        0.5 * eta / (1.0 - dampening))
    assert fdr.main(FAST["fdr"]) == 1
    assert "[FAIL] fdr-stationary" in capsys.readouterr().out


def test_noise_scale_fails_without_finite_population_factor(monkeypatch, capsys):
    real = noise_scale.noise_scale
    monkeypatch.setattr(noise_scale, "noise_scale", lambda *a, dataset_size=None: real(*a, dataset_size=None))
    assert noise_scale.main(FAST["noise_scale"]) == 1
    assert "[FAIL] unbiased-without-replacement" in capsys.readouterr().out


def test_derive_fails_on_a_wrong_derivation(monkeypatch, capsys):
    wrong = symbolic.Derivation("wrong", result=symbolic.eta * symbolic.c / (symbolic.S * symbolic.lam * 2))
    monkeypatch.setattr(symbolic, "sgd_stationary_variance", lambda weight_decay=False: wrong)
    assert derive.main(FAST["derive"]) == 1
    assert "[FAIL] sgd-variance" in capsys.readouterr().out


@pytest.mark.parametrize("name, argv, message", [
    ("invariance", ["--ratio", "-1"], "--ratio"),
    ("invariance", ["--batch-size", "10"], "at least two"),
    ("invariance", ["--ratio", "0.1", "--batch-size", "10,40"], "diverges"),
    ("breakdown", ["--dataset-size", "5"], "--dataset-size"),
    ("breakdown", ["--tolerance", "0"], "--tolerance"),
    ("fdr", ["--eta", "5"], "--eta must be <"),
    ("fdr", ["--momentum", "1"], "--momentum"),
    ("noise_scale", ["--b-small", "64", "--b-big", "8"], "--b-small"),
    ("noise_scale", ["--b-big", "500"], "--b-big"),
    ("derive", ["--points", "0"], "--points"),
    ("fdr", ["--confidence", "1.5"], "--confidence"),
])
def test_bad_input_exits_2_with_one_line(name, argv, message, capsys):
    assert MODULES[name].main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_verification_runs_all_and_writes_report(tmp_path, capsys):
    rc = verify_all.main(["--out", str(tmp_path), "--only", "derive,noise_scale", "--quiet"])
    assert rc == 0
    report = (tmp_path / "report.md").read_text()
    assert "`noise_scale`" in report and "PASS" in report and "figures/noise_scale.png" in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and [c["check"] for c in summary["checks"]] == ["derive", "noise_scale"]
    assert (tmp_path / "derive.tex").exists() and (tmp_path / "figures" / "noise_scale.png").exists()
    assert verify_all.main(["--only", "nonsense"]) == 2


def test_verification_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    real = noise_scale.noise_scale
    monkeypatch.setattr(noise_scale, "noise_scale", lambda *a, dataset_size=None: real(*a, dataset_size=None))
    assert verify_all.main(["--out", str(tmp_path), "--only", "noise_scale", "--quiet"]) == 1
    assert "FAIL" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------------------------- checks from Python
# The FAST settings above, as settings objects: each check runs without argparse and draws no figure.
SETTINGS = {
    "invariance": invariance.InvarianceSettings(chains=128, spectrum="logspace:0.05:1:20"),
    "breakdown": breakdown.BreakdownSettings(chains=32, dataset_sizes=(50, 400), spectrum="logspace:0.1:1:10"),
    "fdr": fdr.FDRSettings(chains=64, steps=1500, spectrum="logspace:0.1:1:10"),
    "noise_scale": noise_scale.NoiseScaleSettings(pairs=2000),
    "derive": derive.DeriveSettings(points=5),
}
# Each check's claims and whether each is expected to hold.
CLAIMS = {
    "invariance": {"equal-ratio": True, "different-ratio-control": False, "equal-ratio-large-eta": False,
                   "cyclic-lr-vs-cyclic-batch": True, "linear-scaling-rule": True,
                   "simulation-matches-exact-curve": True},
    "breakdown": {"measured-matches-exact": True, "invariant-before-break": True, "breaks-where-predicted": True,
                  "two-mechanisms": True},
    "fdr": {"fdr-stationary": True, "loss-from-gradient-norm": True, "detects-non-stationarity": False},
    "noise_scale": {"unbiased-gaussian": True, "unbiased-with-replacement": True,
                    "unbiased-without-replacement": True, "misapplied-1/B-formulas": False, "naive-big-batch": False},
    "derive": {"ou-variance": True, "eq7": True, "sgd-variance": True, "momentum-variance": True,
               "first-correction": True, "finite-data": True},
}


@pytest.mark.parametrize("name", list(MODULES))
def test_check_from_python(name):
    stream = io.StringIO()
    result = MODULES[name].check(SETTINGS[name], out=stream)
    assert {c.name: c.expected for c in result.claims} == CLAIMS[name]
    assert result.ok and all(c.ok for c in result.claims), [c.line() for c in result.claims]
    assert result.rows and stream.getvalue() and not result.figures
    assert result.config == SETTINGS[name]


@pytest.mark.parametrize("name", list(MODULES))
def test_settings_defaults_are_the_command_line_defaults(name):
    module = MODULES[name]
    settings = module.settings_from_args(module.build_parser().parse_args([]))
    assert settings == type(SETTINGS[name])()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1


@pytest.mark.parametrize("name", list(MODULES) + ["ou_check", "__main__"])
def test_every_setting_is_declared_once_in_its_field(name):
    # The parser is derived from the settings dataclass: every field has its option, with one-line help, and the
    # settings come back from the parsed command line unchanged (defaults and a non-default value alike).
    from sgd_noise_common.cli import option_name, options_dict

    module = {"ou_check": ou_check, "__main__": verify_all}.get(name) or MODULES[name]
    cls = {"ou_check": ou_check.OUCheckSettings, "__main__": verify_all.RunAllSettings}.get(name) \
        or type(SETTINGS[name])
    parser = module.build_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(cls):
        action = actions[option_name(cls, f.name)]
        assert f.metadata["help"] and "\n" not in f.metadata["help"] and action.help
    if name != "__main__":
        assert module.settings_from_args(parser.parse_args(["--seed", "7"])) == cls(seed=7)
        assert set(options_dict(cls())) <= {a.dest for a in parser._actions}


@pytest.mark.parametrize("name", list(MODULES) + ["ou_check"])
def test_the_settings_refuse_what_the_command_line_refuses(name):
    # The range in a field's metadata (the command line's check) and the dataclass's own validation (from Python)
    # agree at each bound: the value just outside is refused by both, naming the option.
    from sgd_noise_common.cli import option_name, parse_range

    cls = ou_check.OUCheckSettings if name == "ou_check" else type(SETTINGS[name])
    parser = {"ou_check": ou_check}.get(name, MODULES.get(name)).build_parser()
    for f in dataclasses.fields(cls):
        if "range" not in f.metadata or (cls, f.name) == (invariance.InvarianceSettings, "examples"):
            continue  # examples=0 is "automatic" from Python, as None
        low, high, low_open, high_open = parse_range(f.metadata["range"])
        integer = "int" in str(f.type)
        outside = [x for x in ((low if low_open else low - (1 if integer else 1e-9)) if low is not None else None,
                               (high if high_open else high + 1e-9) if high is not None else None) if x is not None]
        option = option_name(cls, f.name)
        for x in outside:
            text = str(int(x)) if integer else repr(x)
            with pytest.raises(SystemExit):
                parser.parse_args([option, text])
            value = (x,) if "tuple" in str(f.type) else x
            with pytest.raises(ValueError, match=option):
                cls(**{f.name: value})


@pytest.mark.parametrize("make", [lambda: derive.check(derive.DeriveSettings(points=2)),
                                  lambda: noise_scale.check(noise_scale.NoiseScaleSettings(pairs=20))])
def test_check_returns_and_prints_nothing(make, capsys):
    result = make()
    assert result.rows and result.settings
    assert capsys.readouterr().out == ""


def test_the_command_line_prints_the_table_and_the_derivation(capsys):
    assert derive.main(["--points", "2"]) == 0
    out = capsys.readouterr().out
    assert out.index("Eq. (7)") < out.index("worst relative difference") and "PASS" in out
    assert derive.main(["--points", "2", "--quiet"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("ou-variance")


def test_fdr_figure_continues_the_checks_stream(tmp_path):
    # The figure's relaxing run starts where the check's stream ended, so drawing it twice gives the same file.
    result = fdr.check(SETTINGS["fdr"], out=io.StringIO())
    fdr.plot(result, tmp_path / "a.png")
    fdr.plot(result, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("make, message", [
    (lambda: invariance.InvarianceSettings(ratio=-1), "--ratio must be > 0"),
    (lambda: invariance.InvarianceSettings(batch_sizes=(10,)), "--batch-size needs at least two"),
    (lambda: invariance.InvarianceSettings(cycle_low=0.0), "--cycle-low"),
    (lambda: invariance.InvarianceSettings(chains=1), "--chains"),
    (lambda: invariance.InvarianceSettings(examples=-5), "--examples"),
    (lambda: breakdown.BreakdownSettings(tolerance=0), "--tolerance"),
    (lambda: breakdown.BreakdownSettings(dataset_sizes=(0,)), "--dataset-size"),
    (lambda: breakdown.BreakdownSettings(eta=0), "--eta"),
    (lambda: fdr.FDRSettings(momentum=1), "--momentum"),
    (lambda: fdr.FDRSettings(dampening=-0.5), "--dampening"),
    (lambda: fdr.FDRSettings(steps=1), "--steps"),
    (lambda: fdr.FDRSettings(confidence=1.5), "--confidence"),
    (lambda: noise_scale.NoiseScaleSettings(b_small=64, b_big=8), "--b-small must be < --b-big"),
    (lambda: noise_scale.NoiseScaleSettings(b_big=500), "--b-big"),
    (lambda: noise_scale.NoiseScaleSettings(pairs=1), "--pairs"),
    (lambda: derive.DeriveSettings(points=0), "--points must be >= 1"),
    # Settings that need the problem are rejected by check, before any simulation.
    (lambda: invariance.check(invariance.InvarianceSettings(ratio=0.1, batch_sizes=(10, 40))), "diverges"),
    (lambda: breakdown.check(breakdown.BreakdownSettings(dataset_sizes=(5,))), "--dataset-size"),
    (lambda: fdr.check(fdr.FDRSettings(eta=5.0)), "--eta must be <"),
    (lambda: noise_scale.check(noise_scale.NoiseScaleSettings(dataset_size=10, b_small=2, b_big=5)),
     "--dataset-size"),
])
def test_bad_settings_raise_naming_the_option(make, message):
    with pytest.raises(ValueError, match=message):
        make()
