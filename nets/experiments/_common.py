"""What every experiment shares: the scales, the command line, the sweep and the output folder.

Each experiment module defines ``NAME``, ``CLAIM`` (the paper's claim in words), ``specs(scale, args)`` (the runs)
and ``analyse(results, ctx)`` (figures and claims). ``main`` does the rest: it runs the sweep (skipping finished
runs), then writes into ``--out`` (default ``experiments/<name>-<scale>``): ``config.json``, ``environment.json``,
``runs.csv`` (one row per run), ``history.csv`` (every run's epochs), the PNG figures and ``report.md`` (the claim,
what was measured, and whether it agrees).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nets.experiments._runner import EXECUTORS, run_sweep
from nets.train import TrainConfig
from common.environment import environment
from common.files import write_text_atomic
from common.cli import Parser
from common.files import save_figure_atomic
from common.files import jsonable

__all__ = ["SCALES", "base_config", "measure_options", "Context", "main_for", "curve", "save_figure"]

SCALES = ("smoke", "small", "full")


def base_config(scale: str, args, *, model: str = "mlp", conv_width: float = 0.25) -> TrainConfig:
    """The training set-up of a scale. smoke: synthetic 28x28 data and a narrow MLP, seconds per run; small: real
    Fashion-MNIST (the MLP; the convolutional models at ``conv_width`` on images padded to 32x32), minutes on a
    2-core CPU; full: the paper's scale, CIFAR-10 when ``--data-root`` names it (else Fashion-MNIST), on a GPU."""
    device = args.device
    if scale == "smoke":
        return TrainConfig(dataset="synthetic-mnist", synthetic_size=512, test_size=256, eval_train_size=512,
                           model="mlp", width=0.125, epochs=2, device=device, eval_batch_size=512)
    if scale == "small":
        if model == "mlp":
            return TrainConfig(dataset="fashion-mnist", model="mlp", width=1.0, epochs=5, train_size=20000,
                               test_size=5000, eval_train_size=5000, data_root=args.data_root, device=device)
        return TrainConfig(dataset="fashion-mnist", model=model, width=conv_width, epochs=6, train_size=10000,
                           test_size=2000, eval_train_size=2000, data_root=args.data_root, device=device,
                           eval_batch_size=500)
    if scale == "full":
        cifar = args.data_root is not None and model != "mlp"
        return TrainConfig(dataset="cifar10" if cifar else "fashion-mnist", model=model, width=1.0, epochs=200,
                           data_root=args.data_root, device=device, eval_train_size=10000)
    raise ValueError(f"--scale must be one of {SCALES}, got {scale!r}")


def measure_options(scale: str) -> dict:
    """Keyword arguments of ``nets.measure.measure_run`` for a scale."""
    if scale == "smoke":
        return dict(measure_size=128, probes=4, device="cpu")
    if scale == "small":
        return dict(measure_size=1000, probes=16, device="auto")
    return dict(measure_size=5000, probes=32, device="auto")


@dataclass
class Context:
    """What ``analyse`` gets besides the results: where to write, the scale, the arguments, the specs."""

    name: str
    out: Path
    scale: str
    args: object
    specs: list
    figures: list = field(default_factory=list)

    def figure(self, fig, stem: str) -> str:
        path = self.out / f"{stem}.png"
        save_figure(fig, path)
        self.figures.append(str(path))
        return str(path)

    def history(self, key: str) -> list[dict]:
        """The per-epoch rows of run ``key``."""
        path = self.out / "runs" / key / "history.csv"
        if not path.is_file():
            return []
        with open(path) as fh:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def save_figure(fig, path) -> None:
    save_figure_atomic(fig, path, dpi=120)


def curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of one history column."""
    return np.array([r["epoch"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)


def rms_distance(a_rows, b_rows, key: str) -> float:
    """RMS difference of two runs' ``key`` curves, compared at the epochs of the first (linear interpolation)."""
    ea, va = curve(a_rows, key)
    eb, vb = curve(b_rows, key)
    if ea.size == 0 or eb.size == 0:
        return math.nan
    return float(np.sqrt(np.mean((va - np.interp(ea, eb, vb)) ** 2)))


def build_parser(name: str, doc: str) -> Parser:
    p = Parser(prog=f"python -m nets.experiments.{name}", description=doc.split("\n\n")[0])
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="smoke: < 1 min on a CPU; small: real Fashion-MNIST, ~20 min on 2 cores; full: the paper's "
                        "scale, for a GPU (default smoke)")
    p.add_argument("--out", default=None, help=f"output folder (default experiments/{name}-SCALE)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool on this machine; ray: one task per run on a Ray cluster")
    p.add_argument("--workers", type=int, default=1, help="local executor: parallel runs (default 1)")
    p.add_argument("--address", default=None, help="ray: the address of an existing cluster (default: start one)")
    p.add_argument("--device", default="auto", help="training device: auto (GPU when there is one), cpu, cuda")
    p.add_argument("--data-root", default=None, help="dataset folder (CIFAR-10 for the full scale)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: by scale)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    return p


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "traceback"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main_for(module, argv=None) -> int:
    """The command line of an experiment module (``NAME``, ``CLAIM``, ``__doc__``, ``specs``, ``analyse``)."""
    parser = build_parser(module.NAME, module.__doc__)
    args = parser.parse_args(argv)
    out = Path(args.out or f"experiments/{module.NAME}-{args.scale}")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        specs = module.specs(args.scale, args)
        for s in specs:
            s.train.validate()
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(jsonable({"experiment": module.NAME, "scale": args.scale, "claim": module.CLAIM,
                                         "args": vars(args), "runs": [s.to_dict() for s in specs]}), indent=2)
                   + "\n")
        write_text_atomic(out / "environment.json", json.dumps(environment(), indent=2) + "\n")
        results = run_sweep(specs, out, executor=args.executor, workers=args.workers, address=args.address,
                            progress=not args.quiet, log=log)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(out / "runs.csv", _csv(results))
    hist = []
    for s, r in zip(specs, results):
        for row in Context(module.NAME, out, args.scale, args, specs).history(s.key()):
            hist.append({"key": s.key(), **s.tags, **row})
    write_text_atomic(out / "history.csv", _csv(hist))
    ok_results = [(s, r) for s, r in zip(specs, results) if "error" not in r]
    ctx = Context(module.NAME, out, args.scale, args, specs)
    claims = module.analyse(ok_results, ctx) if ok_results else []
    failed = len(results) - len(ok_results)
    seconds = time.perf_counter() - t0
    write_text_atomic(out / "report.md",
               report_markdown(module, args.scale, specs, ok_results, claims, ctx.figures, failed, args, seconds))
    print(f"\n{module.NAME} ({args.scale}): {module.CLAIM}")
    for c in claims:
        print(f"  [{'agrees' if c.holds else 'DISAGREES'}] {c.name}: {c.summary}")
    for f in ctx.figures:
        print(f"  figure: {f}")
    print(f"{len(ok_results)}/{len(results)} runs finished in {seconds:.0f} s; report: {out / 'report.md'}")
    return 0 if not failed else 1


def report_markdown(module, scale, specs, ok_results, claims, figures, failed, args, seconds) -> str:
    """The experiment's report: the paper's claim, what was run and measured, and whether the numbers agree."""
    lines = [f"# {module.NAME} ({scale} scale)", "", f"**The paper's claim.** {module.CLAIM}.", "",
             f"**What was run.** {len(specs)} runs of {_describe(specs)}; executor {args.executor}; "
             f"{seconds:.0f} s in all." + (f" **{failed} runs failed** (see runs.csv)." if failed else ""), "",
             "**What the numbers say.** Each line is one testable part of the claim, the measured numbers and "
             "whether they agree with it by the stated criterion. Nothing is forced to agree: where the numbers "
             "disagree, that is the finding" + (" (at the smoke scale the runs are too short and too few for "
                                                "the statistics to mean much: it checks the pipeline)"
                                                if scale == "smoke" else "") + ".", "",
             "| part of the claim | measured | agrees |", "|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.statement} | {c.summary} | {'yes' if c.holds else '**no**'} |")
    lines.append("")
    for f in figures:
        lines += [f"![{Path(f).stem}]({Path(f).name})", ""]
    lines += ["Files: `runs.csv` (one row per run), `history.csv` (every epoch of every run), `config.json`, "
              "`environment.json`, `runs/<key>/` (each run's checkpoints, model and measurements).", ""]
    return "\n".join(lines)


def _describe(specs) -> str:
    c = specs[0].train
    models = sorted({s.train.model for s in specs})
    return (f"{', '.join(models)} on {c.dataset}"
            + (f" (N = {c.train_size})" if c.train_size else "") + f", {c.epochs:g} epochs")


def with_(cfg: TrainConfig, **kw) -> TrainConfig:
    return replace(cfg, **kw)


def seeds_for(scale: str, args, default_small: int = 1) -> list[int]:
    n = args.seeds or (1 if scale == "smoke" else default_small)
    return list(range(n))

