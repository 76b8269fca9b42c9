"""Batched training (``nets.packed``, ``nets.train.train_many``): examples per second of M runs trained as one
packed network against the same M runs trained one after another, in one process.

    python benchmarks/batched_speed.py [--members M] [--steps 60] [--threads 2] [--json PATH]

Each configuration: M members of one architecture (their own seeds and learning rates), ``--steps`` SGD steps
each after a warm-up, SGD steps only (evaluations and checkpoints are per member in both cases). Printed: the
examples per second of each way and their ratio, with the CPU's vector extensions and the thread count (a figure
holds for the machine it was measured on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nets.models import build_model  # noqa: E402
from nets.packed import PackedSGD, pack_models, packed_inputs, packed_loss  # noqa: E402
from nets.sgd import make_optimizer, sgd_step  # noqa: E402
from nets.train import resolve_device  # noqa: E402

#: (name, model, width, input shape, batch size): eq7 small's narrow MLP, fig3/fig5 small's MLP at S = 50 and 128,
#: and VGG11 at 1/4 width.
CONFIGS = (("MLP x1/4 (eq7 small), S = 16", "mlp", 0.25, (1, 28, 28), 16),
           ("MLP (fig3/fig5 small), S = 50", "mlp", 1.0, (1, 28, 28), 50),
           ("MLP (fig3/fig5 small), S = 128", "mlp", 1.0, (1, 28, 28), 128),
           ("VGG11 x1/4 (fig1/fig2 small), S = 32", "vgg11", 0.25, (1, 32, 32), 32))


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have) or "none"


def bench(model_name, width, shape, s, members, steps, device) -> dict:
    n = 4096
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    models = [build_model(model_name, shape, 10, width=width, seed=i).to(device) for i in range(members)]
    etas = [0.01 * (1 + i) for i in range(members)]
    idx = [torch.randint(0, n, (steps + 5, s), generator=gen).to(device) for _ in range(members)]
    # CUDA runs asynchronously: without a synchronisation the clock would time the kernel launches, not the kernels.
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def alone():
        for m, eta, ix in zip(models, etas, idx):
            opt = make_optimizer(m, eta=eta, momentum=0.9)
            for k in range(5):
                sgd_step(m, opt, x[ix[k]], y[ix[k]], loss_fn=F.cross_entropy)
        sync()
        t0 = time.perf_counter()
        for m, eta, ix in zip(models, etas, idx):
            opt = make_optimizer(m, eta=eta, momentum=0.9)
            for k in range(5, steps + 5):
                sgd_step(m, opt, x[ix[k]], y[ix[k]], loss_fn=F.cross_entropy)
        sync()
        return time.perf_counter() - t0

    def packed():
        net = pack_models(models)
        net.train()
        opt = PackedSGD(net, lrs=etas, momenta=[0.9] * members, dampenings=[0.0] * members,
                        weight_decays=[0.0] * members)

        def step(k):
            xb = packed_inputs([x[ix[k]] for ix in idx])
            yb = torch.stack([y[ix[k]] for ix in idx], dim=1)
            losses = packed_loss(net(xb), yb, members)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            return losses

        for k in range(5):
            step(k)
        sync()
        t0 = time.perf_counter()
        for k in range(5, steps + 5):
            step(k)
        sync()
        return time.perf_counter() - t0

    t_alone = alone()
    t_packed = packed()
    examples = members * steps * s
    return {"alone_examples_per_s": examples / t_alone, "packed_examples_per_s": examples / t_packed,
            "ratio": t_alone / t_packed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=None, help="members per pack (default 8 on the CPU, 16 on a GPU, "
                   "the issue's two goals)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # the toolkit's device check: an unknown name, no GPU, or a CUDA index that is not there
        device = resolve_device(args.device, option="--device")
    except ValueError as exc:
        print(f"batched_speed: error: {exc}", file=sys.stderr)
        return 2
    if device.type not in ("cpu", "cuda"):
        print(f"batched_speed: error: --device {args.device}: the benchmark times cpu or cuda only", file=sys.stderr)
        return 2
    if args.members is None:
        args.members = 16 if device.type == "cuda" else 8
    if args.members < 2 or args.steps < 1:
        print("batched_speed: error: --members must be >= 2 and --steps >= 1", file=sys.stderr)
        return 2
    out = {"cpu_flags": cpu_flags(), "threads": args.threads, "members": args.members, "steps": args.steps,
           "device": args.device, "results": {}}
    print(f"{args.members} members, {args.steps} steps each; {args.threads} threads on {args.device}; CPU flags: "
          f"{out['cpu_flags']}")
    for name, model, width, shape, s in CONFIGS:
        r = bench(model, width, shape, s, args.members, args.steps, device)
        out["results"][name] = r
        print(f"{name}: one after another {r['alone_examples_per_s']:.0f} examples/s, packed "
              f"{r['packed_examples_per_s']:.0f} examples/s: x{r['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
