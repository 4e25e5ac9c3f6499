from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ray_app.cli import app as cli
from ray_app.config import ConfigError, load_yaml
from ray_app.evaluate.gate import load_gates
from ray_app.metrics import ROC_AUC, classification_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_thresholds_come_from_config_with_per_model_override():
    gates = ROOT / "configs" / "gates.yaml"
    churn = load_gates(gates).for_model("churn_model")
    assert churn.quality["min_roc_auc"] == 0.80
    assert churn.quality["max_logloss"] == 0.60  # the rest of default's quality stays
    assert load_gates(gates).for_model("some_other_model").quality["min_roc_auc"] == 0.75


def test_metrics_are_the_named_set():
    import numpy as np

    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert (
        m[ROC_AUC] == 0.75
        and m["accuracy"] == 0.5
        and set(m) == {"roc_auc", "f1", "precision", "recall", "accuracy", "logloss"}
    )


def _gates_with(tmp_path: Path, change) -> Path:
    raw = load_yaml(ROOT / "configs" / "gates.yaml")
    change(raw)
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda g: g["default"]["quality"].update(min_roc_aux=0.8),
            "entry 'default': quality: Value error, 'min_roc_aux' is not min_<metric>",
        ),
        (
            lambda g: g["default"].update(latncy=g["default"].pop("latency")),
            "entry 'default': latency: Field required; latncy: Extra inputs are not permitted",
        ),
        (
            lambda g: g["default"]["latency"].update(requests=0),
            "latency.requests: Input should be greater than 0",
        ),
        (
            lambda g: g["default"]["fairness"].update(min_demographic_parity_ratio=1.25),
            "fairness.min_demographic_parity_ratio: Input should be less than or equal to 1",
        ),
        (  # another model's entry: found now, not on the day that model is gated
            lambda g: g["telco_churn"]["fairness"]["columns"].update(SeniorCitizen=["parity"]),
            "entry 'telco_churn': fairness.columns.SeniorCitizen.0: Input should be "
            "'demographic_parity' or 'equalized_odds'",
        ),
        (
            lambda g: g["churn_model"].update(promotion="prod"),
            "entry 'churn_model': promotion: Input should be 'staging' or 'production'",
        ),
    ],
)
def test_bad_gate_configs_name_the_file_entry_and_field(tmp_path, change, message):
    path = _gates_with(tmp_path, change)
    with pytest.raises(ConfigError) as err:
        load_gates(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_a_plain_list_of_fairness_columns_judges_both_criteria(tmp_path):
    path = _gates_with(tmp_path, lambda g: g["default"]["fairness"].update(columns=["gender"]))
    assert load_gates(path).for_model("churn_model").fairness.columns == {
        "gender": ["demographic_parity", "equalized_odds"]
    }


@pytest.mark.parametrize(
    "entry, key, message",
    [
        ("fairness", {"columns": {"sex": ["equalized_odds"]}}, "fairness.columns names ['sex']"),
        ("slices", {"bins": {"tenure": [0, 12]}}, "slices.bins names ['tenure'], not slice"),
    ],
)
def test_gate_columns_the_contract_lacks_are_refused_before_training(
    tmp_path, contract, entry, key, message
):
    path = _gates_with(tmp_path, lambda g: g["churn_model"].setdefault(entry, {}).update(key))
    with pytest.raises(ConfigError) as err:
        load_gates(path).for_contract("churn_model", contract)
    assert str(err.value).startswith(f"{path}: entry 'churn_model': {message}"), err.value
    load_gates(path).for_contract("another_model", contract)  # `default` names neither


@pytest.mark.parametrize("command", ["pipeline", "gate --run 0123", "tune"])
def test_cli_refuses_a_bad_gates_file_before_any_work(tmp_path, command):
    gates = _gates_with(tmp_path, lambda g: g["default"]["calibration"].update(max_ece=2))
    config = tmp_path / "pipeline.yaml"
    raw = load_yaml(ROOT / "configs" / "pipeline.yaml")
    config.write_text(
        yaml.safe_dump({**raw, "contract": str(ROOT / raw["contract"]), "gates": str(gates)})
    )
    out = CliRunner().invoke(cli, [*command.split(), "--config", str(config)])
    assert out.exit_code == 2, out.output
    said = "".join(out.output.replace("│", "").split())  # unwrap click's error box
    expected = f"Invalid value for '--config': {gates}: entry 'default': calibration.max_ece: "
    assert "".join(expected.split()) in said and "Inputshouldbelessthanorequalto1" in said
