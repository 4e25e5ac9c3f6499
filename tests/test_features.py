"""Features: fitted on train only, and identical through the batch and the online path."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray.data

from ray_app import features
from ray_app.config import SplitConfig
from ray_app.data.ingest import inspect_source, read_raw
from ray_app.data.snapshot import read_snapshot, write_snapshot
from ray_app.data.split import SPLITS, assign, split_dataset
from ray_app.data.store import DataStore
from ray_app.data.validate import validate
from ray_app.model.schema import request_models, to_records


@pytest.fixture(scope="module")
def snapshot(ray_session, contract, churn_csv, tmp_path_factory):
    source = inspect_source(churn_csv, contract)
    store = DataStore(tmp_path_factory.mktemp("store"))
    report = validate(read_raw(source), contract, source, 5_000)
    return write_snapshot(read_raw(source), contract, source, report, store)


@pytest.fixture(scope="module")
def fitted(snapshot, contract):
    splits = split_dataset(read_snapshot(snapshot), contract.id_column, SplitConfig())
    return splits, features.fit(splits["train"], contract)


def test_fit_learns_vocabularies_from_train(fitted, contract):
    _, fs = fitted
    assert fs.categorical == {
        "plan": ["basic", "premium", "standard"],
        "region": ["east", "north", "south", "west"],
    }
    assert fs.feature_names == [*fs.numeric, "plan", "region", "tenure_days"]
    assert "gender" not in fs.feature_names and contract.label_column not in fs.feature_names
    assert features.FeatureSet.from_json(fs.to_json()) == fs


@pytest.mark.parametrize("text", [object, pd.ArrowDtype(pa.string())])
def test_transform_encodes_unknowns_and_nulls_as_missing(fitted, text):
    """The same codes for Python strings (Ray Data's pandas batches) and Arrow's (`coerce`)."""
    _, fs = fitted
    rows = pd.DataFrame(
        {
            **{n: [1.0, None] for n in fs.numeric},
            "plan": pd.Series(["premium", "platinum"], dtype=text),
            "region": pd.Series([None, "west"], dtype=text),
            "signup_date": ["2024-01-01", "2024-01-01"],
            "last_login": ["2024-03-01", None],
        }
    )
    out = features.transform(rows, fs)
    assert list(out.columns) == fs.feature_names and (out.dtypes == np.float32).all()
    assert out.plan.tolist()[0] == 1.0 and np.isnan(out.plan[1])
    assert np.isnan(out.region[0]) and out.region[1] == 3.0
    assert out.tenure_days[0] == 60.0 and np.isnan(out.tenure_days[1])
    assert np.isnan(out[fs.numeric[0]][1])


def test_a_day_count_is_between_calendar_dates_in_files_and_requests(fitted):
    """A file's dates may carry a time of day; a request's are dates. 18:00 on the 1st to 09:00
    on the 3rd is two days both ways, not the 1 a difference of instants floors to."""
    _, fs = fitted
    rows = pd.DataFrame(
        {
            **{n: [1.0] for n in fs.numeric},
            "plan": ["basic"],
            "region": ["west"],
            "signup_date": pd.to_datetime(["2020-01-01 18:00"]),
            "last_login": pd.to_datetime(["2020-01-03 09:00"]),
        }
    )
    request = {**rows.iloc[0].to_dict(), "signup_date": "2020-01-01", "last_login": "2020-01-03"}
    assert features.transform(rows, fs).tenure_days[0] == 2.0
    assert fs.feature_names[-1] == "tenure_days" and features.encoder(fs)([request])[0][-1] == 2.0


def test_training_serving_parity(fitted, contract):
    """The same rows through Ray Data (training) and through the HTTP request model (serving)."""
    splits, fs = fitted
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # so the two paths' rows line up
    try:
        test = splits["test"].materialize()
        batch = features.transform_dataset(test, fs).to_pandas()
        raw = test.to_pandas()
    finally:
        context.execution_options.preserve_order = before  # the session's, for later tests

    _, request_model = request_models(contract)
    body = json.loads(json.dumps({"instances": to_records(raw, contract)}))  # over the wire
    parsed = request_model.model_validate(body)
    online = features.transform(
        pd.DataFrame.from_records([i.model_dump(by_alias=True) for i in parsed.instances]), fs
    )
    assert len(online) == len(batch) > 500
    np.testing.assert_array_equal(
        online.to_numpy(), batch[fs.feature_names].to_numpy(np.float32, na_value=np.nan)
    )
    assert set(batch[features.LABEL].unique()) == {0, 1}


def test_split_is_deterministic_disjoint_and_near_its_fractions(snapshot, contract):
    frame = read_snapshot(snapshot).to_pandas()
    first = assign(frame, contract.id_column, SplitConfig())
    shuffled = frame.sample(frac=1.0, random_state=0)
    again = pd.Series(assign(shuffled, contract.id_column, SplitConfig()), index=shuffled.index)
    assert (again.sort_index().to_numpy() == first).all()  # depends on the id, not the position
    shares = pd.Series(first).value_counts(normalize=True)
    for name, expected in zip(SPLITS, (0.7, 0.15, 0.15), strict=False):
        assert shares[name] == pytest.approx(expected, abs=0.03)


def test_feature_order_survives_the_json_round_trip():
    fs = features.FeatureSet(
        contract={}, numeric=["z"], categorical={"plan": ["a"], "contract": ["b"]}
    )
    assert features.FeatureSet.from_json(fs.to_json()).feature_names == ["z", "plan", "contract"]
