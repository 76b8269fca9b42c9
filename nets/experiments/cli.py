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
import sys
import time
from pathlib import Path

from common.cli import Parser
from common.environment import environment
from common.files import check_output_dir, claim_output_dir, jsonable, write_json_atomic, write_text_atomic
from nets.experiments.analysis import Context
from nets.experiments.scales import SCALES
from nets.experiments.sweep import EXECUTORS, run_sweep

__all__ = ["build_parser", "main_for", "report_markdown", "EXPERIMENT_FILES"]

#: What an experiment writes into its folder (besides ``runs/``): the names that must not be someone else's.
EXPERIMENT_FILES = ("config.json", "environment.json", "runs.csv", "history.csv", "report.md", "*.png", "runs")

def build_parser(name: str, doc: str) -> Parser:
    """The options every experiment shares (scale, output folder, executor, workers, device, data, seeds)."""
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
        check_output_dir(out, option="--out", names=EXPERIMENT_FILES)
        specs = module.specs(args.scale, args)
        for s in specs:
            s.train.validate()
        claim_output_dir(out, option="--out", names=EXPERIMENT_FILES)
        write_json_atomic(out / "config.json", jsonable({"experiment": module.NAME, "scale": args.scale,
                                                         "claim": module.CLAIM, "args": vars(args),
                                                         "runs": [s.to_dict() for s in specs]}))
        write_json_atomic(out / "environment.json", environment())
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
    for s, r in zip(specs, results):  # the sweep logs failures unless --quiet; the reasons are shown either way
        if args.quiet and "error" in r:
            print(f"run {s.key()} {s.tags}: failed: {r['error']}", file=sys.stderr)
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
