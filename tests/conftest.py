"""Hypothesis profiles: derandomised in CI (CI=true) so that a run is repeatable; examples capped for time.

Statistical tests draw their seeds through Hypothesis and state their family-wise confidence; the per-test
critical value divides the error rate over the ``max_examples`` draws (Bonferroni).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=20, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["np"] = np


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch tiny ``nets.train`` run folder (``cases.TINY_TRAIN``), one per test module."""
    from cases import TINY_TRAIN

    from nets import train as train_mod

    out = tmp_path_factory.mktemp("run") / "r"
    assert train_mod.main(TINY_TRAIN + ["--epochs", "1", "--out", str(out)]) == 0
    return out
