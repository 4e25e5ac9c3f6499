"""Classification metrics, named once here and used by tracking, the gate and reports."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import ray.data
import xgboost as xgb
from sklearn import metrics as skm

from ray_app.features import LABEL

ROC_AUC, F1, PRECISION, RECALL, ACCURACY, LOGLOSS = (
    "roc_auc",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "logloss",
)
PROBA = "proba"


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


@lru_cache(maxsize=2)
def _booster(model: bytes) -> xgb.Booster:
    """One deserialised booster per worker process and model."""
    return xgb.Booster(model_file=bytearray(model))


def _score_batch(batch: pd.DataFrame, model: bytes, feature_names: list[str]) -> pd.DataFrame:
    proba = _booster(model).inplace_predict(batch[feature_names])
    return pd.DataFrame({LABEL: batch[LABEL].to_numpy(), PROBA: proba})


# Below this many rows a split is scored in the calling process: starting Ray Data tasks that
# import xgboost costs seconds, more than scoring a few hundred thousand rows.
LOCAL_SCORING_ROWS = 500_000


def score(ds: ray.data.Dataset, booster: xgb.Booster, feature_names: list[str]) -> pd.DataFrame:
    """Labels and probabilities for a transformed dataset, scored in Ray Data tasks (or here,
    for small splits); only these two columns come back to the driver."""
    model = bytes(booster.save_raw("ubj"))
    if ds.count() <= LOCAL_SCORING_ROWS:
        frame = ds.select_columns([*feature_names, LABEL]).to_pandas()
        return _score_batch(frame, model, feature_names)
    return ds.map_batches(
        _score_batch,
        fn_kwargs={"model": model, "feature_names": feature_names},
        batch_format="pandas",
    ).to_pandas()
