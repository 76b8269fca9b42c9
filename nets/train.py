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
import errno
import functools
import hashlib
import io
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.nn import functional as F

from nets.data import DATASETS, BatchSampler, DataError, ImageData, cpu_rng_state, load_dataset
from nets.evaluation import evaluate, set_determinism
from nets.models import MODELS, build_model, count_parameters
from nets.sgd import compiled_loss, make_optimizer, sgd_step
from sde.diagnostics import FDRMonitor
from sde.schedules import Explicit, by_examples, triangular_wave
from sgd_noise_common.cli import (
    Parser,
    add_settings,
    check_field_types,
    from_args,
    option_name,
    required_fields,
    setting,
)
from sgd_noise_common.environment import environment, machine_memory
from sgd_noise_common.files import (
    atomic_write,
    check_output_dir,
    claim_output_dir,
    write_json_atomic,
    write_text_atomic,
)
from sgd_noise_common.lock import folder_lock
from sgd_noise_common.seeds import spawn_seeds

__all__ = ["TrainConfig", "train", "make_schedule", "resolve_device", "devices_present", "load_run", "main",
           "SCHEDULES", "RUN_FILES", "padding", "same_config", "train_many", "batch_key", "pack_capacity"]

SCHEDULES = ("constant", "clr", "cbs", "step")
#: Steps between reads of the device-side divergence flag (besides every evaluation): a diverged run stops within
#: this many steps, and the loop synchronises with the GPU only this often.
SYNC_EVERY = 64
#: The most SGD steps a run may schedule: its per-step η and S are built before the first step (the paper's longest
#: run, fig3 at S = 25, is 480 000 steps), and a request beyond this is refused before any work.
MAX_STEPS = 50_000_000
#: The share of the machine's memory a model's training state (weights, gradients, momentum, a checkpoint's copy) may
#: take; a model beyond it is refused before it is built.
MEMORY_SHARE = 0.8
#: The files a run folder may hold (this module's, and the sweep stages'): a folder without our marker
#: (``sgd_noise_common.files.MARKER``) that holds any of them is not ours, and is refused rather than overwritten.
RUN_FILES = ("config.json", "history.csv", "checkpoint.pt", "model.pt", "result.json", "metrics.json",
             "measure.json", "stationary.json")
#: Which kind of output may write each of a run folder's files through a file option (``sgd_noise_common.files``): only
#: ``nets.measure --json RUN/measure.json``; none of the others (``None``) is ever written from outside the run.
RUN_FILE_OWNERS = {**{name: None for name in RUN_FILES}, "measure.json": "nets.measure", "density.png": None,
                   "landscape.png": None}
#: The stamps (``sgd_noise_common.files.stamp``) of a run's JSON files.
RUN_KINDS = {"config.json": "nets.train.config", "result.json": "nets.train.result"}


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as ``config.json``).

    Each field is declared once, here: its type, default and one-line help (field metadata,
    ``sgd_noise_common.cli.setting``). The command line of ``python -m nets.train`` has one option per field
    (``build_parser``, ``config_from_args``), and ``config_from_dict`` reads a saved configuration back with the
    fields' types (``required``: every saved configuration names it). ``validate`` checks the ranges.
    """

    dataset: str = setting("fashion-mnist", help="dataset", choices=DATASETS, required=True)
    model: str = setting("mlp", help="architecture", choices=MODELS, required=True)
    width: float = setting(1.0, help="channel/width multiplier")
    batch_norm: bool = setting(True, help="with batch norm (--no-batch-norm: the batch-norm-free variant)")
    eta: float = setting(0.1, help="learning rate (the maximum of a cyclic schedule)", required=True)
    batch_size: int = setting(128, help="batch size (the minimum of cyclic S)", required=True)
    momentum: float = setting(0.0, help="momentum mu, in [0, 1)")
    dampening: float = setting(0.0, help="torch's dampening d of the momentum buffer, b <- mu b + (1-d) g")
    weight_decay: float = setting(0.0, help="weight decay gamma >= 0")
    epochs: float = setting(10.0, help="epochs to train (fractions allowed)", required=True)
    schedule: str = setting("constant", choices=SCHEDULES, help="schedule of eta and S (see the module's help)")
    cycle_epochs: float = setting(4.0, help="period of clr/cbs in epochs")
    cycle_low: float = setting(0.2, help="clr/cbs: lowest factor of eta/S, in (0, 1]")
    decay_factor: float = setting(0.1, help="step schedule: factor of each decay, in (0, 1]")
    decay_every: float = setting(25.0, help="step decay period in epochs")
    milestones: tuple[float, ...] | None = setting(
        None, help="step decay at these epochs (comma-separated; the paper's ResNet56: 60,100,140,180), instead of "
                   "every --decay-every epochs")
    decay_target: str = setting("eta", choices=("eta", "batch_size"),
                                help="what the step schedule decays: eta, or S (divided by the factor)")
    train_size: int | None = setting(None, help="train on a subset of N examples (default: all)")
    test_size: int | None = setting(None, help="validate on the first this many test examples (default: all)")
    eval_train_size: int | None = setting(10000, help="training examples the training loss and accuracy are "
                                                      "evaluated on at each evaluation")
    pad_to: int | None = setting(None, help="zero-pad images to this size (default: 32 for the convolutional "
                                            "models on 28x28 data)")
    data_root: str | None = setting(None, help="folder of the dataset files (Fashion-MNIST default: "
                                               "/usr/share/datasets/fashion-mnist; CIFAR-10: required)")
    synthetic_size: int = setting(2048, help="training examples of the synthetic datasets")
    seed: int = setting(0, help="initialisation and batch order", required=True)
    data_seed: int = setting(0, help="the data: synthetic task, training subset, evaluation subset, apart from "
                                     "--seed, so that runs with different seeds see the same data")
    device: str = setting("auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    eval_batch_size: int = setting(1000, help="batch size of the evaluations")
    evals_per_epoch: int = setting(1, help="evaluations (history rows, checkpoints) per epoch: more than 1 "
                                           "resolves curves within an epoch")
    fdr: bool = setting(False, help="record the fluctuation-dissipation ratio every evaluation")
    compile: bool = setting(False, help="compile the forward pass and loss with torch.compile (CUDA graphs, mode "
                                        "reduce-overhead, on a GPU), meant for the small models on a GPU (no gain "
                                        "measured on a CPU): the same numbers to float round-off; compiling takes "
                                        "tens of seconds at the start")

    def __post_init__(self):
        if isinstance(self.milestones, (list, tuple)):
            try:
                self.milestones = tuple(float(m) for m in self.milestones)
            except (TypeError, ValueError):
                pass  # validate() names it

    def to_dict(self) -> dict:
        """The configuration as JSON data (what ``config.json`` holds and what runs are compared by)."""
        return json.loads(json.dumps(asdict(self)))

    def validate(self, train_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the parameter and its allowed range (or type: a configuration read back from
        an edited ``config.json`` may hold anything)."""
        self._check_types()
        if not self.eta > 0:
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
        for name in ("seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)}")
        for name in ("eval_batch_size", "synthetic_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_to is not None and not 1 <= self.pad_to <= 1024:
            raise ValueError(f"pad_to must lie in [1, 1024], got {self.pad_to}")
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
            steps = self.epochs * train_size / self.batch_size  # at most: S never falls below batch_size
            if steps > MAX_STEPS:
                raise ValueError(f"epochs must give at most {MAX_STEPS:.0e} SGD steps; {self.epochs:g} epochs of "
                                 f"N = {train_size} at S = {self.batch_size} are {steps:.3g} steps (at 10 000 "
                                 f"steps/s, {steps / 1e4 / 86400:.3g} days)")


    def _check_types(self) -> None:
        """Each field of the type it is declared with, finite where it is a number
        (``sgd_noise_common.cli.check_field_types``)."""
        check_field_types(self)

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


#: The fields every saved configuration has (``required`` in their metadata): one without them was edited, not
#: written by an earlier version.
_REQUIRED = required_fields(TrainConfig)


def config_from_dict(raw, *, source) -> TrainConfig:
    """The ``TrainConfig`` that a saved configuration (``config.json``, a result, a checkpoint) describes,
    validated; a ``ValueError`` naming ``source`` and the field when it is not one.

    Fields added since it was saved take their defaults; a field this version does not know is refused."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source} does not hold a run configuration (a JSON object)")
    raw = {k: v for k, v in raw.items() if k != "sgd_noise"}
    unknown = sorted(set(raw) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)} (every version of sgd-noise wrote them)")
    try:
        cfg = TrainConfig(**raw)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    return cfg


def same_config(saved, cfg: TrainConfig) -> bool:
    """Whether a saved configuration (a dict) is ``cfg``; fields added since it was saved count as their defaults, so
    that a run of an earlier version is still recognised."""
    try:
        return config_from_dict(saved, source="saved configuration").to_dict() == cfg.to_dict()
    except ValueError:
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


def devices_present() -> list[str]:
    """The devices this process can use, as ``--device`` names them: ``cpu``, then ``cuda:0`` ... ``cuda:<n-1>``
    (``torch.cuda.device_count()``; under Ray or ``CUDA_VISIBLE_DEVICES`` only the visible ones), then ``mps``
    where it is available."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str, *, option: str = "device") -> torch.device:
    """``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... as a ``torch.device``.

    Raises:
        ValueError: one line starting with ``option`` and the name, and listing the devices present
            (``devices_present``), for an unknown name, a device type this toolkit does not run on (``meta``,
            ``xla``...), CUDA when no GPU is available, or a CUDA index that is not there (``cuda:1`` where one
            GPU is visible) - refused here, before any work, rather than deep inside CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def refuse(why: str):
        return ValueError(f"{option} {name}: {why}; the devices present: {', '.join(devices_present())} "
                          "(or auto)")

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise refuse("not a device name") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise refuse("there is one CPU device, cpu")
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise refuse("no CUDA GPU is available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise refuse(f"no such CUDA device ({count} visible)")
        return dev
    if dev.type == "mps":
        if "mps" not in devices_present():
            raise refuse("MPS is not available here")
        return dev
    raise refuse("not a device this toolkit runs on")


def _save_torch(obj, path: Path) -> None:
    def save(tmp):
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError, not an OSError
            raise OSError(errno.EIO, f"torch.save failed ({str(exc).splitlines()[0][:120]})") from None

    atomic_write(path, save)


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_finished_run(run_dir) -> dict:
    """The ``result.json`` of the finished run in ``run_dir``, after checking that the run is whole: the result
    and ``config.json`` readable and of one configuration, and (unless SGD diverged) ``model.pt`` there and
    unchanged since it was written (its SHA-256 is in the result; a run of an earlier version without one must
    at least load).

    Raises:
        ValueError: naming the damaged file, and what to do (delete the run folder and train it again).
    """
    run_dir = Path(run_dir)
    remedy = (f"delete the folder {run_dir} and train the run again (the nets.train command, or the experiment, that "
              "made it)")
    try:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
        cfg = config_from_dict(result.get("config"), source="its configuration")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"run result {run_dir / 'result.json'} is unreadable or corrupt ({exc}); "
                         f"{remedy}") from None
    cfg_path = run_dir / "config.json"
    try:
        saved = config_from_dict(json.loads(cfg_path.read_text(encoding="utf-8")), source=str(cfg_path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"run configuration {cfg_path} is missing, unreadable or corrupt ({exc}); "
                         f"{remedy}") from None
    if saved.to_dict() != cfg.to_dict():
        raise ValueError(f"{cfg_path} does not match the configuration in {run_dir / 'result.json'}; {remedy}")
    history = run_dir / "history.csv"
    if not history.is_file():
        raise ValueError(f"the finished run {run_dir} has no history.csv; {remedy}")
    if result.get("history_sha256") is not None and _sha256(history) != result["history_sha256"]:
        raise ValueError(f"history file {history} has changed since the run wrote it (its SHA-256 differs from the "
                         f"one in result.json): it is corrupt; {remedy}")
    if not result.get("diverged"):
        model = run_dir / "model.pt"
        if not model.is_file():
            raise ValueError(f"the finished run {run_dir} has no model.pt; {remedy}")
        digest = result.get("model_sha256")
        if digest is not None:
            if _sha256(model) != digest:
                raise ValueError(f"model file {model} has changed since the run wrote it (its SHA-256 differs from "
                                 f"the one in result.json): it is corrupt; {remedy}")
        else:
            _load_torch(model, "cpu", what="model file", remedy=remedy)
    return result


def load_run(run_dir, *, device: str | None = "auto"):
    """``(config, model, data)`` of a finished run (the model in eval mode, on ``device``; ``None``: the run's own
    ``TrainConfig.device``, resolved as training resolves it)."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir} is not a run folder: {cfg_path} not found")
    if not (run_dir / "result.json").is_file():
        raise ValueError(f"{run_dir} has no result.json: the run has not finished (run nets.train on it again)")
    result = check_finished_run(run_dir)
    div = result.get("diverged")
    if div:
        raise ValueError(f"{run_dir}: SGD diverged at step {div['step']} (loss {div['loss']}); the run has no "
                         "trained model to load")
    cfg = config_from_dict(result["config"], source=str(run_dir / "result.json"))
    dev = resolve_device(cfg.device if device is None else device)
    data = _data_for(cfg, dev)
    model = build_model(cfg.model, data.input_shape, data.num_classes, width=cfg.width,
                        batch_norm=cfg.batch_norm, seed=cfg.seed).to(dev)  # the weights are then loaded
    model.load_state_dict(_load_torch(model_path, dev, what="model file",
                                      remedy=f"delete the folder {run_dir} and train the run again"))
    model.eval()
    return cfg, model, data


def _finished(cfg: TrainConfig, out: Path | None, log) -> dict | None:
    """The result of a run already finished in ``out`` with this configuration (``None`` when there is none),
    checked to be whole (``check_finished_run``)."""
    if out is None or not (out / "result.json").is_file():
        return None
    result = check_finished_run(out)
    if not same_config(result.get("config"), cfg):
        raise ValueError(f"{out} holds a finished run with another configuration; use another --out")
    log(f"{out}: finished already, skipped")
    return result


#: The memory of a training step's activations, as a multiple of the bytes autograd saves for the backward pass
#: (``_model_memory``, which counts a tensor once per layer that saves it, so the count exceeds the unique storage),
#: with a margin for the backward's transient gradients and the allocator. Measured on this CPU as the peak resident
#: growth of one step against that count: VGG11 at S = 64 1.04, ResNet56 (widths 1 and 0.25) 0.77-0.80; 1.5 leaves
#: room above the largest.
ACTIVATION_FACTOR = 1.5


@functools.lru_cache(maxsize=64)
def _model_memory(model_name: str, input_shape: tuple, num_classes: int, width: float,
                  batch_norm: bool) -> tuple[int, int]:
    """``(parameters, bytes autograd saves for the backward pass per training example)`` of a model (float32, train
    mode), each saved tensor counted once per layer that saves it (a ReLU's output, saved again as the next layer's
    input, counts twice: an upper bound of the unique storage, which ``ACTIVATION_FACTOR`` was measured against).

    Counted on the ``meta`` device (no memory, no arithmetic) through ``torch.autograd.graph.saved_tensors_hooks``
    at batches of 2 and 4: their difference is per example (the weights a layer saves are per batch). Written here
    because torch has no estimate of a model's activation memory that needs no device."""
    counted = {}
    for b in (2, 4):  # train-mode batch norm needs two examples
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.device("meta"):
            model = build_model(model_name, input_shape, num_classes, width=width, batch_norm=batch_norm,
                                seed=0).train()
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(torch.empty(b, *input_shape))
        counted[b] = total
    return count_parameters(model), (counted[4] - counted[2]) // 2


def _training_memory(cfg: TrainConfig, input_shape, num_classes: int, batch: int) -> tuple[int, int, int]:
    """``(parameters, bytes of four float32 copies of them, bytes of a step's activations at batch size batch)``."""
    params, saved = _model_memory(cfg.model, tuple(input_shape), num_classes, cfg.width, cfg.batch_norm)
    return params, 4 * 4 * params, int(ACTIVATION_FACTOR * batch * saved)


def _device_memory(device) -> int | None:
    """The memory a run may count on: the GPU's, or the machine's (``None`` when unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return machine_memory()


def _members_that_fit(cfg: TrainConfig, input_shape, num_classes: int, device, batch: int) -> int:
    """How many members of ``cfg``'s model a pack may hold at batch size ``batch`` (its schedule's largest): each
    member keeps its own model and optimiser state (``_check_model_fits``'s four copies) besides its block of the
    packed network's four, and its own activations (``_training_memory``), against ``MEMORY_SHARE`` of the memory
    (at least 1: a single run is checked by ``_check_model_fits``)."""
    have = _device_memory(device)
    if have is None:
        return 1_000_000
    _, state, activations = _training_memory(cfg, input_shape, num_classes, batch)
    return max(1, int(MEMORY_SHARE * have // (2 * state + activations)))


def pack_capacity(cfg: TrainConfig, input_shape, num_classes: int, device, train_size: int) -> int:
    """How many runs like ``cfg`` one packed network may hold on ``device`` (``train_many``'s cap, which the plan
    uses too): each member's parameters, optimiser state and activations at its schedule's largest batch size (on
    ``train_size`` examples) against ``MEMORY_SHARE`` of the device's memory; at least 1."""
    # An η schedule keeps S fixed; only a batch-size schedule needs its per-step sizes (seconds for 480 000 steps).
    batch = cfg.batch_size if _batch_schedule(cfg) == ("fixed",) else \
        int(make_schedule(cfg, train_size).batch_sizes.max())
    return _members_that_fit(cfg, input_shape, num_classes, resolve_device(device), batch)


def _check_model_fits(cfg: TrainConfig, data: ImageData, device, batch: int) -> None:
    """Refuse, before building it, a run whose training state cannot fit at batch size ``batch`` (its schedule's
    largest): four copies of its parameters (weights, gradients, momentum, a checkpoint), counted on the ``meta``
    device (no memory), and a step's activations (``_training_memory``) are held against ``MEMORY_SHARE`` of the
    machine's memory (of the GPU's, on a GPU)."""
    have = _device_memory(device)
    if have is None:
        return
    params, state, activations = _training_memory(cfg, data.input_shape, data.num_classes, batch)
    memory = f"{MEMORY_SHARE:.0%} of the {have / 2**30:.3g} GiB of {device.type} memory"
    if state > MEMORY_SHARE * have:  # the parameters alone: the batch size is not to blame
        raise ValueError(f"width must give a model that fits: {cfg.model} at width {cfg.width:g} has {params:.3g} "
                         f"parameters, whose training state needs about {state / 2**30:.3g} GiB, more than {memory}")
    if state + activations > MEMORY_SHARE * have:
        raise ValueError(f"width and batch_size must give a run that fits: {cfg.model} at width {cfg.width:g} has "
                         f"{params:.3g} parameters, whose training state needs about {state / 2**30:.3g} GiB, and a "
                         f"step at the schedule's largest S = {batch} about {activations / 2**30:.3g} GiB of "
                         f"activations; together more than {memory}")


class _Stop:
    """Ctrl-C (SIGINT) and SIGTERM during training, deferred to the end of the step they arrive in.

    An interrupt raised in the middle of a step (between drawing the batch and counting the step, or halfway
    through the optimiser's update) would leave a checkpoint that is not the state of any step. The handler only
    sets ``requested``; the loop checks it after each step and after each evaluation, writes a checkpoint of that
    exact state (the running sums of the epoch included) and then raises ``KeyboardInterrupt``. A second Ctrl-C
    while that happens interrupts at once (the checkpoint of the last evaluation, or the one being written
    atomically, is then the one that stays). Only the main thread can take signals: elsewhere nothing changes.
    """

    def __init__(self):
        self.requested: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _Run:
    """The state of one training run: model, optimiser, sampler, schedule, history, and the running sums of the
    current evaluation period; checkpoints (of exactly that state) and evaluations."""

    def __init__(self, cfg: TrainConfig, out: Path | None, log, data: ImageData | None = None):
        self.cfg, self.out, self.log = cfg, out, log
        self.device = device = resolve_device(cfg.device)
        set_determinism()  # the one policy of training and measurement (nets.evaluation.DETERMINISM)
        # ``data``: the same data loaded for another run of equal data settings (``train_many``'s members share
        # one copy on the device; nothing changes it in place).
        self.data = data = _data_for(cfg, device) if data is None else data
        self.n = n = data.train_size
        cfg.validate(n)
        self.sched = make_schedule(cfg, n)
        _check_model_fits(cfg, data, device, self.max_batch)
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, width=cfg.width,
                                 batch_norm=cfg.batch_norm, seed=cfg.seed).to(device)
        self.opt = make_optimizer(self.model, eta=cfg.eta, momentum=cfg.momentum, dampening=cfg.dampening,
                                  weight_decay=cfg.weight_decay)
        # Opt-in (--compile): the step's forward pass and loss compiled (nets.sgd.compiled_loss); eager by default.
        self.forward = compiled_loss(self.model, F.cross_entropy, device=device) if cfg.compile else None
        self.sampler = BatchSampler(n, seed=cfg.seed, device=device)
        # The examples the training loss is evaluated on: a child stream of the data seed (which also picks the
        # training subset), so the two never coincide (sgd_noise_common.seeds).
        eval_seed = spawn_seeds(cfg.data_seed, ("eval_train",))["eval_train"]
        self.eval_train = data.measurement_set(min(n, cfg.eval_train_size or n), seed=eval_seed)
        self.history: list[dict] = []
        self.fdr_rows: list[dict] = []
        self.step = 0
        self.ckpt = out / "checkpoint.pt" if out is not None else None
        self.diverged: dict | None = None
        self.train_seconds = 0.0   # SGD steps (all sessions: restored on resume)
        self.eval_seconds = 0.0    # evaluations and checkpoints (likewise)
        # The running sums since the last evaluation (kept on the device; in every checkpoint, so that a run
        # interrupted between evaluations resumes them exactly).
        self.period_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.period_examples = 0
        self.period_seconds = 0.0
        self.monitor = _fdr_monitor(cfg, float(self.sched.etas[0])) if cfg.fdr else None

    @property
    def max_batch(self) -> int:
        """The schedule's largest batch size (what a step's activations are sized by)."""
        return int(self.sched.batch_sizes.max())

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when the folder has one of this configuration."""
        if self.ckpt is None or not self.ckpt.is_file():
            return
        # Loaded on the CPU: the RNG states must stay CPU byte tensors (torch.set_rng_state and Generator.set_state
        # take nothing else); load_state_dict copies the rest onto the model's device.
        state = _load_torch(self.ckpt, "cpu", what="checkpoint", weights_only=False,
                            remedy="delete it to restart the run from the beginning")
        if not isinstance(state, dict) or not same_config(state.get("config"), self.cfg):
            raise ValueError(f"{self.ckpt} belongs to another configuration; use another --out or delete it")
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError, AttributeError,
                IndexError) as exc:  # a damaged checkpoint, or one of another version: one line, not a traceback
            detail = (str(exc).splitlines() or [""])[0][:160]
            raise ValueError(f"checkpoint {self.ckpt} cannot be resumed ({type(exc).__name__}: {detail}); delete "
                             "it to restart the run from the beginning") from None
        self.log(f"{self.out}: resuming at step {self.step} of {self.sched.steps} "
                 f"(epoch {self.sampler.examples_seen / self.n:.2f})")

    def _restore(self, state: dict) -> None:
        """The run's state from a loaded checkpoint. The RNG states go to ``torch.set_rng_state`` and
        ``Generator.set_state`` as CPU byte tensors whatever the run's device (``cpu_rng_state``)."""
        torch_rng = cpu_rng_state(state["torch_rng"], what="the checkpoint's torch RNG state")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.history, self.fdr_rows = state["step"], state["history"], state.get("fdr", [])
        secs = state.get("seconds", {})  # the earlier sessions' time, so the totals cover the whole run
        self.train_seconds, self.eval_seconds = secs.get("train", 0.0), secs.get("eval", 0.0)
        period = state.get("period")  # absent in checkpoints of earlier versions: written at evaluations only
        if period is not None:
            self.period_loss.fill_(float(period["loss"]))
            self.period_examples, self.period_seconds = int(period["examples"]), float(period["seconds"])
            if self.monitor is not None and period.get("fdr") is not None:
                self.monitor = _fdr_monitor(self.cfg, period["fdr"]["eta"])
                for o_l, o_r in zip(period["fdr"]["left"], period["fdr"]["right"]):
                    self.monitor.record(o_l, o_r)
        elif self.monitor is not None and self.history:
            self.monitor = _fdr_monitor(self.cfg, float(self.history[-1]["eta"]))
        torch.set_rng_state(torch_rng)

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` and ``history.csv`` (atomically), when the run has a folder: the state after
        ``self.step`` steps, exactly."""
        if self.ckpt is not None:
            fdr = None
            if self.monitor is not None:
                left, right = self.monitor.records()
                fdr = {"eta": self.monitor.eta, "left": [float(v[0]) for v in left],
                       "right": [float(v[0]) for v in right]}
            _save_torch({"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                         "optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict(),
                         "step": self.step, "history": self.history, "fdr": self.fdr_rows,
                         "torch_rng": torch.get_rng_state(),
                         "period": {"loss": float(self.period_loss), "examples": self.period_examples,
                                    "seconds": self.period_seconds, "fdr": fdr},
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

    def divergence(self, k: int, loss: float) -> dict:
        """The record of a divergence at step ``k`` (0-based: the loss of the batch drawn after ``k`` steps was not
        finite): the step, its η and S, the loss, the examples seen before it, and its epoch in the history's units
        (examples seen before the failing step / N, as the ``epoch`` column of ``history.csv``)."""
        seen = int(self.sched.examples[k])
        return {"step": k, "epoch": round(seen / self.n, 4), "examples": seen, "loss": loss,
                "eta": float(self.sched.etas[k]), "batch_size": int(self.sched.batch_sizes[k])}

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
                result["model_sha256"] = _sha256(out / "model.pt")
            write_text_atomic(out / "history.csv", _history_csv(self.history))
            result["history_sha256"] = _sha256(out / "history.csv")
            write_json_atomic(out / "result.json", result, kind=RUN_KINDS["result.json"])
            if self.ckpt.is_file():
                self.ckpt.unlink()
        result["history"] = self.history
        result["model"] = self.model
        return result


def train(cfg: TrainConfig, out_dir=None, *, progress: bool = True, log=None, wait: float | None = None) -> dict:
    """Train (or resume, or skip when finished) the run ``cfg`` in ``out_dir``; returns the result summary.

    The run folder is locked for the whole call (``sgd_noise_common.lock.folder_lock``): another process that asks
    for it is refused (or, with ``wait`` seconds, waits). Ctrl-C and SIGTERM stop the run at the end of the current
    step with a checkpoint of exactly that state, so that the same call resumes it as if it had never stopped.

    Raises:
        ValueError: bad configuration (naming the parameter), a batch size above the training-set size, a folder in
            use by another process, a damaged finished run.
        nets.data.DataError: a missing or corrupt dataset file.
        KeyboardInterrupt: after the checkpoint, when interrupted.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg.validate()
    out = Path(out_dir) if out_dir is not None else None
    if out is None:
        return _train(cfg, None, progress, log)
    check_output_dir(out, option="out_dir", names=RUN_FILES, kind="run")
    if out.is_dir():
        with folder_lock(out, option="out_dir", wait=wait):
            return _train(cfg, out, progress, log)
    done = _finished(cfg, out, log)  # a new folder: loading the data validates against it before anything exists
    if done is not None:
        return done
    run = _Run(cfg, out, log)
    claim_output_dir(out, option="out_dir", names=RUN_FILES, kind="run", files=RUN_FILE_OWNERS)
    with folder_lock(out, option="out_dir", wait=wait):
        return _train(cfg, out, progress, log, run)


def _train(cfg: TrainConfig, out: Path | None, progress: bool, log, run: _Run | None = None, *,
           resumed: bool = False) -> dict:
    """Train ``run`` (built here when ``None``) under the folder's lock, which the caller holds. ``resumed``: the
    run was resumed by the caller already (``train_many``'s pack, its checkpoint read once); otherwise it is resumed
    here, after the lock is taken, so that a run that waited for the lock (``--wait``) continues from the checkpoint
    the holder left."""
    done = _finished(cfg, out, log)
    if done is not None:
        return done
    if run is None:
        run = _Run(cfg, out, log)  # loads the data and validates against it: nothing is written before this
    if out is not None:
        claim_output_dir(out, option="out_dir", names=RUN_FILES, kind="run", files=RUN_FILE_OWNERS)
    if not resumed:
        run.resume()
    if out is not None:
        write_json_atomic(out / "config.json", cfg.to_dict(), kind=RUN_KINDS["config.json"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.sched.steps, initial=run.step, desc=f"{cfg.model} eta={cfg.eta:g} S={cfg.batch_size}",
                   unit="step", leave=False, dynamic_ncols=True)
    try:
        with _Stop() as stop:
            _loop(run, bar, stop)
            if run.step < run.sched.steps and run.diverged is None:  # stopped, with a checkpoint of this step
                raise KeyboardInterrupt
            return run.finish()  # a stop that arrived during the last step or evaluation: the run is finished anyway
    except KeyboardInterrupt:
        log(f"interrupted at step {run.step}; run the same command again to resume from {run.ckpt}"
            if run.ckpt is not None else f"interrupted at step {run.step}")
        raise
    finally:
        if bar is not None:
            bar.close()


def _loop(run: _Run, bar, stop: _Stop) -> None:
    """SGD steps until the schedule ends, the loss diverges or a stop is requested, with an evaluation row and a
    checkpoint ``evals_per_epoch`` times per epoch, and a checkpoint of the exact state when stopped.

    The running loss and the first non-finite loss are kept on the device (no host synchronisation per step);
    they are read back every ``SYNC_EVERY`` steps, at evaluations and at a stop.
    """
    cfg, data, sched, sampler = run.cfg, run.data, run.sched, run.sampler
    dev = run.device
    bad_step = torch.full((), -1, dtype=torch.int64, device=dev)   # the first step whose loss was not finite
    step_t = torch.full((), run.step, dtype=torch.int64, device=dev)  # the step counter, kept on the device
    bad_loss = torch.zeros((), dtype=torch.float64, device=dev)
    t_period = time.perf_counter() - run.period_seconds
    every = run.n / cfg.evals_per_epoch  # examples between evaluations (and checkpoints)
    next_epoch = (math.floor(sampler.examples_seen / every + 1e-9) + 1) * every

    def diverged() -> bool:
        k = int(bad_step)
        if k < 0:
            return False
        run.diverged = run.divergence(k, float(bad_loss))
        run.log(f"diverged: the training loss became {run.diverged['loss']} at step {k} (epoch "
                f"{run.diverged['epoch']:.2f}, eta={run.diverged['eta']:g}, S={run.diverged['batch_size']})")
        return True

    while run.step < sched.steps:
        if stop.requested is not None:
            if diverged():
                return
            run.period_seconds = time.perf_counter() - t_period  # counted into train_seconds at the evaluation
            run.checkpoint()
            return
        lr, s = float(sched.etas[run.step]), int(sched.batch_sizes[run.step])
        idx = sampler.next(s)
        loss, obs = sgd_step(run.model, run.opt, data.x_train[idx], data.y_train[idx], loss_fn=F.cross_entropy,
                             lr=lr, observe=run.monitor is not None, forward=run.forward)
        if obs is not None:
            run.monitor.record(obs.o_left, obs.o_right)
        loss64 = loss.double()
        first = (bad_step < 0) & ~torch.isfinite(loss64)
        bad_step = torch.where(first, step_t, bad_step)
        step_t += 1
        bad_loss = torch.where(first, loss64, bad_loss)
        run.period_loss += loss64 * s
        run.period_examples += s
        run.step += 1
        if bar is not None:
            bar.update(1)
        evaluate_now = sampler.examples_seen >= next_epoch or run.step == sched.steps
        if (evaluate_now or run.step % SYNC_EVERY == 0) and diverged():
            return
        if evaluate_now:
            t_eval = time.perf_counter()
            secs = t_eval - t_period
            run.train_seconds += secs
            row = run.evaluation_row(lr, s, float(run.period_loss), run.period_examples, secs)
            run.record_fdr(row, run.monitor)
            if run.monitor is not None and len(run.monitor) >= 2:
                run.monitor = _fdr_monitor(cfg, lr)
            run.history.append(row)
            if bar is not None:
                bar.set_postfix(epoch=f"{row['epoch']:.1f}", loss=f"{row['train_loss']:.3f}",
                                val_acc=f"{row['val_acc']:.3f}")
            run.log(f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
                    f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}, "
                    f"{row['examples_per_s']:.0f} examples/s")
            run.period_loss.zero_()
            run.period_examples = 0
            run.period_seconds = 0.0
            run.checkpoint()
            next_epoch = (math.floor(sampler.examples_seen / every + 1e-9) + 1) * every
            t_period = time.perf_counter()
            run.eval_seconds += t_period - t_eval


# ------------------------------------------------------------------------------ many runs as one packed network
#: The ``TrainConfig`` fields in which runs trained together may differ (each member keeps its own); every other
#: field, and the per-step batch sizes and length of the schedule, must be equal (``batch_key``).
MEMBER_FIELDS = ("seed", "eta", "momentum", "dampening", "weight_decay", "schedule", "cycle_epochs", "cycle_low",
                 "decay_factor", "decay_every", "milestones", "decay_target")


def batch_key(cfg: TrainConfig) -> tuple | None:
    """What runs trained together must share: the configuration without ``MEMBER_FIELDS``, and the member fields
    that set the batch sizes; ``None`` for a run that trains alone (the FDR monitor and ``--compile`` are per-run
    features)."""
    if cfg.fdr or cfg.compile:
        return None
    d = cfg.to_dict()
    return tuple(sorted((k, json.dumps(v)) for k, v in d.items() if k not in MEMBER_FIELDS)) + \
        (("batch sizes", _batch_schedule(cfg)),)


def _batch_schedule(cfg: TrainConfig) -> tuple:
    """The member fields that set a run's per-step batch sizes (``make_schedule``): cyclic batch sizes and a step
    schedule on S change them, η schedules do not. So runs of equal ``batch_key`` step with equal batch sizes, and
    the sweep and the plan group runs as ``train_many`` packs them."""
    if cfg.schedule == "cbs":
        return ("cbs", cfg.cycle_epochs, cfg.cycle_low)
    if cfg.schedule == "step" and cfg.decay_target == "batch_size":
        return ("step", cfg.decay_factor, cfg.decay_every, json.dumps(cfg.milestones))
    return ("fixed",)


def train_many(cfgs: list[TrainConfig], out_dirs: list, *, progress: bool = True, log=None,
               max_members: int = 16) -> list[dict]:
    """Train the runs ``cfgs`` (into ``out_dirs``, one folder each), those that can as one packed network.

    Runs with the same ``batch_key`` and the same per-step batch sizes train together (``nets.packed``), up to
    ``max_members`` at a time, at the same step (a resumed run joins the others at its own step: runs at different
    steps form different packs). Each member keeps its own initialisation and batch order (its seed), its own
    batch-norm statistics, η schedule, momentum and weight decay, and writes its own folder exactly as ``train``
    would: the history (evaluated on the unpacked model), checkpoints (its model and torch optimiser state), result
    and model. A member that diverges stops alone (its result records it); the others go on. Ctrl-C checkpoints
    every member at the current step. The wall time of the packed steps is shared equally among the members
    stepping (their ``train_seconds`` and ``examples_per_s``). Runs that cannot be packed train one after another.

    Returns:
        The results, in the order of ``cfgs`` (as ``train`` returns them).
    """
    import contextlib

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if len(cfgs) != len(out_dirs):
        raise ValueError(f"train_many needs one output folder per run, got {len(cfgs)} runs and {len(out_dirs)}")
    outs = [Path(o) for o in out_dirs]
    if len({str(o.resolve()) for o in outs}) != len(outs):
        raise ValueError("train_many: two runs share an output folder")
    results: list[dict | None] = [None] * len(cfgs)
    groups: dict = {}
    for i, cfg in enumerate(cfgs):
        cfg.validate()
        check_output_dir(outs[i], option="out_dirs", names=RUN_FILES, kind="run")
        key = batch_key(cfg)
        groups.setdefault(key if key is not None else ("alone", i), []).append(i)
    for key, members in groups.items():
        if key[0] == "alone" or len(members) == 1:
            for i in members:
                results[i] = train(cfgs[i], outs[i], progress=progress, log=log)
            continue
        with contextlib.ExitStack() as stack:
            runs = {}
            shared = None  # the members' data: equal data settings (they share ``batch_key``), one copy
            for i in members:
                if outs[i].is_dir():
                    stack.enter_context(folder_lock(outs[i], option="out_dirs"))
                done = _finished(cfgs[i], outs[i], log)
                if done is not None:
                    results[i] = done
                    continue
                new = not outs[i].is_dir()
                run = _Run(cfgs[i], outs[i], log, data=shared)  # validates against the data before any write
                shared = run.data
                claim_output_dir(outs[i], option="out_dirs", names=RUN_FILES, kind="run", files=RUN_FILE_OWNERS)
                if new:
                    stack.enter_context(folder_lock(outs[i], option="out_dirs"))
                run.resume()
                write_json_atomic(outs[i] / "config.json", cfgs[i].to_dict(), kind=RUN_KINDS["config.json"])
                runs[i] = run
            packs: dict = {}
            for i, run in list(runs.items()):
                if run.step >= run.sched.steps:  # resumed at its end (stopped while the pack finished)
                    results[i] = run.finish()
                    del runs[i]
                    continue
                sig = (run.step, run.sched.steps, tuple(int(b) for b in run.sched.batch_sizes))
                packs.setdefault(sig, []).append(i)
            for idx in packs.values():
                lead = runs[idx[0]]
                fit = _members_that_fit(lead.cfg, lead.data.input_shape, lead.data.num_classes, lead.device,
                                        lead.max_batch)
                size = max(1, min(max_members, fit))
                for a in range(0, len(idx), size):
                    chunk = idx[a:a + size]
                    if len(chunk) == 1:
                        results[chunk[0]] = _train(cfgs[chunk[0]], outs[chunk[0]], progress, log, runs[chunk[0]],
                                                   resumed=True)
                        continue
                    for i, res in zip(chunk, _train_packed([runs[i] for i in chunk], progress, log)):
                        results[i] = res
    return results


def _train_packed(runs: list[_Run], progress: bool, log) -> list[dict]:
    """``_train`` for several runs at the same step, packed (``train_many``)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        c = runs[0].cfg
        bar = tqdm(total=runs[0].sched.steps, initial=runs[0].step, unit="step", leave=False, dynamic_ncols=True,
                   desc=f"{c.model} x{len(runs)} S={c.batch_size}")
    try:
        with _Stop() as stop:
            _loop_packed(runs, bar, stop)
            if any(r.step < r.sched.steps and r.diverged is None for r in runs):
                for r in runs:  # a member that diverged is finished, whatever the others do
                    if r.diverged is not None:
                        r.finish()
                raise KeyboardInterrupt
            return [r.finish() for r in runs]
    except KeyboardInterrupt:
        log(f"interrupted at step {runs[0].step}; run the same command again to resume each run from its checkpoint")
        raise
    finally:
        if bar is not None:
            bar.close()


def _loop_packed(runs: list[_Run], bar, stop: _Stop) -> None:
    """``_loop`` for packed runs: one packed SGD step per step for every member still going; at each evaluation
    (the same examples for all: equal N and batch sizes) the packed state goes back into each member's model and
    optimiser, and each member evaluates and checkpoints exactly as it would alone."""
    from nets.packed import PackedSGD, pack_models, packed_inputs, packed_loss, unpack_into

    m = len(runs)
    lead = runs[0]
    cfg0, sched0, dev = lead.cfg, lead.sched, lead.device
    packed = pack_models([r.model for r in runs])
    packed.train()
    opt = PackedSGD(packed, lrs=[float(r.sched.etas[r.step]) for r in runs], momenta=[r.cfg.momentum for r in runs],
                    dampenings=[r.cfg.dampening for r in runs], weight_decays=[r.cfg.weight_decay for r in runs])
    opt.load_buffers([r.opt for r in runs], [r.model for r in runs], packed)
    bad_step = torch.full((m,), -1, dtype=torch.int64, device=dev)
    bad_loss = torch.zeros((m,), dtype=torch.float64, device=dev)
    step_t = torch.full((), lead.step, dtype=torch.int64, device=dev)
    # Each member's share of the packed steps' wall time since its last evaluation: its own period_seconds (from
    # a checkpoint, already its share) plus this session's wall time over the members stepping.
    t_period = time.perf_counter()
    every = lead.n / cfg0.evals_per_epoch
    next_epoch = (math.floor(lead.sampler.examples_seen / every + 1e-9) + 1) * every
    active = [True] * m

    def check_divergence() -> None:
        ks = bad_step.tolist()
        losses = bad_loss.tolist()
        for j, r in enumerate(runs):
            if active[j] and ks[j] >= 0:
                r.diverged = r.divergence(ks[j], losses[j])
                r.log(f"{r.out}: diverged: the training loss became {r.diverged['loss']} at step {ks[j]} (epoch "
                      f"{r.diverged['epoch']:.2f}, eta={r.diverged['eta']:g}, S={r.diverged['batch_size']})")
                active[j] = False

    def sync_members() -> None:
        unpack_into(packed, [r.model for r in runs])
        opt.store_buffers([r.opt for r in runs], [r.model for r in runs], packed)

    step = lead.step
    while step < sched0.steps:
        if stop.requested is not None:
            check_divergence()
            secs = (time.perf_counter() - t_period) / max(sum(active), 1)
            sync_members()
            for j, r in enumerate(runs):
                if active[j]:
                    r.period_seconds += secs
                    r.checkpoint()
            return
        lrs = [float(r.sched.etas[step]) if active[j] else 0.0 for j, r in enumerate(runs)]
        opt.set_lrs(lrs)
        s = int(sched0.batch_sizes[step])
        # A member that diverged stops drawing (its sampler stays where its run stopped, as alone); its place in
        # the pack takes another member's batch, at η = 0, and its rows are not used.
        idx = [r.sampler.next(s) if active[j] else None for j, r in enumerate(runs)]
        live = next(i for i in idx if i is not None)
        idx = [live if i is None else i for i in idx]
        x = packed_inputs([r.data.x_train[i] for r, i in zip(runs, idx)])
        y = torch.stack([r.data.y_train[i] for r, i in zip(runs, idx)], dim=1)
        losses = packed_loss(packed(x), y, m)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        loss64 = losses.detach().double()
        first = (bad_step < 0) & ~torch.isfinite(loss64)
        bad_step = torch.where(first, step_t, bad_step)
        bad_loss = torch.where(first, loss64, bad_loss)
        step_t += 1
        for j, r in enumerate(runs):
            if active[j]:
                r.period_loss += loss64[j] * s
                r.period_examples += s
                r.step += 1
        step += 1
        if bar is not None:
            bar.update(1)
        seen = next(r.sampler.examples_seen for j, r in enumerate(runs) if active[j])
        evaluate_now = seen >= next_epoch or step == sched0.steps
        if evaluate_now or step % SYNC_EVERY == 0:
            check_divergence()
            if not any(active):
                return
        if evaluate_now:
            t_eval = time.perf_counter()
            share = (t_eval - t_period) / max(sum(active), 1)
            sync_members()
            for j, r in enumerate(runs):
                if not active[j]:
                    continue
                secs = r.period_seconds + share
                r.train_seconds += secs
                row = r.evaluation_row(lrs[j], s, float(r.period_loss), r.period_examples, secs)
                r.history.append(row)
                r.log(f"{r.out}: epoch {row['epoch']:.2f}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_acc']:.4f}, val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
                r.period_loss.zero_()
                r.period_examples = 0
                r.period_seconds = 0.0
                r.checkpoint()
            next_epoch = (math.floor(seen / every + 1e-9) + 1) * every
            t_period = time.perf_counter()
            spent = (t_period - t_eval) / max(sum(active), 1)
            for j, r in enumerate(runs):
                if active[j]:
                    r.eval_seconds += spent
    check_divergence()
    sync_members()


def _fdr_monitor(cfg: TrainConfig, eta: float) -> FDRMonitor:
    return FDRMonitor(eta, momentum=cfg.momentum, dampening=cfg.dampening, weight_decay=cfg.weight_decay)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m nets.train``: one per ``TrainConfig`` field (``sgd_noise_common.cli.add_settings``:
    its type, default and help), and ``--out``, ``--quiet``, ``--wait``."""
    p = Parser(prog="python -m nets.train", description=__doc__.split("\n\n")[0])
    add_settings(p, TrainConfig)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="when another process is writing the same --out, wait for it instead of refusing")
    return p


def as_option_message(message: str) -> str:
    """``message`` with a leading ``TrainConfig`` field name (``weight_decay must ...``) given as the command-line
    option that sets it (``--weight-decay must ...``).

    >>> as_option_message("weight_decay must be a finite number, got nan")
    '--weight-decay must be a finite number, got nan'
    >>> as_option_message("width and batch_size must give a run that fits")
    '--width and --batch-size must give a run that fits'
    """
    names = {f.name for f in fields(TrainConfig)}
    both = message.split(" must ", 1)
    parts = both[0].split(" and ")
    if len(both) == 2 and len(parts) > 1 and all(n in names for n in parts):
        return " and ".join(option_name(TrainConfig, n) for n in parts) + " must " + both[1]
    head, sep, rest = message.partition(" ")
    name = head.rstrip(":")
    if name == "out_dir":
        return "--out" + head[len(name):] + sep + rest
    if name in {f.name for f in fields(TrainConfig)} and rest.startswith("must"):
        return option_name(TrainConfig, name) + head[len(name):] + sep + rest
    return message


def config_from_args(args) -> TrainConfig:
    """The ``TrainConfig`` of parsed command-line arguments (``build_parser``)."""
    return from_args(TrainConfig, args)


def main(argv=None) -> int:
    """``python -m nets.train``: train, resume or skip one run; exit 0 (also when SGD diverged: that is recorded as
    a result), 2 on bad input, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device, option="--device")  # before any work (a GPU index that is not there, ...)
        check_output_dir(args.out, option="--out", names=RUN_FILES, kind="run")
        result = train(config_from_args(args), args.out, progress=not args.quiet,
                       wait=math.inf if args.wait else None)
    except (ValueError, DataError) as exc:
        print(f"{parser.prog}: error: {as_option_message(str(exc))}", file=sys.stderr)
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
