"""Monitoring verdicts as Prometheus metrics, through Ray's metrics endpoint beside the
router's: the long-running watcher (`rayapp retrain --watch`) sets them after every check, so
alert rules and the dashboard see drift, live quality and retrains next to latency and errors.

A process that is not connected to Ray (a one-off `rayapp monitor`) exports nothing: its
numbers are in MLflow, and it would be gone before the next scrape anyway.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import ray
from ray.util.metrics import Gauge

TAGS = ("model", "version")
# name -> description; the exported families are these with Ray's `ray_` prefix.
GAUGES = {
    "rayapp_drift": "1 when the last monitor check found drift, else 0",
    "rayapp_drift_share": "share of features whose drift test failed in the last check",
    "rayapp_prediction_shift": "relative shift of the mean score against the training data",
    "rayapp_live_roc_auc": "ROC-AUC on the latest bucket of labelled live traffic",
    "rayapp_live_f1": "F1 at the answered label on the latest bucket of labelled traffic",
    "rayapp_live_breaches": "live quality, bias and attribution limits breached",
    "rayapp_retrains": "retrains ended so far, by outcome (from the MLflow history)",
}
NAMES = frozenset(f"ray_{name}" for name in GAUGES)
# Ray exports a gauge for about 20 s after it is set, then drops it (measured, Ray 2.60): the
# watcher keeps the last values here and sets them again every second (`refresh`).
_last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}


@cache
def _gauge(name: str) -> Gauge:
    keys = ("model", "outcome") if name == "rayapp_retrains" else TAGS
    return Gauge(name, GAUGES[name], tag_keys=keys)


def _set(name: str, value: float | None, **tags: str) -> None:
    if value is not None and value == value:  # NaN: not measured
        _last[(name, tuple(sorted(tags.items())))] = float(value)
        _gauge(name).set(float(value), tags=tags)


def _forget(names: tuple[str, ...], model: str) -> None:
    """Stop refreshing these gauges of a model: a check replaces them whole, so a version
    promoted away, or a verdict no longer given, stops being exported (Ray drops it ~20 s
    later) instead of firing an alert for ever."""
    for key in [k for k in _last if k[0] in names and ("model", model) in k[1]]:
        del _last[key]


DRIFT = ("rayapp_drift", "rayapp_drift_share", "rayapp_prediction_shift")
LIVE = ("rayapp_live_roc_auc", "rayapp_live_f1", "rayapp_live_breaches")


def refresh() -> None:
    """Set every last value again, so none expires between checks."""
    if ray.is_initialized():
        for (name, tags), value in list(_last.items()):
            _gauge(name).set(value, tags=dict(tags))


def drift(summary: Any) -> None:
    """A `monitor.drift.DriftSummary`: the served version's verdict; too few rows to judge
    exports none."""
    if not ray.is_initialized():
        return
    _forget(DRIFT, summary.model)
    if summary.verdict not in ("drift", "no drift"):
        return
    tags = {"model": summary.model, "version": str(summary.version)}
    _set("rayapp_drift", float(summary.drifted), **tags)
    _set("rayapp_drift_share", summary.drifted_share, **tags)
    _set("rayapp_prediction_shift", summary.prediction.get("relative_shift"), **tags)


def live(report: Any) -> None:
    """A `monitor.live.LiveReport`: each version's latest judged bucket of labelled traffic."""
    if not ray.is_initialized():
        return
    _forget(LIVE, report.model)
    for judged in report.versions:
        tags = {"model": report.model, "version": judged.version.rpartition("/")[2]}
        buckets = [b for b in judged.buckets if b.roc_auc is not None] or [judged.window]
        if buckets[-1] is not None:
            _set("rayapp_live_roc_auc", buckets[-1].roc_auc, **tags)
            _set("rayapp_live_f1", buckets[-1].f1, **tags)
        _set("rayapp_live_breaches", float(len(judged.breaches)), **tags)


def retrains(model: str, counts: dict[str, int]) -> None:
    """How many retrains ended with each outcome (zeros too, so a first failure is a change)."""
    if ray.is_initialized():
        for outcome, count in counts.items():
            _set("rayapp_retrains", float(count), model=model, outcome=outcome)
