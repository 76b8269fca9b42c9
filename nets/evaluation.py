"""Evaluating a model on a fixed data set: the mean loss and accuracy, batched, in float64, in eval mode, with TF32
off. Training, measurement and the experiments all evaluate through ``evaluate``.

The numerical policy of the GPU path has its one home here too: ``DETERMINISM`` (deterministic cuDNN, no
benchmarking, TF32 off), set by ``set_determinism`` for training and plan calibration and by
``measurement_precision`` around every measurement, and recorded in each result's environment."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["evaluate", "batch_slices", "measurement_precision", "DETERMINISM", "set_determinism",
           "determinism_flags"]

#: The one numerical policy of training, measurement and plan calibration alike (issue 23 item 6): cuDNN uses
#: deterministic algorithms and does not benchmark (which can pick another algorithm from one run to the next),
#: and TF32 is off for matmuls and convolutions (full float32 on Ampere and later GPUs; before, training
#: convolutions ran in TF32 while measurements switched it off). On a CPU none of these flags changes a number.
#: ``torch.use_deterministic_algorithms`` is not switched on: it would refuse operations that have no
#: deterministic CUDA kernel; ``determinism_flags`` records its state.
DETERMINISM = {"cudnn.deterministic": True, "cudnn.benchmark": False, "cudnn.allow_tf32": False,
               "cuda.matmul.allow_tf32": False}


def _flag_home(name: str):
    """The ``torch.backends`` module and attribute of a flag of ``DETERMINISM``."""
    backend, attr = name.rsplit(".", 1)
    module = torch.backends.cudnn if backend == "cudnn" else torch.backends.cuda.matmul
    return module, attr


def determinism_flags() -> dict:
    """The flags of ``DETERMINISM`` as they are now, and whether torch's deterministic algorithms are on."""
    flags = {name: bool(getattr(*_flag_home(name))) for name in DETERMINISM}
    flags["deterministic_algorithms"] = bool(torch.are_deterministic_algorithms_enabled())
    return flags


def set_determinism() -> dict:
    """Set the policy ``DETERMINISM`` for this process (training, measurement and plan calibration call it; the
    environment of each result records it). Returns the flags as they were, for ``measurement_precision`` to
    restore."""
    before = {name: bool(getattr(*_flag_home(name))) for name in DETERMINISM}
    for name, value in DETERMINISM.items():
        setattr(*_flag_home(name), value)
    return before


@contextmanager
def measurement_precision():
    """The policy ``DETERMINISM`` (TF32 off, deterministic cuDNN) for the duration, the flags restored after: every
    measurement runs under it whoever calls, even in a process that never called ``set_determinism``."""
    before = set_determinism()
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(*_flag_home(name), value)


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of ``batch_size`` covering ``range(n)``, the last one partial.

    >>> batch_slices(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    return [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, inputs, targets, *, batch_size: int = 1000) -> tuple[float, float]:
    """Mean loss (batches weighted by size, accumulated in float64) and accuracy of ``model`` in eval mode; the
    model's train/eval flag is restored afterwards."""
    was = model.training
    model.eval()
    n = int(inputs.shape[0])
    loss, correct = 0.0, 0
    try:
        with measurement_precision():
            for a, b in batch_slices(n, batch_size):
                out = model(inputs[a:b])
                loss += float(loss_fn(out, targets[a:b]).double()) * (b - a)
                correct += int((out.argmax(dim=1) == targets[a:b]).sum())
    finally:
        model.train(was)
    return loss / n, correct / n
