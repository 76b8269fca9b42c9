"""The full scale is the paper's setting, nothing is substituted in silence, a diverged run is a result.

The planned settings of every experiment (``--plan --json``, without training or timing) are checked against the
numbers of the paper (../shared/paper.md), quoted beside each check."""

import csv
import io
import json
import math
import pickle
from contextlib import redirect_stdout

import numpy as np
import pytest

pytest.importorskip("torch")

from nets import train as train_mod  # noqa: E402
from nets.experiments import EXPERIMENTS, fig1, fig2, fig3, fig4, fig5  # noqa: E402
from nets.experiments import __main__ as dispatch  # noqa: E402


def _cifar(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (12, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 12))}, fh)
    return root


def _plan(name, tmp_path, capsys, *extra):
    path = tmp_path / f"{name}-plan.json"
    with redirect_stdout(io.StringIO()):
        code = dispatch.main([name, "--scale", "full", "--plan", "--calibrate-steps", "0", "--json", str(path),
                              *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(path.read_text()), err


def test_full_scale_refuses_to_substitute_cifar10(tmp_path, capsys):
    for name in ("fig1", "fig2", "fig4", "fig5"):
        out = tmp_path / name
        with redirect_stdout(io.StringIO()):
            code = dispatch.main([name, "--scale", "full", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "--data-root" in err and "data_batch_1" in err and "test_batch" in err and "--dataset" in err
        assert not out.exists()  # before any run


def test_every_experiment_plans_its_full_scale(tmp_path, capsys):
    root = _cifar(tmp_path)
    for name in EXPERIMENTS:
        plan, err = _plan(name, tmp_path, capsys, "--data-root", str(root))
        assert err.startswith(f"{name} (full): ")  # the plan line: panels, models, datasets, runs, epochs
        for run in plan["runs"]:
            assert {"model", "dataset", "eta", "batch_size", "epochs", "seed", "train_size", "schedule"} <= run.keys()
            assert run["model"] in ("mlp", "vgg11", "resnet56") and run["dataset"] in ("fashion-mnist", "cifar10")
            assert "kind" in run["schedule"]
        assert plan["total_examples"] == sum(r["examples"] for r in plan["runs"]) > 0


def _runs(plan, **match):
    return [r for r in plan["runs"] if all(r["tags"].get(k) == v for k, v in match.items())]


def test_fig1_is_the_papers(tmp_path, capsys):
    plan, _ = _plan("fig1", tmp_path, capsys, "--data-root", str(_cifar(tmp_path)))
    runs = plan["runs"]
    # "VGG11 ... on the CIFAR10 dataset"; "repeated for 5 different random initializations"
    assert {r["model"] for r in runs} == {"vgg11"} and {r["dataset"] for r in runs} == {"cifar10"}
    assert sorted({r["seed"] for r in runs}) == [0, 1, 2, 3, 4] and {r["epochs"] for r in runs} == {200}
    clr, cbs = _runs(plan, run="clr")[0]["schedule"], _runs(plan, run="cbs")[0]["schedule"]
    # "a cyclic learning rate (CLR) schedule oscillating between 0.001 and 0.005 with a fixed batch size of S = 128"
    assert (clr["kind"], clr["eta_min"], clr["eta_max"], clr["batch_size"]) == ("clr", pytest.approx(0.001), 0.005,
                                                                                  128)
    # "a cyclic batch size (CBS) schedule oscillating between 128 and 640 while using a fixed learning rate 0.005"
    assert (cbs["kind"], cbs["batch_size_min"], cbs["batch_size_max"], cbs["eta"]) == ("cbs", 128, 640, 0.005)
    # "constant learning rate to batch size ratios of 0.001/128 versus 0.005/640"
    a, b = _runs(plan, run="const-a")[0], _runs(plan, run="const-b")[0]
    assert (a["eta"], a["batch_size"]) == (pytest.approx(0.001), 128)
    assert (b["eta"], b["batch_size"]) == (pytest.approx(0.005), 640)


def test_fig2_is_the_papers(tmp_path, capsys):
    plan, _ = _plan("fig2", tmp_path, capsys, "--data-root", str(_cifar(tmp_path)))
    for model, factor, milestones in (("resnet56", 0.1, [60, 100, 140, 180]),  # "by a factor of 10 on epochs 60,
                                      ("vgg11", 0.5, [25, 50, 75, 100, 125, 150, 175])):  # 100, 140, 180"; "by a
        runs = [r for r in plan["runs"] if r["model"] == model]                    # factor of 2 every 25 epochs"
        assert {r["dataset"] for r in runs} == {"cifar10"} and {r["epochs"] for r in runs} == {200}
        small = [r for r in runs if r["tags"]["run"] == "small-batch"]
        assert {r["batch_size"] for r in small} == {50}  # "a small batch size of 50"
        for r in runs:
            assert (r["schedule"]["kind"], r["schedule"]["factor"]) == ("step", factor)
            assert r["schedule"]["milestones"] == pytest.approx(milestones)
        eta0, s0 = small[0]["eta"], 50
        big = {r["tags"]["run"]: r for r in runs if r["tags"]["run"] != "small-batch" and r["seed"] == 0}
        k = big["linear"]["batch_size"] / s0
        assert k > 1 and big["linear"]["eta"] == pytest.approx(k * eta0)        # eta ~ S
        assert big["sqrt"]["eta"] == pytest.approx(math.sqrt(k) * eta0)         # eta ~ sqrt(S)
        assert big["fixed"]["eta"] == pytest.approx(eta0)                        # eta fixed


def test_fig3_is_the_papers(tmp_path, capsys):
    plan, _ = _plan("fig3", tmp_path, capsys)
    runs = plan["runs"]
    # "4-layer batch-normalized ReLU MLPs on Fashion-MNIST"; "run for 200 epochs"
    assert {r["model"] for r in runs} == {"mlp"} and {r["dataset"] for r in runs} == {"fashion-mnist"}
    assert {r["epochs"] for r in runs} == {200} and {r["train_size"] for r in runs} == {None}
    etas, sizes = sorted({r["eta"] for r in runs}), sorted({r["batch_size"] for r in runs})
    # "η ∈ [5e-3, 1e-1] and S ∈ [25, 1000]": the grid spans both ranges
    assert (etas[0], etas[-1], sizes[0], sizes[-1]) == (0.005, 0.1, 25, 1000)
    assert all(r["stages"] == ["measure"] for r in runs)


def test_fig4_is_the_papers(tmp_path, capsys):
    plan, _ = _plan("fig4", tmp_path, capsys, "--data-root", str(_cifar(tmp_path)))
    diff = [r for r in plan["runs"] if r["tags"]["run"] in ("high", "low")]
    same = [r for r in plan["runs"] if r["tags"]["run"].startswith("beta")]
    # "(a), (b): Resnet56 with different ratio"
    assert {r["model"] for r in diff} == {"resnet56"} and len({r["eta"] / r["batch_size"] for r in diff}) == 2
    # "(c), (d): VGG11 with the same ratio ... η = 0.1 × β, S = 50 × β"
    assert {r["model"] for r in same} == {"vgg11"}
    for r in same:
        beta = int(r["tags"]["run"][4:])
        assert (r["eta"], r["batch_size"]) == (pytest.approx(0.1 * beta), 50 * beta)
    assert len({int(r["tags"]["run"][4:]) for r in same}) >= 2
    assert {r["dataset"] for r in plan["runs"]} == {"cifar10"}


def test_fig5_is_the_papers(tmp_path, capsys):
    plan, _ = _plan("fig5", tmp_path, capsys, "--data-root", str(_cifar(tmp_path)))
    runs = plan["runs"]
    # "fixed ratio β × (η = 0.1) / β × (S = 50)"; "repeated 5 times with different random seeds"
    for r in runs:
        assert (r["eta"], r["batch_size"]) == (pytest.approx(0.1 * r["tags"]["beta"]), 50 * r["tags"]["beta"])
    assert sorted({r["seed"] for r in runs}) == [0, 1, 2, 3, 4]
    assert len({r["train_size"] for r in runs}) == 2  # "a smaller training set size in Fig. 5 (a) than in (b)"


def test_a_substitute_is_explicit_and_stated(tmp_path, capsys):
    plan, err = _plan("fig1", tmp_path, capsys, "--dataset", "fashion-mnist")
    assert {r["dataset"] for r in plan["runs"]} == {"fashion-mnist"} and "fashion-mnist" in err


def test_plan_estimates_time_from_a_calibration(tmp_path, capsys):
    path = tmp_path / "p.json"
    with redirect_stdout(io.StringIO()) as out:
        code = dispatch.main(["fig3", "--scale", "smoke", "--plan", "--calibrate-steps", "3", "--device", "cpu",
                              "--workers", "2", "--json", str(path)])
    assert code == 0
    plan = json.loads(path.read_text())
    assert all(r["seconds"] > 0 for r in plan["runs"])
    est = plan["estimate_seconds"]
    assert est["with_workers"] >= max(r["seconds"] for r in plan["runs"])
    assert est["with_workers"] == pytest.approx(max(est["one_worker"] / 2, max(r["seconds"] for r in plan["runs"])))
    assert "training examples" in out.getvalue() and "with 2 workers" in out.getvalue()


def test_a_diverged_run_is_a_result(tmp_path):
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", model="mlp", width=0.125, eta=1e4, batch_size=16,
                                epochs=1, synthetic_size=256)
    res = train_mod.train(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    div = res["diverged"]
    assert div is not None and div["step"] >= 0 and not math.isfinite(div["loss"]) and div["eta"] == 1e4
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["diverged"]["step"] == div["step"] and not (tmp_path / "r" / "model.pt").exists()
    again = train_mod.train(cfg, tmp_path / "r", progress=False, log=lambda m: None)  # a result: skipped
    assert again["diverged"]["step"] == div["step"]


def test_fig5_counts_a_diverged_run_as_a_break(tmp_path, monkeypatch, capsys):
    # A beta large enough that SGD diverges at smoke scale: (eta, S) = 64 * (100, 2) = (6400, 128); at beta = 1 the
    # batch-norm MLP survives eta = 100 at S = 2.
    st = fig5.Settings(eta0=100.0, batch_size=2, betas=(1, 64), train_sizes=(512,), tol=0.05, model="mlp", seeds=1)
    monkeypatch.setitem(fig5.SETTINGS, "smoke", st)
    out = tmp_path / "f5"
    with redirect_stdout(io.StringIO()):
        code = fig5.main(["--scale", "smoke", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "runs.csv")))
    big = [r for r in rows if r["beta"] == "64"]
    assert big and big[0]["diverged"] == "True" and big[0]["diverged_step"] != ""
    report = (out / "report.md").read_text()
    assert "Diverged runs" in report and " *" in report
    assert "N=512: beta* = 64" in report  # the divergence is the break


def test_a_run_of_an_earlier_version_is_recognised(tmp_path):
    # A config saved before dampening and milestones existed is the same run (the new fields at their defaults).
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", width=0.125, epochs=1)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("dampening", "milestones")}
    assert train_mod.same_config(old, cfg)
    assert not train_mod.same_config({**old, "eta": 0.2}, cfg) and not train_mod.same_config({**old, "x": 1}, cfg)


def test_bad_schedule_options_are_named():
    for field, value in (("decay_every", 0.0), ("cycle_epochs", -1.0), ("width", 0.0), ("train_size", 0)):
        with pytest.raises(ValueError, match=field):
            train_mod.TrainConfig(**{field: value}).validate()


def test_no_sync_per_step_in_the_training_loop():
    # The loop reads the loss back only every SYNC_EVERY steps and at evaluations (no .item()/float per step).
    import inspect

    src = inspect.getsource(train_mod._loop)
    assert ".item()" not in src and "float(loss" not in src
    assert train_mod.SYNC_EVERY >= 16


@pytest.mark.parametrize("module", [fig1, fig2, fig3, fig4, fig5])
def test_every_experiment_states_its_choices(module):
    for scale in ("smoke", "small", "full"):
        lines = module.choices(scale, None)
        assert lines and any(line.startswith("Not in the paper") for line in lines)


def test_the_plan_counts_fig4s_interpolations(tmp_path):
    """fig4's analysis (two lines of 31 points per seed; at each point a batch-norm pass over the training examples
    and the losses on the training and the test examples) is in its plan: seconds = examples / the model's
    calibrated evaluation rate, added once to both totals."""
    from nets.experiments import fig4

    path = tmp_path / "p.json"
    with redirect_stdout(io.StringIO()) as out:
        code = dispatch.main(["fig4", "--scale", "smoke", "--plan", "--calibrate-steps", "3", "--device", "cpu",
                              "--json", str(path)])
    assert code == 0
    plan = json.loads(path.read_text())
    est, rate = plan["estimate_seconds"], plan["calibration"][0]["eval_rate"]
    run = plan["runs"][0]  # smoke: the batch-norm MLP on synthetic data, fewer examples than EVAL_SIZE
    train, test = min(run["train_size"] or 512, fig4.EVAL_SIZE), 256
    pairs = {(r["tags"]["seed"], r["tags"]["panel"]) for r in plan["runs"]}
    assert len(plan["calibration"]) == 1 and len(pairs) == 2  # smoke: one model, one seed, two lines
    assert est["analysis"] == pytest.approx(2 * len(fig4.ALPHAS) * (2 * train + test) / rate)
    assert est["one_worker"] == pytest.approx(sum(r["seconds"] for r in plan["runs"]) + est["analysis"])
    assert "of which the analysis" in out.getvalue()
