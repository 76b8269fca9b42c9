"""The GPU check of the full-scale experiments: one prepared script, under 10 minutes on a modern GPU.

Prints, on the first CUDA device:

1. the wall time of one training epoch of the batch-norm MLP on Fashion-MNIST-sized data (60 000 examples of
   1×28×28 at S = 128; the real files when installed, else random data of that shape), data on the device and no
   per-step synchronisation (goal: under 1 s on a modern GPU);
2. ResNet56 training examples per second at S = 128 on 3×32×32 inputs;
3. the ``--plan`` estimate of each full-scale experiment (``nets.experiments.plan``; CIFAR-10 is not needed for a
   plan, so a placeholder folder with the right file names stands in);
4. the CPU/GPU agreement of ``hessian_stats`` (λ_max, Tr(H), ‖H‖_F) on a small MLP in float64, and of one
   evaluation in float32 with TF32 off.

Run: ``python benchmarks/gpu_check.py`` (exits 2 without a GPU). Output is plain text, one result per line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F


def _sync():
    torch.cuda.synchronize()


def mlp_epoch(dev) -> None:
    from nets.data import DataError, load_fashion_mnist
    from nets.models import build_model
    from nets.sgd import make_optimizer, sgd_step

    try:
        data = load_fashion_mnist(None).to(dev)
        x, y, what = data.x_train, data.y_train, "Fashion-MNIST"
    except DataError:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60000, 1, 28, 28, generator=g).to(dev)
        y = torch.randint(0, 10, (60000,), generator=g).to(dev)
        what = "random data of Fashion-MNIST's shape"
    model = build_model("mlp", (1, 28, 28), 10, seed=0).to(dev)
    opt = make_optimizer(model, eta=0.1)
    for epoch in range(3):  # the first epoch includes CUDA's start-up
        perm = torch.randperm(x.shape[0], device=dev)
        _sync()
        t0 = time.perf_counter()
        for a in range(0, x.shape[0] - 127, 128):
            idx = perm[a:a + 128]
            sgd_step(model, opt, x[idx], y[idx], loss_fn=F.cross_entropy)
        _sync()
        print(f"mlp epoch {epoch}: {time.perf_counter() - t0:.3f} s ({what}, S=128, 468 steps; goal < 1 s)")


def resnet_rate(dev) -> None:
    from nets.experiments.plan import calibrate

    for bs in (128, 512):
        cal = calibrate("resnet56", 1.0, True, (3, 32, 32), bs, dev, steps=30)
        print(f"resnet56 S={bs}: {cal['train_rate']:.0f} training examples/s, {cal['eval_rate']:.0f} evaluated/s")


def plans(dev) -> None:
    from nets.data import CIFAR_FILES
    from nets.experiments import EXPERIMENTS
    from nets.experiments.cli import build_parser, make_specs
    from nets.experiments.plan import make_plan

    with tempfile.TemporaryDirectory() as tmp:
        for files in CIFAR_FILES.values():
            for f in files:
                Path(tmp, f).write_bytes(b"")  # a plan checks the files are there; it reads none
        import importlib

        for name in EXPERIMENTS:
            module = importlib.import_module(f"nets.experiments.{name}")
            args = build_parser(name, module.__doc__).parse_args(["--scale", "full", "--data-root", tmp,
                                                                  "--device", str(dev)])
            specs = make_specs(module, args)
            plan = make_plan(name, "full", specs, device=str(dev))  # calibrated once, estimated for 1 and 8
            for workers in (1, 8):
                plan.workers = workers
                print(f"plan {name} (full, {workers} GPU{'s' if workers > 1 else ''}): {len(plan.runs)} runs, "
                      f"{plan.total_examples:.3g} examples, {plan.seconds_workers / 3600:.2f} h")


def agreement(dev) -> None:
    from nets.curvature import HessianOperator, hessian_stats
    from nets.evaluation import evaluate
    from nets.models import build_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    model = build_model("mlp", (1, 28, 28), 10, width=0.125, seed=0)
    res = {}
    for d in ("cpu", dev):
        op = HessianOperator(model.to(d), F.cross_entropy, x.to(d), y.to(d), batch_size=64, dtype=torch.float64,
                             device=d)
        res[str(d)] = hessian_stats(op, min_probes=8, rng=0)
    a, b = res["cpu"], res[str(dev)]
    for k in ("lambda_max", "trace", "frobenius"):
        va, vb = getattr(a, k), getattr(b, k)
        print(f"hessian_stats {k}: cpu {va:.12g}, gpu {vb:.12g}, relative difference {abs(va - vb) / abs(va):.2e} "
              "(float64; goal < 1e-8)")
    la = evaluate(model.to("cpu"), F.cross_entropy, x, y)[0]
    lb = evaluate(model.to(dev), F.cross_entropy, x.to(dev), y.to(dev))[0]
    print(f"evaluate loss float32: cpu {la:.9g}, gpu {lb:.9g}, relative difference {abs(la - lb) / la:.2e}")


def main(argv=None) -> int:
    """Run the four checks on the first CUDA device; exit 2 without one."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for step in (mlp_epoch, resnet_rate, agreement, plans):
        t0 = time.perf_counter()
        step(dev)
        print(f"[{step.__name__}: {time.perf_counter() - t0:.1f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
