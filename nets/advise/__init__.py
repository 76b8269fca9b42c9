r"""``python -m nets.advise RUN_DIR --out DIR``: before scaling the batch, predict where η/S-invariance holds for
this model and where it breaks, and why.

The linear scaling rule trains at (βη, βS) for a β× larger batch. From one finished run, the advisor measures the
model where it stands (λ_max and the top-k Hessian eigenpairs, Tr(H), Tr(C), ‖∇L‖², the noise scale
B_simple = Tr(C)/‖G‖², batch sharpness, the per-example curvature's spread along the top directions), then, for
each β, predicts the **learning curve** of SGD continued from this point at (βη, βS) for the same number of
examples, and compares it with β = 1.

**The surrogate** (exact for a model whose per-example losses are quadratic, e.g. least squares, when k = P):

* the top-k directions V: the linearised law of ``nets.basin.linearised_law`` along them, with each example's
  gradient and curvature projected on V (``projected_curvatures``): the mean's drift under the measured gradient,
  the gradient noise, and the batch Hessian's fluctuation (multiplicative noise) and its mean-square stability
  margin ρ, for batches of βS of N (κ = (N − βS)/(βS(N − 1))), with torch's momentum and weight decay;
* the bulk, the other P − k directions: the eigenvalue density by stochastic Lanczos quadrature below λ_k (its
  nodes, with multiplicities (P − k)·weight), each direction with Gaussian noise c_j ∝ λ_j
  (Tr(C) − Σ_i v_iᵀCv_i shared out in proportion to curvature: C ∝ H in the bulk) and a start offset of equal
  size in every bulk direction, scaled so that the bulk's gradient energy is the measured ‖∇L‖² − ‖Vᵀ∇L‖²
  (``sde.theory.learning_curve``, exact moments).

The predicted loss after e examples is L(θ) + ΔL_top + ΔL_bulk, evaluated at checkpoints every B examples
(B the largest batch of the possible βs, so every β has whole steps there). The predicted deviation of β is
max_e |L_β(e) − L_1(e)| / L_1(e); β* is the smallest β whose deviation exceeds ``tol`` (or whose batch exceeds N),
and its mechanism is "stability" where ρ ≥ 1, else "discreteness" when the deviation with η/S-invariant noise
(κ_1/β) alone exceeds ``tol``, else "finite data" (S → N). McCandlish et al.'s estimate, β ≈ B_simple/S, is
reported beside it. ``--verify`` trains from the run's weights at each β for the same examples (``seeds`` batch
orders) and measures the same deviation on the same loss (same examples, same batch-norm statistics).

Exit status: 0 when the advice (and the verification, if asked) was made, 2 on bad input.

From Python, for a model of your own::

    from nets.advise import advise
    a = advise(model, torch.nn.functional.cross_entropy, x_train, y_train, eta=0.1, batch_size=50, seed=0)
    print(a.beta_star, a.mechanism)
"""

from nets.advise.core import (
    ADVICE_STREAMS,
    MECHANISMS,
    Advice,
    AdviceMeasurements,
    AdviceRow,
    advise,
    check_betas,
    default_betas,
    verify,
)

__all__ = ["advise", "verify", "Advice", "AdviceRow", "AdviceMeasurements", "default_betas", "check_betas",
           "MECHANISMS", "ADVICE_STREAMS"]
