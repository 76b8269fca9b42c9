"""Synthetic quadratic problems: chosen Hessian spectra, Gaussian noise models (C = H and beyond) and a finite-data
least-squares problem with real minibatches."""

from quadratic.least_squares import SAMPLINGS, LeastSquares
from quadratic.problem import Quadratic
from quadratic.spectra import (
    SPECTRUM_HELP,
    from_file,
    linear,
    logspace,
    marchenko_pastur,
    parse_spectrum,
    powerlaw,
)

__all__ = [
    "Quadratic",
    "LeastSquares",
    "SAMPLINGS",
    "logspace",
    "linear",
    "powerlaw",
    "marchenko_pastur",
    "from_file",
    "parse_spectrum",
    "SPECTRUM_HELP",
]
