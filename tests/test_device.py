"""The GPU path's device handling, tested on the CPU (issue 23, items 1, 2, 3 and 7): what a GPU alone would have
shown is made to fail here with the ``meta`` device (tensors without data, on a device that is not the CPU), with
monkeypatched ``torch.cuda.is_available``/``device_count``, or by recording the device a stage is asked to use.

1. Resuming: the RNG states reach ``torch.set_rng_state`` and ``Generator.set_state`` as CPU byte tensors, and a
   checkpoint whose states cannot be restored is refused in one line (exit 2), not a traceback.
2. The loss landscape's directions live on the parameters' device.
3. The eq7 stationary stage runs on its run's device, and its independent batches are drawn there.
7. ``--device`` naming a GPU that is not there is refused, before any work, by every command that takes it.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

torch = pytest.importorskip("torch")

from cases import TINY_TRAIN, run_cli  # noqa: E402

from nets import train as train_mod  # noqa: E402
from nets.data import BatchSampler, cpu_rng_state  # noqa: E402

META = torch.device("meta")


def _quiet(msg):
    pass


def _one_line_refusal(outcome, *words):
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1, outcome.err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------- 1. resuming

CFG = dict(dataset="synthetic-mnist", model="mlp", width=0.125, eta=0.05, batch_size=32, epochs=1,
           synthetic_size=256, evals_per_epoch=2, eval_train_size=128, momentum=0.5)


def _interrupted(monkeypatch, out, *, main_argv=None, call=5):
    """A run stopped by SIGINT inside its ``call``-th SGD step, leaving ``checkpoint.pt`` in ``out``."""
    original = train_mod.sgd_step
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "sgd_step", wrapped)
        if main_argv is not None:
            assert train_mod.main(main_argv) == 130
        else:
            with pytest.raises(KeyboardInterrupt):
                train_mod.train(train_mod.TrainConfig(**CFG), out, progress=False, log=_quiet)
    assert (out / "checkpoint.pt").is_file()


def test_resume_hands_the_rng_restores_cpu_byte_tensors(tmp_path, monkeypatch):
    """Every RNG restore of a resume (torch's and the sampler's generator) gets a CPU byte tensor, the checkpoint
    is read with ``map_location="cpu"`` (not the run's device), and the resumed run is the uninterrupted one."""
    ref = train_mod.train(train_mod.TrainConfig(**CFG), tmp_path / "ref", progress=False, log=_quiet)
    _interrupted(monkeypatch, tmp_path / "run")
    restored, loads = [], []

    def checked(state, who):
        assert isinstance(state, torch.Tensor) and state.device.type == "cpu" and state.dtype == torch.uint8, who
        restored.append(who)

    real_set_rng_state, real_load = torch.set_rng_state, torch.load

    def set_rng_state(state):
        checked(state, "torch")
        return real_set_rng_state(state)

    class CheckedGenerator(torch.Generator):
        def set_state(self, state):
            checked(state, "generator")
            return super().set_state(state)

    def load(path, *args, map_location=None, **kwargs):
        loads.append((str(path), map_location))
        return real_load(path, *args, map_location=map_location, **kwargs)

    monkeypatch.setattr(torch, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch, "Generator", CheckedGenerator)
    monkeypatch.setattr(torch, "load", load)
    resumed = train_mod.train(train_mod.TrainConfig(**CFG), tmp_path / "run", progress=False, log=_quiet)
    assert set(restored) == {"generator", "torch"}  # every call checked (fork_rng restores torch's too)
    assert [torch.device(m) for p, m in loads if p.endswith("checkpoint.pt")] == [torch.device("cpu")]
    strip = [{k: v for k, v in r.items() if k not in ("examples_per_s", "seconds")} for r in ref["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("examples_per_s", "seconds")}
                     for r in resumed["history"]]
    for (name, a), (_, b) in zip(ref["model"].state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("where", ["torch_rng", "sampler generator", "everything"])
def test_rng_states_off_the_cpu_are_refused_in_one_line(tmp_path, monkeypatch, capsys, where):
    """RNG states loaded onto another device (what ``map_location=<the GPU>`` did; ``meta`` here, whose tensors
    cannot even be copied back) fail the resume with exit 2 and one line naming the checkpoint - they raised
    ``TypeError`` from ``set_rng_state``/``set_state`` (or worse) through ``main()`` as a traceback."""
    out = tmp_path / "r"
    argv = TINY_TRAIN + ["--epochs", "1", "--synthetic-size", "256", "--out", str(out)]
    _interrupted(monkeypatch, out, main_argv=argv)
    capsys.readouterr()
    real_load = torch.load
    if where == "everything":  # the checkpoint loaded as if map_location were honoured onto a non-CPU device
        monkeypatch.setattr(torch, "load", lambda path, *a, map_location=None, **k: real_load(
            path, *a, map_location=META if str(path).endswith("checkpoint.pt") else map_location, **k))
    else:
        state = real_load(out / "checkpoint.pt", weights_only=False)
        if where == "torch_rng":
            state["torch_rng"] = state["torch_rng"].to(META)
        else:
            state["sampler"]["generator"] = state["sampler"]["generator"].to(META)
        torch.save(state, out / "checkpoint.pt")
    line = _one_line_refusal(run_cli(train_mod.main, argv, capsys), "checkpoint", "checkpoint.pt",
                             "delete it to restart")
    assert "Error" in line  # the cause is named: NotImplementedError (meta has no data), or the RNG state's device


def test_cpu_rng_state():
    s = torch.get_rng_state()
    assert cpu_rng_state(s) is s or torch.equal(cpu_rng_state(s), s)
    with pytest.raises(ValueError, match="meta"):
        cpu_rng_state(s.to(META), what="x")
    with pytest.raises(ValueError, match="float32"):
        cpu_rng_state(s.float(), what="x")
    with pytest.raises(ValueError, match="list"):
        cpu_rng_state([1, 2], what="x")
    sampler = BatchSampler(10, seed=0)
    st = sampler.state_dict()
    st["generator"] = st["generator"].to(META)
    with pytest.raises(ValueError, match="sampler's generator state"):
        BatchSampler(10, seed=0).load_state_dict(st)


# --------------------------------------------------------------------------------------------------- 2. landscape

def _mlp(device=None):
    from nets.models import build_model

    m = build_model("mlp", (1, 28, 28), 10, width=0.125, seed=0)
    return m.to(device) if device is not None else m


def test_filter_normalized_directions_are_built_on_the_parameters_device():
    from nets.landscape import filter_normalized_direction

    model = _mlp(META)
    d = filter_normalized_direction(model, rng=0)
    d_all = filter_normalized_direction(model, rng=0, ignore_1d=False)
    for name, p in model.named_parameters():
        for dd in (d, d_all):
            assert dd[name].device == META and dd[name].shape == p.shape and dd[name].dtype == torch.float64


def test_filter_normalized_directions_on_the_cpu_are_the_numbers_of_a_cpu_generator():
    """On the CPU nothing moves: the direction is drawn by the same CPU generator, in the same order, as before
    (the construction written out here), bit for bit."""
    import numpy as np

    from nets.landscape import filter_normalized_direction

    model = _mlp()
    for ignore_1d in (True, False):
        got = filter_normalized_direction(model, rng=7, ignore_1d=ignore_1d)
        g = torch.Generator().manual_seed(int(np.random.default_rng(7).integers(0, 2**62)))
        for name, p in model.named_parameters():
            w = p.detach().double()
            if w.dim() <= 1:
                want = torch.zeros_like(w) if ignore_1d else torch.randn(w.shape, generator=g, dtype=torch.float64)
            else:
                r = torch.randn(w.shape, generator=g, dtype=torch.float64)
                scale = w.reshape(w.shape[0], -1).norm(dim=1) / r.reshape(r.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                want = r * scale.reshape(-1, *([1] * (w.dim() - 1)))
            assert torch.equal(got[name], want), name


@pytest.mark.parametrize("given", [False, True])
def test_loss_slice_moves_along_directions_on_the_models_device(monkeypatch, given):
    """The slice on a model whose parameters are not on the CPU (``meta``): each point's parameters are set on
    that device, from default directions or from CPU ones the caller passes (CPU + device raised before)."""
    from nets import landscape

    model = _mlp(META)
    seen = []

    def evaluate(work, loss_fn, x, y, *, batch_size):
        seen.append({p.device for p in work.parameters()})
        return 0.0, 0.0

    monkeypatch.setattr(landscape, "evaluate", evaluate)
    directions = None
    if given:
        directions = [landscape.filter_normalized_direction(_mlp(), rng=s) for s in (1, 2)]
    x, y = torch.zeros(4, 1, 28, 28, device=META), torch.zeros(4, dtype=torch.long, device=META)
    sl = landscape.loss_slice(model, None, x, y, directions=directions, alphas=[-1.0, 0.0, 1.0], betas=[0.0, 0.5],
                              rng=0)
    assert sl.losses.shape == (3, 2) and seen == [{META}] * 6


# ---------------------------------------------------------------------------------------- 3. the stationary stage

def _eq7_spec(device: str):
    from nets.experiments import eq7
    from nets.experiments.cli import build_parser

    args = build_parser("eq7", eq7.__doc__).parse_args(["--device", "cpu"])
    spec = eq7.specs("smoke", args)[0]
    spec.train = train_mod.TrainConfig(**{**spec.train.__dict__, "device": device})
    return spec


@pytest.mark.parametrize("device", ["cuda:1", "auto", "meta"])
def test_the_sweep_runs_the_stationary_stage_on_its_runs_device(tmp_path, monkeypatch, device):
    """The stage is asked for the run's ``TrainConfig.device`` (it was always the CPU: ``basin_phase``'s default),
    given when it runs - the spec's stage arguments, which name the run's folder, do not change."""
    from nets import stationary
    from nets.experiments import sweep

    spec = _eq7_spec(device)
    assert "device" not in spec.stages["stationary"]
    asked = []

    def fake_train(cfg, out, **kwargs):
        return {"train_size": 256, "steps": 1, "epochs": 1.0, "final": {}, "diverged": None, "seconds": {}}

    def fake_basin_phase(run_dir, **kwargs):
        asked.append(kwargs.get("device", "cpu (basin_phase's default)"))
        return stationary.StationaryDiverged(step=1, loss=float("nan"), eta=spec.train.eta,
                                             batch_size=spec.train.batch_size)

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(stationary, "basin_phase", fake_basin_phase)
    d = spec.to_dict()
    metrics = sweep.execute(d, str(tmp_path / d["key"]))
    assert asked == [device] and metrics["diverged"]


def test_basin_phase_defaults_to_the_runs_own_device(finished_run, tmp_path, monkeypatch):
    """``basin_phase`` without a device loads the run on its configured device (resolved as training resolves
    it): a run configured for a device that is not here is refused naming it, rather than run on the CPU."""
    import shutil

    from nets.stationary import basin_phase

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    for name in ("config.json", "result.json"):
        raw = json.loads((run / name).read_text())
        (raw if name == "config.json" else raw["config"])["device"] = "cuda:3"
        (run / name).write_text(json.dumps(raw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="cuda:3.*no such CUDA device"):
        basin_phase(run, burn_in=2, mean_steps=2, record_steps=40, eval_every=2, window=2, batches=2)


def test_independent_batches_are_drawn_on_the_data_device(monkeypatch):
    """The stationary phase's batches come from a generator of the data's device, drawn there: no CPU permutation
    of the whole training set and no copy per step. (torch has no ``meta`` generator, so a stand-in records it.)"""
    from nets.stationary import IndependentBatches

    real_randperm, draws = torch.randperm, []

    class DeviceGenerator:
        def __init__(self, device="cpu"):
            self.device = torch.device(device)

        def manual_seed(self, seed):
            return self

    def randperm(n, *, generator=None, device=None, **kwargs):
        draws.append((torch.device(device) if device is not None else torch.device("cpu"), generator.device))
        return real_randperm(n, device=device, **kwargs)

    monkeypatch.setattr(torch, "Generator", DeviceGenerator)
    monkeypatch.setattr(torch, "randperm", randperm)
    b = IndependentBatches(100, seed=0, device=META)
    idx = b.next(10)
    assert idx.device == META and idx.shape == (10,) and draws == [(META, META)]


def test_independent_batches_on_the_cpu_are_the_numbers_of_before():
    from nets.stationary import IndependentBatches

    b, g = IndependentBatches(1000, seed=5), torch.Generator().manual_seed(5)
    for s in (1, 37, 1000, 8):
        assert torch.equal(b.next(s), torch.randperm(1000, generator=g)[:s])


# ------------------------------------------------------------------------------------------------ 7. --device

@pytest.fixture
def one_gpu(monkeypatch):
    """A machine that shows one CUDA device (as a Ray task does)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_resolve_device_accepts_the_devices_present(one_gpu):
    assert train_mod.resolve_device("cuda:0") == torch.device("cuda:0")
    assert train_mod.resolve_device("cuda") == torch.device("cuda")
    assert train_mod.resolve_device("auto") == torch.device("cuda")
    assert train_mod.resolve_device("cpu") == torch.device("cpu")
    assert train_mod.devices_present()[:2] == ["cpu", "cuda:0"]


@pytest.mark.parametrize("name,why", [("cuda:1", "no such CUDA device (1 visible)"), ("cuda:7", "no such CUDA"),
                                      ("tpu", "not a device name"), ("meta", "not a device this toolkit runs on"),
                                      ("cuda:x", "not a device name"), ("cpu:1", "one CPU device")])
def test_resolve_device_refuses_what_is_not_there(one_gpu, name, why):
    with pytest.raises(ValueError) as exc:
        train_mod.resolve_device(name, option="--device")
    msg = str(exc.value)
    assert msg.startswith(f"--device {name}: ") and why in msg and "cpu, cuda:0" in msg and "\n" not in msg


def test_resolve_device_refuses_cuda_without_a_gpu(no_gpu):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device {name}: no CUDA GPU is available; the devices present: cpu"):
            train_mod.resolve_device(name)
    assert train_mod.resolve_device("auto") == torch.device("cpu")


def test_train_refuses_a_gpu_that_is_not_there_before_any_work(one_gpu, tmp_path, capsys, monkeypatch):
    """``nets.train --device cuda:1`` on a machine with one GPU: exit 2 and one line, no folder, no data loaded
    (it went on to load the data onto a device that is not there)."""
    monkeypatch.setattr(train_mod, "_data_for", lambda *a, **k: pytest.fail("data loaded"))
    out = tmp_path / "r"
    _one_line_refusal(run_cli(train_mod.main, TINY_TRAIN + ["--out", str(out), "--device", "cuda:1"], capsys),
                      "--device cuda:1", "cpu, cuda:0")
    assert not out.exists()


def test_measure_refuses_a_gpu_that_is_not_there(one_gpu, finished_run, tmp_path, capsys, monkeypatch):
    from nets import measure

    monkeypatch.setattr(measure, "load_run", lambda *a, **k: pytest.fail("run loaded"))
    _one_line_refusal(run_cli(measure.main, [str(finished_run), "--json", str(tmp_path / "m.json"),
                                             "--device", "cuda:1"], capsys), "--device cuda:1", "cpu, cuda:0")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("device", ["cuda:1", "cuda:0"])
def test_experiments_refuse_a_gpu_that_is_not_there(tmp_path, capsys, monkeypatch, device):
    from nets.experiments import __main__ as dispatch

    if device == "cuda:0":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "x"
    _one_line_refusal(run_cli(dispatch.main, ["eq7", "--scale", "smoke", "--out", str(out), "--quiet", "--device",
                                              device], capsys), f"--device {device}", "the devices present: cpu")
    assert not out.exists()


# ------------------------------------------------------------------------- the measure stage and fig4 (issue 23)

@pytest.mark.parametrize("run_device, stage_device, asked", [("cpu", "auto", "cpu"), ("cuda:1", "auto", "cuda:1"),
                                                             ("auto", "auto", "auto"), ("cuda:1", "cpu", "cpu")])
def test_the_measure_stage_follows_its_runs_device(tmp_path, monkeypatch, run_device, stage_device, asked):
    """The measure stage's ``device="auto"`` (``scales.measure_options`` at small and full scale, part of the
    runs' keys) gives way to the run's own device when the stage runs: ``--device cpu`` on a GPU machine measured
    on the GPU before. A device named otherwise among the stage's arguments still wins."""
    import nets.measure
    from nets.experiments import sweep
    from nets.experiments.scales import measure_options

    options = {**measure_options("small"), "device": stage_device}
    spec = sweep.RunSpec(train_mod.TrainConfig(**{**CFG, "device": run_device}), stages={"measure": options})
    key = spec.key()
    got = []

    def fake_train(cfg, out, **kwargs):
        return {"train_size": 256, "steps": 1, "epochs": 1.0, "final": {}, "diverged": None, "seconds": {}}

    def fake_measure_run(run_dir, **kwargs):
        got.append(kwargs["device"])
        raise RuntimeError("measured")  # the device is what is tested; no result is needed

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(nets.measure, "measure_run", fake_measure_run)
    d = spec.to_dict()
    with pytest.raises(RuntimeError, match="measured"):
        sweep.execute(d, str(tmp_path / d["key"]))
    assert got == [asked] and spec.key() == key and spec.stages["measure"]["device"] == stage_device


def test_fig4_interpolates_on_the_runs_device(tmp_path, monkeypatch):
    """fig4's interpolation loads the two runs on the first run's own device (it was always the CPU)."""
    from types import SimpleNamespace

    from nets.experiments import fig4

    asked = []

    class Stop(Exception):
        pass

    def fake_load_run(run_dir, *, device="auto"):
        asked.append(device)
        if len(asked) == 2:
            raise Stop
        return None, torch.nn.Linear(2, 2, device=META), None

    monkeypatch.setattr(train_mod, "load_run", fake_load_run)
    with pytest.raises(Stop):
        fig4._interp(SimpleNamespace(out=tmp_path), "a", "b")
    assert asked == [None, "meta"]  # None: the run's TrainConfig.device, resolved as training resolves it
