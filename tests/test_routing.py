"""The router's rules, without a cluster: route configs, weighted and sticky choice, the canary
schedule and its verdict."""

from collections import Counter

import pytest
from pydantic import ValidationError

from ray_app.rollout.routing import (
    Canary,
    CanaryLimits,
    Route,
    Variant,
    VariantStats,
    breach,
    choose,
)


def _canary(**kw) -> Canary:
    return Canary(variant="canary", started_at=1000.0, **kw)


def test_route_configs_are_checked_when_applied():
    two = [
        Variant(name="blue", model="m/1", weight=100),
        Variant(name="green", model="m/2", weight=0),
    ]
    assert Route(strategy="bluegreen", variants=two).primary.name == "blue"
    with pytest.raises(ValidationError, match="add up to 100"):
        Route(variants=[Variant(name="a", model="m/1", weight=60)])
    with pytest.raises(ValidationError, match="unique"):
        Route(variants=[Variant(name="a", model="m/1"), Variant(name="a", model="m/2", weight=0)])
    with pytest.raises(ValidationError, match="a version is a number"):
        Variant(name="a", model="m/latest")
    with pytest.raises(ValidationError, match="after the primary"):
        Route(variants=two, canary=Canary(variant="blue", started_at=0))
    with pytest.raises(ValidationError, match="must rise"):
        _canary(steps=[50, 10])
    with pytest.raises(ValidationError, match="extra"):
        Route.model_validate({"variants": [{"name": "a", "model": "m/1"}], "wieghts": 1})


def test_canary_weight_follows_its_schedule():
    canary = _canary(steps=[10, 50, 100], step_s=60)
    assert [canary.weight(t) for t in (999, 1000, 1059, 1060, 1125, 9999)] == [
        0,
        10,
        10,
        50,
        100,
        100,
    ]
    assert not canary.finished(1179) and canary.finished(1180)
    route = Route(
        strategy="canary",
        variants=[
            Variant(name="primary", model="m@production"),
            Variant(name="canary", model="m/2"),
        ],
        canary=canary,
    )
    assert route.weights(1070) == {"primary": 50, "canary": 50}
    assert route.weights(1070, canary_stopped=True) == {"primary": 100, "canary": 0}


def test_choice_is_sticky_by_key_and_spread_by_weight():
    weights = {"primary": 90.0, "canary": 10.0}
    for key in ("customer-1", "customer-2", "C000000042"):
        assert len({choose(weights, key) for _ in range(20)}) == 1
    keyed = Counter(choose(weights, f"customer-{i}") for i in range(5000))
    assert 400 < keyed["canary"] < 600  # about 10% of distinct keys
    spread = Counter(choose(weights, None) for _ in range(5000))
    assert 400 < spread["canary"] < 600
    assert {choose({"a": 100.0, "b": 0.0}, str(i)) for i in range(100)} == {"a"}


def _stats(latencies, scores, errors=0) -> dict:
    stats = VariantStats(1000)
    for latency, score in zip(latencies, scores, strict=True):
        stats.add(latency, score)
    for _ in range(errors):
        stats.add(1.0, None)
    return stats.summary()


def test_canary_verdict_names_the_breached_limit():
    limits = CanaryLimits(min_requests=50)
    primary = _stats([2.0] * 100, [0.2] * 100)
    assert breach(primary, _stats([2.0] * 10, [0.9] * 10), limits) is None  # too few yet
    assert breach(primary, _stats([2.2] * 100, [0.21] * 100), limits) is None
    assert "error rate" in breach(primary, _stats([2.0] * 95, [0.2] * 95, errors=5), limits)
    assert "p95 latency" in breach(primary, _stats([40.0] * 100, [0.2] * 100), limits)
    assert "mean score" in breach(primary, _stats([2.0] * 100, [0.5] * 100), limits)
