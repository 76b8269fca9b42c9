"""The GPU check: the toolkit's real GPU path, run end to end as a user runs it, each stage timed.

Stages (each ends with one line ``[stage NAME: ok|skipped|FAILED ... (T s)]``; a missing dataset or GPU is a
skipped stage or a stated fallback, never a traceback):

1. ``train``: ``python -m nets.train`` (the MLP without batch norm, with weight decay and the FDR observables, as
   eq7 trains it) interrupted by SIGINT once its first checkpoint exists, then run again to resume; the resumed
   history must equal an uninterrupted run's bit for bit (RNG states, sampler, momentum).
2. ``measure``: ``python -m nets.measure`` on that run with ``--top-k``, ``--density``, ``--landscape 2d``,
   ``--alignment`` and per-example noise (``--noise-method per_example``).
3. ``stationary``: eq7's stationary stage (``nets.stationary.basin_phase``, the function the sweep calls) at
   eq7's smoke settings, on the device.
4. ``sweep``: a smoke sweep on Ray, ``python -m nets.experiments fig3 --scale smoke --executor ray
   --gpus-per-run 0.25`` (a CPU run asks Ray for no GPU).
5. ``agreement``: CPU against the device for the convolutional HVP (eval-mode batch norm, float64) and for
   train-mode batch norm (the HVP and a training step's loss).
6. ``speed`` (GPU only): one epoch of the fig3 MLP, ResNet56's examples per second, the same with the compiled
   step (``--compile``, CUDA graphs) against eager, and the ``--plan`` estimate (GPU-hours) of each full figure.

Run: ``python benchmarks/gpu_check.py`` on a GPU machine (``--device cuda``, the default; exit 2 without one).
``--device cpu --tiny`` runs the same stages on the CPU at the smallest sizes (the test suite does).
Exit 0 when no stage failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "measure", "stationary", "sweep", "agreement", "speed")


class Skip(Exception):
    """A stage that cannot run here (no GPU, no dataset, asked to skip): its reason is printed, not a traceback."""


def _cli(args, *, env=None, timeout=None) -> subprocess.CompletedProcess:
    """A toolkit command, as a user runs it (``python -m ...``), from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


def _must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} exited {proc.returncode}: {' | '.join(tail)}")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _dataset(args) -> str:
    """The dataset of the stages: Fashion-MNIST when its files are there, else the synthetic stand-in (said)."""
    if args.dataset != "fashion-mnist":
        return args.dataset
    from nets.data import DataError, load_dataset

    try:
        load_dataset("fashion-mnist", root=args.data_root, train_size=16)
    except DataError as exc:
        print(f"  fashion-mnist not found ({str(exc).splitlines()[0][:120]}): skipped the real data, the stages use "
              "synthetic-mnist")
        return "synthetic-mnist"
    return "fashion-mnist"


def _train_argv(args, dataset: str, out: Path) -> list:
    size = ["--train-size", "512", "--test-size", "256", "--eval-train-size", "256", "--epochs", "2",
            "--evals-per-epoch", "4", "--width", "0.125"] if args.tiny else \
        ["--train-size", "20000", "--test-size", "2000", "--epochs", "3", "--evals-per-epoch", "4"]
    root = ["--data-root", args.data_root] if args.data_root and not dataset.startswith("synthetic") else []
    return ["-m", "nets.train", "--dataset", dataset, "--model", "mlp", "--no-batch-norm", "--weight-decay", "0.01",
            "--momentum", "0.9", "--batch-size", "32", "--eta", "0.05", "--fdr", "--seed", "1", "--quiet",
            "--device", args.device, *size, *root, "--out", str(out)]


def _history(run: Path) -> list:
    rows = list(csv.DictReader(open(run / "history.csv")))
    return [{k: v for k, v in r.items() if k not in ("examples_per_s", "seconds")} for r in rows]


def stage_train(args, work: Path, state: dict) -> str:
    dataset = state["dataset"] = _dataset(args)
    ref, run = work / "reference", work / "run"
    t0 = time.perf_counter()
    _must(_cli(_train_argv(args, dataset, ref), env=_env()), "the uninterrupted nets.train")
    secs = time.perf_counter() - t0
    proc = subprocess.Popen([sys.executable, *_train_argv(args, dataset, run)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (run / "checkpoint.pt").exists():
        time.sleep(0.01)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=600)
    _must(_cli(_train_argv(args, dataset, run), env=_env()), "the resumed nets.train")
    same = _history(ref) == _history(run)
    state["run"] = run
    if not same:
        raise RuntimeError("the interrupted and resumed run's history differs from the uninterrupted run's")
    how = "interrupted at its first checkpoint and resumed" if interrupted else \
        "finished before the signal (no interruption tested)"
    return f"{dataset}, {how}; history equal to an uninterrupted run's bit for bit; one run {secs:.1f} s"


def stage_measure(args, work: Path, state: dict) -> str:
    if "run" not in state:
        raise Skip("no trained run (the train stage did not finish)")
    out = work / "measure.json"
    size = ["--measure-size", "128"] if args.tiny else ["--measure-size", "1000"]
    _must(_cli(["-m", "nets.measure", str(state["run"]), "--json", str(out), *size, "--top-k", "2", "--density",
                "--landscape", "2d", "--alignment", "2", "--noise-method", "per_example", "--device", args.device],
               env=_env()), "nets.measure")
    import json

    m = json.loads(out.read_text())
    return (f"lambda_max {m['hessian']['lambda_max']:.4g}, Tr(H) {m['hessian']['trace']:.4g}, top-2 "
            f"{[round(v, 4) for v in m['top_eigenvalues']['eigenvalues']]}, alignment, density, 2-d slice written")


def stage_stationary(args, work: Path, state: dict) -> str:
    if "run" not in state:
        raise Skip("no trained run (the train stage did not finish)")
    from dataclasses import asdict, replace

    from nets.experiments.eq7 import SETTINGS
    from nets.stationary import basin_phase

    basin = SETTINGS["smoke"].basin
    if args.tiny:
        basin = replace(basin, burn_in=40, mean_steps=40, record_steps=80, window=20, measure_batch=256,
                        anneal_steps=20, alignment_examples=16)
    res = basin_phase(state["run"], device=args.device, seed=0, **asdict(basin))
    if not hasattr(res, "excess"):
        return f"eq7 stage on {args.device}: {type(res).__name__} (diverged: no stationary state at this setting)"
    return (f"eq7 stage on {args.device}: E(l) {res.excess:.3g} +- {res.excess_stderr:.2g}, eta/(4S) Tr(H) "
            f"{res.pred_h:.3g}, FDR ratio {res.fdr_recorded:.3g}")


def stage_sweep(args, work: Path, state: dict) -> str:
    if "sweep" in args.skip:
        raise Skip("asked (--skip sweep)")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise Skip("ray is not installed") from None
    gpus = "0.25"  # a CPU run asks Ray for no GPU whatever this says (nets.experiments.sweep)
    out = work / "sweep"
    _must(_cli(["-m", "nets.experiments", "fig3", "--scale", "smoke", "--executor", "ray", "--gpus-per-run", gpus,
                "--device", args.device, "--dataset", state.get("dataset", "synthetic-mnist"), "--quiet",
                "--out", str(out)], env=_env(), timeout=3600), "the Ray smoke sweep")
    return f"fig3 smoke on Ray, --gpus-per-run {gpus}: {out}"


def _conv_problem():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))
    return model, torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)


def stage_agreement(args, work: Path, state: dict) -> str:
    import numpy as np

    from nets.curvature import HessianOperator
    from nets.models import build_model

    dev = torch.device(args.device)
    worst = {}
    model, x, y = _conv_problem()
    for name, mdl, bn_mode in (("conv HVP (eval-mode batch norm)", model, "eval"),
                               ("train-mode batch norm HVP", build_model("mlp", (1, 8, 8), 10, width=0.125,
                                                                        seed=0), "train")):
        v = np.random.default_rng(0).standard_normal
        hv = {}
        for d in ("cpu", dev):
            op = HessianOperator(mdl, F.cross_entropy, x.to(d), y.to(d), batch_size=32, bn_mode=bn_mode,
                                 dtype=torch.float64, device=d)
            hv[str(d)] = op.matvec(v(op.dim))
        a, b = hv["cpu"], hv[str(dev)]
        worst[name] = float(np.abs(a - b).max() / np.abs(a).max())
    # A training step's loss in train-mode batch norm, float32 under the determinism policy.
    from nets.evaluation import set_determinism

    set_determinism()
    mlp = build_model("mlp", (1, 8, 8), 10, width=0.125, batch_norm=True, seed=0)
    losses = []
    for d in ("cpu", dev):
        m = mlp.to(d).train()
        losses.append(float(F.cross_entropy(m(x.to(d)), y.to(d)).detach()))
    worst["train-mode batch norm loss (float32)"] = abs(losses[0] - losses[1]) / abs(losses[0])
    trivially = " (the device is the CPU: trivially equal)" if dev.type == "cpu" else ""
    return "; ".join(f"{k}: relative difference {v:.1e}" for k, v in worst.items()) + trivially


def stage_speed(args, work: Path, state: dict) -> str:
    if not args.device.startswith("cuda"):
        raise Skip("speed and GPU-hour plans are measured on a GPU only")
    from nets.experiments.plan import calibrate

    parts = []
    for model, shape, bn in (("mlp", (1, 28, 28), True), ("resnet56", (3, 32, 32), True)):
        cal = calibrate(model, 1.0, bn, shape, 128, args.device, steps=30)
        parts.append(f"{model} {cal['train_rate']:.0f} training examples/s")
    # The opt-in compiled step (nets.train --compile: torch.compile, CUDA graphs) against eager, by the benchmark's
    # own timing (benchmarks/nets_speed.py, the folder of this script).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from nets_speed import compiled_comparison

    for model, eager, compiled in compiled_comparison(torch.device(args.device)):
        parts.append(f"{model} compiled {compiled:.0f} against eager {eager:.0f} examples/s ({compiled / eager:.2f}x)")
    proc = _cli(["-m", "nets.experiments", "all", "--scale", "full", "--plan", "--device", args.device],
                env=_env(), timeout=1800)
    hours = [line for line in proc.stdout.splitlines() if "h" in line and "plan" in line.lower()]
    for line in hours:
        print("  " + line)
    return "; ".join(parts) + ("" if proc.returncode == 0 else f"; --plan exited {proc.returncode}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the device of the check (default cuda; cpu with --tiny)")
    p.add_argument("--tiny", action="store_true", help="the smallest sizes (the CPU test)")
    p.add_argument("--dataset", default="fashion-mnist", help="the dataset (default fashion-mnist, else the "
                   "synthetic stand-in)")
    p.add_argument("--data-root", default=None, help="folder of the dataset files")
    p.add_argument("--skip", default="", help="comma-separated stages to skip: " + ", ".join(STAGES))
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    if args.skip - set(STAGES):
        p.error(f"--skip: unknown stage(s) {sorted(args.skip - set(STAGES))}; choose from {', '.join(STAGES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device (run --device cpu --tiny for the CPU rehearsal)", file=sys.stderr)
        return 2
    what = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"device: {args.device} ({what}), torch {torch.__version__}", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        state: dict = {}
        for name in STAGES:
            t0 = time.perf_counter()
            try:
                if name in args.skip:
                    raise Skip(f"asked (--skip {name})")
                detail = globals()[f"stage_{name}"](args, work, state)
                status = "ok"
            except Skip as exc:
                status, detail = "skipped", str(exc)
            except Exception as exc:  # a check reports a failing stage and goes on with the next
                status, detail = "FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                failed += 1
            print(f"[stage {name}: {status} ({time.perf_counter() - t0:.1f} s)] {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
