"""The model layer and the registry's ownership of aliases: references as people write them,
and alias moves that stay safe when a command dies half-way or two gates race."""

from __future__ import annotations

import getpass
import json

import mlflow
import pytest
import xgboost as xgb
from mlflow.tracking import MlflowClient

from ray_app import registry, tracking
from ray_app.model.ref import ModelRef

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("churn_model@production", ModelRef("churn_model", alias="production")),
        ("churn_model@candidate", ModelRef("churn_model", alias="candidate")),
        ("churn_model/3", ModelRef("churn_model", version="3")),
        ("churn_model", ModelRef("churn_model", alias="production")),
        (f"runs:/{RUN}", ModelRef(run_id=RUN)),
        (f"runs:/{RUN}/model", ModelRef(run_id=RUN)),
        (RUN, ModelRef(run_id=RUN)),
    ],
)
def test_references_parse_as_people_write_them(text, expected):
    assert ModelRef.parse(text) == expected
    assert ModelRef.parse(str(expected)) == expected  # str() round-trips


@pytest.mark.parametrize("text", ["churn_model/latest", "@production", "churn_model@", "/3"])
def test_malformed_references_say_what_a_reference_is(text):
    with pytest.raises(ValueError, match="name@alias|version is a number"):
        ModelRef.parse(text)


@pytest.fixture()
def versions(isolated_env, request):
    """A registered model with three versions of a tiny booster (one run each)."""
    tracking.configure()
    name = f"reg_{request.node.name[:40]}"
    booster = xgb.train({}, xgb.DMatrix([[0.0], [1.0]], label=[0, 1]), 1)
    out = []
    for _ in range(3):
        with mlflow.start_run(experiment_id=tracking.experiment_id("ray_app")):
            info = mlflow.xgboost.log_model(booster, name="model")
        out.append(str(registry.register(info.model_uri, name, {}).version))
    return name, out


def test_references_resolve_against_the_registry(versions):
    name, (v1, v2, _) = versions
    registry.mark_candidate(name, v2, "test")
    assert ModelRef.parse(f"{name}@candidate").resolve() == (name, v2)
    assert ModelRef.parse(f"{name}/{v1}").resolve() == (name, v1)
    run_id = registry.model_version(name, v1).run_id
    assert ModelRef(run_id=run_id).resolve() == (name, v1)
    with pytest.raises(registry.RegistryError, match=f"{name}@production does not exist"):
        ModelRef.parse(name).resolve()


def test_only_the_gate_and_rollback_move_staging_and_production(versions):
    name, (v1, *_) = versions
    with pytest.raises(registry.RegistryError, match="moves only 'staging' and 'production'"):
        registry.promote(name, registry.CANDIDATE, v1, "test", "", None)


def test_a_promotion_judged_against_an_old_champion_is_refused(versions):
    name, (v1, v2, v3) = versions
    registry.promote(name, registry.PRODUCTION, v1, "first", "", None)
    registry.promote(name, registry.PRODUCTION, v2, "gate A", "", v1)  # A judged against v1
    with pytest.raises(registry.ConcurrentMoveError, match=f"moved to version {v2}"):
        registry.promote(name, registry.PRODUCTION, v3, "gate B", "", v1)  # so did B
    assert registry.aliased_version(name) == v2
    assert [m.reason for m in registry.alias_history(name)] == ["first", "gate A"]


def test_a_move_that_died_before_setting_the_alias_leaves_no_history(versions):
    name, (v1, v2, v3) = versions
    registry.promote(name, registry.PRODUCTION, v1, "first", "", None)
    # What a crash between the audit entry (written first) and the alias move leaves behind:
    half = registry.AliasMove("2999-01-01T00:00:00", "production", v1, v2, "died", "x")
    client = MlflowClient()
    client.set_registered_model_tag(
        name, "audit.29990101T000000.production", json.dumps(half.__dict__)
    )
    assert [m.reason for m in registry.alias_history(name)] == ["first"]  # never shown
    registry.promote(name, registry.PRODUCTION, v3, "next", "", v1)  # and removed by the next move
    assert "audit.29990101T000000.production" not in client.get_registered_model(name).tags
    assert [m.to_version for m in registry.alias_history(name)] == [v1, v3]


def test_the_audit_names_someone_in_a_container_without_a_login_name(versions, monkeypatch):
    name, (v1, *_) = versions

    def no_user() -> str:
        raise OSError("no passwd entry for uid 12345")

    monkeypatch.delenv("RAYAPP_ACTOR", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_user)
    move = registry.promote(name, registry.PRODUCTION, v1, "test", "", None)
    assert move.by.startswith("uid ")


def test_a_registry_that_cannot_be_read_is_an_error_not_no_champion(versions, monkeypatch):
    name, _ = versions
    # A tracking server that is down: nothing listens on the discard port of loopback.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracking.configure()
    try:
        with pytest.raises(Exception) as err:
            registry.aliased_version(name)
        assert not isinstance(err.value, registry.RegistryError)  # not "no such alias"
    finally:
        monkeypatch.undo()
        tracking.configure()
