"""Curvature and gradient noise at a trained model, measured the same way every time.

One module per concept: ``operator`` (the measured loss, its batch-norm policy and ``HessianOperator``),
``eigenvalues`` (λ_max by ARPACK's Lanczos and power iteration), ``trace`` (Tr(H) and ‖H‖_F by Hutchinson and
Hutch++, and to a requested accuracy, deflated by a Krylov space), ``lanczos`` (Lanczos stopped on its residuals,
stochastic Lanczos quadrature), ``spectrum`` (top-k eigenpairs, the eigenvalue density), ``sharpness`` (Keskar et
al.'s ε-sharpness), ``stats`` (``hessian_stats``: λ_max, Tr(H) and ‖H‖_F at once, each to a stated accuracy),
``noise`` (``gradient_noise``: Tr(C), ‖G‖² and the noise scale), ``alignment`` (C against H beyond their traces)
and ``edge`` (``batch_sharpness``: the minibatch loss's curvature along its own gradient, E_B[g_BᵀH_Bg_B]/E_B[‖g_B‖²]).

Every result is a frozen dataclass (``TraceEstimate`` from every trace estimator, ``HessianStats``, ``TopEigen``,
``Eigenpairs``, ``SpectralDensity``, ``GradientNoise``, ``NoiseHessianAlignment``, ``Sharpness``,
``BatchSharpness``) whose ``to_dict()`` is its JSON data (``sgd_noise_common.results``).
"""

# HVP_CHUNK and HVP_METHODS (home: nets.curvature.operator) stay reachable here as before, since the tests read
# them, but are not part of __all__.
from nets.curvature.alignment import NoiseHessianAlignment, noise_hessian_alignment
from nets.curvature.edge import BatchSharpness, batch_sharpness
from nets.curvature.eigenvalues import lanczos_lambda_max, power_iteration
from nets.curvature.lanczos import Eigenpairs, SpectralDensity
from nets.curvature.noise import GradientNoise, gradient_noise
from nets.curvature.operator import BN_MODES, HessianOperator, recalibrate_bn
from nets.curvature.operator import HVP_CHUNK as HVP_CHUNK
from nets.curvature.operator import HVP_METHODS as HVP_METHODS
from nets.curvature.sharpness import Sharpness, epsilon_sharpness
from nets.curvature.spectrum import TopEigen, spectral_density, top_eigenvalues
from nets.curvature.stats import HessianStats, hessian_stats
from nets.curvature.trace import (
           Deflation,
           TraceAndFrobenius,
           TraceEstimate,
           adaptive_trace,
           hutchinson,
           hutchpp,
           trace_and_frobenius,
)

__all__ = ["HessianOperator", "HessianStats", "hessian_stats", "GradientNoise", "gradient_noise",
           "recalibrate_bn", "lanczos_lambda_max", "power_iteration", "hutchinson", "hutchpp", "BN_MODES",
           "top_eigenvalues", "TopEigen", "Eigenpairs", "spectral_density", "SpectralDensity", "adaptive_trace",
           "epsilon_sharpness", "Sharpness", "noise_hessian_alignment", "NoiseHessianAlignment",
           "trace_and_frobenius", "TraceEstimate", "TraceAndFrobenius", "Deflation", "batch_sharpness",
           "BatchSharpness"]
