"""Schedules of the learning rate η_k and batch size S_k over the steps of a run.

A schedule maps the run's base ``(eta, batch_size)`` and its number of steps to per-step arrays. The cyclic
batch-size schedule is the cyclic learning rate's twin: S_k = S·η/η_k, so that η/S is the same at every step
(up to rounding S_k to an integer), the paper's Fig. 1 (left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgd_noise_common import validate

__all__ = ["Schedule", "Constant", "CyclicLR", "CyclicBatchSize", "StepDecay", "Explicit", "triangular_factor",
           "triangular_wave", "by_examples"]


class Schedule:
    """Base class: ``values(eta, batch_size, steps)`` returns ``(etas, batch_sizes)``, each of length ``steps``."""

    constant = False

    def values(self, eta: float, batch_size: int, steps: int):
        """``(etas, batch_sizes)``: float64 η_k and int64 S_k for k = 0..steps-1, from the base ``eta`` and
        ``batch_size``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """η_k = η and S_k = S at every step."""

    constant = True

    def values(self, eta, batch_size, steps):
        """η and S at every step."""
        return np.full(steps, float(eta)), np.full(steps, int(batch_size), dtype=np.int64)


def triangular_wave(position, period, low: float) -> np.ndarray:
    """A triangular wave of ``position`` (steps, examples, ...): 1 at multiples of ``period``, ``low`` half-way.

    >>> triangular_wave([0, 25, 50, 75], 100, 0.5).tolist()
    [1.0, 0.75, 0.5, 0.75]
    """
    period = validate.positive_float("period", period)
    low = validate.float_in("low", low, 0.0, 1.0, closed_high=True)
    if low == 0.0:
        raise ValueError("low must be > 0")
    phase = (np.asarray(position, dtype=np.float64) % period) / period
    tri = 1.0 - np.abs(2.0 * phase - 1.0)  # 0 → 1 → 0 over a period
    return 1.0 - (1.0 - low) * tri


def triangular_factor(steps: int, period: int, low: float) -> np.ndarray:
    """A triangular wave from 1 down to ``low`` and back, once per ``period`` steps.

    >>> triangular_factor(5, 4, 0.5).tolist()
    [1.0, 0.75, 0.5, 0.75, 1.0]
    """
    period = validate.positive_int("period", period, minimum=2)
    return triangular_wave(np.arange(steps), period, low)


@dataclass(frozen=True)
class CyclicLR(Schedule):
    """Cyclic learning rate: η_k = η·f_k with f a triangular wave between ``low`` and 1; S fixed."""

    low: float
    period: int

    def values(self, eta, batch_size, steps):
        """η·f_k with the triangular factor f_k, and S at every step."""
        f = triangular_factor(steps, self.period, self.low)
        return float(eta) * f, np.full(steps, int(batch_size), dtype=np.int64)


@dataclass(frozen=True)
class CyclicBatchSize(Schedule):
    """Cyclic batch size matching ``CyclicLR(low, period)``: S_k = round(S/f_k), η fixed (so η/S_k ≈ f_k η/S)."""

    low: float
    period: int

    def values(self, eta, batch_size, steps):
        """η at every step, and S/f_k rounded to an integer."""
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
        """η·factor^⌊k/every⌋ (or S divided by it), the other fixed."""
        every = validate.positive_int("every", self.every)
        factor = validate.float_in("factor", self.factor, 0.0, 1.0, closed_high=True)
        if factor == 0.0:
            raise ValueError("factor must be > 0")
        f = factor ** (np.arange(steps) // every)
        if self.target == "eta":
            return float(eta) * f, np.full(steps, int(batch_size), dtype=np.int64)
        if self.target == "batch_size":
            return np.full(steps, float(eta)), np.rint(int(batch_size) / f).astype(np.int64)
        raise ValueError(f"target must be 'eta' or 'batch_size', got {self.target!r}")


@dataclass(frozen=True, eq=False)
class Explicit(Schedule):
    """Given per-step arrays of η_k and S_k (the run's base η and S are ignored); the run must have as many steps."""

    etas: np.ndarray
    batch_sizes: np.ndarray

    def __post_init__(self):
        etas = np.asarray(self.etas, dtype=np.float64)
        sizes = np.asarray(self.batch_sizes)
        if etas.ndim != 1 or sizes.shape != etas.shape:
            raise ValueError(f"etas and batch_sizes must be 1-D of equal length, got {etas.shape}, {sizes.shape}")
        if sizes.size and not np.all(sizes == np.rint(sizes)):
            raise ValueError("batch_sizes must be integers")
        object.__setattr__(self, "etas", etas)
        object.__setattr__(self, "batch_sizes", sizes.astype(np.int64))

    @property
    def steps(self) -> int:
        """The number of steps of the schedule."""
        return self.etas.size

    @property
    def examples(self) -> np.ndarray:
        """Examples seen after each step (cumulative batch sizes), with 0 before the first."""
        return np.concatenate([[0], np.cumsum(self.batch_sizes)])

    def values(self, eta, batch_size, steps):
        """the stored arrays (copies); ``steps`` must equal this schedule's length."""
        if steps != self.steps:
            raise ValueError(f"this schedule has {self.steps} steps; the run asks for {steps}")
        return self.etas.copy(), self.batch_sizes.copy()


def by_examples(factor, eta: float, batch_size: int, examples: int, *, target: str = "eta") -> Explicit:
    """A schedule set by the number of examples seen rather than by the step.

    Before each step, with e examples seen so far and f = ``factor(e)`` (in (0, 1]): ``target="eta"`` takes
    η_k = η·f and S_k = S; ``target="batch_size"`` takes η_k = η and S_k = round(S/f), so that η_k/S_k is the same
    function of e in both (up to rounding), and so are the SDE's time η·e/S and temperature η/S. Steps are taken
    until ``examples`` have been seen. This is how a cyclic learning rate and its cyclic batch size twin (the paper's
    Fig. 1, left) are compared per epoch.

    >>> s = by_examples(lambda e: 0.5 if e >= 20 else 1.0, 0.1, 10, 60, target="batch_size")
    >>> s.batch_sizes.tolist(), s.examples.tolist()
    ([10, 10, 20, 20], [0, 10, 20, 40, 60])
    """
    eta = validate.positive_float("eta", eta)
    s = validate.positive_int("batch_size", batch_size)
    examples = validate.positive_int("examples", examples)
    if target not in ("eta", "batch_size"):
        raise ValueError(f"target must be 'eta' or 'batch_size', got {target!r}")
    etas, sizes = [], []
    seen = 0
    while seen < examples:
        f = float(factor(seen))
        if not 0.0 < f <= 1.0:
            raise ValueError(f"factor must lie in (0, 1], got {f} at {seen} examples")
        if target == "eta":
            etas.append(eta * f)
            sizes.append(s)
        else:
            etas.append(eta)
            sizes.append(max(1, int(round(s / f))))
        seen += sizes[-1]
    return Explicit(np.array(etas), np.array(sizes))
