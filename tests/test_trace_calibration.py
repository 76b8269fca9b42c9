"""The exact reference of benchmarks/trace_calibration.py (the Hessian diagonal of a Linear/eval-mode
batch norm/ReLU network as its Gauss-Newton diagonal) against the dense Hessian of a small network."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nets import models  # noqa: E402
from nets.curvature import HessianOperator  # noqa: E402

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "trace_calibration.py"


def _calibration():
    spec = importlib.util.spec_from_file_location("trace_calibration", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kw", [dict(), dict(recalibrate=False, weight_decay=0.05)])
def test_the_exact_diagonal_is_the_hessians(kw):
    cal = _calibration()
    torch.manual_seed(0)
    model = models.MLP((1, 3, 3), 4, hidden=6, depth=4, batch_norm=True)
    x, y = torch.randn(50, 1, 3, 3), torch.randint(0, 4, (50,))
    with torch.no_grad():  # stored statistics that differ from the data's
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_(0, 0.3)
    op = HessianOperator(model, F.cross_entropy, x, y, batch_size=16, dtype=torch.float64, **kw)
    h = np.column_stack([op.matvec(e) for e in np.eye(op.dim)])
    diag = cal.exact_hessian_diagonal(op, chunk=20)
    np.testing.assert_allclose(diag, np.diag(h), rtol=0, atol=1e-12 * np.abs(np.diag(h)).max())
    assert diag.sum() == pytest.approx(np.trace(h), rel=1e-12)


def test_the_exact_diagonal_refuses_what_it_cannot_do():
    cal = _calibration()
    torch.manual_seed(0)
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(8, 1, 3, 3), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="Linear"):
        cal.exact_hessian_diagonal(HessianOperator(tanh, F.cross_entropy, x, y, batch_size=8))
    mlp = models.MLP((1, 3, 3), 3, hidden=4, depth=3, batch_norm=True)
    with pytest.raises(ValueError, match="eval"):
        cal.exact_hessian_diagonal(HessianOperator(mlp, F.cross_entropy, x, y, batch_size=4, bn_mode="train"))
