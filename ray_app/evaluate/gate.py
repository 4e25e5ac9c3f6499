"""Gate limits from `configs/gates.yaml`: per registered model name over a `default` entry.

Every entry is checked against the schema below when the file is read, so a misspelt key or
an unknown metric fails before any training starts, naming the file, the entry and the field,
instead of surfacing as a KeyError minutes later in the gate. The checks are in `checks.py`,
the gate job that applies them in `job.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ray_app.config import Strict, load_yaml, validate
from ray_app.evaluate import metrics
from ray_app.evaluate.checks import FAIRNESS_CRITERIA, PR_AUC

AT_THRESHOLD = (
    metrics.ROC_AUC,
    metrics.F1,
    metrics.PRECISION,
    metrics.RECALL,
    metrics.ACCURACY,
    metrics.LOGLOSS,
)
# Literal of a tuple is the Literal of its items: the names stay defined once, in metrics/checks.
ThresholdMetric = Literal[AT_THRESHOLD]  # what `classification_metrics` computes
Metric = Literal[(*AT_THRESHOLD, PR_AUC)]  # the test metrics of the gate (`full_metrics`)
Criterion = Literal[FAIRNESS_CRITERIA]
Share = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(gt=0)]


class Slices(Strict):
    min_roc_auc: Share
    min_rows: Positive
    bins: dict[str, list[float]]


class Fairness(Strict):
    demographic_parity_ratio: tuple[float, float]
    min_equalized_odds_ratio: Share
    min_rows: Positive
    columns: dict[str, list[Criterion]]  # empty: the contract's sensitive columns, both

    @field_validator("columns", mode="before")
    @classmethod
    def _both_for_a_list(cls, columns: Any) -> Any:
        """A plain list of columns judges each on both criteria."""
        return (
            dict.fromkeys(columns, list(FAIRNESS_CRITERIA))
            if isinstance(columns, list)
            else columns
        )

    @field_validator("demographic_parity_ratio")
    @classmethod
    def _around_one(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not bounds[0] <= 1 <= bounds[1]:
            raise ValueError(f"[low, high] must hold 1 (equal rates), got {list(bounds)}")
        return bounds


class Calibration(Strict):
    max_ece: Share
    bins: Positive


class Noise(Strict):
    std: Annotated[float, Field(gt=0)]
    max_drop: dict[ThresholdMetric, float]


class Missing(Strict):
    fraction: Annotated[float, Field(gt=0, lt=1)]
    max_drop: dict[ThresholdMetric, float]


class Robustness(Strict):
    seed: int
    noise: Noise
    missing: Missing


class Explainability(Strict):
    sample_rows: Positive
    max_top_feature_share: Share


class Latency(Strict):
    max_p95_ms: Annotated[float, Field(gt=0)]
    batch_sizes: list[Positive]
    requests: Positive
    rounds: Positive
    warmup: Annotated[int, Field(ge=0)]


class Champion(Strict):
    min_improvement: float
    tolerance: dict[Metric, float]


class Baseline(Strict):
    must_beat: list[ThresholdMetric]


class GateLimits(Strict):
    """One model's limits, after its entry is laid over `default`."""

    primary_metric: Metric
    quality: dict[str, float]
    baseline: Baseline
    slices: Slices
    fairness: Fairness
    calibration: Calibration
    robustness: Robustness
    explainability: Explainability
    latency: Latency
    champion: Champion
    promotion: Literal["staging", "production"]

    @field_validator("quality")
    @classmethod
    def _bounds(cls, quality: dict[str, float]) -> dict[str, float]:
        known = (*AT_THRESHOLD, PR_AUC)
        for key in quality:
            bound, _, name = key.partition("_")
            if bound not in ("min", "max") or name not in known:
                raise ValueError(
                    f"{key!r} is not min_<metric> or max_<metric> with a metric in {known}"
                )
        return quality


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def thresholds(gates_path: str | Path, model_name: str) -> dict[str, Any]:
    """The model's limits: `default`, overridden key by key by the model's own entry. Every
    entry of the file is validated, not only this model's, so one typo cannot wait for the
    day its model is gated."""
    path = Path(gates_path)
    gates = load_yaml(path)
    default = gates.get("default") or {}
    chosen = validate(GateLimits, default, f"{path}: entry 'default'")  # complete on its own
    for entry, over in gates.items():
        limits = validate(GateLimits, _merge(default, over or {}), f"{path}: entry {entry!r}")
        if entry == model_name:
            chosen = limits
    return chosen.model_dump()
