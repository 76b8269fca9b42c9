"""On a GPU when there is one (skipped otherwise: CI has none): one training epoch on CUDA, and ``hessian_stats``
on CUDA against the CPU in float64."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from torch.nn import functional as F  # noqa: E402

from nets import train as train_mod  # noqa: E402
from nets.curvature import HessianOperator, hessian_stats  # noqa: E402
from nets.models import build_model  # noqa: E402


def test_one_training_epoch_on_cuda(tmp_path):
    cfg = train_mod.TrainConfig(dataset="synthetic-mnist", model="mlp", width=0.25, eta=0.05, batch_size=32,
                                epochs=1, synthetic_size=1024, device="cuda")
    res = train_mod.train(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    assert res["diverged"] is None and res["environment"]["device"].startswith("cuda")
    first, last = res["history"][0], res["history"][-1]
    assert last["train_loss"] < 2.30  # below chance (ln 10) after an epoch on the learnable synthetic task
    assert first["examples"] == res["train_size"]


def test_hessian_stats_on_cuda_equal_cpu_in_float64():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    model = build_model("mlp", (1, 28, 28), 10, width=0.125, seed=0)
    kw = dict(batch_size=32, dtype=torch.float64)
    a = hessian_stats(HessianOperator(model, F.cross_entropy, x, y, device="cpu", **kw), min_probes=4, rng=0)
    b = hessian_stats(HessianOperator(model.cuda(), F.cross_entropy, x.cuda(), y.cuda(), device="cuda", **kw),
                      min_probes=4, rng=0)
    for k in ("lambda_max", "trace", "frobenius"):
        # float64 on both: the same probes and the same operator, so they agree to rounding (1e-8 is generous
        # for a few hundred reductions of different order).
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-8), k
