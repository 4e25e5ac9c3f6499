"""Shared fixtures: one local Ray instance per session, a temporary MLflow/SQLite store and
data home, the churn contract and built-in data files."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123456789abcdef"  # the service's key in tests (RAYAPP_API_KEYS)
OTHER_KEY = "other-key-0123456789abcdef"


def run_own_cluster_script(
    script: str, args: list[str], workdir: Path, timeout_s: float
) -> subprocess.CompletedProcess:
    """`python script *args` in its own process (the session already holds a local Ray), for a
    test that starts its own `ray.cluster_utils.Cluster`: with its own Ray temp folder, state
    under `workdir`, and its own process session, so that on a timeout the driver and every
    process of its cluster go at once. Returns the process with its output."""
    ray_tmp = tempfile.mkdtemp(prefix="rc")  # short: Ray's socket paths are limited
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "RAY_TMPDIR": ray_tmp,
        "RAYAPP_HOME": str(workdir / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    try:
        with subprocess.Popen(
            [sys.executable, script, *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as driver:
            try:
                log, _ = driver.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                log, _ = driver.communicate()
                pytest.fail(f"{Path(script).name} took over {timeout_s}s:\n{log[-5000:]}")
        return subprocess.CompletedProcess(driver.args, driver.returncode, log)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DASHBOARD_PORT = free_port()


class SyslogSink:
    """A UDP syslog receiver on loopback for HAProxy's access log, which Ray sends to
    127.0.0.1:514 by default (RAY_SERVE_HAPROXY_LOG_TARGET), where nothing listens here: each
    line says how HAProxy ended a request (status, timings, termination state)."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self.lines: list[str] = []
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            self.lines.append(self.socket.recv(65_536).decode(errors="replace").strip())


HAPROXY_LOG = SyslogSink()


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point every store at a temporary folder before anything imports Ray or MLflow."""
    home = tmp_path_factory.mktemp("rayapp_home")
    haproxy = tempfile.mkdtemp(prefix="hap")  # short: HAProxy's socket path is at most 97
    # Serve's per-replica ingress ports, this session's own: by default every Serve instance
    # on the machine counts from 30000 (HTTP) and 40000 (gRPC), and another session's router
    # could answer this one's requests. Outside both default ranges.
    ingress = random.randrange(21_000, 29_000, 50)
    for name in ("RAYAPP_DATA_STORE", "MLFLOW_S3_ENDPOINT_URL"):  # never a developer's real store
        os.environ.pop(name, None)
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
            # Serve replicas started by this session inherit the keys.
            "RAYAPP_API_KEYS": f"tester:{API_KEY},other:{OTHER_KEY}",
            # Serve's HAProxy ingress, as `make run` and the RayService run it, with its
            # ports and files this session's own (a `make run` cluster may be up beside it).
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # As `make run` and the RayService: a request in flight on a Router replica that
            # dies is replayed on another (HAProxy L7 retry); scoring has no side effects.
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
            "RAY_SERVE_HAPROXY_LOG_TARGET": HAPROXY_LOG.target,
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{haproxy}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{haproxy}/admin.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": haproxy,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{haproxy}/server-state",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(ingress),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(ingress + 50),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(ingress + 20_000),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(ingress + 20_050),
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
    # The dashboard carries Serve's config API, which `serve deploy` and `rayapp deploy` use.
    os.environ["RAY_DASHBOARD_ADDRESS"] = f"http://127.0.0.1:{DASHBOARD_PORT}"
    init_ray(
        "local",
        progress=False,
        num_cpus=4,
        num_gpus=1,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=DASHBOARD_PORT,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dashboard(ray_session) -> str:
    return os.environ["RAY_DASHBOARD_ADDRESS"]


@pytest.fixture(scope="session")
def result(ray_session, pipeline_config):
    """The pipeline on 20k rows of built-in data: churn_model, gated and in production."""
    from ray_app import pipeline

    return pipeline.run(pipeline_config)


@pytest.fixture(scope="session")
def gates_without_margin(pipeline_config):
    """The shipped gates with the champion margin at 0: a second version trained on the same
    data passes, for tests that need one beside production (the shipped margin refuses it)."""
    from ray_app.evaluate.gate import Gates, load_gates

    gates = load_gates(pipeline_config.gates)
    entries = {
        name: limits.model_copy(
            update={"champion": limits.champion.model_copy(update={"min_improvement": 0.0})}
        )
        for name, limits in gates.entries.items()
    }
    return Gates(gates.path, entries)


@pytest.fixture(scope="session")
def api():
    """An HTTP client that sends the service's API key."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    yield session
    session.close()


def wait_healthy(url: str, timeout_s: float = 120, api=None, body: dict | None = None) -> None:
    """Until `url/healthz` answers 200 and, with `api` and `body`, `POST url/predict` is routed
    to the app (not a 404): Serve's proxy learns a new application's route a moment after
    `serve.run` returns, and not on every connection at once."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200 and (
                api is None or api.post(f"{url}/predict", json=body, timeout=10).status_code != 404
            ):
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} not serving after {timeout_s}s"
        time.sleep(0.5)


def kill_replicas(deployment: str) -> list[str]:
    """Kill every replica of a Serve deployment (Serve starts new ones); their actor names."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    replicas = [a for a in named if f"#{deployment}#" in a["name"] and "REPLICA" in a["name"]]
    for actor in replicas:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
    assert replicas, [a["name"] for a in named]
    return [a["name"] for a in replicas]


@pytest.fixture(scope="session")
def service(result, dashboard):
    """serve_config.yaml deployed as `serve deploy` does (Serve's config API), on a free port,
    with small request limits, one router replica and a 1 s alias poll."""
    import yaml
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    [app] = config["applications"]
    app["args"].update(models=[result.model_name], max_instances=50, max_body_bytes=65_536)
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    router.pop("autoscaling_config")
    router.update(num_replicas=1)
    router["user_config"]["poll_s"] = 1
    client = ServeSubmissionClient(dashboard)
    client.deploy_applications(config)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url
    client.delete_applications()
    serve.shutdown()


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
