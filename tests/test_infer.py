"""`rayapp contract infer` drafts a valid contract that the data it came from passes."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_app.cli import app as cli
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
    assert validate(read_raw(source, contract), contract, source, 1_000).success


@pytest.mark.data
@pytest.mark.skipif(not TELCO.is_file(), reason=f"reference data not found at {TELCO}")
def test_draft_from_telco_passes_on_telco(ray_session, tmp_path):
    contract = _draft(TELCO, "Churn", tmp_path / "telco.yaml")
    assert contract.positive_label == "Yes" and contract.id_column == "customerID"
    total = contract.columns["TotalCharges"]
    assert total.type == "float" and total.nullable and 0 < total.max_null_fraction < 0.01
    source = inspect_source(TELCO, contract)
    assert validate(read_raw(source, contract), contract, source, 5_000).success
