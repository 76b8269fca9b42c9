"""Cost of one Hessian-vector product against one gradient on the measurement set, and training throughput.

Issue 4's goal: an HVP costs at most 3x a gradient, for the MLP and for ResNet56. Candidates take turns over
``ROUNDS`` rounds and the best time of each is kept (this VM's timings vary by about 20 %). Prints the device, so
the same script serves the GPU check. Run: ``python benchmarks/nets_speed.py [--device cuda] [--compiled]``.

``--compiled`` adds the opt-in compiled training step (``nets.train --compile``: ``torch.compile`` of the forward
pass and loss, mode ``reduce-overhead``, i.e. CUDA graphs, on a GPU; ``nets.sgd.compiled_loss``) against eager, in
examples per second of ``nets.sgd.sgd_step`` at batch 128: the fig3 MLP, and on a GPU ResNet56 too (compiling it on
a CPU takes minutes). ``benchmarks/gpu_check.py``'s speed stage prints the same comparison on a GPU.

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
#: Compiled against eager (``step_rate``): (model, input shape) - the fig3 MLP, and ResNet56 on a GPU.
COMPILED_MODELS = (("mlp", (1, 28, 28)), ("resnet56", (3, 32, 32)))


def step_rate(name: str, shape, device, *, compiled: bool, steps: int, batch_size: int = 128,
              rounds: int = ROUNDS) -> float:
    """Training examples per second of ``nets.sgd.sgd_step`` (train mode, batch norm, plain SGD) on random data,
    eager or through ``nets.sgd.compiled_loss`` (whose compilation happens in the untimed warm-up steps); the
    best of ``rounds`` rounds of ``steps`` steps."""
    from nets.sgd import compiled_loss, make_optimizer, sgd_step

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    model = build_model(name, shape, 10, seed=0).to(dev)
    opt = make_optimizer(model, eta=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape, generator=g).to(dev)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(dev)
    forward = compiled_loss(model, F.cross_entropy, device=dev) if compiled else None

    def run():
        for _ in range(steps):
            sgd_step(model, opt, x, y, loss_fn=F.cross_entropy, forward=forward)

    for _ in range(3):  # compiles (and records the CUDA graphs) when compiled
        sgd_step(model, opt, x, y, loss_fn=F.cross_entropy, forward=forward)
    (t,) = best([run], rounds=rounds, sync=sync)
    return steps * batch_size / t


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
    p.add_argument("--compiled", action="store_true",
                   help="also the compiled training step against eager (torch.compile; see the module's help)")
    p.add_argument("--compiled-only", action="store_true", help="only that comparison")
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_meas = args.measure_size or (8192 if dev.type == "cuda" else 1024)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    if args.compiled or args.compiled_only:
        compiled_comparison(dev)
    if args.compiled_only:
        return
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


def compiled_comparison(dev) -> list[tuple[str, float, float]]:
    """Print (and return) eager and compiled examples per second of ``COMPILED_MODELS`` (ResNet56 on a GPU only)."""
    print("\ntraining step, eager against compiled (nets.sgd.compiled_loss; batch 128, train mode), examples per "
          "second")
    rows = []
    for name, shape in COMPILED_MODELS:
        if name != "mlp" and dev.type != "cuda":
            continue
        steps = 50 if dev.type == "cuda" else 20
        eager = step_rate(name, shape, dev, compiled=False, steps=steps)
        compiled = step_rate(name, shape, dev, compiled=True, steps=steps)
        rows.append((name, eager, compiled))
        print(f"{name:<10} eager {eager:>10.0f}  compiled {compiled:>10.0f}  ({compiled / eager:.2f}x)")
    return rows


if __name__ == "__main__":
    main()
