"""Gate limits from `configs/gates.yaml`: per registered model name over a `default` entry.

Every entry is checked against the schema below when the file is read, so a misspelt key or
an unknown metric fails before any training starts, naming the file, the entry and the field,
instead of surfacing as a KeyError minutes later in the gate. A command loads the file once
(`load_gates`) and hands the typed limits on; the checks in `checks.py` take these objects,
and the gate job that applies them is `job.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, field_validator

from ray_app import metrics
from ray_app.config import ConfigError, Strict, load_yaml, merge, validate
from ray_app.data.contract import Contract

DEFAULT = "default"  # the entry every model's own entry is laid over
DEMOGRAPHIC_PARITY, EQUALIZED_ODDS = "demographic_parity", "equalized_odds"
FAIRNESS_CRITERIA = (DEMOGRAPHIC_PARITY, EQUALIZED_ODDS)
# Literal of a tuple is the Literal of its items: the names stay defined once, in metrics.
ThresholdMetric = Literal[metrics.AT_THRESHOLD]  # what `classification_metrics` computes
Metric = Literal[metrics.ALL]  # the test metrics of the gate (`full_metrics`)
Criterion = Literal[FAIRNESS_CRITERIA]
Share = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(gt=0)]


class Slices(Strict):
    min_roc_auc: Share
    min_rows: Positive
    min_class_rows: Positive  # of each class: ROC-AUC on a handful of positives is noise
    bins: dict[str, list[int | float]]  # ints stay ints: they name the segments


class Fairness(Strict):
    min_demographic_parity_ratio: Share
    min_equalized_odds_ratio: Share
    min_rows: Positive
    min_class_rows: Positive  # a group's TPR needs this many positives, its FPR negatives
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


class Bound(NamedTuple):
    """A floor (`min_roc_auc`) or a ceiling (`max_logloss`) on a test metric."""

    metric: str
    floor: bool
    limit: float


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
        for key in quality:
            cls._bound(key, 0.0)
        return quality

    @staticmethod
    def _bound(key: str, limit: float) -> Bound:
        bound, _, name = key.partition("_")
        if bound not in ("min", "max") or name not in metrics.ALL:
            raise ValueError(
                f"{key!r} is not min_<metric> or max_<metric> with a metric in {metrics.ALL}"
            )
        return Bound(name, bound == "min", limit)

    @property
    def quality_bounds(self) -> list[Bound]:
        return [self._bound(key, limit) for key, limit in self.quality.items()]


@dataclass(frozen=True)
class Gates:
    """Every entry of a gates file, validated and laid over `default`."""

    path: Path
    entries: dict[str, GateLimits]

    def for_model(self, name: str) -> GateLimits:
        """The model's own entry, else `default`."""
        return self.entries.get(name, self.entries[DEFAULT])

    def for_contract(self, name: str, contract: Contract) -> GateLimits:
        """`for_model`, its columns checked against the contract the model is trained on: a
        name the contract lacks fails before training, not as a KeyError in the gate (a
        fairness column) or silently (bins of a column that is not a slice)."""
        limits, entry = self.for_model(name), name if name in self.entries else DEFAULT
        where = f"{self.path}: entry {entry!r}"
        unknown = [c for c in limits.fairness.columns if c not in contract.columns]
        if unknown:
            raise ConfigError(
                f"{where}: fairness.columns names {unknown}, not columns of contract "
                f"{contract.name!r} (its sensitive columns: {contract.sensitive_columns})"
            )
        unknown = [c for c in limits.slices.bins if c not in contract.slice_columns]
        if unknown:
            raise ConfigError(
                f"{where}: slices.bins names {unknown}, not slice columns of contract "
                f"{contract.name!r} (its slice columns: {contract.slice_columns})"
            )
        return limits


def load_gates(path: str | Path) -> Gates:
    """Read and validate a gates file once. Every entry is checked, not only the one a command
    needs, so one typo cannot wait for the day its model is gated."""
    path = Path(path)
    raw = load_yaml(path)
    default = raw.get(DEFAULT) or {}
    entries = {DEFAULT: validate(GateLimits, default, f"{path}: entry {DEFAULT!r}")}
    for entry, over in raw.items():
        merged = merge(default, over or {})
        entries[entry] = validate(GateLimits, merged, f"{path}: entry {entry!r}")
    return Gates(path, entries)
