import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from ray_app.data import synth


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = synth.write(tmp_path / "a.csv", 3_000, seed=1)
    b = synth.write(tmp_path / "b.csv", 3_000, seed=1)
    c = synth.write(tmp_path / "c.csv", 3_000, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)


def test_chunks_join_seamlessly_in_csv_and_parquet(tmp_path):
    rows = synth.CHUNK_ROWS + 1_234
    frame = pd.read_csv(synth.write(tmp_path / "big.csv", rows, seed=3))
    assert len(frame) == rows and frame.customer_id.is_unique
    table = pq.read_table(synth.write(tmp_path / "big.parquet", rows, seed=3))
    assert table.num_rows == rows
    assert table.column("customer_id").to_pylist() == frame.customer_id.tolist()


def test_a_model_learns_the_label_but_not_perfectly():
    df = pd.concat(synth.generate(40_000, seed=11))
    x = pd.DataFrame(
        {
            "charge": df.monthly_charge,
            "purchases": df.total_purchases,
            "dsl": df.days_since_last_login,
            "freq": df.purchase_frequency,
            "tickets": df.support_tickets,
            "age": df.age,
            "tenure": (df.last_login - df.signup_date).dt.days,
            "basic": (df.plan == "basic").astype(int),
            "south": (df.region == "south").astype(int),
        }
    )
    train, test = slice(0, 30_000), slice(30_000, None)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2},
        xgb.DMatrix(x[train], label=df.churned[train]),
        150,
    )
    auc = roc_auc_score(df.churned[test], booster.predict(xgb.DMatrix(x[test])))
    assert 0.80 <= auc <= 0.95
    assert 0.2 < df.churned.mean() < 0.3


def test_drift_knobs_shift_features_and_class_balance():
    base = next(synth.generate(20_000, seed=5))
    drifted = next(
        synth.generate(20_000, seed=5, drift=synth.Drift(shift={"age": 10}, churn_rate=0.5))
    )
    assert drifted.age.mean() == pytest.approx(base.age.mean() + 10)
    assert base.churned.mean() < 0.3 < 0.45 < drifted.churned.mean()
    with pytest.raises(ValueError, match="unknown numeric column"):
        next(synth.generate(1_000, drift=synth.Drift(shift={"plan": 1})))


def test_corruption_knobs_damage_what_they_say(tmp_path):
    corruption = synth.Corruption(
        nulls={"age": 0.1},
        negative_amounts=0.05,
        future_dates=0.02,
        numbers_as_strings={"purchase_frequency": 0.05},
        swap_columns=("region", "plan"),
    )
    frame = pd.read_csv(synth.write(tmp_path / "bad.csv", 10_000, seed=9, corruption=corruption))
    assert 0.07 < frame.age.isna().mean() < 0.13
    assert 0.03 < (pd.to_numeric(frame.monthly_charge) < 0).mean() < 0.07
    assert (pd.to_datetime(frame.last_login) > synth.REFERENCE_DATE).sum() > 100
    assert frame.purchase_frequency.astype(str).str.endswith(" USD").sum() > 300
    assert set(frame.plan.unique()) == set(synth.REGIONS)  # the two columns traded places
    assert np.isin(frame.region.unique(), synth.PLANS).all()


def test_corruptions_of_the_same_column_combine(tmp_path):
    corruption = synth.Corruption(nulls={"monthly_charge": 0.1}, negative_amounts=0.1)
    frame = pd.read_csv(synth.write(tmp_path / "bad.csv", 10_000, seed=9, corruption=corruption))
    assert 0.07 < frame.monthly_charge.isna().mean() < 0.13
    assert 0.06 < (frame.monthly_charge < 0).mean() < 0.12  # of the 90% still there
