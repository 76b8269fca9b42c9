"""SGD as the Euler–Maruyama discretisation of an SDE: exact closed forms (numeric and symbolic) and fast
simulators of SGD, of its SDE and of the Ornstein–Uhlenbeck process near a minimum."""

from sde.schedules import Constant, CyclicBatchSize, CyclicLR, Schedule, StepDecay
from sde.simulate import (
    EULER_WEAK_ORDER,
    RunTooShort,
    SimulationDiverged,
    SimulationResult,
    minibatch_indices,
    simulate,
)
from sde.theory import (
    eq7_loss,
    expected_loss,
    learning_curve,
    stability_bound,
    stationary_covariance,
    stationary_mean,
)

__all__ = [
    "stationary_covariance",
    "expected_loss",
    "stationary_mean",
    "stability_bound",
    "eq7_loss",
    "learning_curve",
    "simulate",
    "minibatch_indices",
    "SimulationResult",
    "SimulationDiverged",
    "RunTooShort",
    "EULER_WEAK_ORDER",
    "Schedule",
    "Constant",
    "CyclicLR",
    "CyclicBatchSize",
    "StepDecay",
]
