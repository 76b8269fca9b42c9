"""Interrupted runs: a run stopped anywhere (Ctrl-C in the middle of a step, during an evaluation, while a
checkpoint is written, by SIGTERM or SIGKILL) and started again is the run it claims to be: the same history (every
column but the timings) and the same final weights, bit for bit on the CPU, as the run that was never stopped."""

import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
from nets import train  # noqa: E402

CFG = dict(dataset="synthetic-mnist", model="mlp", width=0.125, eta=0.05, batch_size=32, epochs=2,
           synthetic_size=512, schedule="cbs", cycle_epochs=1.0, cycle_low=0.5, fdr=True, momentum=0.5,
           evals_per_epoch=3, eval_train_size=256)
TIMINGS = {"examples_per_s", "seconds"}


def _quiet(msg):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run never stopped."""
    return train.train(train.TrainConfig(**CFG), tmp_path_factory.mktemp("ref") / "run", progress=False, log=_quiet)


def _same_run(a: dict, b: dict) -> None:
    ha = [{k: v for k, v in r.items() if k not in TIMINGS} for r in a["history"]]
    hb = [{k: v for k, v in r.items() if k not in TIMINGS} for r in b["history"]]
    assert ha == hb
    assert a["fdr"] == b["fdr"] and a["steps"] == b["steps"]
    for (name, x), (_, y) in zip(a["model"].state_dict().items(), b["model"].state_dict().items()):
        assert torch.equal(x, y), name


def _interrupt_on_call(monkeypatch, target: str, call: int, sig=signal.SIGINT):
    """Send ``sig`` to this process inside the ``call``-th call of ``nets.train.<target>``, before it runs."""
    original = getattr(train, target)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, target, wrapped)


@pytest.mark.parametrize("target,call,sig", [
    ("sgd_step", 1, signal.SIGINT),     # in the very first step
    ("sgd_step", 7, signal.SIGINT),     # in the middle of a step, between two evaluations
    ("sgd_step", 23, signal.SIGTERM),   # SIGTERM (a scheduler's stop), between evaluations of the second epoch
    ("evaluate", 3, signal.SIGINT),     # during an evaluation (its second half: the validation set)
    ("_save_torch", 2, signal.SIGINT),  # while the second checkpoint is being written
])
def test_an_interrupted_run_resumes_bit_for_bit(reference, tmp_path, monkeypatch, target, call, sig):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_on_call(m, target, call, sig)
        with pytest.raises(KeyboardInterrupt):
            train.train(train.TrainConfig(**CFG), run, progress=False, log=_quiet)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["sampler"]["examples_seen"] == sum(
        int(s) for s in train.make_schedule(train.TrainConfig(**CFG), 512).batch_sizes[:state["step"]])
    resumed = train.train(train.TrainConfig(**CFG), run, progress=False, log=_quiet)
    _same_run(reference, resumed)


def test_interrupted_twice_between_evaluations(reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    for call in (5, 9):  # each session counts its own steps: two stops inside the first evaluation period
        with monkeypatch.context() as m:
            _interrupt_on_call(m, "sgd_step", call)
            with pytest.raises(KeyboardInterrupt):
                train.train(train.TrainConfig(**CFG), run, progress=False, log=_quiet)
    _same_run(reference, train.train(train.TrainConfig(**CFG), run, progress=False, log=_quiet))


def _cli(out) -> list[str]:
    return [sys.executable, "-m", "nets.train", "--dataset", "synthetic-mnist", "--model", "mlp", "--width",
            "0.125", "--eta", "0.05", "--batch-size", "8", "--epochs", "3", "--evals-per-epoch", "3", "--fdr",
            "--momentum", "0.5", "--out", str(out), "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_real_signal_to_the_command_then_resume(tmp_path, sig):
    """The command line, stopped by a real signal once its first checkpoint exists, then run again to the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cli(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(tmp_path / "run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    t0 = time.monotonic()
    while not (tmp_path / "run" / "checkpoint.pt").exists() and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    time.sleep(0.05)  # somewhere in the next evaluation period
    proc.send_signal(sig)
    proc.communicate(timeout=300)
    if (tmp_path / "run" / "result.json").exists():
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    again = subprocess.run(_cli(tmp_path / "run"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    import csv

    def rows(folder):
        with open(folder / "history.csv") as fh:
            return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(fh)]

    assert rows(tmp_path / "ref") == rows(tmp_path / "run")
    a = torch.load(tmp_path / "ref" / "model.pt")
    b = torch.load(tmp_path / "run" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
