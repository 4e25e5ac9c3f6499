"""Ingest and validation over Ray Data batches: good data passes, bad data is named and counted."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_app.data import synth
from ray_app.data.contract import Contract
from ray_app.data.ingest import (
    DataError,
    as_frame,
    coerce,
    dataset_version,
    inspect_source,
    read_raw,
)
from ray_app.data.snapshot import META_FILE, read_snapshot, write_snapshot
from ray_app.data.store import DataStore
from ray_app.data.validate import row_reasons, validate


def _validate(path, contract, batch_size=2_000):
    source = inspect_source(path, contract)
    return source, validate(read_raw(source), contract, source, batch_size)


def test_good_data_passes_every_check(ray_session, contract, churn_csv):
    source, report = _validate(churn_csv, contract)
    assert report.success, report.failures
    assert report.rows == 5_000
    assert report.version == source.version == dataset_version(churn_csv)
    assert len(report.checked) == len(contract.expectations()) + len(contract.unique_columns)


def test_bad_rows_are_counted_per_expectation_across_batches(ray_session, contract, tmp_path):
    corruption = synth.Corruption(
        nulls={"age": 0.1}, negative_amounts=0.05, numbers_as_strings={"purchase_frequency": 0.03}
    )
    path = synth.write(tmp_path / "bad.csv", 6_000, seed=4, corruption=corruption)
    truth = pd.read_csv(path, dtype=str, keep_default_na=False)
    _, report = _validate(path, contract)
    found = {(f.expectation, f.column): f for f in report.failures}

    assert found[("expect_column_values_to_not_be_null", "age")].bad_rows == (truth.age == "").sum()
    negative = (pd.to_numeric(truth.monthly_charge) < 0).sum()
    assert found[("expect_column_values_to_be_between", "monthly_charge")].bad_rows == negative
    as_text = truth.purchase_frequency.str.endswith(" USD")
    unparsed = found[("expect_column_values_to_parse_as_float", "purchase_frequency")]
    assert unparsed.bad_rows == as_text.sum()
    assert all(e.endswith(" USD") for e in unparsed.examples)

    with pytest.raises(DataError) as err:
        report.raise_for_failures()
    message = str(err.value)
    assert str(path) in message and "'age'" in message and f"{negative} bad rows" in message


@pytest.mark.parametrize(
    "pair, failing",
    [
        (
            ("plan", "region"),
            {
                ("expect_column_values_to_be_in_set", "plan"),
                ("expect_column_values_to_be_in_set", "region"),
            },
        ),
        (("monthly_charge", "age"), {("expect_column_values_to_parse_as_integer", "age")}),
    ],
)
def test_swapped_columns_are_caught(ray_session, contract, tmp_path, pair, failing):
    swapped = synth.Corruption(swap_columns=pair)
    path = synth.write(tmp_path / "swapped.csv", 2_000, seed=2, corruption=swapped)
    _, report = _validate(path, contract)
    assert {(f.expectation, f.column) for f in report.failures} >= failing


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"customer_id;signup_date;last_login\n1;2;3\n", "delimiter"),
    ],
)
def test_unreadable_files_are_named(contract, tmp_path, content, message):
    path = tmp_path / "input.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        inspect_source(path, contract)
    assert str(path) in str(err.value)


def test_missing_and_unknown_columns_are_listed(contract, churn_csv, tmp_path):
    frame = pd.read_csv(churn_csv).drop(columns=["age"]).assign(shoe_size=42)
    path = tmp_path / "columns.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"missing columns \['age'\] and unknown columns \['shoe_size'\]"
    ):
        inspect_source(path, contract)


def test_a_parquet_folder_whose_files_disagree_on_columns_is_refused(contract, tmp_path):
    frame = next(synth.generate(100, seed=4))
    folder = tmp_path / "parts"
    (folder / "more").mkdir(parents=True)
    frame.to_parquet(folder / "a.parquet")
    frame.drop(columns=["age"]).assign(shoe_size=42).to_parquet(folder / "more" / "b.parquet")
    with pytest.raises(DataError, match=r"lacks \['age'\] and adds \['shoe_size'\]") as err:
        inspect_source(folder, contract)
    assert str(folder / "more" / "b.parquet") in str(err.value)
    frame.assign(age=frame.age.astype(str)).to_parquet(folder / "more" / "b.parquet")
    with pytest.raises(DataError, match=r"column 'age' is string there and int64 in"):
        inspect_source(folder, contract)


def test_a_table_partitioned_by_a_column_the_contract_does_not_name_is_validated(
    ray_session, contract, tmp_path
):
    """`date=...` folders lay the table out; their column is not refused as unknown, as a
    file's own column would be."""
    frame = next(synth.generate(300, seed=6))
    for day, rows in (("2024-06-01", frame[:100]), ("2024-06-02", frame[100:])):
        (tmp_path / f"date={day}").mkdir()
        rows.to_parquet(tmp_path / f"date={day}" / "part-0.parquet")
    source, report = _validate(tmp_path, contract)
    assert source.partitioned == ("date",) and source.columns[-1] == "date"
    assert report.success and report.rows == 300, report.failures
    # A file that holds the column too: which value is meant? Refused, whichever file it is.
    frame.assign(date="2024-06-03").to_parquet(tmp_path / "date=2024-06-02" / "part-0.parquet")
    with pytest.raises(
        DataError, match=r"date=2024-06-02/part-0.parquet: holds columns \['date'\]"
    ):
        inspect_source(tmp_path, contract)


def test_a_header_that_names_a_column_twice_is_refused(contract, churn_csv, tmp_path):
    lines = churn_csv.read_text().splitlines()
    path = tmp_path / "twice.csv"
    path.write_text("\n".join([lines[0] + ",age", *(line + ",30" for line in lines[1:5])]) + "\n")
    with pytest.raises(DataError, match=r"columns \['age'\] appear more than once"):
        inspect_source(path, contract)


def test_header_only_file_fails_row_count(ray_session, contract, churn_csv, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text(churn_csv.read_text().splitlines()[0] + "\n")
    _, report = _validate(path, contract)
    assert not report.success
    assert report.failures[0].expectation == "expect_table_row_count_to_be_between"


def test_parquet_input_and_immutable_snapshot(ray_session, contract, tmp_path):
    path = synth.write(tmp_path / "churn.parquet", 3_000, seed=8)
    source, report = _validate(path, contract)
    assert report.success and source.fmt == "parquet"
    store = DataStore(tmp_path / "store")
    snap = write_snapshot(read_raw(source), contract, source, report, store)
    folder = tmp_path / "store" / source.version
    assert snap.url == str(folder / snap.attempt)
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, snap.attempt]
    assert read_snapshot(snap).count() == 3_000
    assert "passed" in snap.read_text("validation.html")
    schema = pq.read_schema(next((folder / snap.attempt).glob("*.parquet")))
    assert schema.field("signup_date").type == pa.timestamp("ns")
    assert schema.field("age").type == pa.int64()
    assert schema.field("plan").type == pa.string()
    stamp = (folder / META_FILE).stat().st_mtime_ns
    again = write_snapshot(read_raw(source), contract, source, report, store)
    assert again == snap
    assert (folder / META_FILE).stat().st_mtime_ns == stamp  # reused, not rewritten


def test_version_follows_content(tmp_path):
    a = synth.write(tmp_path / "a.csv", 1_000, seed=1)
    b = synth.write(tmp_path / "b.csv", 1_000, seed=1)
    c = synth.write(tmp_path / "c.csv", 1_000, seed=2)
    assert dataset_version(a) == dataset_version(b) != dataset_version(c)


def test_a_missing_value_in_text_is_a_null_whatever_the_column_type(contract):
    """Text columns (a Parquet file of strings, a column the table lacks) hold None for a
    missing value: a null like a blank, never a value that failed to parse."""
    frame = next(synth.generate(4, seed=3)).astype(str).astype(object)
    frame.iloc[1] = None
    frame.loc[2, "age"] = "NA"
    typed, failures = coerce(frame, contract)
    assert failures == {}
    assert typed.iloc[1].isna().all() and pd.isna(typed.loc[2, "age"])
    assert typed.loc[[0, 3], "age"].notna().all()


def test_an_arrow_batch_keeps_the_digits_of_integer_columns_with_nulls():
    """Batch scoring reads Arrow batches through `as_frame`; pandas alone makes floats of an
    integer column with a null, so a category of 0/1 would read as "0.0"/"1.0" (and break its
    allowed set) and an integer id as "1001.0"."""
    contract = Contract.model_validate(
        {
            "name": "ints",
            "columns": {
                "account": {"type": "string", "nullable": False, "unique": True, "roles": ["id"]},
                "senior": {"type": "category", "nullable": True, "allowed": [0, 1]},
                "spend": {"type": "float", "nullable": False, "roles": ["feature"]},
                "churned": {
                    "type": "integer",
                    "allowed": [0, 1],
                    "roles": ["label"],
                    "positive": 1,
                },
            },
        }
    )
    table = pa.table(
        {
            "account": pa.array([1001, None, 1003], pa.int64()),
            "senior": pa.array([0, 1, None], pa.int64()),
            "spend": [1.0, 2.0, 3.0],
            "churned": pa.array([0, 1, 0], pa.int64()),
        }
    )
    typed, reasons = row_reasons(as_frame(table), contract.model_dump_json())
    assert typed["account"].tolist() == ["1001", pd.NA, "1003"]
    assert typed["senior"].tolist() == ["0", "1", pd.NA]
    assert reasons[0] == reasons[2] == "" and "account" in reasons[1]


def test_integers_float64_cannot_hold_are_refused_not_rounded(ray_session, tmp_path):
    """Integers are parsed as float64, which rounds past 2^53: 64-bit ids would be stored,
    scored and checked for uniqueness as other numbers (two neighbours as duplicates). They
    fail to parse instead, named with the limit, from text and from Parquet integers alike."""
    contract = Contract.model_validate(
        {
            "name": "big_ids",
            "columns": {
                "account": {"type": "integer", "nullable": False, "unique": True, "roles": ["id"]},
                "spend": {"type": "float", "nullable": False, "roles": ["feature"]},
                "churned": {
                    "type": "category",
                    "allowed": ["0", "1"],
                    "roles": ["label"],
                    "positive": "1",
                },
            },
        }
    )
    limit = 2**53 - 1
    ids = [limit, -limit, limit + 1, limit + 2, 2**63 - 1]
    table = pa.table({"account": ids, "spend": [1.0] * 5, "churned": ["0", "1"] * 2 + ["0"]})
    for frame in (as_frame(table), table.to_pandas().astype(str).astype(object)):
        typed, reasons = row_reasons(frame, contract.model_dump_json())
        assert typed["account"][:2].tolist() == [limit, -limit]  # exact
        assert list(reasons[:2]) == ["", ""]
        reason = "account: not a valid integer (whole, within ±9,007,199,254,740,991)"
        assert all(r.startswith(reason) for r in reasons[2:]), reasons
    pq.write_table(table, tmp_path / "big.parquet")
    source, report = _validate(tmp_path / "big.parquet", contract)
    failed = {f.expectation: f for f in report.failures}
    assert "expect_column_values_to_be_unique" not in failed  # not rounded into neighbours
    failure = failed["expect_column_values_to_parse_as_integer"]
    assert failure.bad_rows == 3 and str(limit + 2) in failure.examples
    assert "give larger identifiers type string" in str(failure)


def test_a_null_token_a_column_allows_is_a_value_and_a_numeric_marker_a_null():
    """ "NA" is North America where a column lists it among its values, not a missing value;
    a marker `null_values: [-999]` is missing in a Parquet integer column as in a CSV's text."""
    contract = Contract.model_validate(
        {
            "name": "regions",
            "columns": {
                "region": {"type": "category", "allowed": ["NA", "EU"], "roles": ["feature"]},
                "visits": {"type": "integer", "null_values": [-999], "roles": ["feature"]},
                "churned": {
                    "type": "category",
                    "allowed": ["0", "1"],
                    "roles": ["label"],
                    "positive": "1",
                },
            },
        }
    )
    table = pa.table(
        {
            "region": ["NA", "EU", "N/A"],
            "visits": pa.array([5, -999, None], pa.int64()),
            "churned": ["0", "1", "0"],
        }
    )
    for frame in (as_frame(table), as_frame(table).astype("string").astype(object)):
        typed, failures = coerce(frame, contract)
        assert typed["region"].tolist() == ["NA", "EU", pd.NA] and failures == {}
        assert typed["visits"][0] == 5 and typed["visits"][1:].isna().all()


def test_a_null_fraction_exactly_at_its_limit_passes(ray_session, contract, tmp_path):
    """29 nulls in 100 rows at `max_null_fraction: 0.29`: 0.29 * 100 is 28.999... in floats."""
    frame = next(synth.generate(100, seed=4))
    frame.loc[:28, "gender"] = None
    path = tmp_path / "nulls.parquet"
    frame.to_parquet(path)
    spec = contract.columns["gender"].model_copy(update={"max_null_fraction": 0.29})
    exact = contract.model_copy(update={"columns": {**contract.columns, "gender": spec}})
    source, report = _validate(path, exact)
    assert report.success, report.failures
    frame.loc[29, "gender"] = None
    frame.to_parquet(path)
    source, report = _validate(path, exact)
    assert [f.column for f in report.failures] == ["gender"]


def test_what_pandas_wrote_for_its_index_is_not_read_as_one(ray_session, contract, tmp_path):
    """A Parquet folder from pandas: one file with the id as its index (`set_index`), the
    others filtered frames, whose row labels are written too and repeat across files. The id
    is read as a column, pandas' index columns are not columns at all, every row is judged by
    its own values."""
    frame = next(synth.generate(3_000, seed=12)).astype(str)  # text, as from a CSV
    folder = tmp_path / "from_pandas"
    folder.mkdir()
    frame.iloc[:1_000].set_index("customer_id").to_parquet(folder / "a.parquet")
    rest = frame.iloc[1_000:].reset_index(drop=True)
    rest.loc[rest.index % 2 == 0].to_parquet(folder / "b.parquet")  # labels 0, 2, 4, ...
    odd = rest.loc[rest.index % 2 == 1].copy()
    odd.iloc[0, odd.columns.get_loc("age")] = "old"  # one row that does not parse
    odd.index = odd.index - 1  # labels 0, 2, 4, ... again
    odd.to_parquet(folder / "c.parquet")
    source, report = _validate(folder, contract, batch_size=3_000)
    assert "__index_level_0__" not in source.columns and "customer_id" in source.columns
    found = {(f.expectation, f.column): f.bad_rows for f in report.failures}
    parse, null = "expect_column_values_to_parse_as_integer", "expect_column_values_to_not_be_null"
    assert found == {(parse, "age"): 1, (null, "age"): 1}, report.failures
    assert report.rows == 3_000

    batch = read_raw(source).take_batch(3_000, batch_format="pyarrow")
    _, reasons = row_reasons(as_frame(batch), contract.model_dump_json())
    assert (reasons != "").sum() == 1 and batch.num_columns == len(frame.columns)


def test_a_batch_whose_row_labels_repeat_is_judged_row_by_row(contract):
    frame = pd.concat([next(synth.generate(2, seed=3))] * 2)  # labels 0, 1, 0, 1
    frame = frame.astype(str).astype(object)
    frame.iloc[2, frame.columns.get_loc("age")] = "old"
    _, reasons = row_reasons(frame, contract.model_dump_json())
    assert [bool(r) for r in reasons] == [False, False, True, False]


def test_nan_in_a_float_column_is_missing_as_ray_and_arrow_batches_read_it(contract):
    """Parquet from Polars, Spark or pyarrow may hold NaN for a missing amount. Ray's pandas
    batches (Arrow-backed, where NaN is not null) and `as_frame`'s (NumPy) see it alike: a
    null, never a value that failed to parse."""
    table = pa.Table.from_pandas(next(synth.generate(3, seed=5)), preserve_index=False)
    charge = table.schema.get_field_index("monthly_charge")
    table = table.set_column(charge, "monthly_charge", pa.array([1.5, float("nan"), None]))
    for frame in (table.to_pandas(types_mapper=pd.ArrowDtype), as_frame(table)):
        typed, failures = coerce(frame, contract)
        assert "monthly_charge" not in failures
        assert typed["monthly_charge"].isna().tolist() == [False, True, True]
