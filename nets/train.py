"""``python -m nets.train``: train one network by SGD at a chosen η and S, with schedules for both.

A run is a folder: ``config.json``, ``history.csv`` (one row per epoch: train and validation loss and accuracy, η and
S, examples per second), ``checkpoint.pt`` (model, optimiser, sampler and step, written atomically after every
epoch and on Ctrl-C), and at the end ``model.pt`` and ``result.json``. Started again on the same folder, a finished
run is skipped and an interrupted one resumes from its checkpoint, drawing the same batches.

Schedules are functions of the examples seen (``sde.schedules.by_examples``), so that a cyclic learning rate and
its cyclic batch size twin have the same η/S at every point of every epoch: ``constant``; ``clr`` (η between
``cycle_low``·η and η, S fixed); ``cbs`` (η fixed, S(t) = S_min·η_max/η_CLR(t), between S and S/``cycle_low``);
``step`` (at each of the epochs ``milestones``, or every ``decay_every`` epochs when none are given, η is multiplied
by ``decay_factor``, or S divided by it with ``decay_target=batch_size``).

A run whose training loss becomes non-finite has diverged: that is a result, not an error. Training stops, and
``result.json`` records the step, epoch and loss at which it happened (``diverged``), beside the history up to
then; no ``model.pt`` is written. The loss is checked on the device and read back only every ``SYNC_EVERY`` steps
and at evaluations, so the training loop does not wait for the GPU after every step.

Example::

    python -m nets.train --dataset fashion-mnist --model mlp --eta 0.1 --batch-size 128 --epochs 5 --out runs/a
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from common.cli import Parser, float_list
from common.environment import environment
from common.files import atomic_write, check_output_dir, claim_output_dir, read_json, write_text_atomic
from nets.data import DATASETS, BatchSampler, DataError, ImageData, load_dataset
from nets.evaluation import evaluate
from nets.models import MODELS, build_model, count_parameters
from nets.sgd import make_optimizer, sgd_step
from sde.diagnostics import FDRMonitor
from sde.schedules import Explicit, by_examples, triangular_wave

__all__ = ["TrainConfig", "train", "make_schedule", "resolve_device", "load_run", "main", "SCHEDULES", "RUN_FILES",
           "padding",
           "same_config"]

SCHEDULES = ("constant", "clr", "cbs", "step")
#: Steps between reads of the device-side divergence flag (besides every evaluation): a diverged run stops within
#: this many steps, and the loop synchronises with the GPU only this often.
SYNC_EVERY = 64
#: The files a run folder may hold (this module's, and the sweep stages'): a folder without our marker
#: (``common.files.MARKER``) that holds any of them is not ours, and is refused rather than overwritten.
RUN_FILES = ("config.json", "history.csv", "checkpoint.pt", "model.pt", "result.json", "metrics.json",
             "measure.json", "stationary.json")


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as ``config.json``)."""

    dataset: str = "fashion-mnist"
    model: str = "mlp"
    width: float = 1.0
    batch_norm: bool = True
    eta: float = 0.1
    batch_size: int = 128
    momentum: float = 0.0
    #: torch's dampening d of the momentum buffer, b ← μb + (1−d)g.
    dampening: float = 0.0
    weight_decay: float = 0.0
    epochs: float = 10.0
    schedule: str = "constant"
    cycle_epochs: float = 4.0
    cycle_low: float = 0.2
    decay_factor: float = 0.1
    decay_every: float = 25.0
    #: Epochs at which the step schedule decays (the paper's ResNet56: 60, 100, 140, 180); ``None``: every
    #: ``decay_every`` epochs.
    milestones: tuple | None = None
    decay_target: str = "eta"
    train_size: int | None = None
    test_size: int | None = None
    eval_train_size: int | None = 10000
    pad_to: int | None = None
    data_root: str | None = None
    synthetic_size: int = 2048
    seed: int = 0
    #: Seeds the data (the synthetic task, the training subset, the evaluation subset) apart from ``seed`` (the
    #: initialisation and the batches), so that runs with different seeds see the same data.
    data_seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1000
    #: Evaluations (history rows, checkpoints) per epoch: more than 1 resolves curves within an epoch.
    evals_per_epoch: int = 1
    fdr: bool = False

    def __post_init__(self):
        if self.milestones is not None:
            self.milestones = tuple(float(m) for m in self.milestones)

    def to_dict(self) -> dict:
        """The configuration as JSON data (what ``config.json`` holds and what runs are compared by)."""
        return json.loads(json.dumps(asdict(self)))

    def validate(self, train_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the parameter and its allowed range."""
        if not self.eta > 0 or not math.isfinite(self.eta):
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0.0 <= self.dampening < 1.0:
            raise ValueError(f"dampening must lie in [0, 1), got {self.dampening}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if not self.cycle_epochs > 0:
            raise ValueError(f"cycle_epochs must be > 0, got {self.cycle_epochs}")
        if not self.decay_every > 0:
            raise ValueError(f"decay_every must be > 0, got {self.decay_every}")
        for name in ("train_size", "test_size", "eval_train_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.seed < 0 or self.data_seed < 0:
            raise ValueError(f"seed and data_seed must be integers >= 0, got {self.seed} and {self.data_seed}")
        if self.evals_per_epoch < 1:
            raise ValueError(f"evals_per_epoch must be >= 1, got {self.evals_per_epoch}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < self.cycle_low <= 1.0:
            raise ValueError(f"cycle_low must lie in (0, 1], got {self.cycle_low}")
        if not 0.0 < self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must lie in (0, 1], got {self.decay_factor}")
        if self.milestones is not None and (any(not m > 0 for m in self.milestones)
                                            or list(self.milestones) != sorted(self.milestones)):
            raise ValueError(f"milestones must be increasing epochs > 0, got {list(self.milestones)}")
        if self.decay_target not in ("eta", "batch_size"):
            raise ValueError(f"decay_target must be 'eta' or 'batch_size', got {self.decay_target!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if train_size is not None:
            s_max = self.batch_size
            if self.schedule == "cbs":
                s_max = int(round(self.batch_size / self.cycle_low))
            if self.schedule == "step" and self.decay_target == "batch_size":
                s_max = int(round(self.batch_size / self.decay_factor ** self.decays_by(self.epochs)))
            if s_max > train_size:
                raise ValueError(f"batch_size must be <= the training-set size N = {train_size}; the schedule "
                                 f"reaches S = {s_max}")


    def decays_by(self, epoch: float) -> int:
        """How many step decays have happened by ``epoch``."""
        if self.milestones is not None:
            return sum(1 for m in self.milestones if epoch >= m)
        return math.floor(epoch / self.decay_every)

    def schedule_description(self) -> dict:
        """The schedule as data: its kind and parameters (η and S bounds, period, milestones)."""
        if self.schedule == "clr":
            return {"kind": "clr", "eta_min": self.eta * self.cycle_low, "eta_max": self.eta,
                    "batch_size": self.batch_size, "period_epochs": self.cycle_epochs}
        if self.schedule == "cbs":
            return {"kind": "cbs", "eta": self.eta, "batch_size_min": self.batch_size,
                    "batch_size_max": int(round(self.batch_size / self.cycle_low)), "period_epochs": self.cycle_epochs}
        if self.schedule == "step":
            milestones = (list(self.milestones) if self.milestones is not None else
                          [self.decay_every * k for k in range(1, int(self.epochs // self.decay_every) + 1)
                           if self.decay_every * k < self.epochs])
            return {"kind": "step", "target": self.decay_target, "factor": self.decay_factor,
                    "milestones": milestones, "eta": self.eta, "batch_size": self.batch_size}
        return {"kind": "constant", "eta": self.eta, "batch_size": self.batch_size}


def same_config(saved, cfg: TrainConfig) -> bool:
    """Whether a saved configuration (a dict) is ``cfg``; fields added since it was saved count as their defaults, so
    that a run of an earlier version is still recognised."""
    if not isinstance(saved, dict):
        return False
    known = {f.name for f in fields(TrainConfig)}
    if set(saved) - known:
        return False
    try:
        return TrainConfig(**saved).to_dict() == cfg.to_dict()
    except (TypeError, ValueError):
        return False


def make_schedule(cfg: TrainConfig, n: int) -> Explicit:
    """Per-step η_k and S_k for the whole run, from the schedule as a function of examples seen."""
    total = int(math.ceil(cfg.epochs * n))
    if cfg.schedule == "constant":
        def factor(e):
            return 1.0
    elif cfg.schedule in ("clr", "cbs"):
        period = cfg.cycle_epochs * n

        def factor(e):
            return float(triangular_wave(e, period, cfg.cycle_low))
    else:
        def factor(e):
            return cfg.decay_factor ** cfg.decays_by(e / n)
    target = "batch_size" if cfg.schedule == "cbs" or (cfg.schedule == "step" and cfg.decay_target == "batch_size") \
        else "eta"
    return by_examples(factor, cfg.eta, cfg.batch_size, total, target=target)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... as a ``torch.device``; raises
    ``ValueError`` for an unknown name or a GPU that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no GPU is available (use --device auto or cpu)")
    return dev


def _save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load_torch(path: Path, device, *, what: str, remedy: str, weights_only: bool = True):
    """``torch.load`` with a one-line error naming the file when it is truncated or not a torch file."""
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... here
        raise ValueError(f"{what} {path} is unreadable or corrupt ({type(exc).__name__}: {str(exc)[:120]}); "
                         f"{remedy}") from None


def _history_csv(rows) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def padding(cfg: TrainConfig) -> int | None:
    """The image size the run's inputs are zero-padded to: ``pad_to``, else 32 for the convolutional models on
    28×28 data (they take 32×32 images), else ``None``."""
    if cfg.pad_to is not None:
        return cfg.pad_to
    if cfg.model in ("vgg11", "resnet56") and cfg.dataset in ("fashion-mnist", "synthetic-mnist"):
        return 32
    return None


def _data_for(cfg: TrainConfig, device) -> ImageData:
    pad = padding(cfg)
    data = load_dataset(cfg.dataset, root=cfg.data_root, train_size=cfg.train_size, seed=cfg.data_seed, pad_to=pad,
                        device=device, synthetic_size=cfg.synthetic_size)
    if cfg.test_size is not None:
        if not 1 <= cfg.test_size <= data.x_test.shape[0]:
            raise ValueError(f"test_size must lie in [1, {data.x_test.shape[0]}], got {cfg.test_size}")
        data = ImageData(data.name, data.x_train, data.y_train, data.x_test[:cfg.test_size],
                         data.y_test[:cfg.test_size], data.num_classes)
    return data


def load_run(run_dir, *, device="auto"):
    """``(config, model, data)`` of a finished run (the model in eval mode, on ``device``)."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir} is not a run folder: {cfg_path} not found")
    if not model_path.is_file():
        result = run_dir / "result.json"
        div = read_json(result, what="run result").get("diverged") if result.is_file() else None
        if div:
            raise ValueError(f"{run_dir}: SGD diverged at step {div['step']} (loss {div['loss']}); the run has no "
                             "trained model to load")
        raise ValueError(f"{run_dir} has no model.pt: the run has not finished (run nets.train on it again)")
    raw = read_json(cfg_path, what="run configuration")
    cfg = TrainConfig(**{f.name: raw[f.name] for f in fields(TrainConfig) if f.name in raw})
    dev = resolve_device(device)
    data = _data_for(cfg, dev)
    model = build_model(cfg.model, data.input_shape, data.num_classes, width=cfg.width,
                        batch_norm=cfg.batch_norm).to(dev)
    model.load_state_dict(_load_torch(model_path, dev, what="model file",
                                      remedy="delete it and result.json, and run nets.train on the folder again"))
    model.eval()
    return cfg, model, data


def _finished(cfg: TrainConfig, out: Path | None, log) -> dict | None:
    """The result of a run already finished in ``out`` with this configuration (``None`` when there is none)."""
    if out is None or not (out / "result.json").is_file():
        return None
    result = read_json(out / "result.json", what="run result")
    if not same_config(result.get("config"), cfg):
        raise ValueError(f"{out} holds a finished run with another configuration; use another --out")
    log(f"{out}: finished already, skipped")
    return result


class _Run:
    """The state of one training run: model, optimiser, sampler, schedule, history; checkpoints and evaluations."""

    def __init__(self, cfg: TrainConfig, out: Path | None, log):
        self.cfg, self.out, self.log = cfg, out, log
        self.device = device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.data = data = _data_for(cfg, device)
        self.n = n = data.train_size
        cfg.validate(n)
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, width=cfg.width,
                                 batch_norm=cfg.batch_norm, seed=cfg.seed).to(device)
        self.opt = make_optimizer(self.model, eta=cfg.eta, momentum=cfg.momentum, dampening=cfg.dampening,
                                  weight_decay=cfg.weight_decay)
        self.sched = make_schedule(cfg, n)
        self.sampler = BatchSampler(n, seed=cfg.seed, device=device)
        self.eval_train = data.measurement_set(min(n, cfg.eval_train_size or n), seed=cfg.data_seed + 1)
        self.history: list[dict] = []
        self.fdr_rows: list[dict] = []
        self.step = 0
        self.ckpt = out / "checkpoint.pt" if out is not None else None
        self.diverged: dict | None = None
        self.train_seconds = 0.0   # SGD steps (all sessions: restored on resume)
        self.eval_seconds = 0.0    # evaluations and checkpoints (likewise)

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when the folder has one of this configuration."""
        if self.ckpt is None or not self.ckpt.is_file():
            return
        state = _load_torch(self.ckpt, self.device, what="checkpoint", weights_only=False,
                            remedy="delete it to restart the run from the beginning")
        if not same_config(state["config"], self.cfg):
            raise ValueError(f"{self.ckpt} belongs to another configuration; use another --out or delete it")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.history, self.fdr_rows = state["step"], state["history"], state.get("fdr", [])
        secs = state.get("seconds", {})  # the earlier sessions' time, so the totals cover the whole run
        self.train_seconds, self.eval_seconds = secs.get("train", 0.0), secs.get("eval", 0.0)
        torch.set_rng_state(state["torch_rng"])
        self.log(f"{self.out}: resuming at step {self.step} of {self.sched.steps} "
                 f"(epoch {self.sampler.examples_seen / self.n:.2f})")

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` and ``history.csv`` (atomically), when the run has a folder."""
        if self.ckpt is not None:
            _save_torch({"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                         "optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict(),
                         "step": self.step, "history": self.history, "fdr": self.fdr_rows,
                         "torch_rng": torch.get_rng_state(),
                         "seconds": {"train": self.train_seconds, "eval": self.eval_seconds}}, self.ckpt)
            write_text_atomic(self.out / "history.csv", _history_csv(self.history))

    def evaluation_row(self, lr: float, s: int, running_loss: float, examples: int, secs: float) -> dict:
        """One history row: train (on the fixed evaluation subset) and validation loss and accuracy."""
        cfg, data = self.cfg, self.data
        tr_loss, tr_acc = evaluate(self.model, F.cross_entropy, *self.eval_train, batch_size=cfg.eval_batch_size)
        te_loss, te_acc = evaluate(self.model, F.cross_entropy, data.x_test, data.y_test,
                                   batch_size=cfg.eval_batch_size)
        return dict(epoch=round(self.sampler.examples_seen / self.n, 4), step=self.step,
                    examples=self.sampler.examples_seen, eta=lr, batch_size=s,
                    train_loss_running=running_loss / max(examples, 1), train_loss=tr_loss, train_acc=tr_acc,
                    val_loss=te_loss, val_acc=te_acc, examples_per_s=examples / max(secs, 1e-9), seconds=secs)

    def record_fdr(self, row: dict, monitor: FDRMonitor | None) -> None:
        """Add the FDR ratio of the steps since the last evaluation to ``row`` and to the FDR table."""
        if monitor is not None and len(monitor) >= 2:
            sm = monitor.summary()
            row.update(fdr_ratio=sm.ratio, fdr_ratio_stderr=sm.ratio_stderr)
            self.fdr_rows.append(dict(epoch=row["epoch"], o_left=sm.o_left, o_right=sm.o_right, ratio=sm.ratio,
                                      ratio_stderr=sm.ratio_stderr))

    def finish(self) -> dict:
        """The result summary; with a folder, ``model.pt``, ``history.csv`` and ``result.json`` written and the
        checkpoint removed."""
        cfg, out = self.cfg, self.out
        result = {"config": cfg.to_dict(), "steps": self.step, "epochs": self.sampler.examples_seen / self.n,
                  "train_size": self.n, "num_params": count_parameters(self.model),
                  "final": self.history[-1] if self.history else {}, "environment": environment(self.device),
                  "fdr": self.fdr_rows, "diverged": self.diverged,
                  "seconds": {"train": self.train_seconds, "eval": self.eval_seconds}}
        if out is not None:
            if self.diverged is None:
                _save_torch(self.model.state_dict(), out / "model.pt")
            write_text_atomic(out / "history.csv", _history_csv(self.history))
            write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
            if self.ckpt.is_file():
                self.ckpt.unlink()
        result["history"] = self.history
        result["model"] = self.model
        return result


def train(cfg: TrainConfig, out_dir=None, *, progress: bool = True, log=None) -> dict:
    """Train (or resume, or skip when finished) the run ``cfg`` in ``out_dir``; returns the result summary.

    Raises:
        ValueError: bad configuration (naming the parameter), a batch size above the training-set size.
        nets.data.DataError: a missing or corrupt dataset file.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg.validate()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_output_dir(out, option="out_dir", names=RUN_FILES)
    done = _finished(cfg, out, log)
    if done is not None:
        return done
    run = _Run(cfg, out, log)  # loads the data and validates against it: nothing is written before this
    if out is not None:
        claim_output_dir(out, option="out_dir", names=RUN_FILES)
    run.resume()
    if out is not None:
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.sched.steps, initial=run.step, desc=f"{cfg.model} eta={cfg.eta:g} S={cfg.batch_size}",
                   unit="step", leave=False, dynamic_ncols=True)
    try:
        _loop(run, bar)
    except KeyboardInterrupt:
        run.checkpoint()
        if bar is not None:
            bar.close()
        log(f"interrupted at step {run.step}; run the same command again to resume from {run.ckpt}")
        raise
    if bar is not None:
        bar.close()
    return run.finish()


def _loop(run: _Run, bar) -> None:
    """SGD steps until the schedule ends or the loss diverges, with an evaluation row and a checkpoint
    ``evals_per_epoch`` times per epoch.

    The running loss and the first non-finite loss are kept on the device (no host synchronisation per step);
    they are read back every ``SYNC_EVERY`` steps and at evaluations.
    """
    cfg, data, sched, sampler = run.cfg, run.data, run.sched, run.sampler
    monitor = _fdr_monitor(cfg, float(sched.etas[0])) if cfg.fdr else None
    dev = run.device
    epoch_loss = torch.zeros((), dtype=torch.float64, device=dev)
    bad_step = torch.full((), -1, dtype=torch.int64, device=dev)   # the first step whose loss was not finite
    step_t = torch.full((), run.step, dtype=torch.int64, device=dev)  # the step counter, kept on the device
    bad_loss = torch.zeros((), dtype=torch.float64, device=dev)
    epoch_examples = 0
    t_epoch = time.perf_counter()
    every = run.n / cfg.evals_per_epoch  # examples between evaluations (and checkpoints)
    next_epoch = (math.floor(sampler.examples_seen / every + 1e-9) + 1) * every
    while run.step < sched.steps:
        lr, s = float(sched.etas[run.step]), int(sched.batch_sizes[run.step])
        idx = sampler.next(s)
        loss, obs = sgd_step(run.model, run.opt, data.x_train[idx], data.y_train[idx], loss_fn=F.cross_entropy,
                             lr=lr, observe=monitor is not None)
        if obs is not None:
            monitor.record(obs.o_left, obs.o_right)
        loss64 = loss.double()
        first = (bad_step < 0) & ~torch.isfinite(loss64)
        bad_step = torch.where(first, step_t, bad_step)
        step_t += 1
        bad_loss = torch.where(first, loss64, bad_loss)
        epoch_loss += loss64 * s
        epoch_examples += s
        run.step += 1
        if bar is not None:
            bar.update(1)
        evaluate_now = sampler.examples_seen >= next_epoch or run.step == sched.steps
        if (evaluate_now or run.step % SYNC_EVERY == 0) and int(bad_step) >= 0:
            k = int(bad_step)
            run.diverged = {"step": k, "epoch": round(float(sched.examples[k + 1]) / run.n, 4),
                            "loss": float(bad_loss), "eta": float(sched.etas[k]),
                            "batch_size": int(sched.batch_sizes[k])}
            run.log(f"diverged: the training loss became {run.diverged['loss']} at step {k} (epoch "
                    f"{run.diverged['epoch']:.2f}, eta={run.diverged['eta']:g}, S={run.diverged['batch_size']})")
            return
        if evaluate_now:
            t_eval = time.perf_counter()
            run.train_seconds += t_eval - t_epoch
            row = run.evaluation_row(lr, s, float(epoch_loss), epoch_examples, t_eval - t_epoch)
            run.record_fdr(row, monitor)
            if monitor is not None and len(monitor) >= 2:
                monitor = _fdr_monitor(cfg, lr)
            run.history.append(row)
            if bar is not None:
                bar.set_postfix(epoch=f"{row['epoch']:.1f}", loss=f"{row['train_loss']:.3f}",
                                val_acc=f"{row['val_acc']:.3f}")
            run.log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
                    f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}, "
                    f"{row['examples_per_s']:.0f} examples/s")
            run.checkpoint()
            epoch_loss.zero_()
            epoch_examples = 0
            next_epoch = (math.floor(sampler.examples_seen / every + 1e-9) + 1) * every
            t_epoch = time.perf_counter()
            run.eval_seconds += t_epoch - t_eval


def _fdr_monitor(cfg: TrainConfig, eta: float) -> FDRMonitor:
    return FDRMonitor(eta, momentum=cfg.momentum, dampening=cfg.dampening, weight_decay=cfg.weight_decay)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m nets.train`` (one per ``TrainConfig`` field, and ``--out``)."""
    p = Parser(prog="python -m nets.train", description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    p.add_argument("--data-root", default=None, help="folder of the dataset files (Fashion-MNIST default: "
                   "/usr/share/datasets/fashion-mnist; CIFAR-10: required)")
    p.add_argument("--model", default=d.model, choices=MODELS)
    p.add_argument("--width", type=float, default=d.width, help="channel/width multiplier (default 1)")
    p.add_argument("--no-batch-norm", action="store_true", help="the batch-norm-free variant")
    p.add_argument("--eta", type=float, default=d.eta, help="learning rate (the maximum of a cyclic schedule)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (the minimum of cyclic S)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--dampening", type=float, default=d.dampening, help="dampening of the momentum buffer")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    p.add_argument("--cycle-epochs", type=float, default=d.cycle_epochs, help="period of clr/cbs in epochs")
    p.add_argument("--cycle-low", type=float, default=d.cycle_low, help="clr/cbs: lowest factor of eta/S")
    p.add_argument("--decay-factor", type=float, default=d.decay_factor)
    p.add_argument("--decay-every", type=float, default=d.decay_every, help="step decay period in epochs")
    p.add_argument("--milestones", type=float_list, default=None,
                   help="step decay at these epochs (comma-separated), instead of every --decay-every epochs")
    p.add_argument("--decay-target", default=d.decay_target, choices=("eta", "batch_size"))
    p.add_argument("--train-size", type=int, default=None, help="train on a subset of N examples")
    p.add_argument("--test-size", type=int, default=None, help="validate on the first this many test examples")
    p.add_argument("--pad-to", type=int, default=None, help="zero-pad images to this size (default: 32 for the "
                   "convolutional models on 28x28 data)")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation and batch order")
    p.add_argument("--data-seed", type=int, default=d.data_seed,
                   help="the data: synthetic task, training subset (default 0, the same for every --seed)")
    p.add_argument("--device", default=d.device, help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--fdr", action="store_true", help="record the fluctuation-dissipation ratio every evaluation")
    p.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch,
                   help="evaluations (history rows, checkpoints) per epoch (default 1)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> TrainConfig:
    """The ``TrainConfig`` of parsed command-line arguments."""
    return TrainConfig(dataset=args.dataset, model=args.model, width=args.width, batch_norm=not args.no_batch_norm,
                       eta=args.eta, batch_size=args.batch_size, momentum=args.momentum, dampening=args.dampening,
                       weight_decay=args.weight_decay, epochs=args.epochs, schedule=args.schedule,
                       cycle_epochs=args.cycle_epochs, cycle_low=args.cycle_low, decay_factor=args.decay_factor,
                       decay_every=args.decay_every, milestones=args.milestones, decay_target=args.decay_target,
                       train_size=args.train_size,
                       test_size=args.test_size, pad_to=args.pad_to, data_root=args.data_root, seed=args.seed,
                       data_seed=args.data_seed, evals_per_epoch=args.evals_per_epoch,
                       device=args.device, fdr=args.fdr)


def main(argv=None) -> int:
    """``python -m nets.train``: train, resume or skip one run; exit 0 (also when SGD diverged: that is recorded as
    a result), 2 on bad input, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.out, option="--out", names=RUN_FILES)
        result = train(config_from_args(args), args.out, progress=not args.quiet)
    except (ValueError, DataError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    final = result.get("final", {})
    div = result.get("diverged")
    if div:  # a result, not an error: exit 0 (result.json records it)
        print(f"{args.out}: diverged at step {div['step']} (epoch {div['epoch']:.2f}): training loss {div['loss']} "
              f"at eta={div['eta']:g}, S={div['batch_size']}")
        return 0
    print(f"{args.out}: {result['epochs']:.2f} epochs, train loss {final.get('train_loss', math.nan):.4f}, "
          f"val acc {final.get('val_acc', math.nan):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
