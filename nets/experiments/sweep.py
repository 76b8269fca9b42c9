"""Sweeps of training runs: one task per run, executed in-process, by a local process pool, or on a Ray cluster.

A run is a ``RunSpec``: a ``TrainConfig``, the stages that follow training (``STAGES``: library functions of a run
folder, e.g. ``measure``, ``stationary``) with their keyword arguments, and tags. Its folder is named by a hash of
what defines it, so a sweep started again finds its finished runs (``metrics.json`` present) and skips them, a
finished stage is read back from its ``<stage>.json``, and an interrupted run resumes from its checkpoint
(``nets.train``). Every file a task writes is written atomically, so a
worker or driver that dies loses at most the run in progress. On Ray each run is one task that asks for a GPU when
its device needs one and is retried on failure (``max_retries``); the run folders must then lie on a file system
that the workers share with the driver.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nets.train import TrainConfig, check_finished_run
from sgd_noise_common.files import jsonable, read_json, write_json_atomic
from sgd_noise_common.lock import folder_lock

__all__ = ["RunSpec", "Stage", "STAGES", "execute", "run_sweep", "EXECUTORS"]

EXECUTORS = ("local", "ray")
#: ``TrainConfig`` fields added after sweeps had named run folders by ``RunSpec.key()``, with the value at which
#: each leaves the key out: a spec at that value has the key (and so the folder) it had before the field existed.
#: ``compile`` (issue 23): eager runs keep their folders; a compiled run is another run (its numbers agree with
#: the eager one's to round-off only).
KEY_OMITS_AT_DEFAULT = {"compile": False}


@dataclass(frozen=True)
class Stage:
    """A step after training: ``run(run_dir, device=..., **kwargs)`` returns a JSON-ready dict (saved as
    ``<name>.json`` in the run folder), and ``metrics(result)`` the flat numbers it adds to the run's row in
    ``runs.csv``. ``device`` is the run's own (its ``TrainConfig.device``), given when the stage is executed
    rather than written into the spec's stage arguments (which name the run's folder); a ``device`` among those
    arguments takes precedence, unless it is ``"auto"`` (``_stage_kwargs``)."""

    run: Callable[..., dict]
    metrics: Callable[[dict], dict]


def _measure(run_dir, **kwargs) -> dict:
    from nets.measure import measure_run

    return jsonable(measure_run(run_dir, **kwargs))


def _measure_metrics(data: dict) -> dict:
    from nets.measure import MeasureResult

    m = MeasureResult.from_dict(data)
    h, g = m.hessian, m.gradient_noise
    return dict(lambda_max=h.lambda_max, trace_h=h.trace, trace_h_stderr=h.trace_stderr, frobenius=h.frobenius,
                frobenius_stderr=h.frobenius_stderr, trace_c=g.trace_c, trace_c_stderr=g.trace_c_stderr,
                noise_scale=g.noise_scale, measured_val_acc=m.val_acc, measured_train_loss=m.train_loss_eval_mode)


def _stationary(run_dir, **kwargs) -> dict:
    from nets.stationary import basin_phase

    return jsonable(basin_phase(run_dir, **kwargs))


def _stationary_metrics(data: dict) -> dict:
    from nets.stationary import BasinResult, result_from_dict

    r = result_from_dict(data)
    if not isinstance(r, BasinResult):
        return {}
    return dict(excess=r.excess, excess_stderr=r.excess_stderr, e_fdr=r.e_fdr, e_fdr_stderr=r.e_fdr_stderr,
                pred_h=r.pred_h, pred_h_data=r.pred_h_data, pred_c=r.pred_c, pred_c_kappa=r.pred_c_kappa,
                trace_h=r.trace_h, trace_c=r.trace_c, lambda_max=r.lambda_max,
                distance_in_spreads=r.distance_in_spreads, anneal_minus_min=r.anneal_minus_min,
                stationary=r.stationary, control_loss=r.control.exact_loss, min_grad_norm=r.minimum.grad_norm,
                min_certified=r.minimum.certified)


def _advise(run_dir, **kwargs) -> dict:
    from nets.advise.core import advise_run

    return jsonable(advise_run(run_dir, **kwargs))


def _advise_metrics(data: dict) -> dict:
    from nets.advise import Advice

    a = Advice.from_dict(data)
    return dict(beta_star_predicted=a.beta_star, beta_star_mechanism=a.mechanism,
                beta_star_verified=a.beta_star_measured, mccandlish_beta=a.mccandlish_beta,
                advice_lambda_max=a.measurements.lambda_max, advice_b_simple=a.measurements.b_simple)


#: The stages a ``RunSpec`` may ask for, by name: the geometry of the minimum (``nets.measure.measure_run``),
#: the stationary phase and the OU picture tested on it (``nets.stationary.basin_phase``), and the batch-scaling
#: advice (``nets.advise.core.advise_run``).
STAGES = {"measure": Stage(_measure, _measure_metrics), "stationary": Stage(_stationary, _stationary_metrics),
          "advise": Stage(_advise, _advise_metrics)}
#: The stamp (``sgd_noise_common.files.stamp``) of each stage's JSON and of a run's ``metrics.json``: a stage's
#: result is the same kind of output as the command that computes it alone (``nets.measure --json``).
STAGE_KINDS = {"measure": "nets.measure", "stationary": "nets.stationary", "advise": "advice"}
METRICS_KIND = "nets.experiments.metrics"


@dataclass
class RunSpec:
    """One run of a sweep: how to train it, the stages after training (name in ``STAGES`` → keyword arguments,
    run in that order) and tags for the analysis."""

    train: TrainConfig
    tags: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = [name for name in self.stages if name not in STAGES]
        if unknown:
            raise ValueError(f"stages: unknown {unknown}; choose from {sorted(STAGES)}")

    def key(self) -> str:
        """A 12-hex-digit hash of what defines the run (not the tags): the name of its folder. The fields of
        ``KEY_OMITS_AT_DEFAULT`` at their value there are left out, so that it is unchanged by their addition."""
        train = {k: v for k, v in asdict(self.train).items()
                 if not (k in KEY_OMITS_AT_DEFAULT and v == KEY_OMITS_AT_DEFAULT[k])}
        blob = json.dumps({"train": train, "stages": self.stages}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        """The spec as JSON-ready data (what a worker process receives)."""
        return {"key": self.key(), "train": asdict(self.train), "tags": self.tags, "stages": self.stages}


def execute(spec_dict: dict, run_dir: str, threads: int | None = None) -> dict:
    """Train one run in ``run_dir`` and run its stages; returns its metrics (also written to ``metrics.json``).

    Idempotent: a finished run is read back, and so is every finished stage. ``threads`` sets torch's thread
    count (a worker process's share of the cores)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, option="run folder"):  # one process per run, however the sweep is executed
        done = run_dir / "metrics.json"
        if done.is_file():
            return _finished_metrics(run_dir, spec_dict)
        return _execute(spec_dict, run_dir, done)


def _execute(spec_dict: dict, run_dir: Path, done: Path) -> dict:
    from nets.train import train

    t0 = time.perf_counter()
    cfg = TrainConfig(**spec_dict["train"])
    result = train(cfg, run_dir, progress=False, log=lambda msg: None)
    metrics = {"key": spec_dict["key"], **spec_dict["tags"], "eta": cfg.eta, "batch_size": cfg.batch_size,
               "ratio": cfg.eta / cfg.batch_size, "seed": spec_dict["tags"].get("seed", cfg.seed),
               "run_seed": cfg.seed, "train_size": result["train_size"],
               "steps": result["steps"], "epochs": result["epochs"]}
    metrics.update({f"final_{k}": v for k, v in result.get("final", {}).items()})
    div = result.get("diverged")
    metrics.update(diverged=div is not None, diverged_step=div["step"] if div else None,
                   diverged_epoch=div["epoch"] if div else None, diverged_loss=div["loss"] if div else None)
    secs = result.get("seconds", {})  # the run's own, over every session that trained it
    metrics.update(train_seconds=secs.get("train", 0.0), eval_seconds=secs.get("eval", 0.0), measure_seconds=0.0)
    for name, kwargs in spec_dict.get("stages", {}).items():
        if div:  # a diverged run has no trained model to measure
            break
        stage, path = STAGES[name], run_dir / f"{name}.json"
        if path.is_file():
            out = read_json(path, what=f"{name} result", remedy="delete it to recompute the stage")
        else:
            t_stage = time.perf_counter()
            out = stage.run(run_dir, **_stage_kwargs(kwargs, cfg))
            out["seconds"] = out.get("seconds", time.perf_counter() - t_stage)
            write_json_atomic(path, out, kind=STAGE_KINDS[name])
        metrics["measure_seconds"] += float(out.get("seconds", 0.0))
        if out.get("diverged"):  # SGD diverged in a stage (the stationary phase): a result, like in training
            d = out["diverged"]
            metrics.update(diverged=True, diverged_step=d.get("step"), diverged_loss=d.get("loss"),
                           diverged_phase=d.get("phase"))
            break
        metrics.update(stage.metrics(out))
    metrics["seconds"] = time.perf_counter() - t0
    write_json_atomic(done, json.loads(json.dumps(jsonable(metrics), default=str)), kind=METRICS_KIND)
    return metrics


def _stage_kwargs(kwargs: dict, cfg: TrainConfig) -> dict:
    """A stage's keyword arguments as it is executed: its ``device`` is the run's own (``cfg.device``), given here
    rather than written into the spec (whose stage arguments name the run's folder). A device named among the
    arguments wins, except ``"auto"``: the measure stage's ``device="auto"`` of the small and full scales
    (``scales.measure_options``, part of those runs' keys, so kept there) follows the run's device, so that a run
    trained with ``--device cpu`` on a GPU machine is measured on the CPU too."""
    if kwargs.get("device", "auto") == "auto":
        return {**kwargs, "device": cfg.device}
    return dict(kwargs)


def _finished_metrics(run_dir: Path, spec_dict: dict) -> dict:
    """The metrics of a finished run, after checking that the run and its stages' results are whole (a damaged
    file is named, with the advice to delete the run folder, rather than the run being skipped as finished)."""
    metrics = read_json(run_dir / "metrics.json", what="run metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"{run_dir / 'metrics.json'} is not a run's metrics; delete the folder {run_dir} and run the "
                         "experiment again to train the run anew")
    check_finished_run(run_dir)
    for name in spec_dict.get("stages", {}):
        path = run_dir / f"{name}.json"
        if path.is_file():
            read_json(path, what=f"{name} result",
                      remedy=f"delete it and {run_dir / 'metrics.json'} to recompute the stage")
    # Metrics are numbers, NaN stored as null; the diverged_* fields alone are null by meaning (no divergence).
    return {k: (math.nan if v is None and not k.startswith("diverged_") else v) for k, v in metrics.items()
            if k != "sgd_noise"}


def _task(args):
    spec_dict, run_dir, threads = args
    try:
        return execute(spec_dict, run_dir, threads)
    except Exception as exc:  # noqa: BLE001 - reported per run; the sweep goes on
        return {"key": spec_dict["key"], "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5)}


#: Members per packed network by default when the runs train on a GPU (``run_sweep``).
DEFAULT_GPU_PACK = 16


def _on_gpu(jobs) -> bool:
    """Whether the first run of ``jobs`` would train on a GPU (its device resolved as training resolves it)."""
    from nets.train import resolve_device

    if not jobs:
        return False
    try:
        return resolve_device(jobs[0][0]["train"].get("device", "auto")).type == "cuda"
    except ValueError:
        return False


def _train_packed(jobs, pack: int, log) -> None:
    """Train the unfinished runs of ``jobs`` that can share a packed network (``nets.train.train_many``: the same
    architecture, data, batch sizes and length; up to ``pack`` members), before their stages run one by one; a
    pack that fails leaves its runs to train alone in ``execute``."""
    from nets.train import batch_key, config_from_dict, train_many

    groups: dict = {}
    for d, r in jobs:
        if (Path(r) / "metrics.json").is_file() or (Path(r) / "result.json").is_file():
            continue
        cfg = config_from_dict(d["train"], source=f"run {d['key']}")
        key = batch_key(cfg)
        if key is not None:
            groups.setdefault(key, []).append((cfg, r))
    for members in groups.values():
        if len(members) < 2:
            continue
        for a in range(0, len(members), pack):
            chunk = members[a:a + pack]
            if len(chunk) < 2:
                continue
            log(f"training {len(chunk)} runs together as one packed network ({chunk[0][0].model}, S = "
                f"{chunk[0][0].batch_size})")
            try:
                train_many([c for c, _ in chunk], [r for _, r in chunk], progress=False, log=log, max_members=pack)
            except (ValueError, RuntimeError) as exc:  # each run then trains alone, and reports its own error
                log(f"packed training failed ({type(exc).__name__}: {exc}); these runs train one by one")


def run_sweep(specs: list[RunSpec], out_dir, *, executor: str = "local", workers: int = 1, address: str | None = None,
              progress: bool = True, log=None, retries: int = 2, gpus_per_run: float = 1.0,
              pack: int | None = None) -> list[dict]:
    """Run every spec (skipping finished ones) and return their metrics in the order of ``specs``; a failed run
    returns ``{"key", "error"}`` and the sweep continues. With the local executor and one worker, runs that can
    share a packed network train together first (``pack`` members at most; 1 turns it off; ``None``: 16 when the
    runs train on a GPU, 1 on the CPU, where packing was measured no faster for the paper's models,
    ``benchmarks/batched_speed.py``), then each run's stages follow as usual."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 < gpus_per_run <= 1.0:
        raise ValueError(f"gpus_per_run must lie in (0, 1], got {gpus_per_run}")
    runs_dir = Path(out_dir) / "runs"
    jobs = []
    for s in specs:
        d = s.to_dict()
        jobs.append((d, str(runs_dir / d["key"])))
    finished = sum((Path(r) / "metrics.json").is_file() for _, r in jobs)
    log(f"{len(jobs)} runs, {finished} finished already; executor {executor}"
        + (f" ({workers} workers)" if executor == "local" else ""))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), initial=0, desc="runs", unit="run", dynamic_ncols=True)
    results: list[dict | None] = [None] * len(jobs)

    def report(i, res):
        results[i] = res
        status = "failed: " + res["error"] if "error" in res else f"done ({res.get('seconds', 0.0):.1f} s)"
        tags = {k: v for k, v in jobs[i][0]["tags"].items()}
        log(f"run {jobs[i][0]['key']} {tags}: {status}")
        if bar is not None:
            bar.update(1)

    if executor == "local" and workers == 1:
        if pack is None:
            pack = DEFAULT_GPU_PACK if _on_gpu(jobs) else 1
        if pack > 1:
            _train_packed(jobs, pack, log)
        for i, (d, r) in enumerate(jobs):
            report(i, _task((d, r, None)))
    elif executor == "local":
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn, not fork: a forked child of a process that has started torch's thread pools can deadlock.
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_task, (d, r, threads)): i for i, (d, r) in enumerate(jobs)}
            for fut in cf.as_completed(futures):
                report(futures[fut], fut.result())
    else:
        _run_ray(jobs, address, retries, report, gpus_per_run)
    if bar is not None:
        bar.close()
    failed = [r for r in results if r is not None and "error" in r]
    if failed:
        log(f"{len(failed)} of {len(jobs)} runs failed; the others are in {runs_dir}")
    return results


def _run_ray(jobs, address, retries, report, gpus_per_run):
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(include_dashboard=False, log_to_driver=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # A fraction of a GPU per run lets several small runs (the MLP grid) share one device.
        tasks = {n: ray.remote(num_gpus=n, num_cpus=1, max_retries=retries, retry_exceptions=True)(execute)
                 for n in (0, gpus_per_run)}
        pending = {}
        for i, (d, r) in enumerate(jobs):
            device = d["train"].get("device", "auto")
            wants_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
            pending[tasks[gpus_per_run if wants_gpu else 0].remote(d, r)] = i
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - after the retries: report and go on
                    res = {"key": jobs[i][0]["key"], "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                report(i, res)
    finally:
        if started_here:
            ray.shutdown()

