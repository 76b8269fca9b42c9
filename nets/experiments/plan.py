"""What a sweep will cost, before anything is trained: every run, the examples it processes and an estimate of its
wall time on the chosen device, from a short timed calibration of each model.

The calibration times, for each distinct (model, width, batch norm, input shape), a few SGD steps at two small
batch sizes (``PROBE_BATCHES``; the step time is fitted as a + b·S and extrapolated, so no step at a large S is
ever timed), evaluation passes and Hessian-vector products, on random data of the dataset's shape on the device
the runs would use, each for about ``PROBE_SECONDS``; and it loads each dataset once. A run's estimate is its data
loading (once for training and once per stage), its training examples over the training rate at its batch size,
its evaluations (``evals_per_epoch`` per epoch, on the evaluation subset and the test set) over the evaluation
rate, and its stages from their own costs (``_stage_seconds``: Hessian-vector products at the measured HVP rate,
SGD steps at the training rate). With N workers (or GPUs) the sweep's time is bounded
below by the longest run and by the total over N; the plan reports the larger of the two (perfect packing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from nets.data import DATASET_FACTS

__all__ = ["RunPlan", "Plan", "calibrate", "make_plan", "run_examples", "test_examples"]

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
    analysis_seconds: float = 0.0  # the analysis after the sweep (e.g. fig4's interpolations), one process

    @property
    def total_examples(self) -> int:
        """Training examples over all runs."""
        return sum(r.examples for r in self.runs)

    @property
    def seconds_one_worker(self) -> float:
        """The sum of the runs' estimates and the analysis's."""
        return sum(r.seconds for r in self.runs) + self.analysis_seconds

    @property
    def seconds_workers(self) -> float:
        """With ``workers`` in parallel: the larger of the longest run and the runs' total over the workers, then
        the analysis."""
        longest = max((r.seconds for r in self.runs), default=0.0)
        return max(longest, sum(r.seconds for r in self.runs) / self.workers) + self.analysis_seconds

    def to_dict(self) -> dict:
        """As JSON data: ``runs`` (one object per run), totals, estimates and the calibration."""
        return {"experiment": self.experiment, "scale": self.scale, "device": self.device,
                "runs": [r.to_dict() for r in self.runs], "total_examples": self.total_examples,
                "estimate_seconds": {"one_worker": self.seconds_one_worker, "workers": self.workers,
                                     "with_workers": self.seconds_workers, "analysis": self.analysis_seconds},
                "calibration": self.calibration}

    def text(self) -> str:
        """The plan as a table and a summary, for the terminal."""
        lines = [f"{'key':12}  {'model':8} {'dataset':15} {'eta':>8} {'S':>5}  {'schedule':34} {'epochs':>6} "
                 f"{'seed':>4} {'N':>6} {'examples':>11} {'est.':>9}"]
        for r in self.runs:
            lines.append(f"{r.key:12}  {r.model:8} {r.dataset:15} {r.eta:8.4g} {r.batch_size:5d}  "
                         f"{_schedule_text(r.schedule):34} {r.epochs:6g} {r.seed:4d} "
                         f"{r.train_size if r.train_size else 'all':>6} {r.examples:11.4g} {_hms(r.seconds):>9}")
        analysis = f" (of which the analysis {_hms(self.analysis_seconds)})" if self.analysis_seconds else ""
        lines.append(f"{len(self.runs)} runs, {self.total_examples:.4g} training examples; estimated on "
                     f"{self.device}: {_hms(self.seconds_one_worker)} with one worker, "
                     f"{_hms(self.seconds_workers)} with {self.workers} workers/GPUs (perfect packing){analysis}")
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


def test_examples(cfg) -> int:
    """The size of a run's test set: ``test_size``, or the dataset's."""
    return cfg.test_size or DATASET_FACTS[cfg.dataset][2]


def run_examples(cfg) -> tuple[int, int]:
    """``(training examples, training-set size N)`` of a run: epochs × N."""
    n = cfg.train_size or DATASET_FACTS[cfg.dataset][1] or cfg.synthetic_size
    return int(math.ceil(cfg.epochs * n)), n


def _input_shape(cfg) -> tuple:
    from nets.train import padding

    shape = DATASET_FACTS[cfg.dataset][0]
    pad = padding(cfg)
    return (shape[0], pad, pad) if pad else shape


#: Batch sizes at which a model's step is timed: its time is fitted as a + b·S (a fixed cost per step, b per
#: example) and extrapolated to the runs' batch sizes, so that a plan never times a step at a large S.
PROBE_BATCHES = (8, 32)
#: Seconds of timed work per probe (after one warm-up step): enough to average a few steps of a small model,
#: one or two of a large one.
PROBE_SECONDS = 0.4


def _timed(fn, steps: int, sync) -> float:
    """Seconds per call of ``fn``: one warm-up call, then calls until ``PROBE_SECONDS`` have passed or ``steps``
    calls were timed (at least one). A warm-up that itself takes over 2·``PROBE_SECONDS`` is the timing (a large
    model on a CPU: the first call's extra cost is then a small part of it)."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    if first > 2 * PROBE_SECONDS:
        return first
    t0 = time.perf_counter()
    count = 0
    while True:
        fn()
        count += 1
        sync()
        elapsed = time.perf_counter() - t0
        if count >= steps or elapsed >= PROBE_SECONDS:
            return elapsed / count


def _syncer(dev):
    """A function that waits for ``dev``'s queued work (a no-op on the CPU), so that timings are of the work."""
    import torch

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return sync


def _step_fit(times: dict) -> tuple[float, float]:
    """(a, b) of a step time a + b·S from its times at the two ``PROBE_BATCHES`` (a >= 0, b > 0)."""
    s0, s1 = PROBE_BATCHES
    per_example = max((times[s1] - times[s0]) / (s1 - s0), 1e-12)
    return max(times[s0] - per_example * s0, 0.0), per_example


def calibrate_model(model: str, width: float, batch_norm: bool, input_shape, device, *,
                    eval_batch_size: int = 1000, steps: int = CALIBRATION_STEPS) -> dict:
    """A model's costs on ``device``, on random data of ``input_shape``: the SGD step time a + b·S (timed at
    ``PROBE_BATCHES``), the evaluation rate and the Hessian-vector-product rate (examples per second of one HVP
    pass over a measurement set, eval mode), the latter two for the stages after training."""
    import torch
    from torch.nn import functional as F

    from nets.curvature import HessianOperator
    from nets.evaluation import set_determinism
    from nets.models import build_model
    from nets.sgd import make_optimizer, sgd_step

    set_determinism()  # time the steps under the policy training runs under (nets.evaluation.DETERMINISM)
    dev = torch.device(device)
    net = build_model(model, tuple(input_shape), 10, width=width, batch_norm=batch_norm, seed=0).to(dev)
    opt = make_optimizer(net, eta=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    sync = _syncer(dev)
    times = {}
    for s in PROBE_BATCHES:
        x = torch.randn(s, *input_shape, generator=g).to(dev)
        y = torch.randint(0, 10, (s,), generator=g).to(dev)
        times[s] = _timed(lambda: sgd_step(net, opt, x, y, loss_fn=F.cross_entropy), steps, sync)
    s0, s1 = PROBE_BATCHES
    fixed, per_example = _step_fit(times)
    m = min(eval_batch_size, 64)
    xe = torch.randn(m, *input_shape, generator=g).to(dev)
    net.eval()
    with torch.no_grad():
        eval_rate = m / _timed(lambda: net(xe), steps, sync)
    # An HVP pass over m examples costs a + b·m: timed at two m, its rate taken per example (b), as the stages'
    # measurement sets are large (1 000 to 60 000 examples) and its fixed cost is then negligible.
    hvp_times = {}
    xh = torch.randn(s1, *input_shape, generator=g).to(dev)
    for mm in (s0, s1):
        op = HessianOperator(net, F.cross_entropy, xh[:mm], torch.randint(0, 10, (mm,), generator=g).to(dev),
                             batch_size=mm, bn_mode="eval")
        v = torch.randn(op.dim, generator=g).to(dev, op.dtype)
        hvp_times[mm] = _timed(lambda op=op, v=v: op.matvec_tensor(v), max(1, steps // 4), sync)
    hvp_rate = 1.0 / max((hvp_times[s1] - hvp_times[s0]) / (s1 - s0), hvp_times[s1] / s1 / 4, 1e-12)
    return {"model": model, "width": width, "batch_norm": batch_norm, "input_shape": list(input_shape),
            "device": str(dev), "step_fixed_s": fixed, "step_per_example_s": per_example, "eval_rate": eval_rate,
            "hvp_rate": hvp_rate, "probe_step_s": {str(k): v for k, v in times.items()},
            "probe_hvp_s": {str(k): v for k, v in hvp_times.items()}}


def calibrate_packed(model: str, width: float, batch_norm: bool, input_shape, device, members: int, *,
                     steps: int = CALIBRATION_STEPS) -> dict:
    """The step time a + b·S of ``members`` runs packed into one network (``nets.packed``), per member: the
    packed step's time over ``members``, timed at ``PROBE_BATCHES`` as ``calibrate_model`` times one run."""
    import torch

    from nets.evaluation import set_determinism
    from nets.models import build_model
    from nets.packed import PackedSGD, pack_models, packed_inputs, packed_loss

    set_determinism()
    dev = torch.device(device)
    net = pack_models([build_model(model, tuple(input_shape), 10, width=width, batch_norm=batch_norm,
                                   seed=i).to(dev) for i in range(members)])
    net.train()
    opt = PackedSGD(net, lrs=[1e-3] * members, momenta=[0.0] * members, dampenings=[0.0] * members,
                    weight_decays=[0.0] * members)
    g = torch.Generator(device="cpu").manual_seed(0)
    sync = _syncer(dev)
    times = {}
    for s in PROBE_BATCHES:
        x = packed_inputs([torch.randn(s, *input_shape, generator=g).to(dev) for _ in range(members)])
        y = torch.randint(0, 10, (s, members), generator=g).to(dev)

        def step(x=x, y=y):
            losses = packed_loss(net(x), y, members)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()

        times[s] = _timed(step, steps, sync) / members
    fixed, per_example = _step_fit(times)
    return {"members": members, "step_fixed_s": fixed, "step_per_example_s": per_example}


def train_rate(cal: dict, batch_size: int) -> float:
    """Training examples per second at ``batch_size`` from ``calibrate_model``'s step time a + b·S."""
    return batch_size / (cal["step_fixed_s"] + cal["step_per_example_s"] * batch_size)


def calibrate(model: str, width: float, batch_norm: bool, input_shape, batch_size: int, device,
              *, eval_batch_size: int = 1000, steps: int = CALIBRATION_STEPS) -> dict:
    """Training and evaluation examples per second of one model at ``batch_size`` (``calibrate_model``, its step
    time extrapolated to ``batch_size``).

    Returns:
        ``{"train_rate", "eval_rate", "hvp_rate"}`` in examples per second (and the settings timed).
    """
    cal = calibrate_model(model, width, batch_norm, input_shape, device, eval_batch_size=eval_batch_size,
                          steps=steps)
    return {**cal, "batch_size": batch_size, "train_rate": train_rate(cal, batch_size)}


def _stage_seconds(spec, cfg, n: int, cal: dict) -> float:
    """The stages after training, each from its own costs: Hessian-vector products at ``cal``'s HVP rate (the
    counts are each stage's typical ones, stated here), SGD steps at the training rate of their batch size."""
    hvp = cal["hvp_rate"]
    seconds = 0.0
    for name, kw in spec.stages.items():
        if name == "measure":
            # hessian_stats: Lanczos to 1e-4 (~40 HVPs) and the deflated trace (~30 + 2·probes), the noise's
            # per-example gradients (~3 passes), evaluations; all over the measurement set.
            m = min(kw.get("measure_size", 1000), n)
            seconds += (75 + 2 * kw.get("probes", 16)) * m / hvp
        elif name == "stationary":  # nets.stationary.BasinSettings fields (their defaults where absent)
            steps = sum(kw.get(k, d) for k, d in (("burn_in", 2000), ("mean_steps", 2000), ("record_steps", 4000),
                                                 ("anneal_steps", 0)))
            seconds += steps * cfg.batch_size / train_rate(cal, cfg.batch_size)
            # The minimum (about 8 HVPs per Newton iteration), the eigenpairs at the minimum and at the mean, the
            # deflated trace and Tr(C), over all N.
            k = kw.get("top_k", 10)
            seconds += (8 * kw.get("max_iter", 200) + 10 * k + 150) * n / hvp
            if kw.get("linearised", False):  # issue 20's laws: k(k+1)/2 second-order passes, at the mean and min
                m = kw.get("linearised_examples", 0) or n
                seconds += 2 * (k * (k + 1) / 2) * 2 * m / hvp
            # Batch sharpness (2 HVPs per batch of S), the escape's chains, the alignment's per-example gradients.
            seconds += 2 * kw.get("sharpness_batches", 0) * cfg.batch_size / hvp
            seconds += (kw.get("escape_steps", 0) * kw.get("escape_chains", 1) * cfg.batch_size
                        / train_rate(cal, cfg.batch_size))
            seconds += 2 * kw.get("alignment_examples", 0) * k / hvp
        elif name == "advise":  # nets.advise.core.advise_run's arguments (its defaults where absent)
            m, k = min(kw.get("examples", 2000), n), kw.get("top_k", 8)
            # Lanczos (~20k + 50), the density (4 x 40), the noise and the gradient over the measurement set; batch
            # sharpness and the top-k of 128 single batches of S.
            seconds += (20 * k + 50 + 4 * 40 + 20) * m / hvp + 128 * (k + 3) * cfg.batch_size / hvp
            betas = kw.get("betas") or [b for b in (1, 2, 4, 8, 16, 32, 64) if b * cfg.batch_size <= n]
            possible = [b for b in betas if b * cfg.batch_size <= n]
            for b in possible:  # verification: each seed trains the horizon and measures >= 4 checkpoints
                s = int(b * cfg.batch_size)
                seconds += kw.get("verify_seeds", 0) * (kw.get("epochs", 2.0) * n / train_rate(cal, s)
                                                        + 6 * m / hvp)
    return seconds


def _load_seconds(cfg) -> float:
    """Seconds to load a run's data (as each run and stage does), timed once: synthetic data, or the files."""
    from nets.data import load_dataset

    t0 = time.perf_counter()
    load_dataset(cfg.dataset, root=cfg.data_root, train_size=cfg.train_size, seed=cfg.data_seed,
                 synthetic_size=cfg.synthetic_size)
    return time.perf_counter() - t0


def _pack_sizes(specs, pack: int, device) -> dict:
    """Each spec's pack size when the sweep trains runs of one ``nets.train.batch_key`` together, ``pack`` at most
    and as many as the device's memory holds (``nets.train.pack_capacity``, as ``train_many`` splits them):
    key → members of its pack (1: alone)."""
    from nets.train import batch_key, pack_capacity

    groups: dict = {}
    first: dict = {}
    for spec in specs:
        key = batch_key(spec.train)
        key = key if key is not None else ("alone", spec.key())
        groups.setdefault(key, []).append(spec.key())
        first.setdefault(key, spec.train)
    sizes = {}
    for key, members in groups.items():
        if key[0] == "alone":
            sizes.update({k: 1 for k in members})
            continue
        cfg = first[key]
        fit = pack_capacity(cfg, _input_shape(cfg), 10, device, run_examples(cfg)[1])
        for a in range(0, len(members), pack):  # the sweep's packs, each split by train_many as memory allows
            chunk = members[a:a + pack]
            for b in range(0, len(chunk), fit):
                part = chunk[b:b + fit]
                sizes.update({k: len(part) for k in part})
    return sizes


def make_plan(name: str, scale: str, specs, *, device: str, workers: int = 1, log=None,
              steps: int = CALIBRATION_STEPS, pack: int | None = None, analysis=None) -> Plan:
    """Calibrate every distinct model set-up of ``specs`` on ``device`` and estimate each run.

    Args:
        name, scale: the experiment and its scale (for the record).
        specs: the sweep's ``RunSpec`` list.
        device: where the runs would train (``"auto"``, ``"cpu"``, ``"cuda"``...).
        workers: runs in parallel (local workers or GPUs).
        log: progress messages (``None``: silent).
        steps: timed SGD steps per calibration; 0 lists the runs without timing them (estimates are NaN).
        pack: members per packed network, as the sweep will train them (``None``: the sweep's default for the
            device, 16 on a GPU and 1 on the CPU); a packed run's training rate is the packed step's per member
            (``calibrate_packed``).
        analysis: the experiment's analysis after the sweep as ``(spec, examples)`` pairs: forward passes over
            ``examples`` examples with ``spec``'s model, at its calibrated evaluation rate (an experiment's
            ``analysis_work``; ``None``: an analysis of negligible cost).
    """
    from nets.experiments.sweep import DEFAULT_GPU_PACK
    from nets.train import resolve_device

    dev = resolve_device(device)
    if pack is None:
        pack = DEFAULT_GPU_PACK if dev.type == "cuda" else 1
    pack_of = _pack_sizes(specs, pack, dev) if pack > 1 else {}
    packed_cache: dict[tuple, dict] = {}
    cache: dict[tuple, dict] = {}
    loads: dict[tuple, float] = {}
    runs = []
    for spec in specs:
        cfg = spec.train
        shape = _input_shape(cfg)
        setup = (cfg.model, cfg.width, cfg.batch_norm, shape)
        if setup not in cache and steps == 0:
            cache[setup] = {"model": cfg.model, "step_fixed_s": math.nan, "step_per_example_s": math.nan,
                            "eval_rate": math.nan, "hvp_rate": math.nan}
        if setup not in cache:
            if log:
                log(f"calibrating {cfg.model} (width {cfg.width:g}) on {dev} ...")
            cache[setup] = calibrate_model(cfg.model, cfg.width, cfg.batch_norm, shape, dev,
                                           eval_batch_size=cfg.eval_batch_size, steps=steps)
        cal = cache[setup]
        members = pack_of.get(spec.key(), 1)
        if members > 1 and steps:
            if (setup, members) not in packed_cache:
                if log:
                    log(f"calibrating {members} packed {cfg.model} (width {cfg.width:g}) on {dev} ...")
                packed_cache[(setup, members)] = calibrate_packed(cfg.model, cfg.width, cfg.batch_norm, shape, dev,
                                                                  members, steps=steps)
            cal = {**cal, **{k: packed_cache[(setup, members)][k] for k in ("step_fixed_s",
                                                                             "step_per_example_s")}}
        load = (cfg.dataset, cfg.train_size, cfg.data_root)
        if load not in loads:
            loads[load] = _load_seconds(cfg) if steps else math.nan
        examples, n = run_examples(cfg)
        test = test_examples(cfg)
        evals = math.ceil(cfg.epochs * cfg.evals_per_epoch)
        eval_examples = evals * (min(n, cfg.eval_train_size or n) + test)
        # Each run loads its data (and is loaded again by each stage), then trains, evaluates, and its stages run.
        seconds = (loads[load] * (1 + len(spec.stages)) + examples / train_rate(cal, cfg.batch_size)
                   + eval_examples / cal["eval_rate"] + _stage_seconds(spec, cfg, n, cal))
        runs.append(RunPlan(key=spec.key(), model=cfg.model, dataset=cfg.dataset, eta=cfg.eta,
                            batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed, train_size=cfg.train_size,
                            schedule=cfg.schedule_description(), tags=dict(spec.tags), examples=examples,
                            seconds=seconds, stages=sorted(spec.stages)))
    analysis_seconds = 0.0
    for spec, examples in analysis or ():
        cfg = spec.train
        analysis_seconds += examples / cache[(cfg.model, cfg.width, cfg.batch_norm, _input_shape(cfg))]["eval_rate"]
    return Plan(name, scale, str(dev), workers, runs, list(cache.values()), analysis_seconds)
