"""What every experiment shares: the scales, the command line, the sweep and the output folder.

Each experiment module defines ``NAME``, ``CLAIM`` (the paper's claim in words), ``specs(scale, args)`` (the runs)
and ``analyse(results, ctx)`` (figures and claims). ``main`` does the rest: it runs the sweep (skipping finished
runs), then writes into ``--out`` (default ``experiments/<name>-<scale>``): ``config.json``, ``environment.json``,
``runs.csv`` (one row per run), ``history.csv`` (every run's epochs), the PNG figures and ``report.md`` (the claim,
what was measured, and whether it agrees).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import sys
import time
from pathlib import Path

from nets.data import DATASETS, DataError, verify_dataset
from nets.experiments.analysis import Context, markdown_row
from nets.experiments.scales import SCALES
from nets.experiments.sweep import EXECUTORS, run_sweep
from sgd_noise_common.cli import Parser
from sgd_noise_common.environment import environment
from sgd_noise_common.files import (
    check_output_dir,
    check_output_file,
    claim_output_dir,
    jsonable,
    write_json_atomic,
    write_text_atomic,
)
from sgd_noise_common.lock import folder_lock, output_locks

__all__ = ["build_parser", "main_for", "report_markdown", "EXPERIMENT_FILES"]

#: What an experiment writes into its folder (besides ``runs/``): the names that must not be someone else's.
EXPERIMENT_FILES = ("config.json", "environment.json", "runs.csv", "history.csv", "report.md", "*.png",
                    "table-*.csv", "runs")
#: The most seeds per setting an experiment accepts (the paper uses 3 to 5): more is a typing error, and would build
#: millions of run specifications before saying anything.
MAX_SEEDS = 1000
#: None of an experiment's own files may be written through a file option (``sgd_noise_common.files``).
EXPERIMENT_OWNERS = {name: None for name in EXPERIMENT_FILES}
CONFIG_KIND, ENVIRONMENT_KIND, PLAN_KIND = "nets.experiments.config", "environment", "nets.experiments.plan"

def build_parser(name: str, doc: str) -> Parser:
    """The options every experiment shares (scale, output folder, executor, workers, device, data, seeds, plan)."""
    p = Parser(prog=f"python -m nets.experiments.{name}", description=doc.split("\n\n")[0])
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="smoke: < 1 min on a CPU; small: real Fashion-MNIST, ~20 min on 2 cores; full: the paper's "
                        "settings, for a GPU (default smoke)")
    p.add_argument("--out", default=None, help=f"output folder (default experiments/{name}-SCALE)")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: list every run, the examples it processes and its estimated time (from a "
                        "short timed calibration of each model on --device)")
    p.add_argument("--json", default=None, metavar="PATH", help="with --plan: write the plan as JSON to PATH")
    p.add_argument("--calibrate-steps", type=int, default=24,
                   help="with --plan: timed SGD steps per model set-up (default 24; 0: list the runs without "
                        "estimating their time)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: in-process, or a process pool with --workers; ray: one task per run on a Ray cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="local executor: parallel runs (they share the device); --plan: workers or GPUs to "
                        "estimate for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=1.0,
                   help="ray: the fraction of a GPU each run asks for (e.g. 0.25: four MLP runs share a GPU)")
    p.add_argument("--address", default=None, help="ray: the address of an existing cluster (default: start one)")
    p.add_argument("--pack", type=int, default=None,
                   help="local executor, one worker: train up to this many compatible runs (same model, data and "
                        "batch sizes) together as one packed network (1: one run at a time; default 16 on a GPU, "
                        "1 on the CPU, where it was measured no faster: benchmarks/batched_speed.py)")
    p.add_argument("--device", default="auto",
                   help="the runs' device (training and the stationary stage): auto (GPU when there is one), cpu, "
                        "cuda, cuda:1, ...")
    p.add_argument("--data-root", default=None,
                   help="dataset folder: CIFAR-10's python batches (data_batch_1..5, test_batch), needed at full "
                        "scale by the experiments on VGG11 and ResNet56; Fashion-MNIST's IDX files otherwise")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="substitute this dataset for the paper's in every panel (stated in the report); never the "
                        "default")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: by scale)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    p.add_argument("--wait", action="store_true",
                   help="when another process is writing the same --out, wait for it instead of refusing")
    return p


def _validate_options(args) -> None:
    if args.pack is not None and args.pack < 1:
        raise ValueError(f"--pack must be an integer >= 1, got {args.pack}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
        raise ValueError(f"--seeds must lie in [1, {MAX_SEEDS}] (seeds per setting; each is a training run), got "
                         f"{args.seeds}")
    if not 0.0 < args.gpus_per_run <= 1.0:
        raise ValueError(f"--gpus-per-run must lie in (0, 1], got {args.gpus_per_run}")
    if args.calibrate_steps < 0:
        raise ValueError(f"--calibrate-steps must be >= 0, got {args.calibrate_steps}")
    if args.json and not args.plan:
        raise ValueError("--json writes the plan: use it with --plan")
    from nets.train import resolve_device

    resolve_device(args.device, option="--device")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError("--executor ray needs ray: pip install -e '.[ray]'")


def make_specs(module, args) -> list:
    """The experiment's runs at ``args.scale``, validated (no file is read but the dataset's presence)."""
    try:
        specs = module.specs(args.scale, args)
    except DataError as exc:
        if "CIFAR-10" not in str(exc) or getattr(args, "dataset", None):
            raise
        raise ValueError(f"{exc}; or pass --dataset fashion-mnist to substitute it (stated in the report)") from None
    for s in specs:
        s.train.validate()
    return specs


def experiment_kind(module, args) -> str:
    """The kind of an experiment's folder (its marker): the experiment and its scale, so that another experiment, or
    the same at another scale, is refused rather than written over it."""
    return f"experiment.{module.NAME}.{args.scale}"


def verify_data(specs, log) -> None:
    """Read every dataset the runs train on, whole, before any run: a missing, truncated or corrupt file stops the
    experiment here (exit 2) rather than failing every run (``nets.data.verify_dataset``)."""
    sizes = {}
    for dataset, root in sorted({(s.train.dataset, s.train.data_root) for s in specs}, key=str):
        if not dataset.startswith("synthetic"):
            log(f"checking {dataset} in {root or 'its default folder'}")
            try:
                sizes[dataset, root] = verify_dataset(dataset, root)
            except DataError as exc:
                raise DataError(f"--data-root {root}: {exc}" if root is not None else str(exc)) from None
    for s in specs:  # every run's subsets and batch sizes against the data that is there
        cfg = s.train
        if (cfg.dataset, cfg.data_root) not in sizes:
            continue
        n_train, n_test = sizes[cfg.dataset, cfg.data_root]
        where = f"{cfg.dataset} in {cfg.data_root or 'its default folder'}"
        if cfg.train_size is not None and cfg.train_size > n_train:
            raise DataError(f"{where} has {n_train} training examples; the runs need train_size {cfg.train_size}")
        if cfg.test_size is not None and cfg.test_size > n_test:
            raise DataError(f"{where} has {n_test} test examples; the runs need test_size {cfg.test_size}")
        cfg.validate(cfg.train_size or n_train)


def plan_line(module, scale: str, specs) -> str:
    """One line: each panel's model and dataset, the number of runs, epochs and seeds, and the examples."""
    from nets.experiments.plan import run_examples

    panels = []
    for panel, group in _panels(specs).items():
        c = group[0].train
        panels.append(f"{panel}: {c.model}{'' if c.width == 1 else f' x{c.width:g}'} on {c.dataset}"
                      + (f" (N={c.train_size})" if c.train_size else "") + f", {len(group)} runs")
    epochs = sorted({s.train.epochs for s in specs})
    seeds = sorted({s.tags.get("seed", s.train.seed) for s in specs})
    examples = sum(run_examples(s.train)[0] for s in specs)
    return (f"{module.NAME} ({scale}): {'; '.join(panels)}; {len(specs)} runs of "
            f"{'/'.join(f'{e:g}' for e in epochs)} epochs, {len(seeds)} seed(s); {examples:.3g} training examples")


def _fmt(value, spec: str) -> str:
    return "" if value is None or value == "" else format(float(value), spec)


def _panels(specs) -> dict:
    out: dict[str, list] = {}
    for s in specs:
        out.setdefault(s.tags.get("panel", "all"), []).append(s)
    return out


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
    """The command line of an experiment module (``NAME``, ``CLAIM``, ``__doc__``, ``specs``, ``analyse``,
    ``choices``): validate everything, print the plan line, then plan (``--plan``) or run, analyse and report.
    Exit 0 when every run finished, 1 when a run failed (crashed), 2 on bad input."""
    parser = build_parser(module.NAME, module.__doc__)
    args = parser.parse_args(argv)
    out = Path(args.out or f"experiments/{module.NAME}-{args.scale}")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    try:
        _validate_options(args)
        if args.plan:
            if args.json:
                check_output_file(args.json, option="--json", kind=PLAN_KIND)
        else:
            check_output_dir(out, option="--out", names=EXPERIMENT_FILES, kind=experiment_kind(module, args))
        specs = make_specs(module, args)
        print(plan_line(module, args.scale, specs), file=sys.stderr)
        if args.plan:
            return _plan(module, args, specs, log)
        verify_data(specs, log)
        claim_output_dir(out, option="--out", names=EXPERIMENT_FILES, kind=experiment_kind(module, args),
                         files=EXPERIMENT_OWNERS)
        with folder_lock(out, option="--out", wait=math.inf if args.wait else None):
            return _run_and_report(module, args, specs, out, log, t0)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def _run_and_report(module, args, specs, out: Path, log, t0: float) -> int:
    """The sweep, then ``runs.csv``, ``history.csv``, the analysis and ``report.md``; exit 0 or 1."""
    write_json_atomic(out / "config.json", jsonable({"experiment": module.NAME, "scale": args.scale,
                                                     "claim": module.CLAIM, "args": vars(args),
                                                     "runs": [s.to_dict() for s in specs]}), kind=CONFIG_KIND)
    write_json_atomic(out / "environment.json", environment(), kind=ENVIRONMENT_KIND)
    results = run_sweep(specs, out, executor=args.executor, workers=args.workers, address=args.address,
                        progress=not args.quiet, log=log, gpus_per_run=args.gpus_per_run, pack=args.pack)
    write_text_atomic(out / "runs.csv", _csv(results))
    hist = []
    for s, r in zip(specs, results):
        for row in Context(module.NAME, out, args.scale, args, specs).history(s.key()):
            hist.append({"key": s.key(), **s.tags, **row})
    write_text_atomic(out / "history.csv", _csv(hist))
    done = [(s, r) for s, r in zip(specs, results) if "error" not in r]  # diverged runs are results too
    ctx = Context(module.NAME, out, args.scale, args, specs)
    claims = module.analyse(done, ctx) if done else []
    if claims:
        verdict_margins(module, done, claims, out, args, specs, log)
    failed = len(results) - len(done)
    for s, r in zip(specs, results):  # the sweep logs failures unless --quiet; the reasons are shown either way
        if args.quiet and "error" in r:
            print(f"run {s.key()} {s.tags}: failed: {r['error']}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    write_text_atomic(out / "report.md", report_markdown(module, args.scale, specs, done, claims, ctx.figures,
                                                         failed, args, seconds, tables=ctx.tables))
    print(f"\n{module.NAME} ({args.scale}): {module.CLAIM}")
    for c in claims:
        print(f"  [{ {'yes': 'agrees', 'no': 'DISAGREES'}.get(c.verdict, c.verdict)}] {c.name}: {c.summary}")
    for f in ctx.figures:
        print(f"  figure: {f}")
    diverged = sum(bool(r.get("diverged")) for _, r in done)
    print(f"{len(done)}/{len(results)} runs finished ({diverged} diverged) in {seconds:.0f} s; report: "
          f"{out / 'report.md'}")
    return 0 if not failed else 1


#: A verdict that fewer than this share of the bootstrap resamples over seeds repeat is "not settled at this
#: scale" (issue 22).
MARGIN_MIN = 0.9
#: Bootstrap resamples over seeds per report, and the most seconds they may take (the analysis runs once per
#: resample; the count done is stated).
MARGIN_RESAMPLES = 200
MARGIN_SECONDS = 90.0


def verdict_margins(module, done, claims, out, args, specs, log=None) -> None:
    """Each claim's verdict margin: the share of bootstrap resamples of the seeds (all runs of a seed together,
    seeds drawn with replacement) whose analysis gives the same verdict ("yes", "no" or "not settled"). It is added
    to the claim's summary, and a settled verdict with a margin below ``MARGIN_MIN`` becomes "not settled at this
    scale". Nothing is resampled with one seed, or when the experiment's analysis is too costly to repeat
    (``module.BOOTSTRAP = False``). A resample whose analysis fails counts as a different verdict."""
    import random

    if not getattr(module, "BOOTSTRAP", True):
        for c in claims:
            c.summary += "; verdict margin not computed (the analysis is too costly to repeat per resample)"
        return
    by_seed: dict = {}
    for s, r in done:
        by_seed.setdefault(str(s.tags.get("seed", s.train.seed)), []).append((s, r))
    seeds = sorted(by_seed)
    if len(seeds) < 2:
        return  # one seed: the verdicts already say "not settled" where a scatter was needed
    rng = random.Random(0)
    original = {c.name: c.verdict for c in claims}
    same = {c.name: 0 for c in claims}
    count, t0 = 0, time.perf_counter()
    while count < MARGIN_RESAMPLES and time.perf_counter() - t0 < MARGIN_SECONDS:
        draw = [rng.choice(seeds) for _ in seeds]
        resampled = [pair for seed in draw for pair in by_seed[seed]]
        ctx = Context(module.NAME, out, args.scale, args, specs, dry=True)
        try:
            again = {c.name: c.verdict for c in module.analyse(resampled, ctx)}
        except Exception:  # noqa: BLE001 - a resample the analysis cannot take: not the same verdict
            again = {}
        for name, v in original.items():
            same[name] += again.get(name) == v
        count += 1
    for c in claims:
        m = same[c.name] / count
        c.summary += f"; verdict margin {m:.2f} ({count} resamples of the {len(seeds)} seeds)"
        if c.settled and m < MARGIN_MIN:
            c.settled = False
            c.summary += " (not settled at this scale)"
    if log:
        log(f"verdict margins from {count} bootstrap resamples of {len(seeds)} seeds")


def _plan(module, args, specs, log) -> int:
    from nets.experiments.plan import make_plan

    plan = make_plan(module.NAME, args.scale, specs, device=args.device, workers=args.workers, log=log,
                     pack=args.pack if args.executor == "local" and args.workers == 1 else 1,
                     steps=args.calibrate_steps,
                     analysis=module.analysis_work(specs) if hasattr(module, "analysis_work") else None)
    print(plan.text())
    if args.json:
        with output_locks((args.json, False), option="--json"):
            write_json_atomic(args.json, jsonable(plan.to_dict()), kind=PLAN_KIND)
    return 0


def headline(module, scale: str, specs, claims) -> list[str]:
    """The report's first lines (at most five): the claim, the setting, the seeds, the verdict with its margin.

    The verdict is "agrees" when every part of the claim holds and the data settle it, "disagrees" when some part
    fails and the data settle that, and "not settled" otherwise; the margin is the numbers of the part that decides
    it (the first that fails, else the first not settled, else the first)."""
    by_panel: dict = {}
    for s in specs:
        by_panel.setdefault(s.tags.get("panel"), set()).add(str(s.tags.get("seed", s.train.seed)))
    seeds = sorted(set().union(*by_panel.values()))
    # A panel run with fewer seeds than the others says so (devtools.publish_results counts the fewest).
    fewer = [f"{p}: {', '.join(sorted(v))}" for p, v in by_panel.items() if p is not None and v != set(seeds)]
    seed_text = ", ".join(seeds) + (f" ({'; '.join(fewer)})" if fewer else "")
    failed = [c for c in claims if c.settled and not c.holds]
    open_ = [c for c in claims if not c.settled]
    verdict = "disagrees" if failed else ("not settled" if open_ or not claims else "agrees")
    decisive = (failed or open_ or claims or [None])[0]
    counts = (f"{sum(c.holds and c.settled for c in claims)} of {len(claims)} parts agree"
              + (f", {len(failed)} disagree" if failed else "") + (f", {len(open_)} not settled" if open_ else ""))
    margin = f"; {decisive.name}: {decisive.summary}" if decisive is not None else ""
    return [f"**Claim.** {module.CLAIM}.",
            f"**Setting.** {plan_line(module, scale, specs)}; seeds {seed_text}.",
            f"**Verdict: {verdict}** ({counts}){margin}."]


def report_markdown(module, scale, specs, done, claims, figures, failed, args, seconds, *, tables=()) -> str:
    """The experiment's report, to be read in a minute: the headline (``headline``), the figures and the claims
    table; then the details: what was run (each panel's model and dataset, the choices the paper leaves open,
    substitutes), where the time went, diverged runs, and the analysis's tables (long ones in linked CSV files)."""
    rows = [r for _, r in done]
    t_train = sum(float(r.get("train_seconds") or 0.0) for r in rows)
    t_eval = sum(float(r.get("eval_seconds") or 0.0) for r in rows)
    t_meas = sum(float(r.get("measure_seconds") or 0.0) for r in rows)
    lines = [f"# {module.NAME} ({scale} scale)", ""]
    lines += [line + "  " for line in headline(module, scale, specs, claims)[:-1]]
    lines += [headline(module, scale, specs, claims)[-1], ""]
    if failed:
        lines += [f"**{failed} runs failed** (see runs.csv).", ""]
    for f in figures:
        lines += [f"![{Path(f).stem}]({Path(f).name})", ""]
    lines += ["**What the numbers say.** Each line is one testable part of the claim, the measured numbers and "
              "whether they agree with it by the stated criterion: \"not settled\" where the scatter between "
              "seeds (or a single seed) leaves the criterion undecided. Nothing is forced to agree: where the "
              "numbers disagree, that is the finding" + (" (at the smoke scale the runs are too short and too few "
                                                         "for the statistics to mean much: it checks the pipeline)"
                                                         if scale == "smoke" else "") + ".", "",
              "| part of the claim | measured | agrees |", "|---|---|---|"]
    for c in claims:
        lines.append(markdown_row([c.statement, c.summary, c.verdict if c.verdict != "no" else "**no**"]))
    lines += ["", "## Details", "",
              f"**What was run.** {plan_line(module, scale, specs)}; executor {args.executor}.", "",
              "| panel | model | dataset | runs | epochs | (eta, S) |", "|---|---|---|---|---|---|"]
    for panel, group in _panels(specs).items():
        c = group[0].train
        pairs = sorted({(s.train.eta, s.train.batch_size) for s in group})
        lines.append(markdown_row([panel, f"{c.model}{'' if c.width == 1 else f' (width x{c.width:g})'}",
                                   f"{c.dataset}{f' (N = {c.train_size})' if c.train_size else ''}", len(group),
                                   f"{c.epochs:g}", ", ".join(f"({e:g}, {b})" for e, b in pairs[:8])
                                   + (" ..." if len(pairs) > 8 else "")]))
    lines += ["", "**Choices and deviations.** Where the paper is silent, its full scale chooses as the lines marked "
              "'Not in the paper' say; a smaller scale deviates from it as its last lines say.", ""]
    lines += [f"- {c}" for c in module.choices(scale, args)]
    if getattr(args, "dataset", None):
        lines.append(f"- **Substituted by request** (`--dataset {args.dataset}`): every panel trains on "
                     f"{args.dataset} instead of the paper's dataset.")
    lines += ["", f"**Time.** {seconds:.0f} s of wall time for this invocation; the runs' own time (every session "
              f"that trained them): training {t_train:.0f} s, evaluation {t_eval:.0f} s, measurement "
              f"{t_meas:.0f} s.", ""]
    diverged = [(s, r) for s, r in done if r.get("diverged")]
    if diverged:
        lines += ["**Diverged runs** (the paper's `*`; results, counted in the analysis):", "",
                  "| run | tags | eta | S | step | epoch | loss |", "|---|---|---|---|---|---|---|"]
        for s, r in diverged:
            tags = ", ".join(f"{k}={v}" for k, v in s.tags.items())
            lines.append(markdown_row([f"`{s.key()}`", tags, f"{r['eta']:g}", r["batch_size"], r["diverged_step"],
                                       _fmt(r.get("diverged_epoch"), ".2f")
                                       + (f" ({r['diverged_phase']} phase)" if r.get("diverged_phase") else ""),
                                       r["diverged_loss"]]))
        lines.append("")
    lines += list(tables)
    lines += ["Files: `runs.csv` (one row per run), `history.csv` (every evaluation of every run), `table-*.csv` "
              "(the long tables), `config.json`, `environment.json`, `runs/<key>/` (each run's checkpoints, model "
              "and measurements).", ""]
    return "\n".join(lines)
