"""The serving code path as one object: raw records in, labelled probabilities or per-row
explanations out. The Serve replica answers with it and the gate times it, so the latency the
gate judges is the latency users get.

Explanations are XGBoost's own TreeSHAP (`pred_contribs`): exact Shapley values in log-odds,
one per model feature plus the base value, summing to the row's margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from ray_app import features, registry

THRESHOLD_TAG = "threshold"  # set on a model version by the gate: F1-best on validation
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Predictor:
    """One model version and the threshold it answers at, swapped as a unit by the replica so a
    request never mixes two versions."""

    model: registry.LoadedModel
    threshold: float
    positive: Any
    negative: Any

    @classmethod
    def of(cls, model: registry.LoadedModel, threshold: float | None = None) -> Predictor:
        """`threshold` None: the one the gate chose for this version, else 0.5."""
        if threshold is None:
            threshold = float(model.tags.get(THRESHOLD_TAG, DEFAULT_THRESHOLD))
        if model.booster.feature_names != model.features.feature_names:
            raise registry.RegistryError(
                f"{model.name} v{model.version}: the booster's features "
                f"{model.booster.feature_names} differ from features.json's "
                f"{model.features.feature_names}"
            )
        contract = model.features.parsed_contract()
        return cls(model, threshold, contract.positive_label, contract.negative_label)

    def _frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        return features.transform(pd.DataFrame.from_records(records), self.model.features)

    def _proba(self, frame: pd.DataFrame) -> np.ndarray:
        # A bare array: XGBoost's per-call pandas checks cost more than a small prediction, and
        # the column order was checked against the booster once, in `of`.
        return self.model.booster.inplace_predict(frame.to_numpy())

    def _answer(self, proba: np.ndarray) -> list[dict[str, Any]]:
        labels = np.where(proba >= self.threshold, self.positive, self.negative)
        return [
            {"probability": float(p), "label": _plain(label)}
            for p, label in zip(proba, labels, strict=True)
        ]

    def _header(self) -> dict[str, Any]:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "threshold": self.threshold,
        }

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        proba = self._proba(self._frame(records))
        return {**self._header(), "predictions": self._answer(proba)}

    def explain(self, records: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
        """Each row's prediction with its `top_k` features by absolute SHAP contribution."""
        frame = self._frame(records)
        contribs = shap_values(self.model.booster, frame)
        proba = self._proba(frame)
        names = self.model.features.feature_names
        out = []
        for row, answer, record, model_row in zip(
            contribs, self._answer(proba), records, frame.itertuples(index=False), strict=True
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


def shap_values(booster: xgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Rows × (features + 1) SHAP values in log-odds; the last column is the base value."""
    return booster.predict(xgb.DMatrix(frame), pred_contribs=True)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars unwrapped, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and np.isnan(value) else value
