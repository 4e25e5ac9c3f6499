"""`rayapp contract infer` drafts a valid contract that the data it came from passes."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ray_app.cli import app as cli
from ray_app.cli import main
from ray_app.data import synth
from ray_app.data.contract import load_contract
from ray_app.data.ingest import inspect_source, read_raw
from ray_app.data.validate import validate

TELCO = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "telco_customer_churn.csv"
)


def _draft(data: Path, label: str, out: Path):
    result = CliRunner().invoke(
        cli, ["contract", "infer", "--data", str(data), "--label", label, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return load_contract(out)


def test_draft_from_builtin_data_roles_and_types(ray_session, tmp_path):
    data = synth.write(tmp_path / "churn.parquet", 3_000, seed=5)
    contract = _draft(data, "churned", tmp_path / "contract.yaml")
    assert contract.id_column == "customer_id" and contract.label_column == "churned"
    assert contract.positive_label == "1"
    assert contract.columns["signup_date"].type == "date"
    assert contract.columns["plan"].allowed == ["basic", "premium", "standard"]
    assert contract.columns["monthly_charge"].type == "float"
    assert contract.sensitive_columns == ["gender"] and "gender" not in contract.feature_columns
    source = inspect_source(data, contract)
    assert validate(read_raw(source), contract, source, 1_000).success


def test_reference_profile_passes_same_distribution_and_catches_drift(ray_session, tmp_path):
    trusted = synth.write(tmp_path / "trusted.csv", 20_000, seed=1)
    contract = _draft(trusted, "churned", tmp_path / "contract.yaml")
    assert contract.reference is not None and "age" in contract.reference.data["numeric"]

    def check(path):
        source = inspect_source(path, contract)
        return validate(read_raw(source), contract, source, 5_000)

    fresh = synth.write(tmp_path / "fresh.csv", 20_000, seed=2)  # new rows, same process
    assert check(fresh).success, check(fresh).failures

    drift = synth.Drift(shift={"age": 8})
    drifted = synth.write(tmp_path / "drifted.csv", 20_000, seed=3, drift=drift)
    report = check(drifted)
    found = {(f.expectation, f.column) for f in report.failures}
    assert ("expect_mean_within_tolerance", "age") in found
    assert ("expect_ks_same_distribution", "age") in found
    assert all(column == "age" for _, column in found)
    assert "reference" in str(report.failures[0]) or "KS" in str(report.failures[0])


@pytest.mark.data
@pytest.mark.skipif(not TELCO.is_file(), reason=f"reference data not found at {TELCO}")
def test_draft_from_telco_passes_on_telco(ray_session, tmp_path):
    contract = _draft(TELCO, "Churn", tmp_path / "telco.yaml")
    assert contract.positive_label == "Yes" and contract.id_column == "customerID"
    total = contract.columns["TotalCharges"]
    assert total.type == "float" and total.nullable and 0 < total.max_null_fraction < 0.01
    source = inspect_source(TELCO, contract)
    assert validate(read_raw(source), contract, source, 5_000).success


def test_missing_value_markers_are_flagged_read_as_missing_and_validate(ray_session, tmp_path):
    data = synth.write(tmp_path / "marked.csv", 3_000, seed=6)
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    frame.loc[::50, "age"] = "?"  # a numeric column
    frame.loc[5::70, "plan"] = " ? "  # a categorical column, padded
    frame.to_csv(data, index=False)
    out = tmp_path / "contract.yaml"
    result = CliRunner().invoke(
        cli, ["contract", "infer", "--data", str(data), "--label", "churned", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for column, rows in (("age", 60), ("plan", 43)):
        note = f"'?' appeared in {rows} rows and was read as missing"
        assert f"column {column!r}: {note}" in result.output  # said to the user
        assert f"  # {column}: {note}" in out.read_text()  # and left in the draft
    contract = load_contract(out)
    age, plan = contract.columns["age"], contract.columns["plan"]
    assert age.type == "integer" and plan.allowed == ["basic", "premium", "standard"]
    for spec in (age, plan):
        assert spec.null_values == ["?"] and spec.nullable and 0 < spec.max_null_fraction < 0.1
    source = inspect_source(data, contract)
    report = validate(read_raw(source), contract, source, 1_000)
    assert report.success, report.failures


def test_identifiers_in_digits_are_drafted_as_text(tmp_path):
    """A numeric column named like an id with every value distinct would be drafted as an
    integer feature, which a model learns from; one past 2^53 would be parsed as rounded
    floats. Both are drafted as text: the first becomes the id, the second another column."""
    data = synth.write(tmp_path / "churn.parquet", 500, seed=5)
    frame = pd.read_parquet(data).drop(columns="customer_id")
    frame.insert(0, "customerID", range(1001, 1501))
    frame["ref"] = [2**60 + i % 40 for i in range(500)]  # repeats: not unique
    frame["age_id"] = frame["age"]  # named like an id but not distinct: a number still
    frame["order_id"] = range(9001, 9501)  # a second identifier: no feature either
    frame["mass"] = [1.5e20 * (1 + i % 7) / 3 for i in range(500)]  # large, but a measurement
    frame.to_parquet(data)
    contract = _draft(data, "churned", tmp_path / "contract.yaml")
    assert contract.id_column == "customerID"
    assert contract.columns["customerID"].type == "string"
    assert contract.columns["ref"].type == "string"
    assert contract.columns["age_id"].type == "integer"
    assert contract.columns["mass"].type == "float" and "mass" in contract.feature_columns
    order = contract.columns["order_id"]
    assert order.type == "string" and order.roles == [] and order.unique


def test_an_empty_table_is_refused_and_an_empty_column_drafted_as_optional_text(tmp_path, capsys):
    header_only = tmp_path / "empty.csv"
    header_only.write_text("id,churned\n")
    with pytest.raises(SystemExit) as exited:  # through the entry point, as `rayapp` runs
        main(["contract", "infer", "--data", str(header_only), "--label", "churned"])
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert said == f"error: {header_only}: no data rows, only a header, to draft a contract from\n"
    data = synth.write(tmp_path / "churn.csv", 500, seed=5)
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    frame["notes"] = " "  # a column nobody filled in
    frame.to_csv(data, index=False)
    contract = _draft(data, "churned", tmp_path / "contract.yaml")  # loads: a valid draft
    notes = contract.columns["notes"]
    assert notes.type == "string" and notes.nullable and notes.max_null_fraction == 1.0
