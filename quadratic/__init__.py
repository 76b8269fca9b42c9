"""Synthetic quadratic problems: chosen Hessian spectra, Gaussian noise models (C = H and beyond) and a finite-data
least-squares problem with real minibatches."""

from quadratic.least_squares import LeastSquares
from quadratic.linalg import psd_sqrt
from quadratic.problem import Quadratic
from quadratic.sampling import SAMPLINGS, batch_noise_factor, check_batch_size, finite_data_factor
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
    "batch_noise_factor",
    "finite_data_factor",
    "check_batch_size",
    "psd_sqrt",
    "logspace",
    "linear",
    "powerlaw",
    "marchenko_pastur",
    "from_file",
    "parse_spectrum",
    "SPECTRUM_HELP",
]
