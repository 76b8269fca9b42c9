"""Bad input on the network side (``nets.train``, ``nets.measure``, ``nets.experiments``): output files only where
they are ours, data checked before any run, one process per folder, every option refused before the work, and
honest outcomes for damaged runs and diverged ones. Commands run in-process (``main(argv)``); a refusal must come in
seconds (the work asked for would take minutes), as one line on stderr naming the option or file, with exit 2."""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout

import pytest

torch = pytest.importorskip("torch")

from cases import TINY_TRAIN, run_cli  # noqa: E402

from nets import data as data_mod  # noqa: E402
from nets import train as train_mod  # noqa: E402
from nets.experiments import eq7, fig3  # noqa: E402
from nets.measure import main as measure_main  # noqa: E402
from sgd_noise_common.files import jsonable, write_json_atomic  # noqa: E402
from sgd_noise_common.lock import LOCK_NAME, folder_lock  # noqa: E402

TINY = TINY_TRAIN
QUICK = 10.0  # seconds: argument, path and data checks only


def _run(main, argv, capsys):
    return run_cli(main, argv, capsys)[:3]


def _refused(result, *words):
    """Exit 2 in seconds, with one error line naming ``words`` (an experiment prints its plan line before it)."""
    code, err, secs = result
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and "runs of" in lines[0]), err
    err = lines[-1]
    assert err.startswith("python -m "), err
    for w in words:
        assert w in err, (w, err)
    assert secs < QUICK, secs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- class 1: file options write only where ours
def test_measure_json_never_replaces_what_is_not_its_own(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}\n')
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.json").symlink_to(mine)
    heavy = ["--measure-size", "100000"]  # refused before the measurement would even start
    cases = [(mine, "no sgd-noise output stamp"), (run / "config.json", "own files"),
             (run / "model.pt", "own files"), (run / "result.json", "own files"),
             (run / "history.csv", "own files"), (tmp_path / "pipe", "a named pipe"), (Path_dev_null(), "a device"),
             (tmp_path / "link.json", "symbolic link")]
    for path, what in cases:
        _refused(_run(measure_main, [str(run), "--json", str(path)] + heavy, capsys), "--json", what)
    assert mine.read_text() == '{"my": "notes"}\n'
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Its own result, in the run folder's own place for it, may be written and then replaced.
    out = run / "measure.json"
    args = [str(run), "--json", str(out), "--measure-size", "64", "--probes", "2", "--trace-rtol", "0.5"]
    assert _run(measure_main, args, capsys)[0] == 0
    assert json.loads(out.read_text())["sgd_noise"]["kind"] == "nets.measure"
    assert _run(measure_main, args, capsys)[0] == 0
    # ... but not a result of another kind.
    write_json_atomic(tmp_path / "plan.json", {"runs": []}, kind="nets.experiments.plan")
    _refused(_run(measure_main, [str(run), "--json", str(tmp_path / "plan.json")] + heavy, capsys),
             "--json", "nets.experiments.plan output")


def Path_dev_null():
    from pathlib import Path

    return Path("/dev/null")


def test_the_plan_json_and_the_experiment_folder_are_checked(tmp_path, capsys):
    mine = tmp_path / "plan.json"
    mine.write_text("my plan\n")
    _refused(_run(fig3.main, ["--plan", "--json", str(mine), "--calibrate-steps", "0"], capsys), "--json",
             "no sgd-noise output stamp")
    assert mine.read_text() == "my plan\n"
    # An experiment into a run folder, and a run into an experiment folder: folders of another kind.
    run = tmp_path / "run"
    assert train_mod.main(TINY + ["--epochs", "0.1", "--out", str(run)]) == 0
    capsys.readouterr()
    _refused(_run(fig3.main, ["--out", str(run), "--quiet"], capsys), "--out", "run folder")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".sgd-noise").write_text(json.dumps({"kind": "experiment", "files": {}}))
    _refused(_run(train_mod.main, TINY + ["--epochs", "1000", "--out", str(exp)], capsys), "--out",
             "experiment folder")


# ---------------------------------------------------------------- class 3: experiments check their data first
def test_experiments_refuse_a_missing_or_damaged_dataset_before_any_run(tmp_path, capsys):
    _refused(_run(fig3.main, ["--scale", "small", "--data-root", str(tmp_path / "NOT-THERE"), "--out",
                              str(tmp_path / "e1"), "--quiet"], capsys), "--data-root", "NOT-THERE")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(_run(eq7.main, ["--scale", "small", "--data-root", str(empty), "--out", str(tmp_path / "e2"),
                             "--quiet"], capsys), "--data-root", "no Fashion-MNIST")
    # A truncated file (a small dataset written in the real format, then cut): found before the first run.
    root = tmp_path / "fm"
    root.mkdir()
    rng = __import__("numpy").random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
        data_mod.write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        data_mod.write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    blob = (root / "train-images-idx3-ubyte.gz").read_bytes()
    (root / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    for module, name in ((fig3, "e3"), (eq7, "e4")):
        _refused(_run(module.main, ["--scale", "smoke", "--dataset", "fashion-mnist", "--data-root", str(root),
                                    "--out", str(tmp_path / name), "--quiet"], capsys),
                 "train-images-idx3-ubyte.gz", "corrupt")
        assert not (tmp_path / name).exists()


# ---------------------------------------------------------------- class 4: one process per folder
_HOLD = ("import sys, time; from sgd_noise_common.lock import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_in_a_locked_folder_is_refused_naming_the_holder(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path / "r")
    holder = _holder(run, 60)
    try:
        _refused(_run(train_mod.main, TINY + ["--epochs", "1", "--eta", "0.2", "--out", str(run)], capsys),
                 "--out", "in use by process", str(holder.pid))
        _refused(_run(measure_main, [str(run), "--json", str(tmp_path / "m.json")], capsys), "RUN",
                 "in use by process", str(holder.pid))
        exp = tmp_path / "exp"
        exp.mkdir()
        holder2 = _holder(exp, 60)
        try:
            _refused(_run(fig3.main, ["--out", str(exp), "--quiet"], capsys), "--out", str(holder2.pid))
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock file may remain, but the lock died with it and is taken over.
    (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": "x", "command": "killed", "since": 0}))
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(run)], capsys)
    assert code == 0 and "finished already" in err


def test_wait_waits_for_the_holder(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    holder = _holder(run, 1.5)
    try:
        t0 = time.perf_counter()
        code, err, _ = _run(train_mod.main, TINY + ["--epochs", "0.1", "--out", str(run), "--wait"], capsys)
        assert code == 0 and "waiting" in err and time.perf_counter() - t0 > 1.0, err
    finally:
        holder.wait()
    assert not (run / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with folder_lock(tmp_path):
        with folder_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------- class 5: every option before the work
@pytest.mark.parametrize("option,value,words", [
    ("--weight-decay", "nan", ["--weight-decay", "finite"]), ("--weight-decay", "inf", ["--weight-decay", "finite"]),
    ("--momentum", "nan", ["--momentum"]), ("--eta", "inf", ["--eta", "finite"]),
    ("--cycle-low", "nan", ["--cycle-low"]), ("--milestones", "10,,20", ["--milestones"]),
    ("--epochs", "nan", ["--epochs"]), ("--pad-to", "0", ["--pad-to"]),
])
def test_train_refuses_non_finite_and_out_of_range_values(tmp_path, capsys, option, value, words):
    out = tmp_path / "r"
    _refused(_run(train_mod.main, TINY + ["--epochs", "1000", "--out", str(out), option, value], capsys), *words)
    assert not out.exists()


@pytest.mark.parametrize("argv,words", [
    (["--batch-size", "0"], ["--batch-size", ">= 1"]), (["--alignment", "0"], ["--alignment", ">= 1"]),
    (["--top-k", "0"], ["--top-k", ">= 1"]), (["--top-k", "-3"], ["--top-k"]),
    (["--sharpness", "inf"], ["--sharpness"]), (["--sharpness", "nan"], ["--sharpness"]),
    (["--trace-rtol", "nan"], ["--trace-rtol"]), (["--probes", "1"], ["--probes"]),
    (["--seed", "-1"], ["--seed"]), (["--measure-size", "1"], ["--measure-size"]),
    (["--device", "tpu"], ["--device"]), (["--top-k", "100000000"], ["--top-k must lie"]),
    (["--alignment", "1000000"], ["--alignment must lie"]), (["--probes", "1000000000"], ["--probes"]),
])
def test_measure_refuses_bad_options_before_measuring(finished_run, tmp_path, capsys, argv, words):
    _refused(_run(measure_main, [str(finished_run), "--json", str(tmp_path / "m.json")] + argv, capsys), *words)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("field,value", [("eta", "0.1"), ("batch_size", 12.5), ("milestones", "60,100"),
                                         ("batch_norm", "yes"), ("width", None)])
def test_an_edited_config_with_a_wrong_type_is_named(finished_run, tmp_path, capsys, field, value):
    run = _copy(finished_run, tmp_path / "r")
    for name in ("config.json", "result.json"):
        raw = json.loads((run / name).read_text())
        (raw if name == "config.json" else raw["config"])[field] = value
        (run / name).write_text(json.dumps(raw))
    _refused(_run(measure_main, [str(run), "--json", str(tmp_path / "m.json")], capsys), field)
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(run)], capsys)
    assert code == 2 and field in err and "Traceback" not in err


def test_every_config_field_has_its_option_and_comes_back_from_it():
    # TrainConfig is the one declaration: an option per field, with help, and the configuration back from the command
    # line, field for field, at values none of which is the default.
    from sgd_noise_common.cli import option_name

    parser = train_mod.build_parser()
    options = {s: a for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(train_mod.TrainConfig):
        assert options[option_name(train_mod.TrainConfig, f.name)].help, f.name
    assert train_mod.config_from_args(parser.parse_args(["--out", "r"])) == train_mod.TrainConfig()
    cfg = train_mod.TrainConfig(dataset="synthetic-cifar", model="vgg11", width=0.5, batch_norm=False, eta=0.2,
                                batch_size=64, momentum=0.9, dampening=0.1, weight_decay=5e-4, epochs=3.5,
                                schedule="step", cycle_epochs=2.0, cycle_low=0.5, decay_factor=0.5, decay_every=2.0,
                                milestones=(1.0, 2.5), decay_target="batch_size", train_size=500, test_size=100,
                                eval_train_size=200, pad_to=40, data_root="/data", synthetic_size=1024, seed=3,
                                data_seed=4, device="cpu", eval_batch_size=50, evals_per_epoch=2, fdr=True,
                                compile=True)
    default = train_mod.TrainConfig()
    assert all(getattr(cfg, f.name) != getattr(default, f.name) for f in dataclasses.fields(cfg))
    argv = ["--out", "r"]
    for f in dataclasses.fields(cfg):
        value, option = getattr(cfg, f.name), option_name(train_mod.TrainConfig, f.name)
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + option[2:])
        else:
            argv += [option, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    assert train_mod.config_from_args(parser.parse_args(argv)) == cfg
    # config.json is read back with the same fields' types; the fields every saved configuration has.
    assert train_mod._REQUIRED == ("dataset", "model", "eta", "batch_size", "epochs", "seed")
    assert train_mod.config_from_dict(cfg.to_dict(), source="x") == cfg
    with pytest.raises(ValueError, match="x: eval_batch_size must be an integer, got 1.5"):
        train_mod.config_from_dict(dict(cfg.to_dict(), eval_batch_size=1.5), source="x")


# ---------------------------------------------------------------- class 7: honest outcomes
@pytest.mark.parametrize("damage", ["config-truncated", "config-missing", "model-bitflip", "model-missing"])
def test_a_damaged_finished_run_is_not_skipped_and_the_advice_works(finished_run, tmp_path, capsys, damage):
    run = _copy(finished_run, tmp_path / "r")
    if damage == "config-truncated":
        (run / "config.json").write_text((run / "config.json").read_text()[:40])
    elif damage == "config-missing":
        (run / "config.json").unlink()
    elif damage == "model-bitflip":  # same size, one byte changed deep inside the weights: loads, but is not ours
        blob = bytearray((run / "model.pt").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (run / "model.pt").write_bytes(bytes(blob))
    else:
        (run / "model.pt").unlink()
    argv = TINY + ["--epochs", "1", "--out", str(run)]
    code, err, _ = _run(train_mod.main, argv, capsys)
    assert code == 2 and "skipped" not in err and "delete the folder" in err, err
    shutil.rmtree(run)  # the advice
    code, err, _ = _run(train_mod.main, argv, capsys)
    assert code == 0
    assert _run(measure_main, [str(run), "--json", str(tmp_path / "m.json"), "--measure-size", "64", "--probes",
                               "2", "--trace-rtol", "0.5"], capsys)[0] == 0


@pytest.mark.parametrize("schedule", ["constant", "cbs"])
def test_a_diverged_run_records_the_epoch_of_its_failing_step(tmp_path, schedule):
    """The epoch of the failing step (not of the one after it), in the history's units (examples seen / N), with
    that step's own batch size, also when the batch size changes every step."""
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", synthetic_size=512, model="mlp", width=0.125,
                                batch_norm=False, eta=1e3, batch_size=100, epochs=40, schedule=schedule,
                                cycle_epochs=1.0, evals_per_epoch=4)
    res = train_mod.train(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    div = res["diverged"]
    assert div is not None and div["step"] >= 2
    sizes = train_mod.make_schedule(cfg, 512).batch_sizes
    assert div["examples"] == int(sum(sizes[:div["step"]])) and div["batch_size"] == int(sizes[div["step"]])
    assert div["epoch"] == round(div["examples"] / 512, 4)
    assert all(row["epoch"] <= div["epoch"] for row in res["history"])  # the evaluations before the failure
    saved = json.loads((tmp_path / "r" / "result.json").read_text())["diverged"]
    assert saved == jsonable(div)  # the record whole, a NaN loss as null (strict JSON)


# ---------------------------------------------------------------- the second probe's members of each class
@pytest.fixture(scope="module")
def smoke_experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "fig3"
    with redirect_stdout(io.StringIO()):
        assert fig3.main(["--scale", "smoke", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_an_experiment_folder_is_its_experiments_alone(smoke_experiment, finished_run, tmp_path, capsys):
    from nets.experiments import fig4

    before = (smoke_experiment / "report.md").read_text()
    _refused(_run(fig4.main, ["--scale", "smoke", "--out", str(smoke_experiment), "--quiet"], capsys), "--out",
             "experiment.fig3.smoke")
    _refused(_run(fig3.main, ["--scale", "small", "--out", str(smoke_experiment), "--quiet"], capsys), "--out",
             "experiment.fig3.smoke")
    assert (smoke_experiment / "report.md").read_text() == before
    # Its runs/ folder is its own too, and so is each run's measure.json (another run's measurement may not go there).
    _refused(_run(train_mod.main, TINY + ["--epochs", "1000", "--out", str(smoke_experiment / "runs")], capsys),
             "--out", "belongs to")
    run_dir = next((smoke_experiment / "runs").iterdir())
    _refused(_run(measure_main, [str(finished_run), "--json", str(run_dir / "measure.json")], capsys), "--json",
             "own files")


def test_all_writes_one_plan_and_one_folder_per_experiment(tmp_path, capsys):
    from nets.experiments import EXPERIMENTS
    from nets.experiments.__main__ import main as dispatch

    code, err, _ = _run(dispatch, ["all", "--plan", "--calibrate-steps", "0", "--json", str(tmp_path / "p.json")],
                        capsys)
    assert code == 0, err
    plans = {name: json.loads((tmp_path / f"p-{name}.json").read_text()) for name in EXPERIMENTS}
    assert all(p["sgd_noise"]["kind"] == "nets.experiments.plan" for p in plans.values())
    assert not (tmp_path / "p.json").exists()


def test_outputs_into_a_folder_in_use_are_refused(finished_run, tmp_path, capsys):
    from verification import noise_scale

    busy = _copy(finished_run, tmp_path / "busy")
    holder = _holder(busy, 60)
    try:
        _refused(_run(measure_main, [str(finished_run), "--json", str(busy / "elsewhere.json")], capsys), "--json",
                 str(holder.pid))
        report = tmp_path / "report"
        report.mkdir()
        (report / ".sgd-noise").write_text(json.dumps({"kind": "report", "files": {}}))
        holder2 = _holder(report, 60)
        try:
            _refused(_run(noise_scale.main, ["--json", str(report / "noise_scale.json")], capsys), "--json",
                     str(holder2.pid))
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("ext", ["jpg", "pgf", "raw", "webp"])
def test_a_figure_format_that_cannot_carry_the_stamp_is_refused_up_front(tmp_path, capsys, ext):
    from verification import ou_check

    _refused(_run(ou_check.main, ["--steps", "2000000", "--plot", str(tmp_path / f"f.{ext}")], capsys), "--plot",
             "unknown figure format")


def test_a_full_disk_during_training_is_bad_output(tmp_path, capsys, monkeypatch):
    def full(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(train_mod.torch, "save", full)
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "0.5", "--out", str(tmp_path / "r")], capsys)
    last = err.splitlines()[-1]  # after the first evaluation's line: the checkpoint is the first file written
    assert code == 2 and last.startswith("python -m nets.train: error: cannot write") and "checkpoint.pt" in last, err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["history-missing", "history-garbage"])
def test_a_finished_run_without_its_history_is_damaged(finished_run, tmp_path, capsys, damage):
    run = _copy(finished_run, tmp_path / "r")
    if damage == "history-missing":
        (run / "history.csv").unlink()
    else:
        (run / "history.csv").write_text("garbage\n")
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(run)], capsys)
    assert code == 2 and "history" in err and "skipped" not in err, err


@pytest.mark.parametrize("argv,words", [
    (["--epochs", "1e12"], ["--epochs", "steps"]),
    (["--width", "10000", "--epochs", "0.2"], ["--width must give a model", "GiB"]),
])
def test_a_run_that_cannot_fit_is_refused_with_an_estimate(tmp_path, capsys, argv, words):
    _refused(_run(train_mod.main, TINY + argv + ["--out", str(tmp_path / "r")], capsys), *words)
    assert not (tmp_path / "r").exists()


def test_a_run_whose_activations_cannot_fit_is_refused_naming_the_batch_size(tmp_path, capsys, monkeypatch):
    """ResNet56's parameters take 14 MB, but a step at S = 1024 saves about 6 GiB for its backward pass: with 8 GiB
    of memory the run is refused before any work, naming --width and --batch-size."""
    monkeypatch.setattr(train_mod, "machine_memory", lambda: 8 * 2**30)
    argv = ["--dataset", "synthetic-mnist", "--model", "resnet56", "--synthetic-size", "1024", "--batch-size", "1024",
            "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]
    _refused(_run(train_mod.main, argv, capsys), "--width and --batch-size must", "largest S = 1024", "activations")
    assert not (tmp_path / "r").exists()


def test_absurd_seed_counts_are_refused(tmp_path, capsys):
    _refused(_run(fig3.main, ["--seeds", "100000000", "--plan"], capsys), "--seeds")


def _cifar_folder(root, *, dtype="uint8", test=100):
    import pickle

    import numpy as np

    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test if name == "test_batch" else 60
        data = rng.integers(0, 256, (n, 3072)).astype(dtype)
        if dtype != "uint8":
            data = data * 3.7
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, n).tolist()}, fh)
    return root


def test_cifar_data_are_checked_whole_before_any_run(tmp_path, capsys):
    from nets.experiments import fig1

    floats = _cifar_folder(tmp_path / "floats", dtype="float64")
    _refused(_run(fig1.main, ["--scale", "smoke", "--dataset", "cifar10", "--data-root", str(floats), "--out",
                              str(tmp_path / "e1"), "--quiet"], capsys), "data_batch_1", "0..255")
    few = _cifar_folder(tmp_path / "few", test=100)  # the smoke scale validates on 256 test examples
    _refused(_run(fig1.main, ["--scale", "smoke", "--dataset", "cifar10", "--data-root", str(few), "--out",
                              str(tmp_path / "e2"), "--quiet"], capsys), "100 test examples", "test_size 256")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_messages_name_the_right_thing(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path / "r")
    blob = bytearray((run / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (run / "model.pt").write_bytes(bytes(blob))
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(run)], capsys)
    assert code == 2 and "model file" in err and "--model" not in err, err
    run2 = _copy(finished_run, tmp_path / "r2")
    for name in ("config.json", "result.json"):
        raw = json.loads((run2 / name).read_text())
        (raw if name == "config.json" else raw["config"]).pop("eta")
        (run2 / name).write_text(json.dumps(raw))
    _refused(_run(measure_main, [str(run2), "--json", str(tmp_path / "m.json")], capsys), "missing", "eta")


def test_a_check_does_not_put_figures_into_a_report_folder(tmp_path, capsys):
    from verification import fdr

    report = tmp_path / "report"
    report.mkdir()
    (report / ".sgd-noise").write_text(json.dumps({"kind": "report", "files": {}}))
    _refused(_run(fdr.main, ["--out", str(report), "--steps", "2000000"], capsys), "--out", "report folder")
