"""The full pipeline on a real public table: IBM's Telco customer churn (../shared/data)."""

from pathlib import Path

import pytest

from ray_app import pipeline
from ray_app.config import load_pipeline_config

ROOT = Path(__file__).resolve().parent.parent
TELCO = ROOT.parent / "shared" / "data" / "telco_customer_churn.csv"

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(not TELCO.is_file(), reason=f"reference data not found at {TELCO}"),
]


def test_telco_end_to_end(ray_session):
    cfg = load_pipeline_config(ROOT / "configs" / "telco_pipeline.yaml")
    assert cfg.data.path == TELCO
    result = pipeline.run(cfg)
    assert result.rows == 7_043
    assert result.promoted, result.gate_reasons
    assert 0.80 <= result.metrics["roc_auc"] < 0.95
