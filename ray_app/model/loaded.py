"""A model version in memory: its booster, features, contract, decision threshold and
lineage, built from the model's two files (XGBoost's own and the fitted features).

Nothing here imports MLflow: the processes that only score (the Ray Data tasks of batch scoring
and `score_dataset`) receive a `LoadedModel` and would otherwise import MLflow for nothing (0.8 s
per process, measured in a Ray worker). Reading a model from the
registry and logging one into a run is `model.logged`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ray_app.data.contract import Contract
from ray_app.errors import RayAppError
from ray_app.features import FeatureSet, encoder

BOOSTER_FILE, FEATURES_FILE = "model.ubj", "features.json"
DEFAULT_THRESHOLD = 0.5  # a version the gate gave no threshold (registry tag) answers at this


class ModelFilesError(RayAppError, ValueError):
    """A model's files that do not belong together."""


@dataclass(frozen=True)
class LoadedModel:
    """One model version and everything scoring it needs. `version` is None for a model not
    registered yet (a run scoring its own test rows)."""

    name: str | None
    version: str | None
    booster: xgb.Booster
    features: FeatureSet
    threshold: float = DEFAULT_THRESHOLD
    lineage: dict[str, str] = field(default_factory=dict)  # run id, dataset version, commit
    contract: Contract = field(init=False, repr=False, compare=False)
    encode: Callable[[list[dict[str, Any]]], np.ndarray] = field(
        init=False, repr=False, compare=False
    )  # request rows to the model's matrix, compiled once (`features.encoder`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "contract", self.features.parsed_contract())
        object.__setattr__(self, "encode", encoder(self.features))
        if self.booster.feature_names != self.features.feature_names:
            raise ModelFilesError(
                f"{self.name} v{self.version}: the booster's features "
                f"{self.booster.feature_names} differ from features.json's "
                f"{self.features.feature_names}"
            )


def from_files(folder: Path, **kwargs: Any) -> LoadedModel:
    """A model from its two files (a downloaded model's `artifacts/`)."""
    booster = xgb.Booster(model_file=str(folder / BOOSTER_FILE))
    features = FeatureSet.from_json((folder / FEATURES_FILE).read_text())
    return LoadedModel(booster=booster, features=features, **kwargs)
