"""``python -m nets.measure RUN_DIR --json PATH``: the geometry of a trained model's minimum.

Loads a finished run (``nets.train``), takes a fixed, ordered measurement subset of its training set, and measures
the loss and accuracy (train and validation), the Hessian's λ_max, Tr(H) and ‖H‖_F (``nets.curvature
.hessian_stats``) and the gradient noise Tr(C) with the noise scale (``nets.curvature.gradient_noise``), under the
stated batch-norm policy. Writes one JSON object (atomically) and prints a summary.

Example::

    python -m nets.measure runs/a --json runs/a/measure.json --measure-size 1000 --probes 16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.nn import functional as F

from nets.curvature import BN_MODES, GradientNoise, HessianOperator, HessianStats, gradient_noise, hessian_stats
from nets.data import DataError
from nets.evaluation import evaluate
from nets.train import load_run, resolve_device
from sgd_noise_common.cli import Parser
from sgd_noise_common.environment import environment
from sgd_noise_common.files import (
    OutputError,
    check_output_dir,
    check_output_file,
    claim_output_dir,
    jsonable,
    write_json_atomic,
)
from sgd_noise_common.lock import folder_lock, output_locks
from sgd_noise_common.results import Result
from sgd_noise_common.seeds import spawn_seeds

__all__ = ["main", "measure_run", "MeasureResult"]

#: The random streams of one measurement, children of ``--seed`` (``sgd_noise_common.seeds``): which training
#: examples are measured, the examples batch norm's statistics are recomputed on, the Hessian's probes and starting
#: vectors, the gradient noise's, and the optional extras' (spectra, slices, sharpness).
MEASURE_STREAMS = ("examples", "bn_inputs", "hessian", "noise", "extras")


def build_parser() -> Parser:
    """The options of ``python -m nets.measure``."""
    p = Parser(prog="python -m nets.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished nets.train run folder")
    p.add_argument("--json", required=True, metavar="PATH", help="where to write the measurements")
    p.add_argument("--measure-size", type=int, default=1000, help="examples in the measurement set (default 1000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="measurement batch size (default: the run's batch size in train mode; up to 1000 in eval "
                        "mode, where it only bounds memory)")
    p.add_argument("--bn-mode", choices=BN_MODES, default="eval",
                   help="eval: running statistics recomputed on the training set; train: batch statistics")
    p.add_argument("--probes", type=int, default=16,
                   help="the least number of trace probes; more are added until Tr(H) and |H|_F are within "
                        "--trace-rtol (default 16)")
    p.add_argument("--trace-rtol", type=float, default=0.05,
                   help="relative half-width at 95 %% of the Tr(H) and |H|_F intervals (default 0.05)")
    p.add_argument("--noise-method", choices=("auto", "per_example", "two_batch"), default="auto")
    p.add_argument("--include-weight-decay", action="store_true",
                   help="measure the loss with the run's L2 term (gamma/2)|theta|^2 included")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="also the K largest Hessian eigenvalues, to relative accuracy 1e-6 (Lanczos on residuals)")
    p.add_argument("--density", action="store_true",
                   help="also the eigenvalue density by stochastic Lanczos quadrature (RUN/density.png)")
    p.add_argument("--landscape", choices=("1d", "2d"), default=None,
                   help="also a loss slice along filter-normalised random directions (RUN/landscape.png)")
    p.add_argument("--sharpness", type=float, default=None, metavar="EPS",
                   help="also Keskar et al.'s epsilon-sharpness with this epsilon (e.g. 1e-3)")
    p.add_argument("--alignment", type=int, default=None, metavar="K",
                   help="also C against H: Tr(CH)/(|C|_F |H|_F) and the top-K eigenspace overlap (eval mode)")
    p.add_argument("--cross-check", action="store_true",
                   help="also run power iteration beside Lanczos for lambda_max (extra Hessian-vector products on a "
                        "number the residual-stopped Lanczos already guarantees)")
    p.add_argument("--no-cross-check", action="store_true", help=argparse.SUPPRESS)  # the default since 0.3
    p.add_argument("--wait", action="store_true",
                   help="when another process is writing the run folder, wait for it instead of refusing")
    return p


@dataclass(frozen=True)
class MeasureResult(Result):
    """What ``measure_run`` measured at a run's end (its JSON is ``nets.measure --json``'s, and the ``measure`` stage's
    ``measure.json``).

    Attributes:
        run_dir, config: the run folder and its ``TrainConfig`` as data; ``ratio``: its η/S.
        measure_size, batch_size, bn_mode, weight_decay_in_loss: how the curvature was measured.
        train_loss_eval_mode, train_acc: on the measurement set, eval mode; ``val_loss``, ``val_acc``: on the test set.
        hessian: ``HessianStats`` (λ_max, Tr(H), ‖H‖_F); ``gradient_noise``: ``GradientNoise`` (Tr(C), B_simple).
        top_eigenvalues, density, landscape, sharpness, alignment: the optional measurements' data (None when not
            asked for, and then absent from the JSON).
        seconds: the measurement's wall time.
        environment: versions, threads and device of the measuring process (``sgd_noise_common.environment``): on
            the CPU the thread count alone moves float reductions, so a number is read beside it.
    """

    run_dir: str
    config: dict
    measure_size: int
    batch_size: int
    bn_mode: str
    weight_decay_in_loss: float
    train_loss_eval_mode: float
    train_acc: float
    val_loss: float
    val_acc: float
    hessian: HessianStats
    gradient_noise: GradientNoise
    ratio: float
    seconds: float
    top_eigenvalues: dict | None = None
    density: dict | None = None
    landscape: dict | None = None
    sharpness: dict | None = None
    alignment: dict | None = None
    environment: dict | None = None

    def to_dict(self) -> dict:
        """JSON data; the optional measurements only where they were made."""
        return {k: v for k, v in super().to_dict().items() if v is not None}


def measure_run(run_dir, *, measure_size=1000, batch_size=None, bn_mode="eval", probes=16, noise_method="auto",
                include_weight_decay=False, device="auto", seed=0, cross_check=False, trace_rtol=0.05,
                extras=None) -> dict:
    """The geometry of a finished run's minimum and its losses: ``hessian_stats`` (λ_max, Tr(H), ‖H‖_F) and
    ``gradient_noise`` (Tr(C), noise scale) on a seeded measurement subset of ``measure_size`` training examples,
    with the batch-norm policy ``bn_mode`` (eval: running statistics recomputed on up to 10 000 training inputs),
    and the train/validation loss and accuracy in eval mode. ``extras`` (a dict: ``top_k``, ``density``,
    ``landscape``, ``sharpness``, ``alignment``, as the command-line options) adds the spectrum, density, loss
    slice, sharpness and C-against-H measurements, with their figures written into the run folder. Returns a
    ``MeasureResult``."""
    t0 = time.perf_counter()
    cfg, model, data = load_run(run_dir, device=device)
    n = data.train_size
    if not 2 <= measure_size <= n:
        raise ValueError(f"--measure-size must lie in [2, {n}] (the training-set size), got {measure_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size}")
    extras = extras or {}
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if extras.get("top_k") and not 1 <= extras["top_k"] < dim:
        raise ValueError(f"--top-k must lie in [1, {dim - 1}] (fewer than the model's {dim} parameters), got "
                         f"{extras['top_k']}")
    n_align = min(measure_size, ALIGNMENT_EXAMPLES)
    if extras.get("alignment") and not 1 <= extras["alignment"] < n_align:
        raise ValueError(f"--alignment must lie in [1, {n_align - 1}] (fewer than the {n_align} examples whose "
                         f"per-example gradients it uses), got {extras['alignment']}")
    # Eval mode: the measured loss does not depend on how the set is cut, so the batch is only a memory bound and
    # large batches are much faster; train mode: the run's own batch size (the statistics SGD saw).
    default_bs = min(measure_size, 1000) if bn_mode == "eval" else cfg.batch_size
    bs = min(default_bs if batch_size is None else batch_size, measure_size)
    streams = spawn_seeds(seed, MEASURE_STREAMS)
    x, y = data.measurement_set(measure_size, seed=streams["examples"])
    bn_inputs = data.measurement_set(min(n, 10000), seed=streams["bn_inputs"])[0]
    wd = cfg.weight_decay if include_weight_decay else 0.0
    tr_loss, tr_acc = evaluate(model, F.cross_entropy, x, y)
    te_loss, te_acc = evaluate(model, F.cross_entropy, data.x_test, data.y_test)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=bs, bn_mode=bn_mode, weight_decay=wd,
                         bn_inputs=bn_inputs)
    hs = hessian_stats(op, min_probes=probes, rng=streams["hessian"], cross_check=cross_check, trace_rtol=trace_rtol)
    gn = gradient_noise(model, F.cross_entropy, x, y, batch_size=bs, method=noise_method, bn_mode=bn_mode,
                        rng=streams["noise"], bn_inputs=bn_inputs)
    out = _extras(run_dir, model, x, y, bs, bn_mode, bn_inputs, wd, streams["extras"], extras or {})
    return MeasureResult(**out, run_dir=str(run_dir), config=asdict(cfg), measure_size=measure_size, batch_size=bs,
                         bn_mode=bn_mode, weight_decay_in_loss=wd, train_loss_eval_mode=tr_loss, train_acc=tr_acc,
                         val_loss=te_loss, val_acc=te_acc, hessian=hs, gradient_noise=gn,
                         ratio=cfg.eta / cfg.batch_size, seconds=time.perf_counter() - t0,
                         environment=environment(next(model.parameters()).device))


def _extras(run_dir, model, x, y, bs, bn_mode, bn_inputs, wd, seed, extras: dict) -> dict:
    """The optional measurements of ``measure_run``; figures into the run folder (claimed as ours)."""
    from nets.curvature import epsilon_sharpness, noise_hessian_alignment, spectral_density, top_eigenvalues
    from nets.landscape import loss_slice

    common = dict(batch_size=bs, bn_mode=bn_mode, bn_inputs=bn_inputs, weight_decay=wd)
    out = {}
    if extras.get("top_k"):
        out["top_eigenvalues"] = top_eigenvalues(model, F.cross_entropy, x, y, k=extras["top_k"], rng=seed,
                                                 vectors=False, **common).to_dict()
    if extras.get("density"):
        d = spectral_density(model, F.cross_entropy, x, y, rng=seed, **common)
        d.plot(claim_output_dir(run_dir, option="RUN") / "density.png")
        out["density"] = d.to_dict()
    if extras.get("landscape"):
        two = extras["landscape"] == "2d"
        sl = loss_slice(model, F.cross_entropy, x, y, betas=np.linspace(-1.0, 1.0, 21) if two else None, rng=seed,
                        batch_size=bs, bn_inputs=bn_inputs)
        sl.plot(claim_output_dir(run_dir, option="RUN") / "landscape.png", title=f"{Path(run_dir).name}")
        out["landscape"] = sl.to_dict()
    if extras.get("sharpness"):
        out["sharpness"] = epsilon_sharpness(model, F.cross_entropy, x, y, epsilon=extras["sharpness"], rng=seed,
                                             **common).to_dict()
    if extras.get("alignment"):
        out["alignment"] = noise_hessian_alignment(model, F.cross_entropy, x[:ALIGNMENT_EXAMPLES],
                                                   y[:ALIGNMENT_EXAMPLES], k=extras["alignment"],
                                                   rng=seed, **common).to_dict()
    return out


#: The most trace probes ``hessian_stats`` draws (its ``max_probes``): ``--probes`` is the least number, at most this.
MAX_PROBES = 1000
#: The examples the C-against-H alignment uses (per-example gradients of the first this many): ``--alignment`` < it.
ALIGNMENT_EXAMPLES = 256
#: The stamp of the JSON this command writes (``sgd_noise_common.files``): a file of this kind may be replaced by it.
KIND = "nets.measure"


def _check_options(args) -> dict:
    """Every option against its allowed range, before any work (one line naming the option); returns the
    ``extras`` of ``measure_run``."""
    def need(ok: bool, option: str, allowed: str, value) -> None:
        if not ok:
            raise ValueError(f"{option} must be {allowed}, got {value!r}")

    need(args.measure_size >= 2, "--measure-size", "an integer >= 2", args.measure_size)
    need(args.batch_size is None or args.batch_size >= 1, "--batch-size", "an integer >= 1", args.batch_size)
    need(2 <= args.probes <= MAX_PROBES, "--probes", f"an integer in [2, {MAX_PROBES}]", args.probes)
    need(math.isfinite(args.trace_rtol) and 0 < args.trace_rtol < 1, "--trace-rtol", "a number in (0, 1)",
         args.trace_rtol)
    need(args.seed >= 0, "--seed", "an integer >= 0", args.seed)
    need(args.top_k is None or args.top_k >= 1, "--top-k", "an integer >= 1 (leave it out for no spectrum)",
         args.top_k)
    need(args.alignment is None or args.alignment >= 1, "--alignment",
         "an integer >= 1 (leave it out for no alignment)", args.alignment)
    need(args.sharpness is None or (math.isfinite(args.sharpness) and 0 < args.sharpness <= 1), "--sharpness",
         "a number in (0, 1] (the box's size relative to each weight)", args.sharpness)
    if args.alignment and args.bn_mode != "eval":
        raise ValueError("--alignment needs --bn-mode eval (per-example gradients of train-mode batch norm are "
                         "not defined)")
    resolve_device(args.device, option="--device")
    run = Path(args.run_dir)
    if not run.is_dir():
        raise ValueError(f"RUN {run} is not a run folder (no such folder): give a finished nets.train run folder")
    if not (run / "result.json").is_file():
        raise ValueError(f"RUN {run} is not a run folder of a finished nets.train run (no result.json)")
    check_output_file(args.json, option="--json", kind=KIND, home=run)
    if args.density or args.landscape:
        check_output_dir(run, option="RUN", names=("density.png", "landscape.png"), kind="run")
    return dict(top_k=args.top_k, density=args.density, landscape=args.landscape, sharpness=args.sharpness,
                alignment=args.alignment)


def main(argv=None) -> int:
    """``python -m nets.measure RUN --json PATH``; exit 0, or 2 on bad input (every option and path checked before
    the work)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        extras = _check_options(args)
        wait = math.inf if args.wait else None
        with folder_lock(args.run_dir, option="RUN", wait=wait), output_locks((args.json, False), option="--json",
                                                                               wait=wait):
            res = measure_run(args.run_dir, measure_size=args.measure_size, batch_size=args.batch_size,
                              bn_mode=args.bn_mode, probes=args.probes, noise_method=args.noise_method,
                              include_weight_decay=args.include_weight_decay, device=args.device, seed=args.seed,
                              cross_check=args.cross_check, trace_rtol=args.trace_rtol, extras=extras)
            try:
                write_json_atomic(args.json, jsonable(res), kind=KIND)
            except OutputError as exc:
                raise OutputError(f"--json: {exc}") from None
    except (ValueError, DataError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    h, g = res.hessian, res.gradient_noise
    lam_power = f" (power {h.lambda_max_power:.4g})" if math.isfinite(h.lambda_max_power) else ""
    print(f"{Path(args.run_dir)}: eta/S = {res.ratio:.4g}; lambda_max = {h.lambda_max:.4g}{lam_power}, "
          f"Tr(H) = {h.trace:.4g} +- {h.trace_stderr:.2g}, |H|_F = {h.frobenius:.4g} +- {h.frobenius_stderr:.2g}; "
          f"Tr(C) = {g.trace_c:.4g} +- {g.trace_c_stderr:.2g} ({g.method}); val acc {res.val_acc:.4f}; "
          f"{res.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
