"""One numerical policy for training, measurement and plan calibration (issue 23 item 6): deterministic cuDNN, no
benchmarking, TF32 off, set in one place (``nets.evaluation.DETERMINISM``) and recorded in each result's
environment."""

import json

import pytest

torch = pytest.importorskip("torch")

from cases import TINY_TRAIN  # noqa: E402

from nets.evaluation import DETERMINISM, determinism_flags, measurement_precision, set_determinism  # noqa: E402
from sgd_noise_common.environment import environment  # noqa: E402

_FLAGS = {"cudnn.deterministic": (torch.backends.cudnn, "deterministic"),
          "cudnn.benchmark": (torch.backends.cudnn, "benchmark"),
          "cudnn.allow_tf32": (torch.backends.cudnn, "allow_tf32"),
          "cuda.matmul.allow_tf32": (torch.backends.cuda.matmul, "allow_tf32")}


@pytest.fixture
def flags_against_the_policy():
    """Every flag of the policy set to the other value (as torch's defaults partly are), restored after."""
    saved = {name: getattr(*home) for name, home in _FLAGS.items()}
    for name, home in _FLAGS.items():
        setattr(*home, not DETERMINISM[name])
    yield
    for name, home in _FLAGS.items():
        setattr(*home, saved[name])


def _policy_now() -> bool:
    return all(bool(getattr(*_FLAGS[name])) == value for name, value in DETERMINISM.items())


def test_the_policy_covers_the_flags_and_the_environment_records_them(flags_against_the_policy):
    assert set(DETERMINISM) == set(_FLAGS)
    assert not _policy_now()
    with measurement_precision():
        assert _policy_now()
    assert not _policy_now()  # restored
    set_determinism()
    assert _policy_now()
    env = environment()
    assert env["determinism"] == determinism_flags()
    assert {k: env["determinism"][k] for k in DETERMINISM} == DETERMINISM


def test_training_sets_the_policy_and_records_it(flags_against_the_policy, tmp_path):
    # Before: cudnn.deterministic only on CUDA, TF32 left on for training's convolutions, nothing recorded.
    from nets import train as train_mod

    out = tmp_path / "r"
    assert train_mod.main(TINY_TRAIN + ["--epochs", "0.25", "--out", str(out)]) == 0
    assert _policy_now()
    env = json.loads((out / "result.json").read_text())["environment"]
    assert {k: env["determinism"][k] for k in DETERMINISM} == DETERMINISM


def test_measurement_runs_under_the_policy(flags_against_the_policy):
    # Every product of a measurement runs under the policy, whoever calls it (before: only TF32 was switched).
    from torch.nn import functional as F

    from nets.curvature import HessianOperator

    seen = []

    def loss(out, y):
        seen.append(_policy_now())
        return F.cross_entropy(out, y)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    op = HessianOperator(model, loss, torch.randn(6, 1, 2, 2), torch.randint(0, 3, (6,)), batch_size=3)
    op.matvec(torch.ones(op.dim))
    op.loss()
    assert seen and all(seen)


def test_plan_calibration_sets_the_policy(flags_against_the_policy):
    from nets.experiments.plan import calibrate

    calibrate("mlp", 0.125, False, (1, 28, 28), 8, "cpu", eval_batch_size=8, steps=1)
    assert _policy_now()
