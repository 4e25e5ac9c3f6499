"""The one scoring path: raw rows (records or a frame) in, probabilities and labels out,
arrays inside. Serve answers with it, the gate judges and times it, tuning and the pipeline
score their test rows with it, and the MLflow pyfunc wraps it.

Explanations are XGBoost's own TreeSHAP (`pred_contribs`): exact Shapley values in log-odds,
one per model feature plus the base value, summing to the row's margin.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import ray.data
import xgboost as xgb

from ray_app import features
from ray_app.model.loaded import LoadedModel

LABEL, PROBA = features.LABEL, "proba"
# Below this many rows a dataset is scored in the calling process: starting Ray Data tasks
# that import xgboost costs seconds, more than scoring a few hundred thousand rows.
LOCAL_SCORING_ROWS = 500_000


@dataclass(frozen=True)
class Scorer:
    """One model version and the threshold it answers at, swapped as a unit by a replica so a
    request never mixes two versions."""

    model: LoadedModel
    threshold: float
    positive: Any
    negative: Any

    @classmethod
    def of(cls, model: LoadedModel, threshold: float | None = None) -> Scorer:
        """`threshold` None: the model version's own (the gate's choice)."""
        contract = model.contract
        chosen = model.threshold if threshold is None else float(threshold)
        return cls(model, chosen, contract.positive_label, contract.negative_label)

    def at(self, threshold: float | None) -> Scorer:
        return self if threshold is None else dataclasses.replace(self, threshold=threshold)

    def matrix(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Model input for raw rows: the one feature code."""
        return features.transform(rows, self.model.features)

    def proba(self, rows: pd.DataFrame) -> np.ndarray:
        # A bare array: XGBoost's per-call pandas checks cost more than a small prediction, and
        # the column order was checked against the booster when the model was loaded.
        return self.model.booster.inplace_predict(self.matrix(rows).to_numpy())

    def proba_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        """`proba` for request rows, through the compiled encoder: no frame is built."""
        return self.model.booster.inplace_predict(self.model.encode(records))

    def labels(self, proba: np.ndarray) -> np.ndarray:
        return np.where(proba >= self.threshold, self.positive, self.negative)

    def shap(self, matrix: pd.DataFrame) -> np.ndarray:
        """Rows × (features + 1) SHAP values in log-odds; the last column is the base value."""
        return self.model.booster.predict(xgb.DMatrix(matrix), pred_contribs=True)

    def _answer(self, proba: np.ndarray, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each row's probability and label, and its id (None when the row did not carry it)."""
        key = self.model.contract.id_column
        answers = [
            {"probability": float(p), "label": _plain(label)}
            for p, label in zip(proba, self.labels(proba), strict=True)
        ]
        if key is not None:
            for answer, record in zip(answers, records, strict=True):
                answer["id"] = record.get(key)
        return answers

    def _header(self) -> dict[str, Any]:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "threshold": self.threshold,
        }

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._header(), "predictions": self._answer(self.proba_records(records), records)}

    def explain(self, records: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
        """Each row's prediction with its `top_k` features by absolute SHAP contribution."""
        matrix = self.matrix(pd.DataFrame.from_records(records))
        contribs = self.shap(matrix)
        proba = self.model.booster.inplace_predict(matrix.to_numpy())
        names = self.model.features.feature_names
        out = []
        for row, answer, record, model_row in zip(
            contribs,
            self._answer(proba, records),
            records,
            matrix.itertuples(index=False),
            strict=True,
        ):
            top = np.argsort(-np.abs(row[:-1]), kind="stable")[:top_k]
            out.append(
                {
                    **answer,
                    "base_value": float(row[-1]),
                    "contributions": [
                        {
                            "feature": names[i],
                            "value": _plain(record.get(names[i], model_row[i])),
                            "contribution": float(row[i]),
                        }
                        for i in top
                    ],
                }
            )
        return {**self._header(), "explanations": out}


def _labels_and_scores(batch: pd.DataFrame, scorer: Scorer) -> pd.DataFrame:
    return pd.DataFrame(
        {
            LABEL: features.encode_label(batch, scorer.model.contract),
            PROBA: scorer.proba(batch),
        }
    )


def score_dataset(ds: ray.data.Dataset, model: LoadedModel) -> pd.DataFrame:
    """0/1 labels and probabilities for raw labelled rows, scored in Ray Data tasks (or here,
    for small datasets); only these two columns come back to the driver."""
    scorer = Scorer.of(model)
    if ds.count() <= LOCAL_SCORING_ROWS:
        return _labels_and_scores(ds.to_pandas(), scorer)
    return ds.map_batches(
        _labels_and_scores, fn_kwargs={"scorer": scorer}, batch_format="pandas"
    ).to_pandas()


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars unwrapped, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and np.isnan(value) else value
