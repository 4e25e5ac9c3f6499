"""No secret in a config reaches an MLflow artefact or a file: `redacted` and its users."""

from __future__ import annotations

import json

import mlflow
import pytest

from ray_app import tracking
from ray_app.config import MASK, PipelineConfig, redact_url, redacted, unredacted
from ray_app.data.store import DataStore

SECRET = "hunter2"


@pytest.fixture
def secret_config(pipeline_config) -> PipelineConfig:
    """The shipped pipeline config with a store URI and a training param that hold secrets."""
    store = f"s3://AKIA:{SECRET}@bucket/snapshots?region=eu-west-1"  # as pyarrow takes keys
    return pipeline_config.model_copy(
        update={
            "data": pipeline_config.data.model_copy(update={"store": store}),
            "train": pipeline_config.train.model_copy(
                update={"params": {"eta": 0.1, "api_token": SECRET}}
            ),
        }
    )


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:hunter2@db/mlflow", "postgresql://u:***@db/mlflow"),
        ("mysql://u:hunt@er2@db:3306/m", "mysql://u:***@db:3306/m"),
        ("https://h/x?a=1&token=hunter2#top", "https://h/x?a=1&token=***#top"),
        (
            "s3://b/p?region=eu&access_key=AK&secret_key=hunter2",
            "s3://b/p?region=eu&access_key=***&secret_key=***",
        ),
        ("https://h/x?a=1&b=%20", "https://h/x?a=1&b=%20"),  # nothing secret: untouched
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("http://[::1:hunter2", MASK),  # too broken to parse: all of it hidden
        ("plain text", "plain text"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redacted_masks_secret_keys_and_urls_at_any_depth():
    cfg = {
        "tracking": {"uri": "postgresql://u:hunter2@db/mlflow", "experiment": "ray_app"},
        "auth": {"api_key": SECRET, "Refresh_Token": SECRET, "db_password": None},
        "hosts": ["https://u:hunter2@a", "b"],
        "rounds": 200,
    }
    out = redacted(cfg)
    assert SECRET not in json.dumps(out)
    assert out["tracking"] == {"uri": "postgresql://u:***@db/mlflow", "experiment": "ray_app"}
    assert out["auth"] == {"api_key": MASK, "Refresh_Token": MASK, "db_password": None}
    assert out["hosts"] == ["https://u:***@a", "b"] and out["rounds"] == 200
    assert cfg["auth"]["api_key"] == SECRET  # a copy


def test_redacted_settings_model_has_no_secret_and_still_validates(secret_config):
    out = redacted(secret_config)
    assert SECRET not in json.dumps(out)
    assert out["train"]["params"] == {"eta": 0.1, "api_token": MASK}
    assert PipelineConfig.model_validate(out).data.store.startswith("s3://AKIA:***@bucket/")


def test_unredacted_takes_secrets_from_the_config_given_now(secret_config):
    saved = redacted(secret_config)
    saved["train"]["num_boost_round"] = 7  # what the saved run had, and keeps
    restored = PipelineConfig.model_validate(unredacted(saved, secret_config))
    assert restored.data.store == secret_config.data.store
    assert restored.train.params == secret_config.train.params
    assert restored.train.num_boost_round == 7


def test_logged_config_artefact_is_redacted(secret_config):
    tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id("ray_app")) as run:
        tracking.log_config(secret_config)
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{tracking.CONFIG_ARTIFACT}")
    assert SECRET not in text
    logged = json.loads(text)
    assert logged["train"]["params"]["api_token"] == MASK
    assert logged["data"]["store"].startswith("s3://AKIA:***@bucket/snapshots?")
    assert logged["contract"] == str(secret_config.contract)  # the rest as it was


def test_store_lineage_url_shows_no_credentials(secret_config):
    store = DataStore(secret_config.data.store)
    assert store.url("v1") == "s3://AKIA:***@bucket/snapshots/v1"
