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
from ray.util.metrics import Counter, Gauge

TAGS = ("model", "version")
# name -> description; the exported families are these with Ray's `ray_` prefix.
GAUGES = {
    "rayapp_drift": "1 when the last monitor check found drift, else 0",
    "rayapp_drift_share": "share of features whose drift test failed in the last check",
    "rayapp_prediction_shift": "relative shift of the mean score against the training data",
    "rayapp_live_roc_auc": "ROC-AUC on the latest bucket of labelled live traffic",
    "rayapp_live_f1": "F1 at the answered label on the latest bucket of labelled traffic",
    "rayapp_live_breaches": "live quality, bias and attribution limits breached",
}
RETRAINS = "rayapp_retrains"
NAMES = frozenset(f"ray_{name}" for name in [*GAUGES, RETRAINS])


@cache
def _gauge(name: str) -> Gauge:
    return Gauge(name, GAUGES[name], tag_keys=TAGS)


@cache
def _retrains() -> Counter:
    return Counter(RETRAINS, "retrains ended, by outcome", tag_keys=("model", "outcome"))


def _set(name: str, value: float | None, model: str, version: str) -> None:
    if value is not None and value == value:  # NaN: not measured
        _gauge(name).set(float(value), tags={"model": model, "version": str(version)})


def drift(summary: Any) -> None:
    """A `monitor.drift.DriftSummary` with a verdict (too few rows sets nothing)."""
    if not ray.is_initialized() or summary.verdict not in ("drift", "no drift"):
        return
    model, version = summary.model, summary.version
    _set("rayapp_drift", float(summary.drifted), model, version)
    _set("rayapp_drift_share", summary.drifted_share, model, version)
    _set("rayapp_prediction_shift", summary.prediction.get("relative_shift"), model, version)


def live(report: Any) -> None:
    """A `monitor.labels.LiveReport`: each version's latest judged bucket of labelled traffic."""
    if not ray.is_initialized():
        return
    for judged in report.versions:
        model, version = report.model, judged.version.rpartition("/")[2]
        buckets = [b for b in judged.buckets if b.roc_auc is not None] or [judged.window]
        if buckets[-1] is not None:
            _set("rayapp_live_roc_auc", buckets[-1].roc_auc, model, version)
            _set("rayapp_live_f1", buckets[-1].f1, model, version)
        _set("rayapp_live_breaches", float(len(judged.breaches)), model, version)


def retrained(model: str, outcome: str) -> None:
    if ray.is_initialized():
        _retrains().inc(tags={"model": model, "outcome": outcome})
