"""Schedules of the learning rate η_k and batch size S_k over the steps of a run.

A schedule maps the run's base ``(eta, batch_size)`` and its number of steps to per-step arrays. The cyclic
batch-size schedule is the cyclic learning rate's twin: S_k = S·η/η_k, so that η/S is the same at every step
(up to rounding S_k to an integer), the paper's Fig. 1 (left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quadratic import _checks

__all__ = ["Schedule", "Constant", "CyclicLR", "CyclicBatchSize", "StepDecay", "triangular_factor"]


class Schedule:
    """Base class: ``values(eta, batch_size, steps)`` returns ``(etas, batch_sizes)``, each of length ``steps``."""

    constant = False

    def values(self, eta: float, batch_size: int, steps: int):
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """η_k = η and S_k = S at every step."""

    constant = True

    def values(self, eta, batch_size, steps):
        return np.full(steps, float(eta)), np.full(steps, int(batch_size), dtype=np.int64)


def triangular_factor(steps: int, period: int, low: float) -> np.ndarray:
    """A triangular wave from 1 down to ``low`` and back, once per ``period`` steps.

    >>> triangular_factor(5, 4, 0.5).tolist()
    [1.0, 0.75, 0.5, 0.75, 1.0]
    """
    period = _checks.positive_int("period", period, minimum=2)
    low = _checks.float_in("low", low, 0.0, 1.0, closed_high=True)
    if low == 0.0:
        raise ValueError("low must be > 0")
    phase = (np.arange(steps) % period) / period
    tri = 1.0 - np.abs(2.0 * phase - 1.0)  # 0 → 1 → 0 over a period
    return 1.0 - (1.0 - low) * tri


@dataclass(frozen=True)
class CyclicLR(Schedule):
    """Cyclic learning rate: η_k = η·f_k with f a triangular wave between ``low`` and 1; S fixed."""

    low: float
    period: int

    def values(self, eta, batch_size, steps):
        f = triangular_factor(steps, self.period, self.low)
        return float(eta) * f, np.full(steps, int(batch_size), dtype=np.int64)


@dataclass(frozen=True)
class CyclicBatchSize(Schedule):
    """Cyclic batch size matching ``CyclicLR(low, period)``: S_k = round(S/f_k), η fixed (so η/S_k ≈ f_k η/S)."""

    low: float
    period: int

    def values(self, eta, batch_size, steps):
        f = triangular_factor(steps, self.period, self.low)
        return np.full(steps, float(eta)), np.rint(int(batch_size) / f).astype(np.int64)


@dataclass(frozen=True)
class StepDecay(Schedule):
    """Step decay: every ``every`` steps η is multiplied by ``factor`` (``target="eta"``), or S is divided by it
    (``target="batch_size"``, the batch-size increase that replaces a learning-rate drop)."""

    factor: float
    every: int
    target: str = "eta"

    def values(self, eta, batch_size, steps):
        every = _checks.positive_int("every", self.every)
        factor = _checks.float_in("factor", self.factor, 0.0, 1.0, closed_high=True)
        if factor == 0.0:
            raise ValueError("factor must be > 0")
        f = factor ** (np.arange(steps) // every)
        if self.target == "eta":
            return float(eta) * f, np.full(steps, int(batch_size), dtype=np.int64)
        if self.target == "batch_size":
            return np.full(steps, float(eta)), np.rint(int(batch_size) / f).astype(np.int64)
        raise ValueError(f"target must be 'eta' or 'batch_size', got {self.target!r}")
