"""Evaluating a model on a fixed data set: the mean loss and accuracy, batched, in float64, in eval mode, with TF32
off. Training, measurement and the experiments all evaluate through ``evaluate``."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["evaluate", "batch_slices", "measurement_precision"]


@contextmanager
def measurement_precision():
    """TF32 off (full float32 matmuls and convolutions on Ampere+ GPUs) for the duration, restored after."""
    cuda_mm = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = cuda_mm
        torch.backends.cudnn.allow_tf32 = cudnn


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
