from pathlib import Path

from ray_app.evaluate.gate import thresholds
from ray_app.evaluate.metrics import ROC_AUC, classification_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_thresholds_come_from_config_with_per_model_override():
    gates = ROOT / "configs" / "gates.yaml"
    churn = thresholds(gates, "churn_model")
    assert churn["quality"]["min_roc_auc"] == 0.80
    assert churn["quality"]["max_logloss"] == 0.60  # the rest of default's quality stays
    assert thresholds(gates, "some_other_model")["quality"]["min_roc_auc"] == 0.75


def test_metrics_are_the_named_set():
    import numpy as np

    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert (
        m[ROC_AUC] == 0.75
        and m["accuracy"] == 0.5
        and set(m) == {"roc_auc", "f1", "precision", "recall", "accuracy", "logloss"}
    )
