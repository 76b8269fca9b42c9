"""Nothing lost, nothing silently wrong. Every case a user found, as a test: the command or call, its exit
code and the message naming the parameter or file. The commands run in-process (``main(argv)``), so a bad output
path is refused in the time it takes to parse the arguments; each is given work that would take minutes, so a
quick refusal shows that no work was started."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from cases import CHECKS, TINY_TRAIN, run_cli

from quadratic import Quadratic
from sde import RunTooShort, simulate
from verification import __main__ as verify_all
from verification import fdr, ou_check

# Work that would take minutes if it were started: every refusal below must come long before that.
HEAVY = {"ou_check": ["--steps", "5000000"], "invariance": ["--chains", "200000"], "breakdown": ["--chains", "20000"],
         "fdr": ["--steps", "5000000"], "noise_scale": ["--pairs", "5000000"], "derive": ["--points", "5000000"]}
# Seconds: parsing and path checks only. The work above would take minutes; the margin covers a machine loaded by
# other jobs (a refusal took 5.2 s there with three processes on 2 cores), and still tells a refusal from the work.
QUICK = 20.0


def _run(main, argv, capsys):
    return run_cli(main, argv, capsys)[:3]


def _bad_outputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    return a_file


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_check_refuses_bad_output_paths_before_the_work(name, tmp_path, capsys):
    a_file = _bad_outputs(tmp_path)
    main = CHECKS[name].main
    cases = [(["--json", str(a_file / "x.json")], "--json", "not a folder"),
             (["--json", str(tmp_path)], "--json", "is a folder"),
             (["--json", "/proc/sgd-noise-test/x.json"], "--json", "cannot write")]
    if name == "ou_check":
        cases += [(["--plot", str(tmp_path / "f.xyz")], "--plot", "unknown figure format"),
                  (["--plot", str(a_file / "f.png")], "--plot", "not a folder")]
    cases += [(["--out", str(a_file)], "--out", "is a file")]
    for argv, option, what in cases:
        code, err, secs = _run(main, argv + HEAVY[name], capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and option in err and what in err, err
        assert secs < QUICK, (argv, secs)
    assert a_file.read_text() == "mine\n"


def test_a_check_refuses_a_figure_folder_holding_someone_elses_figures(tmp_path, capsys):
    (tmp_path / "fdr.png").write_bytes(b"not ours")
    code, err, _ = _run(fdr.main, ["--out", str(tmp_path)] + HEAVY["fdr"], capsys)
    assert code == 2 and "fdr.png" in err and "did not write" in err
    assert (tmp_path / "fdr.png").read_bytes() == b"not ours"


def test_the_report_refuses_bad_folders(tmp_path, capsys):
    a_file = _bad_outputs(tmp_path)
    code, err, _ = _run(verify_all.main, ["--seed", "-1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--seed" in err and not (tmp_path / "r").exists()
    code, err, secs = _run(verify_all.main, ["--out", str(a_file)], capsys)
    assert code == 2 and "--out" in err and "is a file" in err and secs < QUICK
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    code, err, _ = _run(verify_all.main, ["--out", str(mine)], capsys)
    assert code == 2 and "report.md" in err and (mine / "report.md").read_text() == "my notes\n"


def test_a_matrix_is_not_a_spectrum(tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.array([[2.0, 1.0], [1.0, 2.0]]))
    code, err, _ = _run(ou_check.main, ["--spectrum", f"file:{tmp_path / 'm.npy'}"], capsys)
    assert code == 2 and "m.npy" in err and "1-D" in err and "eigvalsh" in err


def test_a_run_too_short_to_settle_is_bad_input_not_a_failed_check(capsys):
    code, err, _ = _run(ou_check.main, ["--eta", "0.1", "--batch-size", "10", "--chains", "256", "--steps", "300"],
                        capsys)
    assert code == 2 and "too short: need steps >=" in err
    q = Quadratic.from_spectrum([1.0, 0.1])
    with pytest.raises(RunTooShort, match="steps=1 is too short") as info:
        simulate(q, 0.1, 10, steps=1, chains=4, rng=0)
    assert info.value.needed_steps > 1
    # Explicitly asked for, a short run is the user's choice.
    assert simulate(q, 0.1, 10, steps=2, chains=4, rng=0, burn_in=0).steps == 2


def test_simulate_names_its_bad_arguments():
    q = Quadratic.from_spectrum([1.0, 0.1])
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator or an integer seed >= 0, got 'abc'"):
        simulate(q, 0.1, 10, steps=1000, chains=4, rng="abc")
    with pytest.raises(ValueError, match=r"chains=1000000000000 needs about .* GiB"):
        simulate(q, 0.1, 10, steps=1000, chains=10**12, rng=0)


@pytest.mark.parametrize("argv,match", [(["--seed", "-1"], "--seed must be an integer >= 0"),
                                        (["--chains", "1000000000"], "chains=1000000000 needs about")])
def test_ou_check_names_the_option(argv, match, capsys):
    code, err, secs = _run(ou_check.main, argv, capsys)
    assert code == 2 and match in err and err.count("\n") == 1 and secs < QUICK


def test_a_failed_argument_check_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "figs"
    code, _, _ = _run(fdr.main, ["--eta", "-1", "--out", str(out)], capsys)
    assert code == 2 and not out.exists()


def test_python_m_imports_its_module_once():
    # runpy warns "'nets.train' found in sys.modules" when the package imported the module before running it.
    for module in ("nets.train", "nets.measure", "verification.ou_check"):
        done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "found in sys.modules" not in done.stderr, done.stderr[-500:]


# --------------------------------------------------------------------------------------------- the torch part
torch = pytest.importorskip("torch")

from nets import train as train_mod  # noqa: E402
from nets.curvature import HessianOperator, hessian_stats  # noqa: E402
from nets.experiments import fig3  # noqa: E402
from nets.measure import main as measure_main  # noqa: E402

TINY = TINY_TRAIN


def test_train_never_overwrites_the_users_files(tmp_path, capsys):
    # A user's command, on synthetic data: a folder of the user's with config.json in it.
    for name in ("config.json", "model.pt", "history.csv"):
        t = tmp_path / name.replace(".", "_")
        t.mkdir()
        (t / name).write_bytes(b'{"my": "notes"}\n')
        code, err, secs = _run(train_mod.main, TINY + ["--epochs", "1000", "--out", str(t)], capsys)
        assert code == 2 and name in err and "did not write" in err and secs < QUICK, err
        assert (t / name).read_bytes() == b'{"my": "notes"}\n'
        assert sorted(p.name for p in t.iterdir()) == [name]


def test_train_validates_before_it_creates_the_folder(tmp_path, capsys):
    out = tmp_path / "new"
    code, err, _ = _run(train_mod.main, TINY + ["--eta", "-1", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2 and "eta must be > 0" in err and not out.exists()
    code, err, _ = _run(train_mod.main, TINY + ["--batch-size", "100000", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2 and "--batch-size must be <=" in err and not out.exists()
    code, err, _ = _run(train_mod.main, TINY + ["--seed", "-1", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2 and "seed" in err and not out.exists()
    a_file = _bad_outputs(tmp_path)
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1000", "--out", str(a_file)], capsys)
    assert code == 2 and "--out" in err and "is a file" in err


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_our_folder_is_resumed_or_skipped(finished_run, capsys):
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(finished_run)], capsys)
    assert code == 0 and "finished already, skipped" in err


@pytest.mark.parametrize("name,what", [("result.json", "run result"), ("model.pt", "model file"),
                                       ("config.json", "run configuration")])
def test_corrupt_run_files_are_named(finished_run, tmp_path, name, what, capsys):
    run = _copy_run(finished_run, tmp_path / "r")
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])  # truncated, as by a crash
    if name == "result.json":
        code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--out", str(run)], capsys)
    else:
        code, err, _ = _run(measure_main, [str(run), "--json", str(tmp_path / "m.json"), "--measure-size", "64",
                                           "--probes", "2"], capsys)
    assert code == 2 and str(run / name) in err and what in err and "corrupt" in err, err
    assert err.count("\n") == 1


def test_a_corrupt_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "r"
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", model="mlp", width=0.125, batch_size=32, epochs=1,
                                evals_per_epoch=4)

    def interrupt(msg):  # Ctrl-C during the first evaluation: the run stops at the end of it, with a checkpoint
        if msg.startswith("epoch 0.25"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, run, progress=False, log=interrupt)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    code, err, _ = _run(train_mod.main, TINY + ["--epochs", "1", "--evals-per-epoch", "4", "--out", str(run)], capsys)
    assert code == 2 and str(ckpt) in err and "delete it to restart the run" in err
    assert ckpt.exists()  # nothing deleted automatically


def test_measure_refuses_a_bad_json_path_before_measuring(finished_run, tmp_path, capsys):
    a_file = _bad_outputs(tmp_path)
    code, err, secs = _run(measure_main, [str(finished_run), "--json", str(a_file / "m.json"), "--measure-size",
                                          "2048", "--probes", "1000", "--trace-rtol", "0.001"], capsys)
    assert code == 2 and "--json" in err and "not a folder" in err and secs < QUICK


def test_experiments_refuse_bad_folders_and_say_why_runs_failed(tmp_path, capsys):
    a_file = _bad_outputs(tmp_path)
    code, err, secs = _run(fig3.main, ["--out", str(a_file), "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "--out" in err and "is a file" in err and secs < QUICK
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("notes\n")
    code, err, _ = _run(fig3.main, ["--out", str(mine), "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "report.md" in err and (mine / "report.md").read_text() == "notes\n"
    code, err, _ = _run(fig3.main, ["--out", str(tmp_path / "x"), "--workers", "0", "--quiet"], capsys)
    assert code == 2 and "--workers" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["weights", "inputs"])
def test_non_finite_models_are_refused_before_any_solver(where):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 3, (16,))
    if where == "weights":
        with torch.no_grad():
            model[1].weight[0, 0] = float("nan")
    else:
        x[3, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="not finite|NaN or inf"):
        hessian_stats(HessianOperator(model, torch.nn.functional.cross_entropy, x, y, batch_size=8), min_probes=2,
                      rng=0)
