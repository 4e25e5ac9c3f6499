"""The promotion gate: the only code that decides whether a model may take an alias.

This is the spine's minimal gate (ROC-AUC at or above the configured floor); thresholds live
in `configs/gates.yaml`, per registered model name with a `default` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ray_app.config import load_yaml
from ray_app.evaluate.metrics import ROC_AUC


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def thresholds(gates_path: str | Path, model_name: str) -> dict[str, float]:
    gates = load_yaml(gates_path)
    return {**gates.get("default", {}), **gates.get(model_name, {})}


def minimal_gate(metrics: dict[str, float], limits: dict[str, float]) -> Verdict:
    floor = float(limits["min_roc_auc"])
    value = metrics[ROC_AUC]
    ok = value >= floor
    return Verdict(ok, [f"{ROC_AUC} {value:.4f} {'>=' if ok else '<'} floor {floor:.4f}"])
