"""What a sweep will cost, before anything is trained: every run, the examples it processes and an estimate of its
wall time on the chosen device, from a short timed calibration of each model.

The calibration times a few dozen SGD steps (and evaluation passes) of each distinct (model, width, batch norm,
input shape, batch size) on random data of the dataset's shape, on the device the runs would use. A run's estimate
is its training examples over the measured training rate, plus its evaluations (``evals_per_epoch`` per epoch, on
the evaluation subset and the test set) over the measured evaluation rate, plus a rough allowance for the stages
after training (curvature measurements: about 70 + 2·probes Hessian-vector products of about 3 gradients each over
the measurement set; the stationary phase: its SGD steps). With N workers (or GPUs) the sweep's time is bounded
below by the longest run and by the total over N; the plan reports the larger of the two (perfect packing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from nets.data import DATASET_FACTS

__all__ = ["RunPlan", "Plan", "calibrate", "make_plan", "run_examples"]

#: SGD steps timed per calibration (after ``_WARMUP`` untimed ones): enough to average out the first steps' costs.
CALIBRATION_STEPS = 24
_WARMUP = 4


@dataclass
class RunPlan:
    """One run of the plan: what it trains, how much, and its estimated seconds."""

    key: str
    model: str
    dataset: str
    eta: float
    batch_size: int
    epochs: float
    seed: int
    train_size: int | None
    schedule: dict
    tags: dict
    examples: int
    seconds: float
    stages: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """As JSON data."""
        return dict(self.__dict__)


@dataclass
class Plan:
    """Every run, the total examples and the estimated wall time for one worker and for ``workers``."""

    experiment: str
    scale: str
    device: str
    workers: int
    runs: list
    calibration: list

    @property
    def total_examples(self) -> int:
        """Training examples over all runs."""
        return sum(r.examples for r in self.runs)

    @property
    def seconds_one_worker(self) -> float:
        """The sum of the runs' estimates."""
        return sum(r.seconds for r in self.runs)

    @property
    def seconds_workers(self) -> float:
        """With ``workers`` in parallel: the larger of the longest run and the total over the workers."""
        longest = max((r.seconds for r in self.runs), default=0.0)
        return max(longest, self.seconds_one_worker / self.workers)

    def to_dict(self) -> dict:
        """As JSON data: ``runs`` (one object per run), totals, estimates and the calibration."""
        return {"experiment": self.experiment, "scale": self.scale, "device": self.device,
                "runs": [r.to_dict() for r in self.runs], "total_examples": self.total_examples,
                "estimate_seconds": {"one_worker": self.seconds_one_worker, "workers": self.workers,
                                     "with_workers": self.seconds_workers},
                "calibration": self.calibration}

    def text(self) -> str:
        """The plan as a table and a summary, for the terminal."""
        lines = [f"{'key':12}  {'model':8} {'dataset':15} {'eta':>8} {'S':>5}  {'schedule':34} {'epochs':>6} "
                 f"{'seed':>4} {'N':>6} {'examples':>11} {'est.':>9}"]
        for r in self.runs:
            lines.append(f"{r.key:12}  {r.model:8} {r.dataset:15} {r.eta:8.4g} {r.batch_size:5d}  "
                         f"{_schedule_text(r.schedule):34} {r.epochs:6g} {r.seed:4d} "
                         f"{r.train_size if r.train_size else 'all':>6} {r.examples:11.4g} {_hms(r.seconds):>9}")
        lines.append(f"{len(self.runs)} runs, {self.total_examples:.4g} training examples; estimated on "
                     f"{self.device}: {_hms(self.seconds_one_worker)} with one worker, "
                     f"{_hms(self.seconds_workers)} with {self.workers} workers/GPUs (perfect packing)")
        return "\n".join(lines)


def _schedule_text(s: dict) -> str:
    kind = s["kind"]
    if kind == "clr":
        return f"clr eta {s['eta_min']:g}-{s['eta_max']:g} /{s['period_epochs']:g} ep"
    if kind == "cbs":
        return f"cbs S {s['batch_size_min']}-{s['batch_size_max']} /{s['period_epochs']:g} ep"
    if kind == "step":
        ms = ",".join(f"{m:g}" for m in s["milestones"][:6]) + ("..." if len(s["milestones"]) > 6 else "")
        return f"step {s['target']} x{s['factor']:g} at {ms}"
    return "constant"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run_examples(cfg) -> tuple[int, int]:
    """``(training examples, training-set size N)`` of a run: epochs × N."""
    n = cfg.train_size or DATASET_FACTS[cfg.dataset][1] or cfg.synthetic_size
    return int(math.ceil(cfg.epochs * n)), n


def _input_shape(cfg) -> tuple:
    from nets.train import padding

    shape = DATASET_FACTS[cfg.dataset][0]
    pad = padding(cfg)
    return (shape[0], pad, pad) if pad else shape


def calibrate(model: str, width: float, batch_norm: bool, input_shape, batch_size: int, device,
              *, eval_batch_size: int = 1000, steps: int = CALIBRATION_STEPS) -> dict:
    """Training and evaluation examples per second of one model on random data of ``input_shape``.

    Returns:
        ``{"train_rate", "eval_rate"}`` in examples per second (and the settings timed).
    """
    import torch
    from torch.nn import functional as F

    from nets.evaluation import set_determinism
    from nets.models import build_model
    from nets.sgd import make_optimizer, sgd_step

    set_determinism()  # time the steps under the policy training runs under (nets.evaluation.DETERMINISM)
    dev = torch.device(device)
    net = build_model(model, tuple(input_shape), 10, width=width, batch_norm=batch_norm, seed=0).to(dev)
    opt = make_optimizer(net, eta=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_size, *input_shape, generator=g).to(dev)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(_WARMUP):
        sgd_step(net, opt, x, y, loss_fn=F.cross_entropy)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        sgd_step(net, opt, x, y, loss_fn=F.cross_entropy)
    sync()
    train_rate = steps * batch_size / (time.perf_counter() - t0)
    xe = torch.randn(min(eval_batch_size, 1000), *input_shape, generator=g).to(dev)
    net.eval()
    with torch.no_grad():
        net(xe)
        sync()
        t0 = time.perf_counter()
        reps = max(2, steps // 4)
        for _ in range(reps):
            net(xe)
        sync()
    eval_rate = reps * xe.shape[0] / (time.perf_counter() - t0)
    return {"model": model, "width": width, "batch_norm": batch_norm, "input_shape": list(input_shape),
            "batch_size": batch_size, "device": str(dev), "train_rate": train_rate, "eval_rate": eval_rate}


def _stage_examples(spec, cfg, n: int) -> float:
    """Rough training-equivalent examples (gradient passes) of the stages after training."""
    grad_examples = 0.0
    for name, kw in spec.stages.items():
        if name == "measure":
            m = min(kw.get("measure_size", 1000), n)
            grad_examples += (70 + 2 * kw.get("probes", 16)) * 3 * m + 2 * m
        elif name == "stationary":  # nets.stationary.BasinSettings fields (their defaults where absent)
            steps = sum(kw.get(k, d) for k, d in (("burn_in", 2000), ("mean_steps", 2000), ("record_steps", 4000),
                                                 ("anneal_steps", 0)))
            grad_examples += steps * cfg.batch_size
            # The minimum (about 8 HVPs per Newton iteration), the eigenpairs and the deflated trace, over all N.
            hvps = 8 * kw.get("max_iter", 200) + 5 * kw.get("top_k", 10) + 100
            grad_examples += hvps * 3 * n
        elif name == "advise":  # nets.advise.core.advise_run's arguments (its defaults where absent)
            m, k = min(kw.get("examples", 2000), n), kw.get("top_k", 8)
            grad_examples += (3 * k + 30 + 4 * 40) * 3 * m + 128 * (k + 1) * 3 * cfg.batch_size
            betas = kw.get("betas") or [b for b in (1, 2, 4, 8, 16, 32, 64) if b * cfg.batch_size <= n]
            possible = [b for b in betas if b * cfg.batch_size <= n]
            # Verification: each possible beta and seed trains the horizon, and measures at >= 4 checkpoints.
            grad_examples += kw.get("verify_seeds", 0) * len(possible) * (kw.get("epochs", 2.0) * n + 6 * m)
    return grad_examples


def make_plan(name: str, scale: str, specs, *, device: str, workers: int = 1, log=None,
              steps: int = CALIBRATION_STEPS) -> Plan:
    """Calibrate every distinct model set-up of ``specs`` on ``device`` and estimate each run.

    Args:
        name, scale: the experiment and its scale (for the record).
        specs: the sweep's ``RunSpec`` list.
        device: where the runs would train (``"auto"``, ``"cpu"``, ``"cuda"``...).
        workers: runs in parallel (local workers or GPUs).
        log: progress messages (``None``: silent).
        steps: timed SGD steps per calibration; 0 lists the runs without timing them (estimates are NaN).
    """
    from nets.train import resolve_device

    dev = resolve_device(device)
    cache: dict[tuple, dict] = {}
    runs = []
    for spec in specs:
        cfg = spec.train
        shape = _input_shape(cfg)
        setup = (cfg.model, cfg.width, cfg.batch_norm, shape, cfg.batch_size)
        if setup not in cache and steps == 0:
            cache[setup] = {"model": cfg.model, "batch_size": cfg.batch_size, "train_rate": math.nan,
                            "eval_rate": math.nan}
        if setup not in cache:
            if log:
                log(f"calibrating {cfg.model} (width {cfg.width:g}) at S={cfg.batch_size} on {dev} ...")
            cache[setup] = calibrate(cfg.model, cfg.width, cfg.batch_norm, shape, cfg.batch_size, dev,
                                     eval_batch_size=cfg.eval_batch_size, steps=steps)
        cal = cache[setup]
        examples, n = run_examples(cfg)
        test = cfg.test_size or DATASET_FACTS[cfg.dataset][2]
        evals = math.ceil(cfg.epochs * cfg.evals_per_epoch)
        eval_examples = evals * (min(n, cfg.eval_train_size or n) + test)
        stage_grad = _stage_examples(spec, cfg, n)
        seconds = (examples + stage_grad) / cal["train_rate"] + eval_examples / cal["eval_rate"]
        runs.append(RunPlan(key=spec.key(), model=cfg.model, dataset=cfg.dataset, eta=cfg.eta,
                            batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed, train_size=cfg.train_size,
                            schedule=cfg.schedule_description(), tags=dict(spec.tags), examples=examples,
                            seconds=seconds, stages=sorted(spec.stages)))
    return Plan(name, scale, str(dev), workers, runs, list(cache.values()))
