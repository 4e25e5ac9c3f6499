import pytest

from ray_app.data import synth
from ray_app.data.contract import Contract, load_contract


def test_roles_come_from_the_contract(contract):
    assert contract.label_column == "churned"
    assert contract.positive_label == 1 and contract.negative_label == 0
    assert contract.id_column == "customer_id"
    assert contract.timestamp_column == "last_login"
    assert contract.sensitive_columns == ["gender"]
    assert set(contract.slice_columns) == {"plan", "region", "age"}
    # gender is sensitive, not a feature; derived sources are inputs but not features
    assert "gender" not in contract.feature_columns
    assert {"signup_date", "last_login"} <= set(contract.input_columns)
    assert contract.label_column not in contract.input_columns


def test_builtin_data_matches_its_contract(contract):
    frame = next(synth.generate(1_000, seed=1))
    assert list(frame.columns) == list(contract.columns)


def test_contract_compiles_to_gx_expectations(contract):
    kinds = {type(e).__name__ for e in contract.expectations()}
    assert kinds == {
        "ExpectColumnValuesToNotBeNull",
        "ExpectColumnValuesToBeBetween",
        "ExpectColumnValuesToBeInSet",
        "ExpectColumnValuesToMatchRegex",
        "ExpectColumnPairValuesAToBeGreaterThanB",
    }
    assert contract.unique_columns == ["customer_id"]
    tolerances = {c.key: c.max_fraction for c in contract.checks()}
    assert tolerances[("expect_column_values_to_not_be_null", "gender")] == 0.05
    between = [e for e in contract.expectations() if getattr(e, "column", None) == "monthly_charge"]
    assert any(getattr(e, "min_value", None) == 0 for e in between)


def _base() -> dict:
    return {
        "name": "t",
        "columns": {
            "x": {"type": "float", "roles": ["feature"]},
            "y": {
                "type": "category",
                "allowed": ["Yes", "No"],
                "roles": ["label"],
                "positive": "Yes",
            },
        },
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["columns"]["y"]["roles"].clear(), "exactly one column must have role `label`"),
        (lambda c: c["columns"]["y"].pop("allowed"), "needs its `allowed` values"),
        (lambda c: c["columns"]["y"].update(positive="Maybe"), "not in allowed"),
        (lambda c: c["columns"]["y"]["allowed"].append("Maybe"), "its two class values"),
        (
            lambda c: c["columns"]["y"].update(type="integer", positive=1, allowed=None),
            "its two class values",
        ),
        (lambda c: c["columns"]["x"].update(type="decimal"), "columns.x.type"),
        (  # YAML 1.1 reads an unquoted Yes/No as true/false: every row would fail its set
            lambda c: c["columns"]["y"].update(allowed=[True, False], positive=True),
            r"allowed values \[True, False\] were read by YAML as booleans",
        ),
        (  # a bound of the wrong kind, which every batch's check would fail on with a TypeError
            lambda c: c["columns"]["x"].update(min="2015-01-01"),
            "min/max of a float column must be a number, not datetime.date",
        ),
        (
            lambda c: c["columns"].update(d={"type": "date", "max": 100}),
            "min/max of a date column must be a date, not 100",
        ),
        (
            lambda c: c.update(
                derived=[{"name": "d", "op": "days_between", "start": "x", "end": "x"}]
            ),
            "must be a date column",
        ),
    ],
)
def test_invalid_contracts_name_the_problem(tmp_path, change, message):
    import yaml

    raw = _base()
    change(raw)
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message) as err:
        load_contract(path)
    assert str(path) in str(err.value)


def test_numeric_category_values_are_compared_as_text():
    raw = _base()
    raw["columns"]["s"] = {"type": "category", "allowed": [0, 1], "roles": ["sensitive"]}
    assert Contract.model_validate(raw).columns["s"].allowed == ["0", "1"]
