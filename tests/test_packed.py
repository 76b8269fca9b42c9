"""Batched training (issue 22): several runs of one architecture as one packed network (``nets.packed``) and
``nets.train.train_many``, held to the same runs trained alone.

In float64 the packed arithmetic equals the separate runs' to ~1e-10 after 100 steps for the batch-norm MLP, VGG11
and ResNet56 (each member with its own seed, η, momentum and weight decay): the packing, the per-member batch norm
and the SGD update are exact. In float32, as the runs train, a member's history equals its run alone to float32
round-off where the dynamics do not amplify it (a member at a large η with batch norm can amplify a 1e-7 difference
to 1e-3 within a few steps: the same happens between two float32 runs that differ only in the order of a sum)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from nets import train as train_mod
from nets.packed import PackedSGD, pack_models, packed_inputs, packed_loss, unpack_into
from nets.sgd import make_optimizer, sgd_step
from nets.train import TrainConfig, _Run, train, train_many

BASE = dict(dataset="synthetic-mnist", width=0.125, batch_size=16, synthetic_size=512, test_size=256,
            eval_train_size=256, evals_per_epoch=2, device="cpu", eval_batch_size=256)
MEMBERS = [dict(seed=0, eta=0.1), dict(seed=1, eta=0.05, momentum=0.9, weight_decay=1e-3),
           dict(seed=2, eta=0.2, momentum=0.5, dampening=0.1)]


def _double(run):
    run.model.double()
    object.__setattr__(run.data, "x_train", run.data.x_train.double())
    run.opt = make_optimizer(run.model, eta=run.cfg.eta, momentum=run.cfg.momentum, dampening=run.cfg.dampening,
                             weight_decay=run.cfg.weight_decay)
    return run


# ResNet56 at width 0.125 (2 to 8 channels per layer) is chaotic in its own right: a 1e-15 relative perturbation
# of its weights grows to 1e-4 in 10 steps of plain SGD at eta = 0.01 (and at width 0.25 to 1e-3 in 20 steps),
# so no two float64 computations of it agree after 100 steps. At width 0.5 the same perturbation stays below 1e-9:
# the packed network is tested there, with two members.
@pytest.mark.parametrize("model, width, members, rtol", [
    ("mlp", 0.125, MEMBERS, 1e-9), ("vgg11", 0.125, MEMBERS, 1e-9),
    pytest.param("resnet56", 0.5, [dict(seed=0, eta=0.05, momentum=0.9, weight_decay=1e-3),
                                   dict(seed=1, eta=0.02, momentum=0.5, dampening=0.1)], 1e-7,
                 marks=pytest.mark.slow)])
def test_packed_steps_equal_separate_runs_in_float64(model, width, members, rtol):
    """100 steps of each member alone (torch's SGD) and all packed, float64: every step's losses, and at the end
    the weights, batch-norm statistics and torch's momentum buffers."""
    steps = 100
    s = 8 if model == "resnet56" else 16  # ResNet at width 0.5: smaller batches keep the test under a minute
    cfgs = [TrainConfig(**{**BASE, "width": width, "batch_size": s}, model=model, epochs=4, **m) for m in members]
    alone = [_double(_Run(c, None, print)) for c in cfgs]
    together = [_double(_Run(c, None, print)) for c in cfgs]
    packed = pack_models([r.model for r in together])
    packed.train()
    opt = PackedSGD(packed, lrs=[c.eta for c in cfgs], momenta=[c.momentum for c in cfgs],
                    dampenings=[c.dampening for c in cfgs], weight_decays=[c.weight_decay for c in cfgs])
    for _ in range(steps):
        losses_alone = []
        for r in alone:
            idx = r.sampler.next(s)
            losses_alone.append(float(sgd_step(r.model, r.opt, r.data.x_train[idx], r.data.y_train[idx],
                                               loss_fn=F.cross_entropy)[0]))
        idx = [r.sampler.next(s) for r in together]
        x = packed_inputs([r.data.x_train[i] for r, i in zip(together, idx)])
        y = torch.stack([r.data.y_train[i] for r, i in zip(together, idx)], dim=1)
        losses = packed_loss(packed(x), y, len(cfgs))
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        assert np.allclose(losses.detach().numpy(), losses_alone, rtol=rtol, atol=0)
    unpack_into(packed, [r.model for r in together])
    opt.store_buffers([r.opt for r in together], [r.model for r in together], packed)
    for a, b in zip(alone, together):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        for k in sa:
            assert torch.allclose(sa[k].double(), sb[k].double(), rtol=100 * rtol, atol=10 * rtol), k
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):  # torch's momentum buffers, as alone
            ba, bb = a.opt.state[pa].get("momentum_buffer"), b.opt.state[pb].get("momentum_buffer")
            assert (ba is None) == (bb is None)
            if ba is not None:
                assert torch.allclose(ba, bb, rtol=100 * rtol, atol=10 * rtol)


def _history(out):
    return json.loads((out / "result.json").read_text())


def _close(h1, h2, rtol):
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "val_loss", "train_loss_running", "train_acc", "val_acc", "epoch", "step", "eta"):
            assert r1[key] == pytest.approx(r2[key], rel=rtol, abs=1e-6), (key, r1, r2)
    assert len(h1) == len(h2)


CALM = [dict(seed=0, eta=0.05), dict(seed=1, eta=0.03, momentum=0.9, weight_decay=1e-3),
        dict(seed=2, eta=0.1, momentum=0.5)]


def test_train_many_writes_each_member_as_alone(tmp_path):
    """128 steps (4 epochs of 512 at S = 16) of three MLP members in float32: each member's folder holds the same
    files, the history to float32 round-off (the members here are in a calm regime), and the model loads."""
    cfgs = [TrainConfig(**BASE, model="mlp", epochs=4, **m) for m in CALM]
    alone = [train(c, tmp_path / f"a{i}", progress=False, log=lambda m: None) for i, c in enumerate(cfgs)]
    many = train_many(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False, log=lambda m: None)
    for i, (a, b) in enumerate(zip(alone, many)):
        assert a["steps"] == b["steps"] == 128
        _close(a["history"], b["history"], rtol=2e-4)
        files_a = sorted(p.name for p in (tmp_path / f"a{i}").iterdir())
        assert files_a == sorted(p.name for p in (tmp_path / f"m{i}").iterdir())
        sa, sb = a["model"].state_dict(), b["model"].state_dict()
        assert max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa) < 1e-3
    # Finished: a second call returns the results without training.
    again = train_many(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False, log=lambda m: None)
    assert [r["steps"] for r in again] == [128] * 3


def test_a_diverging_member_stops_alone(tmp_path):
    cfgs = [TrainConfig(**BASE, model="mlp", epochs=2, **m) for m in CALM[:2]]
    cfgs.append(TrainConfig(**BASE, model="mlp", epochs=2, seed=3, eta=1e30))  # inf after one step, alone too
    many = train_many(cfgs, [tmp_path / f"m{i}" for i in range(3)], progress=False, log=lambda m: None)
    assert many[2]["diverged"] is not None and not math.isfinite(float(many[2]["diverged"]["loss"]))
    assert not (tmp_path / "m2" / "model.pt").exists()
    alone2 = train(cfgs[2], tmp_path / "a2", progress=False, log=lambda m: None)
    assert alone2["diverged"]["step"] == many[2]["diverged"]["step"]
    assert (alone2["steps"], alone2["epochs"]) == (many[2]["steps"], many[2]["epochs"])
    for i in range(2):
        assert many[i]["diverged"] is None and many[i]["steps"] == 64
        alone = train(cfgs[i], tmp_path / f"a{i}", progress=False, log=lambda m: None)
        _close(alone["history"], many[i]["history"], rtol=2e-4)


class _StopAfter(train_mod._Stop):
    """A stop requested after ``limit`` looks (as a Ctrl-C would be, between steps)."""

    limit = 40

    def __init__(self):
        self.looks = 0
        super().__init__()

    @property
    def requested(self):
        self.looks += 1
        return 2 if self.looks > self.limit else None

    @requested.setter
    def requested(self, value):
        pass


def test_an_interrupted_pack_resumes_per_member(tmp_path, monkeypatch):
    cfgs = [TrainConfig(**BASE, model="mlp", epochs=2, **m) for m in CALM]
    outs = [tmp_path / f"m{i}" for i in range(3)]
    monkeypatch.setattr(train_mod, "_Stop", _StopAfter)
    with pytest.raises(KeyboardInterrupt):
        train_many(cfgs, outs, progress=False, log=lambda m: None)
    for o in outs:
        assert (o / "checkpoint.pt").is_file() and not (o / "result.json").exists()
    monkeypatch.undo()
    many = train_many(cfgs, outs, progress=False, log=lambda m: None)
    for i, c in enumerate(cfgs):
        alone = train(c, tmp_path / f"a{i}", progress=False, log=lambda m: None)
        _close(alone["history"], many[i]["history"], rtol=2e-4)
        assert not (outs[i] / "checkpoint.pt").exists()


def test_a_pack_that_resumes_one_member_at_a_time_reads_each_checkpoint_once(tmp_path, monkeypatch):
    """Resumed with room for one member per pack, each member trains alone from the state the pack resumed: one
    "resuming" line per member, and the same history as an uninterrupted run."""
    cfgs = [TrainConfig(**BASE, model="mlp", epochs=2, **m) for m in CALM[:2]]
    outs = [tmp_path / f"m{i}" for i in range(2)]
    monkeypatch.setattr(train_mod, "_Stop", _StopAfter)
    with pytest.raises(KeyboardInterrupt):
        train_many(cfgs, outs, progress=False, log=lambda m: None)
    monkeypatch.undo()
    lines = []
    many = train_many(cfgs, outs, progress=False, log=lines.append, max_members=1)
    for i, c in enumerate(cfgs):
        assert sum(f"{outs[i]}: resuming" in line for line in lines) == 1, lines
        alone = train(c, tmp_path / f"a{i}", progress=False, log=lambda m: None)
        _close(alone["history"], many[i]["history"], rtol=2e-4)


def test_a_new_run_that_waited_for_the_lock_resumes_the_holders_checkpoint(tmp_path, monkeypatch):
    """train() on a new folder builds its run, then takes the lock (--wait). If the holder trained and was stopped
    meanwhile, its checkpoint is what the waiting run continues from: simulated by a lock whose taking puts an
    interrupted run's files into the folder."""
    import contextlib
    import shutil

    cfg = TrainConfig(**BASE, model="mlp", epochs=2, seed=0, eta=0.05)
    monkeypatch.setattr(train_mod, "_Stop", _StopAfter)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "holder", progress=False, log=lambda m: None)
    monkeypatch.undo()
    out = tmp_path / "r"
    real_lock = train_mod.folder_lock

    @contextlib.contextmanager
    def lock_after_the_holder(folder, **kw):
        for name in ("checkpoint.pt", "history.csv", "config.json"):
            shutil.copyfile(tmp_path / "holder" / name, out / name)
        with real_lock(folder, **kw):
            yield

    monkeypatch.setattr(train_mod, "folder_lock", lock_after_the_holder)
    lines = []
    resumed = train(cfg, out, progress=False, log=lines.append, wait=True)
    monkeypatch.undo()
    assert any("resuming at step" in line for line in lines), lines
    alone = train(cfg, tmp_path / "alone", progress=False, log=lambda m: None)
    assert resumed["steps"] == alone["steps"]
    _close(alone["history"], resumed["history"], rtol=1e-6)


def test_incompatible_runs_train_apart(tmp_path):
    cfgs = [TrainConfig(**BASE, model="mlp", epochs=1, seed=0, eta=0.05),
            TrainConfig(**{**BASE, "batch_size": 32}, model="mlp", epochs=1, seed=1, eta=0.05)]
    assert train_mod.batch_key(cfgs[0]) != train_mod.batch_key(cfgs[1])
    out = train_many(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False, log=lambda m: None)
    assert [r["steps"] for r in out] == [32, 16]
    with pytest.raises(ValueError, match="share an output folder"):
        train_many(cfgs, [tmp_path / "c", tmp_path / "c"], progress=False)


def test_a_sweep_packs_its_compatible_runs_and_gets_the_same_runs(tmp_path, capsys):
    """fig3 at smoke scale with packing (its two S each hold two runs) and without: the same final numbers to
    float32 round-off, and the log says what was packed."""
    from nets.experiments import fig3

    argv = ["--scale", "smoke", "--out", str(tmp_path / "packed"), "--device", "cpu", "--pack", "16"]
    assert fig3.main(argv) in (0, 1)
    assert "as one packed network" in capsys.readouterr().err
    assert fig3.main(["--scale", "smoke", "--out", str(tmp_path / "alone"), "--device", "cpu", "--pack", "1",
                      "--quiet"]) in (0, 1)
    import csv

    def rows(name):
        with open(tmp_path / name / "runs.csv", newline="") as f:
            return {r["key"]: r for r in csv.DictReader(f)}

    packed, alone = rows("packed"), rows("alone")
    assert packed.keys() == alone.keys() and len(packed) == 4
    for key in packed:
        for col in ("final_train_loss", "final_val_loss", "final_val_acc"):
            assert float(packed[key][col]) == pytest.approx(float(alone[key][col]), rel=1e-4, abs=1e-6), (key, col)


def test_the_plan_counts_the_packs_the_sweep_will_train(monkeypatch):

    from nets.experiments.plan import _pack_sizes, make_plan
    from nets.experiments.sweep import RunSpec

    cfgs = [TrainConfig(**BASE, model="mlp", epochs=1, seed=i, eta=0.05) for i in range(3)]
    cfgs.append(TrainConfig(**{**BASE, "batch_size": 32}, model="mlp", epochs=1, seed=0, eta=0.05))
    specs = [RunSpec(c) for c in cfgs]
    cpu = torch.device("cpu")
    assert [_pack_sizes(specs, 16, cpu)[s.key()] for s in specs] == [3, 3, 3, 1]
    assert [_pack_sizes(specs, 2, cpu)[s.key()] for s in specs] == [2, 2, 1, 1]
    # A memory that holds two members (their parameters and activations): train_many's split, which the plan counts.
    _, state, activations = train_mod._training_memory(cfgs[0], (1, 28, 28), 10, 16)
    memory = int(2.5 * (2 * state + activations) / train_mod.MEMORY_SHARE)
    monkeypatch.setattr(train_mod, "machine_memory", lambda: memory)
    assert train_mod.pack_capacity(cfgs[0], (1, 28, 28), 10, "cpu", 512) == 2
    assert [_pack_sizes(specs, 16, cpu)[s.key()] for s in specs] == [2, 2, 1, 1]
    monkeypatch.undo()
    plan = make_plan("t", "smoke", specs, device="cpu", pack=16, steps=2)
    assert all(math.isfinite(r.seconds) and r.seconds > 0 for r in plan.runs)


def test_runs_pack_only_with_equal_batch_sizes_and_the_plan_knows_it():
    """Cyclic learning rates and constant runs step with equal batch sizes and pack together; cyclic batch sizes do
    not join them. The plan's packs are the groups of equal per-step batch sizes (what train_many packs)."""
    from nets.experiments.plan import _pack_sizes
    from nets.experiments.sweep import RunSpec

    common = dict(BASE, model="mlp", epochs=2, eta=0.05, cycle_epochs=1.0, cycle_low=0.25)
    cfgs = [TrainConfig(**common, seed=i, schedule=kind) for kind in ("clr", "constant", "cbs") for i in range(3)]
    specs = [RunSpec(c) for c in cfgs]
    sizes = _pack_sizes(specs, 16, torch.device("cpu"))
    groups: dict = {}
    for c, spec in zip(cfgs, specs):
        sched = train_mod.make_schedule(c, 512)
        groups.setdefault((sched.steps, tuple(sched.batch_sizes.tolist())), []).append(spec.key())
    assert sorted(len(g) for g in groups.values()) == [3, 6]
    assert all(sizes[k] == len(g) for g in groups.values() for k in g)
    assert train_mod.batch_key(cfgs[0]) == train_mod.batch_key(cfgs[3]) != train_mod.batch_key(cfgs[6])


def test_activation_memory_is_counted_per_example_on_the_meta_device():
    """The MLP's saved tensors per example, by hand: each hidden block saves the linear layer's input, the batch
    norm's input and the ReLU's output; the last linear layer saves its input (float32)."""
    from types import SimpleNamespace

    data = SimpleNamespace(input_shape=(1, 28, 28), num_classes=10)
    for width in (0.125, 1.0):
        h = int(256 * width)
        cfg = TrainConfig(**{**BASE, "width": width}, model="mlp")
        saved = train_mod._model_memory(cfg.model, data.input_shape, data.num_classes, width, True)[1]
        assert saved == 4 * (784 + 2 * h + 2 * 3 * h + h)


def test_activations_bound_the_pack_and_the_run(monkeypatch):
    """With 1 GiB of memory, ResNet56 at width 1/4 fits its parameters many times over but not a step's activations
    at S = 512 (about 1.5 MiB per example): the run is refused naming batch_size, and at S = 32 it fits, a pack
    holding fewer members than its parameters alone would allow."""
    from types import SimpleNamespace

    data = SimpleNamespace(input_shape=(3, 32, 32), num_classes=10)
    monkeypatch.setattr(train_mod, "machine_memory", lambda: 2**30)
    cfg = TrainConfig(**{**BASE, "width": 0.25}, model="resnet56")
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="width and batch_size must give a run that fits.*largest S = 512"):
        train_mod._check_model_fits(cfg, data, cpu, 512)
    train_mod._check_model_fits(cfg, data, cpu, 32)
    params, state, activations = train_mod._training_memory(cfg, data.input_shape, data.num_classes, 32)
    by_parameters = int(train_mod.MEMORY_SHARE * 2**30 // (2 * state))
    members = train_mod._members_that_fit(cfg, data.input_shape, data.num_classes, cpu, 32)
    assert 1 <= members < by_parameters and activations > 32 * 2**20
