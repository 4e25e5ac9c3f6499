"""Ray Train XGBoost: data-parallel workers, one checkpoint in XGBoost's own format."""

from pathlib import Path

import numpy as np
import pandas as pd
import ray.data
import xgboost as xgb

from ray_app.config import TrainConfig
from ray_app.features import LABEL
from ray_app.train import train


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + np.sin(3 * x[:, 1]) + rng.normal(0, 0.5, n) > 0).astype(np.int32)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], LABEL: y})


def test_two_workers_train_one_booster_saved_as_ubj(ray_session, tmp_path):
    cfg = TrainConfig(
        num_workers=2,
        cpus_per_worker=1,
        num_boost_round=15,
        early_stopping_rounds=None,
        params={"objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "max_depth": 3},
    )
    result = train(
        ray.data.from_pandas(_frame(4_000, 1)),
        ray.data.from_pandas(_frame(1_000, 2)),
        ["a", "b", "c"],
        cfg,
        tmp_path,
        "two-workers",
    )
    assert result.booster.num_boosted_rounds() == 15
    assert result.booster.feature_names == ["a", "b", "c"]
    assert result.metrics["valid-auc"] > 0.75 and result.metrics["rounds"] == 15
    saved = Path(result.checkpoint_path) / "model.ubj"
    assert xgb.Booster(model_file=str(saved)).num_boosted_rounds() == 15
