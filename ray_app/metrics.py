"""Metric and split names, defined once, and the classification metrics every stage reports.

Training, tuning, the gate, tracking and reports all name metrics through these constants;
XGBoost's own evaluation keys (`valid-logloss`) are built by `eval_key`, never parsed.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from ray_app.data.split import TEST

ROC_AUC, PR_AUC, F1, PRECISION, RECALL, ACCURACY, LOGLOSS = (
    "roc_auc",
    "pr_auc",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "logloss",
)
AT_THRESHOLD = (ROC_AUC, F1, PRECISION, RECALL, ACCURACY, LOGLOSS)  # classification_metrics
ALL = (*AT_THRESHOLD, PR_AUC)  # the gate's test metrics (full_metrics)
LOWER_IS_BETTER = frozenset({LOGLOSS})


def eval_key(split: str, metric: str) -> str:
    """XGBoost's name for an evaluation metric on a split: `valid-logloss`."""
    return f"{split}-{metric}"


def test_key(metric: str) -> str:
    """How a test-split metric is logged to MLflow: `test_roc_auc`."""
    return f"{TEST}_{metric}"


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    if len(np.unique(y_true)) < 2:
        raise ValueError("metrics need both classes in the evaluation data")
    y_pred = (proba >= threshold).astype(int)
    return {
        ROC_AUC: float(skm.roc_auc_score(y_true, proba)),
        F1: float(skm.f1_score(y_true, y_pred, zero_division=0)),
        PRECISION: float(skm.precision_score(y_true, y_pred, zero_division=0)),
        RECALL: float(skm.recall_score(y_true, y_pred, zero_division=0)),
        ACCURACY: float(skm.accuracy_score(y_true, y_pred)),
        LOGLOSS: float(skm.log_loss(y_true, proba, labels=[0, 1])),
    }
