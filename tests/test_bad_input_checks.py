"""Bad input to the checks of the theory (``verification``): nothing lost, nothing silently wrong. Each class of
case a probe found, with at least two members: bad values refused by the parser naming the option, requests that
cannot fit refused from an estimate before any work, honest outcomes (a write that fails is bad output; no noise
gives no z-score; a report folder stays consistent), and messages that point to options that exist. The commands
run in-process (``main(argv)``); a quick refusal shows that no work was started."""

import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
from cases import CHECKS, run_cli

import sgd_noise_common.files
from verification import __main__ as verify_all
from verification import budget, derive, fdr, invariance, noise_scale, ou_check
from verification.cli import format_z, z_test

QUICK = 20.0  # seconds: parsing and estimates only (the work would take minutes; margin for a loaded machine)
TINY_OU = ["--spectrum", "logspace:0.1:1:5", "--eta", "0.1", "--batch-size", "10", "--chains", "8", "--steps", "3000"]


def _run(main, argv, capsys):
    return run_cli(main, argv, capsys)


def _refused(main, argv, option, capsys, what=None):
    code, err, secs, _ = _run(main, argv, capsys)
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and option in err and "Traceback" not in err, (argv, err)
    assert what is None or what in err, (argv, err)
    assert secs < QUICK, (argv, secs)
    return err


# ------------------------------------------------------------------- 5. bad values, refused first, option named
BAD_VALUES = [
    ("ou_check", ["--eta", "0.1,,0.2"], "--eta", "empty items"),
    ("ou_check", ["--eta", "0.1,"], "--eta", "empty items"),
    ("ou_check", ["--eta", "nan"], "--eta", "finite"),
    ("ou_check", ["--batch-size", "10,inf"], "--batch-size", None),
    ("ou_check", ["--batch-size", ""], "--batch-size", "empty"),
    ("ou_check", ["--chains", "1"], "--chains", ">= 2"),
    ("ou_check", ["--steps", "0"], "--steps", ">= 1"),
    ("ou_check", ["--steps", "2.5"], "--steps", "integer"),
    ("ou_check", ["--seed", "-1"], "--seed", ">= 0"),
    ("ou_check", ["--momentum", "-0.1"], "--momentum", None),
    ("ou_check", ["--weight-decay", "inf"], "--weight-decay", "finite"),
    ("ou_check", ["--dataset-size", "0"], "--dataset-size", None),
    ("ou_check", ["--confidence", "nan"], "--confidence", None),
    ("ou_check", ["--burn-in", "-5"], "--burn-in", None),
    ("ou_check", ["--max-minutes", "0"], "--max-minutes", None),
    ("ou_check", ["--spectrum", "logspace:0.01:1:nan"], "--spectrum", None),
    ("invariance", ["--ratio", "nan"], "--ratio", None),
    ("invariance", ["--batch-size", "5,,10"], "--batch-size", "empty items"),
    ("invariance", ["--examples", "0"], "--examples", None),
    ("invariance", ["--cycle-low", "0"], "--cycle-low", None),
    ("invariance", ["--cycles", "-inf"], "--cycles", None),
    ("invariance", ["--tolerance", "abc"], "--tolerance", "number"),
    ("invariance", ["--spectrum", "powerlaw:1:0"], "--spectrum", None),
    ("breakdown", ["--dataset-size", "50,,200"], "--dataset-size", "empty items"),
    ("breakdown", ["--dataset-size", "1"], "--dataset-size", None),
    ("breakdown", ["--eta", "-0.02"], "--eta", "> 0"),
    ("breakdown", ["--tolerance", "1"], "--tolerance", None),
    ("breakdown", ["--chains", "0"], "--chains", None),
    ("fdr", ["--eta", "inf"], "--eta", "finite"),
    ("fdr", ["--dampening", "1"], "--dampening", None),
    ("fdr", ["--steps", "1"], "--steps", None),
    ("fdr", ["--batch-size", "-3"], "--batch-size", None),
    ("noise_scale", ["--pairs", "1"], "--pairs", None),
    ("noise_scale", ["--b-small", "0"], "--b-small", None),
    ("noise_scale", ["--dataset-size", "1e400"], "--dataset-size", None),
    ("derive", ["--points", "nan"], "--points", None),
    ("derive", ["--seed", ""], "--seed", None),
    ("derive", ["--confidence", "0"], "--confidence", None),
]


@pytest.mark.parametrize("name, argv, option, what", BAD_VALUES, ids=[f"{n}{a}" for n, a, _, _ in BAD_VALUES])
def test_every_check_refuses_bad_values_naming_the_option(name, argv, option, what, capsys):
    _refused(CHECKS[name].main, argv, option, capsys, what)


@pytest.mark.parametrize("argv, option", [(["--only", ""], "--only"), (["--only", "fdr,,derive"], "--only"),
                                          (["--only", "fdr,nonsense"], "--only"), (["--seed", "nan"], "--seed"),
                                          (["--max-minutes", "-1"], "--max-minutes")])
def test_the_report_refuses_bad_values_before_creating_its_folder(argv, option, tmp_path, capsys):
    _refused(verify_all.main, argv + ["--out", str(tmp_path / "r")], option, capsys)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------- 6. requests that cannot fit, refused from an estimate
CANNOT_FIT = [
    ("ou_check", ["--chains", "1000000000"], "--chains", "needs about"),
    ("ou_check", ["--steps", "100000000000"], "--steps", "--max-minutes"),
    ("ou_check", ["--spectrum", "logspace:0.01:1:10000000"], "--spectrum", "needs about"),
    ("invariance", ["--examples", "10000000000"], "--examples", "needs about"),
    ("invariance", ["--ratio", "1e-9"], "--ratio", "needs about"),
    ("breakdown", ["--dataset-size", "50,1000000000"], "--dataset-size", None),
    ("fdr", ["--steps", "1000000000"], "--steps", "needs about"),
    ("fdr", ["--eta", "1e-9"], "--eta", "--max-minutes"),
    ("noise_scale", ["--pairs", "1000000000"], "--pairs", "needs about"),
    ("derive", ["--points", "5000000"], "--points", "--max-minutes"),
]


@pytest.mark.parametrize("name, argv, option, what", CANNOT_FIT, ids=[f"{n}{a}" for n, a, _, _ in CANNOT_FIT])
def test_every_check_refuses_what_cannot_fit_before_the_work(name, argv, option, what, tmp_path, capsys):
    out = tmp_path / "figs"
    err = _refused(CHECKS[name].main, argv + ["--out", str(out)], option, capsys, what)
    assert "GiB" in err or "TiB" in err or "PiB" in err or "h " in err or "days" in err or "min" in err
    assert not out.exists()


def test_max_minutes_is_the_users_to_raise(capsys):
    code, err, _, _ = _run(derive.main, ["--points", "5000000", "--max-minutes", "0.001"], capsys)
    assert code == 2 and "--max-minutes 0.001" in err
    cost = derive.estimate(derive.DeriveSettings(points=5000000))
    budget.enforce(cost, max_minutes=1e9, err=io.StringIO())  # allowed when raised: no exception
    long = io.StringIO()
    budget.enforce(cost, max_minutes=1e9, prog="python -m verification.derive", err=long)
    assert "estimated" in long.getvalue() and "h" in long.getvalue()  # a long run says what it will take


def test_memory_is_judged_against_the_machine(capsys):
    cost = budget.Cost()
    cost.memory("--chains=1000", 9 * 2**30)
    with pytest.raises(ValueError, match=r"--chains=1000 needs about 9 GiB .*\(80% of its 10 GiB\)"):
        budget.enforce(cost, memory=10 * 2**30)
    budget.enforce(cost, memory=None)  # unknown machine: not refused on a guess


def test_the_report_refuses_a_run_beyond_max_minutes(tmp_path, capsys):
    err = _refused(verify_all.main, ["--out", str(tmp_path / "r"), "--max-minutes", "0.001"], "--max-minutes",
                   capsys)
    assert "would take about" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- 7. honest outcomes
def _disk_full_after_marker(monkeypatch):
    """Every write of a result (JSON, report, figure, derivation) fails as on a full disk; the folder's own
    bookkeeping (its marker) still works, so that the writes after the work are what fails."""
    real = sgd_noise_common.files.atomic_write

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    def full(path, write):
        return real(path, write if Path(path).suffix not in (".json", ".md", ".png", ".tex") else no_space)

    monkeypatch.setattr(sgd_noise_common.files, "atomic_write", full)
    monkeypatch.setattr(verify_all, "atomic_write", full)
    monkeypatch.setattr(derive, "atomic_write", full)


def test_a_full_disk_is_bad_output_for_a_check(tmp_path, monkeypatch, capsys):
    _disk_full_after_marker(monkeypatch)
    code, err, _, out = _run(derive.main, ["--quiet", "--points", "2", "--json", str(tmp_path / "d.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--json" in err and "d.json" in err and "Traceback" not in err
    code, err, _, out = _run(noise_scale.main, ["--pairs", "200", "--out", str(tmp_path / "figs")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--out" in err and "noise_scale.png" in err, err
    code, err, _, out = _run(ou_check.main, TINY_OU + ["--plot", str(tmp_path / "ou.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--plot" in err and "ou.png" in err, err


def test_a_full_disk_is_bad_output_for_the_report(tmp_path, monkeypatch, capsys):
    _disk_full_after_marker(monkeypatch)
    code, err, _, out = _run(verify_all.main, ["--out", str(tmp_path / "r"), "--only", "derive", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "derive" in err and str(tmp_path / "r") in err
    assert "FAIL (0/" not in out


@pytest.mark.parametrize("argv", [["--noise", "minibatch", "--dataset-size", "10"],   # S = N: no minibatch noise
                                  ["--dataset-size", "10"]])                          # Gaussian noise times (N-S)/...
def test_no_noise_gives_no_z_score_and_no_failed_claim(argv, capsys):
    code, err, _, out = _run(ou_check.main, ["--spectrum", "logspace:0.1:1:5", "--eta", "0.1", "--batch-size", "10",
                                             "--chains", "8", "--steps", "4000", *argv], capsys)
    assert code == 0, out + err
    rows = [line for line in out.splitlines() if line.strip().startswith("0.1 ")]
    assert len(rows) == 2 and all("—" in r and r.rstrip().endswith("ok") for r in rows), out
    assert "e+" not in "".join(r.split()[9] for r in rows)  # no z like 1e32


def test_z_test_at_round_off_level():
    assert z_test(3e-33, 1.7e-34, 0.0, 1e-3, 3.0) == (None, True)     # round-off around an exact 0
    assert z_test(1e-3, 1e-40, 0.0, 1e-3, 3.0) == (None, False)       # no noise, but not the exact value
    z, ok = z_test(1.02, 0.01, 1.0, 1.0, 3.0)
    assert ok and z == pytest.approx(2.0)
    assert format_z(None) == "      —" and format_z(float("nan")) == "      —"


def test_every_z_test_of_the_checks_uses_the_round_off_rule():
    # noise_scale: squared norms without spread (no noise): its estimates are exact, their errors 0.
    from sde.diagnostics import noise_scale as estimator
    small, big = np.full(50, 3.0), np.full(50, 2.0)
    est = estimator(small, big, 8, 150)
    exact = noise_scale.ExactNoise(est.grad_sq, est.trace_sigma)
    case = noise_scale.estimator_cases(200)[1]
    row = noise_scale._case_row(case, small, big, exact, noise_scale.NoiseScaleSettings(), 3.0, io.StringIO())
    assert row["agrees"] and row["z_grad_sq"] is None and row["z_trace_sigma"] is None
    # invariance: chains that all follow the exact curve to round-off.
    exact_curve = np.array([1.0, 0.5, 0.25])
    run = invariance.Run("r", 0.1, 10, None, np.tile(exact_curve * (1 + 1e-15), (4, 1)), exact_curve, None)
    claim = invariance._simulation_claim({"r": run}, exact_curve, 0.99)
    assert claim.holds and claim.numbers["max_abs_z"] == 0.0
    run = invariance.Run("r", 0.1, 10, None, np.tile(exact_curve * 1.01, (4, 1)), exact_curve, None)
    assert not invariance._simulation_claim({"r": run}, exact_curve, 0.99).holds  # off, without noise: fails


def test_a_partial_rerun_keeps_the_report_consistent(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(verify_all.main, ["--out", str(out), "--only", "derive", "--quiet"], capsys)[0] == 0
    code, err, _, _ = _run(verify_all.main, ["--out", str(out), "--only", "noise_scale", "--quiet"], capsys)
    assert code == 0 and "derive" in err and "not re-run" in err and err.count("\n") == 1
    summary = json.loads((out / "summary.json").read_text())
    listed = {c["check"]: c for c in summary["checks"]}
    assert set(listed) == {"derive", "noise_scale"}
    assert listed["noise_scale"]["rerun"] and not listed["derive"]["rerun"] and listed["derive"]["ran_at"]
    report = (out / "report.md").read_text()
    assert "not re-run now" in report and "`derive`" in report and "earlier run, not re-run" in report
    assert json.loads((out / "noise_scale.json").read_text())["ran_at"]


def test_a_corrupt_earlier_result_is_said_not_hidden(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(verify_all.main, ["--out", str(out), "--only", "derive", "--quiet"], capsys)[0] == 0
    (out / "derive.json").write_text("{ truncated")
    code, err, _, _ = _run(verify_all.main, ["--out", str(out), "--only", "noise_scale", "--quiet"], capsys)
    assert code == 0 and "derive (unreadable)" in err
    assert "`derive.json`" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------------------- 9. smaller messages
def test_too_short_points_to_options_that_exist(capsys):
    err = _refused(ou_check.main, ["--eta", "0.1", "--batch-size", "10", "--steps", "300"], "--steps", capsys,
                   "too short: need steps >=")
    assert "--burn-in" in err and "burn_in" not in err
    code, err, _, out = _run(ou_check.main, TINY_OU[:-1] + ["300", "--burn-in", "100"], capsys)
    assert code in (0, 1) and "burn_in" not in err  # the option exists and runs (a biased average may fail)
    _refused(ou_check.main, TINY_OU + ["--burn-in", "3000"], "--burn-in", capsys, "< --steps")


def test_spectrum_files_that_are_not_numbers(tmp_path, capsys):
    err = _refused(ou_check.main, ["--spectrum", f"file:{tmp_path}"], "--spectrum", capsys, "is a folder")
    assert "does not exist" not in err
    noise = tmp_path / "noise.npy"
    noise.write_bytes(np.random.default_rng(0).bytes(512))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([1.0, "a"], dtype=object), allow_pickle=True)
    words = tmp_path / "words.txt"
    words.write_text("one two three\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    strings = tmp_path / "strings.npy"
    np.save(strings, np.array(["1.0", "2.0"]))
    for path in (noise, objects, words, binary, strings):
        for main in (ou_check.main, fdr.main):
            err = _refused(main, ["--spectrum", f"file:{path}"], "--spectrum", capsys, "not a numeric array")
            assert "allow_pickle" not in err and path.name in err


# ------------------------------------------------ class 1: a file option replaces only its own kind of output
HEAVY = {"ou_check": ["--steps", "2000000"], "invariance": ["--chains", "20000"], "breakdown": ["--chains", "2000"],
         "fdr": ["--steps", "2000000"], "noise_scale": ["--pairs", "2000000"], "derive": ["--points", "2000000"]}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_check_json_replaces_only_its_own_result(name, tmp_path, capsys):
    import os

    main = CHECKS[name].main
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / ".sgd-noise").write_text(json.dumps({"kind": "run", "files": {"config.json": None}}))
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.json").symlink_to(mine)
    other = tmp_path / "other.json"
    sgd_noise_common.files.write_json_atomic(other, {"x": 1}, kind="verification.something_else")
    for path, what in ((mine, "no sgd-noise output stamp"), (run / "config.json", "own files"),
                       (tmp_path / "pipe", "named pipe"), (Path("/dev/null"), "a device"),
                       (tmp_path / "link.json", "symbolic link"), (other, "something_else")):
        _refused(main, ["--json", str(path)] + HEAVY[name], "--json", capsys, what)
    assert mine.read_text() == '{"my": "notes"}\n' and not (run / "config.json").exists()


def test_a_checks_own_result_and_figure_are_replaced(tmp_path, capsys):
    js, fig = tmp_path / "r.json", tmp_path / "r.pdf"
    for _ in range(2):  # the second run replaces the first run's files: they carry the check's stamp
        code, err, _, _ = _run(ou_check.main, TINY_OU + ["--json", str(js), "--plot", str(fig)], capsys)
        assert code == 0, err
    assert sgd_noise_common.files.written_kind(fig) == "verification.ou_check"
    users = tmp_path / "users.png"
    users.write_bytes(b"\x89PNG not ours")
    _refused(ou_check.main, TINY_OU + ["--plot", str(users)], "--plot", capsys, "no sgd-noise output stamp")
    assert users.read_bytes() == b"\x89PNG not ours"


def test_the_report_folder_is_locked_and_of_its_own_kind(tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "r"
    out.mkdir()
    hold = ("import sys, time; from sgd_noise_common.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        _refused(verify_all.main, ["--out", str(out), "--only", "derive", "--quiet"], "--out", capsys,
                 f"in use by process {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".sgd-noise").write_text(json.dumps({"kind": "run", "files": {}}))
    _refused(verify_all.main, ["--out", str(run), "--only", "derive", "--quiet"], "--out", capsys, "run folder")
    # The report's own files: a check may rewrite its own JSON there, not the summary.
    code, err, _, _ = _run(verify_all.main, ["--out", str(out), "--only", "noise_scale", "--quiet"], capsys)
    assert code == 0, err
    _refused(noise_scale.main, ["--json", str(out / "summary.json")], "--json", capsys, "own files")
    code, err, _, _ = _run(noise_scale.main, ["--json", str(out / "noise_scale.json")], capsys)
    assert code == 0, err


# ------------------------------------------------ honest outcomes under weight decay (the stationary mean moves)
def test_no_noise_with_weight_decay_agrees_or_is_too_short(capsys):
    base = ["--spectrum", "logspace:0.05:1:10", "--noise", "minibatch", "--dataset-size", "50", "--batch-size", "50",
            "--eta", "0.1", "--weight-decay", "0.1", "--chains", "8"]
    code, err, _, out = _run(ou_check.main, base + ["--steps", "5000"], capsys)
    assert code == 0, out  # deterministic: the burn-in runs until the start is at round-off level
    _refused(ou_check.main, base + ["--steps", "3000"], "--steps", capsys, "too short")


@pytest.mark.parametrize("wd", ["0.5", "2.5"])
def test_fdr_holds_under_heavy_momentum_and_weight_decay(wd, capsys):
    code, err, _, out = _run(fdr.main, ["--weight-decay", wd], capsys)  # the default 128 chains, seed 0
    assert code == 0, out
