"""Cost of one Hessian-vector product against one gradient on the measurement set, and training throughput.

Issue 4's goal: an HVP costs at most 3x a gradient, for the MLP and for ResNet56. Candidates take turns over
``ROUNDS`` rounds and the best time of each is kept (this VM's timings vary by about 20 %). Prints the device, so
the same script serves the GPU check. Run: ``python benchmarks/nets_speed.py [--device cuda]``.

The measurements behind two choices in ``nets.curvature.HessianOperator`` (CPU, 2 threads, taken with this script
or a variant of it when the choices were made):

* ``hvp_method="auto"``: reverse-over-forward for convolutional models, where it measured 2.7x a gradient against
  3.4x for double backward (ResNet56), and reverse-over-reverse otherwise (MLP: 2.7x against 3.3x).
* ``HVP_CHUNK = 64``: in eval mode, HVPs of convolutional models go through sub-batches of at most 64 examples.
  ResNet56 on 256 examples: reverse-over-forward costs 2.9-3.1 gradients at 32-128 examples per sub-batch and 6.7
  at 256 (the second-order graphs of small sub-batches stay in cache).

Why the operator is written in this project rather than taken from an existing tool (as found when it was
written): PyHessian forces eval mode without recalibrating the running statistics and defaults to CUDA; BackPACK
refuses batch norm in train mode; some tools weight a partial last batch like a full one or draw a new minibatch at
every matvec. ``nets.curvature`` fixes the batch-norm policy, the batch weighting and the batches for every
matvec.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.nn import functional as F

from nets.curvature import HessianOperator
from nets.models import build_model, count_parameters

ROUNDS = 3


def best(fns, rounds=ROUNDS, sync=lambda: None):
    out = [math.inf] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out[i] = min(out[i], time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--measure-size", type=int, default=None, help="default 1024 (cpu) / 8192 (cuda)")
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_meas = args.measure_size or (8192 if dev.type == "cuda" else 1024)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("\nHVP vs gradient on the measurement set (batch 256, float32; ResNet56 on a quarter of it on a CPU)")
    print(f"{'model':<10} {'bn mode':<8} {'HVP method':<22} {'params':>9} {'gradient s':>11} {'HVP s':>9} "
          f"{'HVP/grad':>9}")
    for name, shape in (("mlp", (1, 28, 28)), ("resnet56", (3, 32, 32))):
        torch.manual_seed(0)
        model = build_model(name, shape, 10, seed=0).to(dev)
        n = n_meas if name == "mlp" or dev.type == "cuda" else n_meas // 4
        x = torch.randn(n, *shape, device=dev)
        y = torch.randint(0, 10, (n,), device=dev)
        for bn_mode in ("eval", "train"):
            op = HessianOperator(model, F.cross_entropy, x, y, batch_size=256, bn_inputs=x, bn_mode=bn_mode)
            v = op.to_list(torch.randn(op.dim))
            t_grad, t_hvp = best([op.gradient, lambda: op.hvp(v)], sync=sync)
            print(f"{name:<10} {bn_mode:<8} {op.hvp_method:<22} {count_parameters(model):>9d} {t_grad:>11.4f} "
                  f"{t_hvp:>9.4f} {t_hvp / t_grad:>9.2f}")
    print("\ntraining throughput (SGD steps of batch 128, train mode), examples per second")
    for name, shape in (("mlp", (1, 28, 28)), ("vgg11", (1, 32, 32)), ("resnet56", (3, 32, 32))):
        torch.manual_seed(0)
        model = build_model(name, shape, 10, seed=0).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(128, *shape, device=dev)
        y = torch.randint(0, 10, (128,), device=dev)
        steps = 20 if (name == "mlp" or dev.type == "cuda") else 3

        def run():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

        run()
        (t,) = best([run], rounds=3, sync=sync)
        print(f"{name:<10} {count_parameters(model):>9d} params: {steps * 128 / t:>10.0f} examples/s")


if __name__ == "__main__":
    main()
