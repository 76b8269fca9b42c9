"""The main job's command line: exit codes, JSON fields, one-line errors, and that it can report a failure."""

import dataclasses
import io
import json
import subprocess
import sys

import pytest

from verification import ou_check
from verification.ou_check import OUCheckSettings

SMALL = ["--eta", "0.1,0.2", "--batch-size", "5,10", "--spectrum", "logspace:0.05:1:20", "--chains", "64",
         "--steps", "3000"]
FIELDS = {"eta", "batch_size", "trace_h", "process", "measured_loss", "stderr", "theory_eq7", "theory_exact", "z",
          "ok"}


def test_passes_and_writes_json_and_plot(tmp_path, capsys):
    rc = ou_check.main(SMALL + ["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert rc == 0, capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["sgd_noise"]["kind"] == "verification.ou_check" and result["ok"] is True
    rows = result["rows"]
    assert len(rows) == 8 and all(FIELDS <= set(r) for r in rows)
    assert {r["process"] for r in rows} == {"sde", "sgd"}
    assert (tmp_path / "r.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "8/8 rows agree" in out and "equal eta/S" in out


@pytest.mark.parametrize("extra", [["--rotate", "--momentum", "0.5", "--weight-decay", "0.05"],
                                   ["--noise", "minibatch", "--dataset-size", "200"],
                                   ["--dataset-size", "50"]])
def test_variants_pass(extra):
    assert ou_check.main(SMALL + extra) == 0


def test_reports_failure_when_theory_is_wrong(monkeypatch, capsys):
    # Pretend the exact SGD value were Eq. (7): the discrete-time correction (2.7 % to 5.5 % here) is far outside
    # the standard error, so SGD rows must fail and the exit code must be 1.
    real = ou_check.expected_loss

    def wrong(problem, eta, s, *, process="sgd", **kw):
        return ou_check.eq7_loss(problem, eta, s) if process == "sgd" else real(problem, eta, s, process=process, **kw)

    monkeypatch.setattr(ou_check, "expected_loss", wrong)
    assert ou_check.main(SMALL) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--eta", "0"], "eta must be > 0"),
    (["--eta", "2.5"], "no stationary distribution"),
    (["--batch-size", "20", "--dataset-size", "10"], "batch_size must be <= dataset_size N = 10"),
    (["--spectrum", "nope"], "is not of the form"),
    (["--eta", "abc"], "comma-separated list of numbers"),
    (["--momentum", "1.5"], "momentum must lie in"),
    (["--confidence", "1.5"], "--confidence must lie in"),
    (["--spectrum", "file:/no/such/file.npy"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "verification.ou_check", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_check_from_python_without_the_command_line(tmp_path):
    # The same grid as SMALL, as settings: both claims hold, one row per (eta, S, process), no figure drawn.
    settings = OUCheckSettings(etas=(0.1, 0.2), batch_sizes=(5, 10), spectrum="logspace:0.05:1:20", chains=64,
                               steps=3000)
    stream = io.StringIO()
    result = ou_check.check(settings, out=stream)
    assert result.ok and [c.name for c in result.claims] == ["stationary-loss-sde", "stationary-loss-sgd"]
    assert all(c.expected and c.holds for c in result.claims)
    assert len(result.rows) == 8 and all(FIELDS <= set(r) for r in result.rows) and not result.figures
    assert "8/8 rows agree" in stream.getvalue()
    assert result.settings["eta"] == [0.1, 0.2] and result.settings["batch_size"] == [5, 10]
    ou_check.plot(result, tmp_path / "ou.png")
    assert (tmp_path / "ou.png").stat().st_size > 10_000


def test_settings_defaults_are_the_command_line_defaults():
    assert ou_check.settings_from_args(ou_check.build_parser().parse_args([])) == OUCheckSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        OUCheckSettings().chains = 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(etas=(-1.0,)), "--eta must be > 0, got -1.0"),
    (dict(batch_sizes=(0,)), "--batch-size"),
    (dict(chains=1), "--chains must be >= 2"),
    (dict(momentum=1.0), "--momentum must lie in"),
    (dict(weight_decay=-0.1), "--weight-decay"),
    (dict(noise="uniform"), "--noise"),
    (dict(dataset_size=0), "--dataset-size"),
    (dict(steps=0), "--steps"),
    (dict(confidence=1.0), "--confidence must lie in"),
])
def test_bad_settings_raise_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OUCheckSettings(**kwargs)


def test_check_rejects_settings_the_problem_cannot_take_before_simulating():
    with pytest.raises(ValueError, match="--dataset-size must be >= the dimension 100"):
        ou_check.check(OUCheckSettings(noise="minibatch", dataset_size=50))
    with pytest.raises(ValueError, match="no stationary distribution"):
        ou_check.check(OUCheckSettings(etas=(2.5,)))
