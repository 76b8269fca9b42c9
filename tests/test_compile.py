"""The opt-in compiled training step (issue 23): ``TrainConfig.compile`` / ``nets.train --compile`` compiles the
forward pass and the loss with ``torch.compile`` (``nets.sgd.compiled_loss``). On the CPU it must give the eager
numbers to float round-off; runs and sweeps of earlier versions, which have no such field, keep their identity."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from cases import TINY_TRAIN, run_cli  # noqa: E402

from nets import sgd  # noqa: E402
from nets import train as train_mod  # noqa: E402
from nets.experiments.scales import measure_options  # noqa: E402
from nets.experiments.sweep import RunSpec  # noqa: E402

CFG = dict(dataset="synthetic-mnist", model="mlp", width=0.125, eta=0.1, batch_size=32, epochs=1.0,
           synthetic_size=256, evals_per_epoch=2, eval_train_size=128, test_size=64, momentum=0.5)
TIMING = ("examples_per_s", "seconds")


def _quiet(msg):
    pass


def _train(tmp_path, name, **kw):
    result = train_mod.train(train_mod.TrainConfig(**{**CFG, **kw}), tmp_path / name, progress=False, log=_quiet)
    history = [{k: v for k, v in row.items() if k not in TIMING} for row in result["history"]]
    return history, result["model"].state_dict(), result


# ----------------------------------------------------------------------------- the run's identity is unchanged

def test_the_key_of_an_eager_run_is_the_key_of_before():
    # Computed with the code before the field existed (commit df45023): adding it must not rename run folders.
    a = RunSpec(train_mod.TrainConfig(dataset="synthetic-mnist", width=0.125, epochs=1, eta=0.05, batch_size=32,
                                      seed=3), tags={"seed": 3}, stages={"measure": measure_options("small")})
    b = RunSpec(train_mod.TrainConfig(dataset="fashion-mnist", model="resnet56", epochs=200, momentum=0.9,
                                      weight_decay=5e-4, schedule="step", milestones=(60, 100, 140, 180),
                                      device="cuda"),
                stages={"measure": measure_options("full"), "stationary": {"steps": 10}})
    assert (a.key(), b.key()) == ("296abac58f6d", "f6a73d424657")
    compiled = RunSpec(train_mod.TrainConfig(**{**a.train.__dict__, "compile": True}), stages=a.stages)
    assert compiled.key() != a.key()  # a compiled run is another run (equal to round-off only)


def test_a_run_saved_before_the_field_is_recognised():
    cfg = train_mod.TrainConfig(**CFG)
    old = {k: v for k, v in cfg.to_dict().items() if k != "compile"}
    assert train_mod.same_config(old, cfg)
    assert not train_mod.same_config(old, train_mod.TrainConfig(**CFG, compile=True))
    assert train_mod.config_from_dict(old, source="config.json").compile is False


def test_the_command_line_option():
    p = train_mod.build_parser()
    assert train_mod.config_from_args(p.parse_args(["--out", "x", "--compile"])).compile is True
    assert train_mod.config_from_args(p.parse_args(["--out", "x"])).compile is False


# ------------------------------------------------------------------------------------------- the compiled step

def test_the_run_trains_through_the_compiled_step(tmp_path, monkeypatch):
    """The plumbing, fast: with torch.compile's ``eager`` backend (dynamo's capture, no code generation) every
    training step goes through ``compiled_loss`` and the numbers are the eager run's bit for bit."""
    monkeypatch.setattr(sgd, "COMPILE_BACKEND", "eager")
    calls = []
    original = sgd.compiled_loss

    def counted(*args, **kwargs):
        forward = original(*args, **kwargs)

        def call(x, y):
            calls.append(x.shape[0])
            return forward(x, y)

        return call

    monkeypatch.setattr(train_mod, "compiled_loss", counted)
    eager, eager_state, _ = _train(tmp_path, "eager")
    compiled, state, result = _train(tmp_path, "compiled", compile=True)
    assert len(calls) == result["steps"] > 0
    assert compiled == eager
    for k in eager_state:
        assert torch.equal(state[k], eager_state[k]), k


def test_a_compiler_failure_is_one_line(tmp_path, monkeypatch, capsys):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(sgd, "COMPILE_BACKEND", broken)
    out = run_cli(train_mod.main, [*TINY_TRAIN, "--eta", "0.1", "--epochs", "0.1", "--synthetic-size", "256",
                                   "--eval-train-size", "64", "--compile", "--out", str(tmp_path / "r")], capsys)
    assert out.code == 2 and "Traceback" not in out.err, out
    assert len(out.err.strip().splitlines()) == 1 and "no C++ compiler" in out.err and "--compile" in out.err


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_numbers_on_the_cpu(tmp_path):
    """torch.compile's default backend (inductor: generated C++) against eager, a few SGD steps of a batch-norm
    MLP with momentum: history and weights equal to float32 round-off (rtol 1e-5). 15-35 s of compiling on this
    2-core CPU with an empty inductor cache."""
    eager, eager_state, _ = _train(tmp_path, "eager")
    try:
        compiled, state, _ = _train(tmp_path, "compiled", compile=True)
    except sgd.CompileError as exc:
        if shutil.which("g++") is None and shutil.which("c++") is None:
            pytest.skip(f"torch.compile needs a C++ compiler on the CPU and none is installed ({exc})")
        raise
    assert len(compiled) == len(eager) == 2
    for row, ref in zip(compiled, eager):
        assert row.keys() == ref.keys()
        for k in ref:
            assert row[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), (k, row[k], ref[k])
    for k, ref in eager_state.items():
        if ref.is_floating_point():
            assert torch.allclose(state[k], ref, rtol=1e-5, atol=1e-6), (k, (state[k] - ref).abs().max())
        else:
            assert torch.equal(state[k], ref), k
