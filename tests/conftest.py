"""Shared fixtures: one local Ray instance per session, a temporary MLflow/SQLite store and
data home, the churn contract and built-in data files."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point every store at a temporary folder before anything imports Ray or MLflow."""
    home = tmp_path_factory.mktemp("rayapp_home")
    os.environ.update(
        {
            "RAYAPP_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "RAY_AUTH_MODE": "disabled",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
            # For the local S3 server in test_store.py; Ray workers inherit these.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return home


@pytest.fixture(scope="session")
def ray_session(isolated_env: Path):
    """A fresh local Ray instance (never a cluster someone else started)."""
    import ray

    from ray_app.runtime import init_ray

    # 4 logical CPUs on 2 cores: Serve replicas (under 1 CPU) and a 2-CPU training run fit at once.
    # One logical GPU (no CUDA here): Tune's GPU trials are really scheduled on it.
    init_ray("local", progress=False, num_cpus=4, num_gpus=1, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def contract():
    from ray_app.data.contract import load_contract

    return load_contract(ROOT / "configs" / "contract.yaml")


@pytest.fixture(scope="session")
def churn_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ray_app.data import synth

    return synth.write(tmp_path_factory.mktemp("data") / "churn.csv", rows=5_000, seed=7)


def untimed_copy(config: Path, into: Path) -> Path:
    """A copy of pipeline config `config` whose gates do not judge latency (SLA of a minute).

    A test that promotes a model is not a test of speed: with the real 100 ms SLA its outcome
    would hang on how busy the host is (CI once measured p95 347 ms for a 6 ms path beside a
    live Serve app). Latency is judged in the tests that are about it, against a model slowed
    on purpose. Everything else in the gates is the real config's.
    """
    import json

    from ray_app.config import load_pipeline_config, load_yaml

    cfg = load_pipeline_config(config)
    gates = load_yaml(cfg.gates)
    gates["default"]["latency"].update(max_p95_ms=60_000, requests=20, rounds=1, warmup=2)
    into.mkdir(parents=True, exist_ok=True)
    (into / "gates.yaml").write_text(json.dumps(gates))  # JSON is YAML
    copy = cfg.model_copy(update={"gates": into / "gates.yaml"})
    (into / config.name).write_text(copy.model_dump_json())
    return into / config.name


@pytest.fixture(scope="session")
def pipeline_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/pipeline.yaml, untimed: the path, for tests that drive the CLI."""
    return untimed_copy(ROOT / "configs" / "pipeline.yaml", tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="session")
def untimed():
    """`untimed(config, folder)`: see `untimed_copy`."""
    return untimed_copy


@pytest.fixture(scope="session")
def pipeline_config(pipeline_yaml: Path):
    from ray_app.config import load_pipeline_config

    return load_pipeline_config(pipeline_yaml)


class SlowBooster:
    """A booster that takes `delay` seconds longer per prediction: the deliberately slow model."""

    def __init__(self, booster, delay: float):
        self.booster, self.delay = booster, delay

    def inplace_predict(self, data):
        time.sleep(self.delay)
        return self.booster.inplace_predict(data)

    def __getattr__(self, name):
        return getattr(self.booster, name)


@pytest.fixture(scope="session")
def slowed():
    """`slowed(model, delay)`: the same LoadedModel, `delay` seconds slower per prediction."""
    from ray_app.model.loaded import LoadedModel

    def slow(model: LoadedModel, delay: float) -> LoadedModel:
        return dataclasses.replace(model, booster=SlowBooster(model.booster, delay))

    return slow
