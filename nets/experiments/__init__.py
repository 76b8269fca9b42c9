"""The paper's network experiments, each ``python -m nets.experiments.<name> --scale smoke|small|full`` (or
``python -m nets.experiments <name> ...``): fig1 (cyclic LR against cyclic batch size, equal-ratio pairs), fig2
(rescaling rules when the batch grows), fig3 (curvature and accuracy over a grid of eta and S), fig4 (interpolation
between models), fig5 (where the invariance breaks), eq7 (Eq. 7 measured on trained networks), advise (the
batch-scaling advisor, nets.advise, predicted against measured)."""

EXPERIMENTS = ("fig1", "fig2", "fig3", "fig4", "fig5", "eq7", "advise")

__all__ = ["EXPERIMENTS"]
