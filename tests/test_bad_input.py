"""Every kind of bad input gets an error naming the file, the column and the count of bad rows,
and stops before any snapshot is written."""

import numpy as np
import pandas as pd
import pytest

from ray_app.data import synth
from ray_app.data.ingest import DataError, inspect_source, read_raw
from ray_app.data.validate import validate

ROWS = 2_000


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> pd.DataFrame:
    path = synth.write(tmp_path_factory.mktemp("clean") / "clean.csv", ROWS, seed=21)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _report(ray_session, contract, frame: pd.DataFrame, path):
    frame.to_csv(path, index=False)
    source = inspect_source(path, contract)
    report = validate(read_raw(source), contract, source, batch_size=700)
    with pytest.raises(DataError) as err:
        report.raise_for_failures()
    assert str(path) in str(err.value)
    return {(f.expectation, f.column): f for f in report.failures}, str(err.value)


def _damage(frame: pd.DataFrame, column: str, every: int, value) -> tuple[pd.DataFrame, int]:
    out = frame.copy()
    rows = np.arange(len(out)) % every == 0
    out.loc[rows, column] = value
    return out, int(rows.sum())


def test_all_null_column(ray_session, contract, clean, tmp_path):
    found, message = _report(ray_session, contract, clean.assign(age=""), tmp_path / "f.csv")
    assert found[("expect_column_values_to_not_be_null", "age")].bad_rows == ROWS
    assert "'age'" in message


def test_half_the_rows_null_beyond_the_allowed_fraction(ray_session, contract, clean, tmp_path):
    frame, n = _damage(clean, "gender", 2, "")
    found, message = _report(ray_session, contract, frame, tmp_path / "f.csv")
    failure = found[("expect_column_values_to_not_be_null", "gender")]
    assert failure.bad_rows >= n and failure.allowed_rows == int(0.05 * ROWS)
    assert f"at most {failure.allowed_rows} allowed" in message


def test_a_few_nulls_within_the_allowed_fraction_pass(ray_session, contract, clean, tmp_path):
    frame, _ = _damage(clean, "gender", 50, "")
    frame.to_csv(tmp_path / "ok.csv", index=False)
    source = inspect_source(tmp_path / "ok.csv", contract)
    assert validate(read_raw(source), contract, source, 700).success


def test_negative_amounts(ray_session, contract, clean, tmp_path):
    frame, n = _damage(clean, "monthly_charge", 10, "-5.0")
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    assert found[("expect_column_values_to_be_between", "monthly_charge")].bad_rows == n


def test_future_dates_break_the_range_and_nothing_else(ray_session, contract, clean, tmp_path):
    frame, n = _damage(clean, "last_login", 25, "2099-01-01")
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    assert found[("expect_column_values_to_be_between", "last_login")].bad_rows == n


def test_cross_column_rule(ray_session, contract, clean, tmp_path):
    frame, n = _damage(clean, "last_login", 20, "2015-01-02")
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    rule = found[("expect_column_pair_values_a_to_be_greater_than_b", "last_login,signup_date")]
    assert rule.bad_rows == n


def test_duplicate_ids_across_batches(ray_session, contract, clean, tmp_path):
    frame = clean.copy()
    frame.loc[ROWS - 3 :, "customer_id"] = frame.customer_id[0]  # first and last batch share it
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    duplicate = found[("expect_column_values_to_be_unique", "customer_id")]
    assert duplicate.bad_rows == 4 and duplicate.examples == [frame.customer_id[0]]


def test_id_pattern(ray_session, contract, clean, tmp_path):
    frame, n = _damage(clean, "customer_id", 100, "")
    frame.loc[1, "customer_id"] = "customer-1"
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    assert found[("expect_column_values_to_match_regex", "customer_id")].bad_rows == 1
    assert found[("expect_column_values_to_not_be_null", "customer_id")].bad_rows == n


@pytest.mark.parametrize("value, check", [("inf", "parse_as_float"), ("NaN", "not_be_null")])
def test_nan_and_infinity_in_numerics(ray_session, contract, clean, tmp_path, value, check):
    frame, n = _damage(clean, "purchase_frequency", 40, value)
    found, _ = _report(ray_session, contract, frame, tmp_path / "f.csv")
    assert found[(f"expect_column_values_to_{check}", "purchase_frequency")].bad_rows == n


def test_ragged_rows_are_reported_as_unreadable(ray_session, contract, clean, tmp_path):
    path = tmp_path / "ragged.csv"
    clean.to_csv(path, index=False)
    with path.open("a") as f:
        f.write("only,three,fields\n")
    source = inspect_source(path, contract)
    with pytest.raises(DataError, match="could not be read as csv") as err:
        validate(read_raw(source), contract, source, 700)
    assert str(path) in str(err.value)


def test_non_utf8_bytes_after_the_header(ray_session, contract, clean, tmp_path):
    path = tmp_path / "latin1.csv"
    clean.to_csv(path, index=False)
    with path.open("ab") as f:
        f.write(",".join(["C\xe9"] * len(clean.columns)).encode("latin-1") + b"\n")
    source = inspect_source(path, contract)
    with pytest.raises(DataError) as err:
        validate(read_raw(source), contract, source, 700).raise_for_failures()
    assert str(path) in str(err.value)


def test_a_file_that_is_not_csv(contract, tmp_path):
    path = tmp_path / "picture.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataError, match="not UTF-8|missing columns"):
        inspect_source(path, contract)
