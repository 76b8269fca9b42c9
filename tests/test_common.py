"""The shared pieces, each tested once at its home: atomic writes, the environment record, and the one-home
formulas (κ, the PSD square root, the momentum block, the multiplicative noise) through the code that uses them."""

import importlib.util
import json
import math
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from quadratic import LeastSquares, Quadratic, batch_noise_factor, finite_data_factor, psd_sqrt
from sde import expected_loss
from sde.diagnostics import noise_scale
from sde.theory import momentum_blocks
from sgd_noise_common.environment import environment
from sgd_noise_common.files import atomic_write, write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_files_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"x": 1})
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # a normal new file, not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "old")

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_environment_records_versions_and_torch_only_when_imported():
    env = environment()
    assert env["packages"]["numpy"] == np.__version__ and "scipy" in env["packages"]
    code = ("import json, sys; from sgd_noise_common.environment import environment; e = environment(); "
            "print(json.dumps(['torch' in sys.modules, 'torch' in e]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, False]  # the theory's checks stay torch-free


def test_kappa_through_the_theory_and_the_noise_scale_estimator():
    q = Quadratic.from_spectrum([1.0, 0.3, 0.1])
    n, s = 50, 10
    # The SDE's covariance is linear in κ: E(l; N) / E(l; ∞) = κ(S, N) / κ(S, ∞) = κ S.
    ratio = expected_loss(q, 0.1, s, process="sde", dataset_size=n) / expected_loss(q, 0.1, s, process="sde")
    assert ratio == pytest.approx(batch_noise_factor(s, n) * s, rel=1e-12)
    assert batch_noise_factor(n, n) == 0.0
    # noise_scale inverts E|G_B|^2 = |G|^2 + κ(B) Tr Σ exactly when fed exact values.
    g2, tr, b_s, b_b = 2.0, 30.0, 4, 20
    small = [g2 + batch_noise_factor(b_s, n) * tr] * 2
    big = [g2 + batch_noise_factor(b_b, n) * tr] * 2
    est = noise_scale(small, big, b_s, b_b, dataset_size=n)
    assert (est.grad_sq, est.trace_sigma) == (pytest.approx(g2, rel=1e-12), pytest.approx(tr, rel=1e-12))
    # The finite-data factor S·κ is the one home's, in the breakdown check's table and in its curve over S.
    from verification.breakdown import factors

    lsq = LeastSquares.sample(n, [1.0, 0.3, 0.1], rng=np.random.default_rng(0))
    assert factors(lsq, 0.1, s, 1.0)["data_factor"] == finite_data_factor(s, n)
    assert finite_data_factor(s, n) == pytest.approx(batch_noise_factor(s, n) * s, rel=1e-15)
    grid = np.array([1.0, 2.5, 10.0, 50.0])
    assert np.allclose(finite_data_factor(grid, n) / grid, [batch_noise_factor(1, n), (n - 2.5) / (2.5 * (n - 1)),
                                                           batch_noise_factor(10, n), 0.0], rtol=1e-15)
    with pytest.raises(ValueError, match="batch_size"):
        finite_data_factor(51, n)


def test_psd_sqrt_of_a_singular_covariance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 2))
    m = a @ a.T  # rank 2
    f = psd_sqrt(m)
    assert np.allclose(f, f.T, atol=0) and np.allclose(f @ f, m, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(f) > -1e-12)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_momentum_block_is_stable_exactly_below_the_bound(mu):
    eta = 0.1
    bound = 2.0 * (1.0 + mu) / eta
    a = np.array([0.5, 0.99, 1.01, 1.5]) * bound
    radius = np.max(np.abs(np.linalg.eigvals(momentum_blocks(eta, mu, a))), axis=1)
    assert list(radius < 1.0) == [True, True, False, False]


def test_multiplicative_noise_in_the_eigenbasis_is_the_rotated_operator():
    rng = np.random.default_rng(1)
    p = LeastSquares.sample(40, [1.0, 0.5, 0.2], noise_std=0.3, rotate=True, rng=rng)
    b = rng.standard_normal((3, 3))
    pt = b @ b.T
    v = p.eigenvectors
    direct = v.T @ p.multiplicative_noise(v @ pt @ v.T) @ v
    assert np.allclose(p.multiplicative_noise(pt, in_eigenbasis=True), direct, rtol=1e-10, atol=1e-12)


def test_critical_values_have_one_home():
    """Bonferroni's and Šidák's thresholds come from ``sgd_noise_common.stats``, whoever judges a z-score by them:
    the checks (``verification.cli`` re-exports the same function) and the eq7 experiment's per-direction claim."""
    from scipy.stats import norm

    from sgd_noise_common import stats
    from verification import cli

    assert cli.bonferroni_z is stats.bonferroni_z
    if importlib.util.find_spec("torch") is not None:
        from nets.experiments import eq7

        assert eq7.sidak_z is stats.sidak_z
    for c, m in ((0.95, 1), (0.99, 7), (0.999, 96)):
        assert stats.bonferroni_z(c, m) == pytest.approx(norm.isf((1 - c) / m / 2), rel=1e-12)
        assert stats.sidak_z(c, m) == pytest.approx(norm.isf((1 - c ** (1 / m)) / 2), rel=1e-12)
        # Šidák is exact for independent tests: the family passes with probability c.
        assert (1 - 2 * norm.sf(stats.sidak_z(c, m))) ** m == pytest.approx(c, rel=1e-9)
    for bad in ((1.0, 3), (0.95, 0)):
        with pytest.raises(ValueError):
            stats.sidak_z(*bad)


def test_the_relaxation_time_has_one_home():
    """``sde.theory.relaxation_steps`` (from the momentum block's spectral radius) is what the simulator's burn-in,
    the fdr check's burn-in and the network basin stage count in."""
    pytest.importorskip("torch")
    from nets.stationary import _relaxation  # the stage's own helper, tested at its user
    from sde import simulate
    from sde.theory import relaxation_steps, spectral_radius
    from verification.fdr import _burn_in

    for mu in (0.0, 0.5, 0.9):
        for a in (0.05, 0.3, 1.0):
            rho = spectral_radius(0.1, a, mu)
            assert relaxation_steps(0.1, a, mu) == pytest.approx(-1 / (2 * np.log(rho)), rel=1e-12)
            assert _relaxation(0.1, mu)(a) == relaxation_steps(0.1, a, mu)
            assert _burn_in(0.1, mu, a) == int(np.ceil(20 * relaxation_steps(0.1, a, mu)))
    assert spectral_radius(0.1, 1.0, 0.9) == pytest.approx(np.sqrt(0.9), rel=1e-6)  # underdamped: |eig| = √μ
    q = Quadratic.from_spectrum([1.0, 0.2])
    r = simulate(q, 0.1, 10, steps=2000, chains=4, rng=np.random.default_rng(0))
    assert r.relaxation_steps == pytest.approx(relaxation_steps(0.1, 0.2), rel=1e-12)


def test_batch_means_have_one_home():
    """``sgd_noise_common.stats.block_means``/``batch_means``: what the FDR monitor's single-chain error, the basin
    stage's loss error and its per-direction variances are built from. A split at other edges (numpy's
    ``array_split``) differs on a length the blocks do not divide, and is caught."""
    pytest.importorskip("torch")
    from nets import stationary
    from nets.basin import directional_variances
    from sde.diagnostics import FDRMonitor
    from sgd_noise_common.stats import batch_means, block_means

    rng = np.random.default_rng(3)
    x = rng.standard_normal((103, 2)) + np.array([0.0, 1.0])
    assert stationary.batch_means is batch_means
    m, se = batch_means(x[:, 0], 7)
    bm = block_means(x[:, 0], 7)
    assert se == pytest.approx(bm.std(ddof=1) / np.sqrt(7), rel=1e-12)
    split = np.array([c.mean() for c in np.array_split(x[:, 0], 7)])
    assert not np.allclose(split, bm)
    dv = directional_variances(x, batches=7)
    assert dv["mean_stderr"] == pytest.approx(block_means(x, 7).std(axis=0, ddof=1) / np.sqrt(7), rel=1e-12)
    mon = FDRMonitor(eta=0.1, n_batches=7)
    for left, right in x:
        mon.record(np.array([left]), np.array([right]))
    u, v = block_means(x[:, 0], 7), block_means(x[:, 1], 7)
    assert mon.summary().diff_stderr == pytest.approx((u - v).std(ddof=1) / np.sqrt(7), rel=1e-12)


def test_random_streams_are_spawned_not_added():
    """``spawn_seeds``: children of ``SeedSequence(seed)``, stable under appended names, distinct across parents
    (seed + k would give run 0's second stream to run 1's first), and the only way the library splits a seed."""
    from sgd_noise_common.seeds import spawn_seeds

    a = spawn_seeds(0, ("x", "y"))
    assert spawn_seeds(0, ("x", "y", "z"))["y"] == a["y"]
    assert len({*a.values(), *spawn_seeds(1, ("x", "y")).values()}) == 4
    assert spawn_seeds((3, 1), ("x",)) != spawn_seeds((1, 3), ("x",))
    assert all(0 <= v < 2**63 for v in a.values())
    for bad in (-1, 1.5, True, (0, -2)):
        with pytest.raises(ValueError, match="seed"):
            spawn_seeds(bad, ("x",))
    with pytest.raises(ValueError, match="distinct"):
        spawn_seeds(0, ("x", "x"))
    # No library module splits a seed by adding a constant to it.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [f"{p.relative_to(root)}:{i}" for pkg in ("sde", "quadratic", "nets", "verification")
                 for p in (root / pkg).rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\bseed\s*\+\s*\d", line)]
    assert not offenders, offenders


# ----------------------------------------------------------------- settings declared once: sgd_noise_common.cli
def _settings_class():
    import dataclasses

    from sgd_noise_common.cli import setting

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Demo:
        eta: float = setting(0.1, help="learning rate", range="> 0")
        momentum: float = setting(0.0, help="momentum", range="[0, 1)")
        sizes: tuple[int, ...] = setting((5, 10), help="batch sizes", range=">= 1", option="--batch-size")
        etas: tuple[float, ...] = setting((0.5,), help="learning rates", range="(0, 2)")
        names: tuple[str, ...] | None = setting(None, help="some of a, b", choices=("a", "b"))
        noise: str = setting("gaussian", help="the noise", choices=("gaussian", "minibatch"))
        burn_in: int | None = setting(None, help="burn-in (default: automatic)", range=">= 0")
        width: float = setting(1.0, help="plain float: the dataclass validates")
        rotate: bool = setting(False, help="rotate")
        batch_norm: bool = setting(True, help="batch norm")
        hidden: int = setting(3, help="not on the command line", cli=False)

    return Demo


def test_settings_helper_builds_the_parser_and_the_settings_back():
    from sgd_noise_common.cli import Parser, add_settings, from_args, option_name, options_dict

    demo = _settings_class()
    p = Parser(prog="demo")
    add_settings(p, demo)
    assert from_args(demo, p.parse_args([])) == demo()
    args = p.parse_args(["--eta", "0.2", "--batch-size", "1,2,3", "--etas", "0.1,1.5", "--names", "b,a",
                         "--noise", "minibatch", "--burn-in", "7", "--rotate", "--no-batch-norm", "--width", "nan"])
    got = from_args(demo, args, hidden=4)
    assert got == demo(eta=0.2, sizes=(1, 2, 3), etas=(0.1, 1.5), names=("b", "a"), noise="minibatch", burn_in=7,
                       rotate=True, batch_norm=False, width=got.width, hidden=4)
    assert math.isnan(got.width)  # no range: argparse's float, the dataclass's own validation names it
    assert "--hidden" not in p.format_help() and option_name(demo, "sizes") == "--batch-size"
    assert options_dict(demo()) == {"eta": 0.1, "momentum": 0.0, "batch_size": [5, 10], "etas": [0.5], "names": None,
                                    "noise": "gaussian", "burn_in": None, "width": 1.0, "rotate": False,
                                    "batch_norm": True, "hidden": 3}
    text = " ".join(p.format_help().split())
    assert "learning rate (default 0.1)" in text and "batch sizes (default 5,10)" in text
    assert "burn-in (default: automatic)" in text and "--rotate, --no-rotate" in text


@pytest.mark.parametrize("argv, message", [
    (["--eta", "0"], "--eta must be > 0, got '0'"),
    (["--eta", "inf"], "--eta must be finite"),
    (["--momentum", "1"], "--momentum must lie in [0, 1), got '1'"),
    (["--batch-size", "0,1"], "--batch-size must be a comma-separated list of integers >= 1"),
    (["--batch-size", "1,,2"], "--batch-size must be a comma-separated list without empty items"),
    (["--etas", "2"], "--etas must lie in (0, 2)"),
    (["--names", "a,c"], "--names must name some of a, b; unknown: c"),
    (["--noise", "uniform"], "--noise: invalid choice"),
    (["--burn-in", "-1"], "--burn-in must be an integer >= 0"),
])
def test_settings_helper_refuses_bad_values_naming_the_option(argv, message, capsys):
    from sgd_noise_common.cli import Parser, add_settings

    p = Parser(prog="demo")
    add_settings(p, _settings_class())
    with pytest.raises(SystemExit) as exc:
        p.parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and "\n" not in err, err


def test_settings_helper_checks_field_types_in_the_words_of_json():
    import dataclasses

    from sgd_noise_common.cli import check_field_types, parse_range, required_fields, setting

    @dataclasses.dataclass
    class Config:
        eta: float = setting(0.1, help="learning rate", required=True)
        size: int | None = setting(None, help="size")
        flag: bool = setting(False, help="flag")
        marks: tuple[float, ...] | None = setting(None, help="epochs")

    check_field_types(Config(eta=1, size=3, marks=(1.0, 2)))
    for kwargs, message in ((dict(eta="0.1"), "eta must be a finite number, got '0.1'"),
                            (dict(eta=math.nan), "eta must be a finite number"),
                            (dict(size=2.5), "size must be an integer or null, got 2.5"),
                            (dict(flag="yes"), "flag must be true or false, got 'yes'"),
                            (dict(marks=("1",)), "marks must be a list of finite numbers or null")):
        with pytest.raises(ValueError, match=re.escape(message)):
            check_field_types(Config(**kwargs))
    assert required_fields(Config) == ("eta",)
    assert parse_range(">= 2") == (2.0, None, False, False) and parse_range("(0, 1]") == (0.0, 1.0, True, False)
    with pytest.raises(ValueError, match="range"):
        parse_range("0..1")
