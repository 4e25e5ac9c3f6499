"""What the router does with a request, as data: its `user_config` (routes, variants, weights,
shadow, canary schedule and limits), the choice of a variant, and the canary's verdict.

No Ray here: the router deployment applies these, `rayapp deploy` writes them, and the tests
check the rules without a cluster. A route is one model name clients address; its variants are
model references (`churn_model@production`, `churn_model/4`) with traffic weights in percent.
Blue/green is two variants with weights 100/0, a canary is a variant whose weight follows a
schedule, and a shadow is a variant that sees the traffic but never answers.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_app.model.ref import ModelRef

BLUEGREEN, CANARY, SHADOW, SINGLE = "bluegreen", "canary", "shadow", "single"
PRIMARY = "primary"
VARIANT_HEADER = "x-rayapp-variant"  # pins a request to a named variant (smoke tests)
KEY_HEADER = "x-routing-key"  # sticky canary choice; else the row's id column
# How a canary rollout ends, as recorded on the registered model; an ended one is not judged.
ROLLBACK, PROMOTE, ABANDON = "canary-rollback", "canary-promote", "canary-abandoned"
ENDINGS = (ROLLBACK, PROMOTE, ABANDON)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Variant(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="a model reference: name@alias, name/version or a run id")
    weight: float = Field(100.0, ge=0, le=100, description="percent of the route's traffic")

    @model_validator(mode="after")
    def _parses(self) -> Variant:
        ModelRef.parse(self.model)
        return self


class CanaryLimits(_Strict):
    """How much worse than the primary the canary may be, judged on each replica's recent
    requests once both variants have `min_requests` of them."""

    min_requests: int = Field(50, ge=1)
    window: int = Field(1000, ge=10, description="recent requests per variant that are judged")
    max_error_rate_increase: float = Field(0.01, ge=0)
    max_p95_ratio: float = Field(2.0, ge=1, description="canary p95 / primary p95")
    min_p95_increase_ms: float = Field(5.0, ge=0, description="a smaller slowdown is noise")
    max_mean_score_shift: float = Field(0.15, ge=0, description="relative change of mean score")
    score_floor: float = Field(
        0.05, gt=0, description="the shift is relative to at least this mean (rare positives)"
    )


class Canary(_Strict):
    variant: str
    steps: list[float] = Field(default=[10.0, 50.0, 100.0], min_length=1)
    step_s: float = Field(300.0, gt=0, description="time at each step")
    started_at: float = Field(description="epoch seconds; the schedule counts from here")
    promote: bool = Field(True, description="move production to the canary after the last step")
    production: str | None = Field(
        None,
        description="the version production held at the start; promotion moves it only from there",
    )
    limits: CanaryLimits = CanaryLimits()

    @model_validator(mode="after")
    def _steps(self) -> Canary:
        if any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError(f"steps must rise within (0, 100], got {self.steps}")
        return self

    @property
    def rollout_id(self) -> str:
        return f"{self.variant}@{self.started_at:.6f}"

    def weight(self, now: float) -> float:
        """The canary's percent at `now`: 0 before the start, then each step for `step_s`."""
        if now < self.started_at:
            return 0.0
        return self.steps[min(int((now - self.started_at) // self.step_s), len(self.steps) - 1)]

    def finished(self, now: float) -> bool:
        return now >= self.started_at + self.step_s * len(self.steps)


class Shadow(_Strict):
    name: str = SHADOW
    model: str
    fraction: float = Field(1.0, gt=0, le=1, description="share of requests mirrored")

    @model_validator(mode="after")
    def _parses(self) -> Shadow:
        ModelRef.parse(self.model)
        return self


class Route(_Strict):
    strategy: Literal["single", "bluegreen", "canary", "shadow"] = SINGLE
    variants: list[Variant] = Field(min_length=1)
    canary: Canary | None = None
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if self.canary is not None:
            if self.canary.variant not in names[1:]:
                raise ValueError(
                    f"canary.variant {self.canary.variant!r} must name a variant after the "
                    f"primary {names[0]!r}"
                )
        elif sum(v.weight for v in self.variants) != 100:
            raise ValueError(f"weights must add up to 100, got {[v.weight for v in self.variants]}")
        if self.shadow is not None and self.shadow.name in names:
            raise ValueError(f"the shadow's name {self.shadow.name!r} is also a variant's")
        return self

    @property
    def primary(self) -> Variant:
        return self.variants[0]

    def weights(self, now: float, canary_stopped: bool = False) -> dict[str, float]:
        """Percent per variant now: the canary's from its schedule (0 once stopped), the rest
        to the primary."""
        if self.canary is None:
            return {v.name: v.weight for v in self.variants}
        share = 0.0 if canary_stopped else self.canary.weight(now)
        return {self.primary.name: 100.0 - share, self.canary.variant: share}


class RouterConfig(_Strict):
    """The router's `user_config`. Routes not named here serve `<model>@<alias>` alone."""

    routes: dict[str, Route] = Field(default_factory=dict)
    threshold: float | None = Field(None, gt=0, lt=1, description="None: each version's own")
    poll_s: float = Field(5.0, gt=0, description="how often aliases are resolved again")


def default_route(ref: str) -> Route:
    """What a model serves when no route is configured: the reference it was deployed with."""
    return Route(variants=[Variant(name=PRIMARY, model=ref)])


def choose(weights: dict[str, float], key: str | None) -> str:
    """A variant by weight: the same key always lands on the same variant for given weights
    (sticky canaries), requests without one are spread at random."""
    live = [(name, w) for name, w in weights.items() if w > 0]
    if len(live) == 1:
        return live[0][0]
    if key is None:
        point = random.random() * 100
    else:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * 100
    for name, weight in live:
        point -= weight
        if point < 0:
            return name
    return live[-1][0]


@dataclass
class VariantStats:
    """A variant's recent requests on this replica: latency, mean score, errors."""

    window: int
    latency_ms: deque[float] = field(init=False)
    score: deque[float] = field(init=False)
    error: deque[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.latency_ms, self.score, self.error = (deque(maxlen=self.window) for _ in range(3))

    def add(self, latency_ms: float, mean_score: float | None) -> None:
        self.latency_ms.append(latency_ms)
        self.error.append(mean_score is None)
        if mean_score is not None:
            self.score.append(mean_score)

    def summary(self) -> dict[str, float]:
        # list() copies a deque in one step: requests append to it from the event loop while
        # the follower thread judges.
        latency, score, error = (list(d) for d in (self.latency_ms, self.score, self.error))
        return {
            "requests": len(error),
            "error_rate": sum(error) / max(len(error), 1),
            "p95_ms": float(np.percentile(latency, 95)) if latency else 0.0,
            "mean_score": float(np.mean(score)) if score else 0.0,
        }


def breach(primary: dict[str, float], canary: dict[str, float], limits: CanaryLimits) -> str | None:
    """Why the canary must be rolled back, or None (also while either has too few requests)."""
    if min(primary["requests"], canary["requests"]) < limits.min_requests:
        return None
    if canary["error_rate"] - primary["error_rate"] > limits.max_error_rate_increase:
        return (
            f"error rate {canary['error_rate']:.2%} against the primary's "
            f"{primary['error_rate']:.2%} (limit +{limits.max_error_rate_increase:.2%})"
        )
    slow = max(
        primary["p95_ms"] * limits.max_p95_ratio, primary["p95_ms"] + limits.min_p95_increase_ms
    )
    if canary["p95_ms"] > slow:
        return (
            f"p95 latency {canary['p95_ms']:.1f} ms against the primary's "
            f"{primary['p95_ms']:.1f} ms (limit x{limits.max_p95_ratio})"
        )
    base = max(abs(primary["mean_score"]), limits.score_floor)
    shift = abs(canary["mean_score"] - primary["mean_score"]) / base
    if shift > limits.max_mean_score_shift:
        return (
            f"mean score {canary['mean_score']:.4f} against the primary's "
            f"{primary['mean_score']:.4f}: a {shift:.0%} shift (limit "
            f"{limits.max_mean_score_shift:.0%})"
        )
    return None
