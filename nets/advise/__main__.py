"""``python -m nets.advise RUN_DIR --out DIR [--verify] [--plan]``: the advisor on a finished ``nets.train`` run.

Writes ``DIR/advice.json`` (atomically, as soon as the prediction is made, and again after the verification),
``DIR/advise.png`` and ``DIR/report.md``, and prints a table. A rerun with the same settings into the same folder
reuses the saved prediction. Exit status: 0 when the advice is made (and, with ``--verify``, the predicted β*
agrees with the measured one within a factor 2), 1 when the verification disagrees, 2 on bad input.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from torch.nn import functional as F

from nets.advise.core import Advice, advise, check_betas, default_betas, verify
from nets.advise.report import agreement, plot, report, terminal_table
from nets.data import DataError
from sgd_noise_common.cli import Parser
from sgd_noise_common.files import claim_output_dir, jsonable, read_json, write_json_atomic, write_text_atomic

KIND = "advice"
NAMES = ("advice.json", "advise.png", "report.md")


def build_parser() -> Parser:
    p = Parser(prog="python -m nets.advise", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished nets.train run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the report folder (advice.json, advise.png, report.md)")
    p.add_argument("--betas", default=None,
                   help="comma-separated betas, 1 first and increasing (default 1, 2, 4, ... up to N/S)")
    p.add_argument("--tol", type=float, default=0.05,
                   help="relative deviation of the loss curve from beta = 1 that counts as a departure (default 0.05)")
    p.add_argument("--top-k", type=int, default=8, help="the surrogate's exact top directions (default 8)")
    p.add_argument("--examples", type=int, default=2000,
                   help="measurement examples drawn from the training set (default 2000, at most N)")
    p.add_argument("--epochs", type=float, default=2.0,
                   help="the horizon in epochs of the run's training set (default 2)")
    p.add_argument("--bn-mode", choices=("train", "eval"), default=None,
                   help="batch norm of the measured loss (default train for a model with batch norm: the loss SGD "
                        "descends)")
    p.add_argument("--verify", action="store_true", help="train from the run at each beta and measure the deviation")
    p.add_argument("--seeds", type=int, default=3, help="batch orders per beta for --verify (default 3)")
    p.add_argument("--plan", action="store_true", help="list the work and its estimated time, and stop")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def _parse_betas(text: str | None):
    if text is None:
        return None
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--betas must be comma-separated numbers, got {text!r}") from None
    try:
        return check_betas(vals)
    except ValueError as exc:
        raise ValueError(f"--betas: {exc}") from None


def _check(args) -> None:
    """Every option before any work (the run folder is checked by loading it)."""
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ValueError(f"--tol must be a number > 0, got {args.tol}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be an integer >= 1, got {args.top_k}")
    if args.examples < 2:
        raise ValueError(f"--examples must be an integer >= 2, got {args.examples}")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        raise ValueError(f"--epochs must be a number > 0, got {args.epochs}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {args.seeds}")


def _settings(args, cfg, betas) -> dict:
    """What a saved advice.json must match to be reused: the options, and the run's weights (their digest)."""
    try:
        weights = read_json(Path(args.run_dir) / "result.json", what="run result").get("model_sha256")
    except ValueError:
        weights = None
    return {"run_dir": str(Path(args.run_dir).resolve()), "weights": weights, "betas": list(betas), "tol": args.tol,
            "top_k": args.top_k, "examples": args.examples, "epochs": args.epochs, "bn_mode": args.bn_mode,
            "seed": args.seed, "eta": cfg.eta, "batch_size": cfg.batch_size}


def _plan(cfg, model, data, betas, args, say) -> None:
    """The work and its estimated time: measured here from a few steps and one Hessian-vector product."""
    import copy

    import torch

    from nets.curvature import HessianOperator
    from nets.sgd import make_optimizer, sgd_step

    n = int(data.x_train.shape[0])
    x, y = data.x_train, data.y_train
    rows = [b for b in betas if b * cfg.batch_size <= n]

    def step_time(s):
        m = copy.deepcopy(model)
        m.train()
        opt = make_optimizer(m, eta=cfg.eta, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        idx = torch.arange(s, device=x.device)
        sgd_step(m, opt, x[idx], y[idx], loss_fn=F.cross_entropy)
        t0 = time.perf_counter()
        for _ in range(3):
            sgd_step(m, opt, x[idx], y[idx], loss_fn=F.cross_entropy)
        return (time.perf_counter() - t0) / 3

    per_example = min(step_time(int(b * cfg.batch_size)) / (b * cfg.batch_size) for b in (rows[0], rows[-1]))
    from nets.advise.core import measured_operator
    from nets.curvature import gradient_noise
    from nets.curvature.operator import batch_norm_layers

    examples = min(args.examples, n)
    train_bn = bool(batch_norm_layers(model)) and args.bn_mode != "eval"
    if train_bn:
        examples -= examples % cfg.batch_size
    # Timed in the advisor's own arithmetic: float64, and train-mode batch norm in batches of S where it has it.
    op = measured_operator(model, F.cross_entropy, x[:examples], y[:examples], bn_mode="train" if train_bn else "eval",
                   batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, chunk=500)
    v = torch.ones(op.dim, device=op.device, dtype=op.dtype)
    op.matvec_tensor(v)
    t0 = time.perf_counter()
    op.matvec_tensor(v)
    hvp = time.perf_counter() - t0
    small = HessianOperator(model, F.cross_entropy, x[:cfg.batch_size], y[:cfg.batch_size],
                            batch_size=cfg.batch_size, bn_mode="train" if train_bn else "eval", dtype=torch.float64)
    t0 = time.perf_counter()
    small.matvec_tensor(torch.ones(small.dim, device=small.device, dtype=small.dtype))
    hvp_s = time.perf_counter() - t0
    # The noise: 4 of the two-batch method's 64 pairs (train-mode batch norm), or the per-example pass on 64
    # examples, timed and scaled.
    t0 = time.perf_counter()
    if train_bn:
        gradient_noise(model, F.cross_entropy, x[:examples], y[:examples], batch_size=cfg.batch_size,
                       method="two_batch", bn_mode="train", pairs=4, rng=0)
        noise_s = (time.perf_counter() - t0) * 16
    else:
        m = min(64, examples)
        gradient_noise(model, F.cross_entropy, x[:m], y[:m], batch_size=m, method="per_example", rng=0)
        noise_s = (time.perf_counter() - t0) * examples / m
    k = args.top_k
    # Hessian-vector products on the measurement set: the top-k Lanczos to 1e-6 (about 20k + 50: measured 160 for
    # k = 8), the density (4 x 40), the trace and gradient; on single batches of S: batch sharpness and, with batch
    # norm, the top-k projections of 128 batches (k + 1 passes each); and the noise.
    measure = hvp * (20 * k + 50 + 4 * 40 + 10) + hvp_s * (128 * (k + 1) + 128 * 2) + noise_s
    horizon = max(int(args.epochs * n), 4 * int(rows[-1] * cfg.batch_size))
    checkpoints = max(4, math.ceil(horizon / int(rows[-1] * cfg.batch_size)))
    verify_s = (len(rows) * args.seeds * (horizon * per_example * 1.3 + checkpoints * hvp / 2)
                if args.verify else 0.0)
    say(f"plan: measure at the run's end (top-{k} Lanczos, SLQ 4 x 40, Tr(C), batch sharpness, the top-k "
        f"projections): ~{measure:.0f} s (one Hessian-vector product on {examples} examples took {hvp:.2f} s)")
    say(f"plan: predict {len(betas)} betas ({', '.join(f'{b:g}' for b in betas)}): a few seconds")
    if args.verify:
        say(f"plan: verify {len(rows)} betas x {args.seeds} seeds, {horizon} examples each: ~{verify_s:.0f} s "
            f"({per_example * 1e3:.3f} ms per example at the measured step times):")
        each = verify_s / max(len(rows) * args.seeds, 1)
        for b in rows:
            say(f"  beta {b:g}: eta {b * cfg.eta:g}, S {int(round(b * cfg.batch_size))}, {args.seeds} seeds x "
                f"{horizon} examples from the run's weights, ~{each:.1f} s each")
    for b in betas:
        if b * cfg.batch_size > n:
            say(f"  beta {b:g}: S {int(round(b * cfg.batch_size))} > N = {n}: a row marked impossible, nothing to run")
    say(f"plan: total ~{measure + verify_s:.0f} s")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    try:
        _check(args)
        betas_arg = _parse_betas(args.betas)
        from nets.train import load_run

        cfg, model, data = load_run(args.run_dir, device=args.device)
        if cfg.dampening:
            raise ValueError(f"the run uses momentum dampening {cfg.dampening:g}; the advisor's law is torch's "
                             "momentum without dampening")
        n = int(data.x_train.shape[0])
        betas = betas_arg or default_betas(cfg.batch_size, n)
        out = None if args.plan else claim_output_dir(args.out, option="--out", names=NAMES, kind=KIND)
    except (ValueError, DataError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        _plan(cfg, model, data, betas, args, say)
        return 0
    settings = _settings(args, cfg, betas)
    path = out / "advice.json"
    advice = None
    if path.is_file():
        try:
            saved = read_json(path, what="saved advice")
            if saved.get("settings") == settings:
                advice = Advice.from_dict(saved)
                say(f"reusing the prediction saved in {path}")
        except (ValueError, KeyError, TypeError):
            advice = None
    try:
        if advice is None:
            advice = advise(model, F.cross_entropy, data.x_train, data.y_train, eta=cfg.eta,
                            batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            betas=betas, top_k=args.top_k, tol=args.tol, horizon=max(1, int(args.epochs * n)),
                            examples=args.examples, bn_mode=args.bn_mode, seed=args.seed, say=say)
            write_json_atomic(path, jsonable({**advice.to_dict(), "settings": settings}), kind=KIND)
        if args.verify and advice.verified_seeds != args.seeds:
            advice = verify(advice, model, F.cross_entropy, data.x_train, data.y_train, seeds=args.seeds,
                            val_inputs=data.x_test, val_targets=data.y_test, dampening=cfg.dampening,
                            seed=args.seed, say=say)
            write_json_atomic(path, jsonable({**advice.to_dict(), "settings": settings}), kind=KIND)
    except ValueError as exc:  # bad input found by the library (a setting this model or data cannot take)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    final = {}
    try:
        final = read_json(Path(args.run_dir) / "result.json", what="run result").get("final", {}) or {}
    except ValueError:
        pass
    accs = (f" (its last evaluation: train accuracy {final['train_acc']:.4f}, validation accuracy "
            f"{final['val_acc']:.4f})" if "val_acc" in final and "train_acc" in final else "")
    what = f"{cfg.model} (width {cfg.width:g}) on {cfg.dataset}, run {Path(args.run_dir).name}{accs}"
    choices = [f"the deviation: max over {len(advice.checkpoints)} checkpoints (every {advice.checkpoints[0]} "
               f"examples) of |L_beta - L_1| / L_1, tolerance {advice.tol:g} (--tol)",
               f"the horizon: {advice.horizon} examples from the run's end ({args.epochs:g} epochs, at least 4 "
               "checkpoints)",
               f"the surrogate: the top {advice.top_k} directions exactly (linearised law), the bulk from a stochastic "
               "Lanczos density with C proportional to H and an isotropic start offset",
               "the mechanism: stability where rho >= 1; else discreteness when the deviation with eta/S-invariant "
               "noise alone exceeds the tolerance; else finite data"]
    plot(advice, out / "advise.png")
    write_text_atomic(out / "report.md", report(advice, what, "advise.png", choices=choices))
    print(terminal_table(advice))
    ok, text = agreement(advice)
    print(f"predicted beta* {advice.beta_star:g} ({advice.mechanism or 'none'}); McCandlish B_simple/S "
          f"{advice.mccandlish_beta:.3g}; {text}; report {out / 'report.md'}")
    return 1 if ok is False else 0


if __name__ == "__main__":
    sys.exit(main())
