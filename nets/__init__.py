"""The torch part of sgd-noise: datasets, models, SGD with schedules of η and S, curvature measurements and the
paper's network experiments. It needs the ``torch`` extra; the theory packages (``sde``, ``quadratic``,
``verification``) import and run without torch.

* ``nets.data``: Fashion-MNIST (IDX files), CIFAR-10 (python pickles), synthetic data; an on-device sampler.
* ``nets.models``: the 4-layer batch-norm MLP, VGG11 and ResNet56 (and batch-norm-free variants).
* ``nets.sgd``: the one SGD step and its fluctuation–dissipation observables.
* ``nets.train``: SGD with momentum, weight decay and schedules of η and S; ``python -m nets.train``.
* ``nets.curvature``: Hessian-vector products with an explicit batch-norm policy, λ_max, Tr(H), ‖H‖_F, Tr(C).
* ``nets.evaluation``: loss and accuracy on a fixed data set, batched, in float64.
* ``nets.landscape``: the loss along the line between two models.
* ``nets.measure``: ``python -m nets.measure RUN_DIR --json PATH``.
* ``nets.basin``: the basin SGD samples: a certified minimum, the noise along chosen directions, the exact
  per-direction stationary variance, the quadratic profile and the quadratic control.
* ``nets.stationary``: the stationary phase of SGD at a run's (η, S), and the OU picture tested on it direction by
  direction (``examine_basin``, ``basin_phase``).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - the theory packages work without torch
    raise ImportError("nets needs torch: pip install torch==2.13.0 (the CPU build; see README)") from exc

import importlib  # noqa: E402

__all__ = ["data", "models", "evaluation", "sgd", "train", "curvature", "landscape", "basin", "measure", "stationary"]


def __getattr__(name: str):
    # The modules load on first use (PEP 562), not here: `python -m nets.train` would otherwise import nets.train
    # once as a module and again as __main__ (runpy's "found in sys.modules" warning, and two copies of its state).
    if name in __all__:
        return importlib.import_module(f"nets.{name}")
    raise AttributeError(f"module 'nets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
