from pathlib import Path

from ray_app.evaluate.gate import minimal_gate, thresholds
from ray_app.evaluate.metrics import ROC_AUC, classification_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_thresholds_come_from_config_with_per_model_override():
    gates = ROOT / "configs" / "gates.yaml"
    assert thresholds(gates, "churn_model")["min_roc_auc"] == 0.80
    assert thresholds(gates, "some_other_model")["min_roc_auc"] == 0.75


def test_minimal_gate_passes_at_the_floor_and_fails_below():
    assert minimal_gate({ROC_AUC: 0.80}, {"min_roc_auc": 0.80}).passed
    verdict = minimal_gate({ROC_AUC: 0.79}, {"min_roc_auc": 0.80})
    assert not verdict.passed and "0.7900 < floor 0.8000" in verdict.reasons[0]


def test_metrics_are_the_named_set():
    import numpy as np

    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert (
        m[ROC_AUC] == 0.75
        and m["accuracy"] == 0.5
        and set(m) == {"roc_auc", "f1", "precision", "recall", "accuracy", "logloss"}
    )
