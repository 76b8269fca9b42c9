"""Verdict margins (issue 22): the share of bootstrap resamples over seeds that repeat a verdict, and a settled
verdict below ``MARGIN_MIN`` reported as not settled at this scale."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

from nets.experiments.cli import MARGIN_MIN, verdict_margins
from sgd_noise_common.claims import Claim


@dataclass
class _Spec:
    tags: dict
    train: object = field(default_factory=lambda: types.SimpleNamespace(seed=0))


def _module(rule):
    def analyse(results, ctx):
        assert ctx.dry
        values = [r["value"] for _, r in results]
        return [Claim("c", "a claim", holds=rule(values), settled=True, summary="s")]

    return types.SimpleNamespace(NAME="fake", analyse=analyse)


def _done(values):
    return [(_Spec(tags={"seed": i}), {"value": v}) for i, v in enumerate(values)]


def test_a_verdict_every_resample_repeats_keeps_margin_one():
    module = _module(lambda v: min(v) > 0)
    claims = module.analyse(_done([1.0, 2.0, 3.0]), types.SimpleNamespace(dry=True))
    verdict_margins(module, _done([1.0, 2.0, 3.0]), claims, None, types.SimpleNamespace(scale="small"), [])
    assert claims[0].settled and "verdict margin 1.00" in claims[0].summary


def test_a_verdict_that_hangs_on_one_seed_is_not_settled_at_this_scale():
    # holds only when seed 2 (value -1) is left out: about (2/3)^3 = 0.30 of the resamples
    module = _module(lambda v: min(v) > 0)
    done = _done([1.0, 2.0, -1.0])
    claims = [Claim("c", "a claim", holds=False, settled=True, summary="s")]
    verdict_margins(module, done, claims, None, types.SimpleNamespace(scale="small"), [])
    margin = float(claims[0].summary.split("verdict margin ")[1].split()[0])
    assert 0.55 < margin < MARGIN_MIN  # 1 - 0.296 = 0.70 expected
    assert not claims[0].settled and "not settled at this scale" in claims[0].summary


def test_one_seed_gets_no_margin():
    module = _module(lambda v: True)
    claims = [Claim("c", "a claim", holds=True, settled=True, summary="s")]
    verdict_margins(module, _done([1.0]), claims, None, types.SimpleNamespace(scale="small"), [])
    assert claims[0].summary == "s" and claims[0].settled
