"""One MLflow and one store for a cluster, end to end on this machine: a real `mlflow server`
(SQLite backend, artefacts proxied to an S3 bucket), the snapshot store on the same S3 API
(moto's server on loopback), and two "nodes" that share nothing local: separate processes with
their own `RAYAPP_HOME`, working directory and Ray.

Node A runs `rayapp pipeline` (its own local Ray, sized for a shared host, started the way a
node's `ray start` would be before the command runs). Node B, with no S3 credentials at all,
loads `churn_model@production` through the server and scores rows; the test scores the same
rows from the model files it finds in the bucket, so every byte B used came via the server
from S3.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psutil
import pytest
import requests
import yaml
from conftest import free_port, untimed_copy
from mlflow.tracking import MlflowClient

from ray_app import registry
from ray_app.data import synth
from ray_app.model.loaded import BOOSTER_FILE, FEATURES_FILE, from_files
from ray_app.model.schema import to_records
from ray_app.model.scoring import Scorer

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS, SNAPSHOTS = "mlflow", "snapshots"  # buckets
ARTEFACT_PREFIX, SNAPSHOT_PREFIX = "artifacts", "cluster"
EXPERIMENT, MODEL = "shared_store", "churn_model"
SERVER_START_S, PIPELINE_S, NODE_S = 180, 900, 180  # generous: a shared 2-core host
# The first test's setup runs the server and the whole pipeline (about 3 minutes on a quiet
# 2-core host; 10 at a load average of 100): more than the suite's 900 s per test allows.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(SERVER_START_S + PIPELINE_S + 2 * NODE_S)]

# A node's command, in a Ray started first as `ray start` would on a node: small object store,
# its own temp dir, never another session's cluster. argv: temp dir, then rayapp's arguments.
NODE_A = """
import sys
from ray_app.runtime import init_ray
init_ray("local", progress=False, num_cpus=2, object_store_memory=400 * 2**20,
         include_dashboard=False, _temp_dir=sys.argv[1])
from ray_app.cli import app
app(sys.argv[2:], prog_name="rayapp")
"""

# argv: model reference, rows (JSON), where to write the answer.
NODE_B = """
import json, sys
import mlflow, pandas as pd
from ray_app import tracking
from ray_app.model.logged import load
from ray_app.model.scoring import Scorer
tracking.configure()
ref, rows, out = sys.argv[1:]
records = json.loads(open(rows).read())
model = load(ref)
pyfunc = mlflow.pyfunc.load_model(f"models:/{ref}")
answer = {
    "version": model.version,
    "proba": Scorer.of(model).proba_records(records).tolist(),
    "pyfunc": pyfunc.predict(pd.DataFrame(records))["probability"].tolist(),
}
open(out, "w").write(json.dumps(answer))
"""


def _stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started in its own session and everything in its process group (the
    MLflow server's uvicorn and job runner, a node's Ray), and wait until the group is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers that ignored SIGTERM
        except ProcessLookupError:
            break
        # Orphans already killed stay in the group as zombies until init reaps them.
        assert time.monotonic() < deadline, f"process group {proc.pid} outlived {timeout_s}s"
        time.sleep(0.2)
    proc.wait(timeout=timeout_s)


def _mlflow_pod() -> dict:
    """The MLflow server's container in kuberay/mlflow.yaml."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "kuberay/mlflow.yaml").read_text())}
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _args(container: dict) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in container["command"] if "=" in a)


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("2Gi", "512Mi") in bytes."""
    number, unit = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi)?", quantity).groups()
    return int(float(number) * {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, None: 1}[unit])


def _store_uri(endpoint: str) -> str:
    host = endpoint.removeprefix("http://")
    return (
        f"s3://{SNAPSHOTS}/{SNAPSHOT_PREFIX}?endpoint_override={host}&scheme=http&region=us-east-1"
    )


NOT_INHERITED = (
    "RAY_ADDRESS",
    "RAY_DASHBOARD_ADDRESS",
    "MLFLOW_S3_ENDPOINT_URL",
    "RAYAPP_DATA_STORE",
)


def _node_env(home: Path, tracking_uri: str, **extra: str) -> dict[str, str]:
    """A node's environment: this session's, minus anything naming this session's Ray, a store,
    or an S3 endpoint for MLflow (artefacts must go through the server), plus its own home."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(RAYAPP_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri, **extra)
    return env


def _run_node(code: str, args: list[str], env: dict[str, str], cwd: Path, timeout_s: float):
    """Run a node's process to its end (its Ray shuts down with it); its group is swept."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"node did not finish in {timeout_s}s:\n{out[-6000:]}") from None
    finally:
        _stop_group(proc)  # what a node left behind: nothing, once its Ray has shut down
    return proc.returncode, out


@pytest.fixture(scope="module")
def s3():
    """moto's S3 API on loopback with the two buckets: an endpoint and a boto3 client."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in (ARTEFACTS, SNAPSHOTS):
        client.create_bucket(Bucket=bucket)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    """`mlflow server` with a SQLite backend and artefacts proxied to s3://mlflow/artifacts,
    its MLflow settings and workers as kuberay/mlflow.yaml runs it; its tracking URI, folder
    and process. Stopped with its workers (its own process group)."""
    endpoint, _ = s3
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    pod = _mlflow_pod()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(
        {e["name"]: e["value"] for e in pod["env"] if e["name"].startswith("MLFLOW_")},
        MLFLOW_S3_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{ARTEFACTS}/{ARTEFACT_PREFIX}",
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        f"--workers={_args(pod)['workers']}",
    ]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            assert proc.poll() is None, (folder / "server.log").read_text()[-4000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (
                f"mlflow server not healthy in {SERVER_START_S}s:\n"
                + (folder / "server.log").read_text()[-4000:]
            )
            time.sleep(0.5)
        yield url, folder, proc
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def node_a(s3, server, tmp_path_factory):
    """`rayapp pipeline` on node A: 5,000 built-in rows; as on a cluster, its environment names
    the MLflow server (MLFLOW_TRACKING_URI) and the snapshot store (RAYAPP_DATA_STORE), and its
    config names neither. Its home, cwd, output and store URI."""
    endpoint, _ = s3
    url, *_ = server
    folder = tmp_path_factory.mktemp("node_a")
    home, cwd = folder / "home", folder / "cwd"
    cwd.mkdir()
    base = untimed_copy(ROOT / "configs" / "pipeline.yaml", folder / "configs")
    cfg = json.loads(base.read_text())
    cfg["data"].update(synth_rows=5_000, store=None)
    cfg["train"].update(num_boost_round=60, cpus_per_worker=1)
    cfg["tracking"].update(experiment=EXPERIMENT, model_name=MODEL)
    config = folder / "cluster_pipeline.yaml"
    config.write_text(json.dumps(cfg))
    store = _store_uri(endpoint)
    ray_tmp = tempfile.mkdtemp(prefix="rss")  # short: Ray's socket paths are length-limited
    env = _node_env(home, url, RAYAPP_DATA_STORE=store, AWS_DEFAULT_REGION="us-east-1")
    started = time.monotonic()
    try:
        code, out = _run_node(
            NODE_A, [ray_tmp, "pipeline", "--config", str(config), "--yes"], env, cwd, PIPELINE_S
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"node A: pipeline took {time.monotonic() - started:.0f}s\n{out}")
    assert code == 0, out[-6000:]
    return home, cwd, out, store


@pytest.fixture(scope="module")
def client(server) -> MlflowClient:
    url, *_ = server
    return MlflowClient(tracking_uri=url, registry_uri=url)


def _keys(s3_client, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_runs_versions_and_aliases_live_in_the_server(node_a, client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    # No location chosen by the client: the server's proxied root, never a node's path.
    assert experiment.artifact_location.startswith("mlflow-artifacts:/"), experiment
    [mv] = client.search_model_versions(f"name='{MODEL}'")
    run = client.get_run(mv.run_id)
    assert run.info.experiment_id == experiment.experiment_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert run.data.metrics["test_roc_auc"] > 0.75
    for alias in (registry.STAGING, registry.PRODUCTION):
        assert client.get_model_version_by_alias(MODEL, alias).version == mv.version
    assert f"-> {MODEL} v{mv.version}: gate passed" in node_a[2]


def test_the_server_fits_its_pods_memory_limit(node_a, server):
    """After serving a whole pipeline, the server as the manifest configures it (workers, MLflow
    settings) stays under the pod's memory limit: resident memory summed over its processes,
    an upper bound on what the pod's cgroup counts."""
    *_, proc = server
    resident = {}  # pid -> bytes, for every process in the server's group
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(p.pid) == proc.pid:
                resident[p.pid] = p.memory_info().rss
    limit = _bytes(_mlflow_pod()["resources"]["limits"]["memory"])
    shown = ", ".join(f"{pid} {rss / 2**20:.0f} MB" for pid, rss in resident.items())
    assert proc.pid in resident, "the server is not running"
    assert sum(resident.values()) < limit, f"{len(resident)} processes: {shown}"


def test_model_artefacts_are_in_the_bucket_and_on_no_node(node_a, s3, server, client):
    _, s3_client = s3
    home, cwd, _, _ = node_a
    keys = _keys(s3_client, ARTEFACTS, ARTEFACT_PREFIX + "/")
    boosters = [k for k in keys if k.endswith(f"/artifacts/{BOOSTER_FILE}")]
    assert len(boosters) == 1, keys
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.endswith("gate/gate.json") for k in keys), keys  # the run's own artefacts
    # Nothing MLflow wrote is on node A or beside the server: no local artifact root, no
    # mlruns/mlartifacts, no model file outside Ray Train's own checkpoint folder.
    for folder in (home, cwd, server[1]):
        for name in ("artifacts", "mlruns", "mlartifacts"):
            assert not (folder / name).exists(), folder / name
        found = [p for p in folder.rglob("*") if p.name in ("MLmodel", FEATURES_FILE)]
        assert found == [], found


def test_the_validated_snapshot_is_in_the_snapshot_bucket(node_a, s3, client):
    _, s3_client = s3
    [mv] = client.search_model_versions(f"name='{MODEL}'")
    version, snapshot = mv.tags["dataset_version"], mv.tags["data_snapshot"]
    assert snapshot.startswith(f"s3://{SNAPSHOTS}/{SNAPSHOT_PREFIX}/{version}/"), snapshot
    keys = _keys(s3_client, SNAPSHOTS, f"{SNAPSHOT_PREFIX}/{version}/")
    assert f"{SNAPSHOT_PREFIX}/{version}/_snapshot.json" in keys, keys
    attempt = snapshot.removeprefix(f"s3://{SNAPSHOTS}/")
    assert any(k.startswith(attempt) and k.endswith(".parquet") for k in keys), keys
    assert f"{attempt}/validation.json" in keys, keys
    assert not (node_a[0] / "data").exists()  # no local snapshot folder on the node


def test_a_fresh_node_loads_production_through_the_server_and_scores_identically(
    node_a, s3, server, client, contract, tmp_path
):
    _, s3_client = s3
    url, *_ = server
    records = to_records(next(synth.generate(300, seed=11)), contract)
    rows, answer = tmp_path / "rows.json", tmp_path / "answer.json"
    rows.write_text(json.dumps(records))
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    # No S3 credentials or endpoint at all: the model can only come through the server.
    env = {
        k: v
        for k, v in _node_env(home, url).items()
        if not k.startswith("AWS_") or k == "AWS_EC2_METADATA_DISABLED"
    }
    code, out = _run_node(NODE_B, [f"{MODEL}@production", str(rows), str(answer)], env, cwd, NODE_S)
    assert code == 0, out[-6000:]
    got = json.loads(answer.read_text())
    assert got["version"] == client.get_model_version_by_alias(MODEL, "production").version

    # The same rows scored from the files in the bucket, fetched here with S3 credentials.
    [booster_key] = [
        k for k in _keys(s3_client, ARTEFACTS, ARTEFACT_PREFIX + "/") if k.endswith(BOOSTER_FILE)
    ]
    files = tmp_path / "from_s3"
    files.mkdir()
    for name in (BOOSTER_FILE, FEATURES_FILE):
        key = booster_key.rsplit("/", 1)[0] + "/" + name
        s3_client.download_file(ARTEFACTS, key, str(files / name))
    expected = Scorer.of(from_files(files, name=MODEL, version=got["version"]))
    assert got["proba"] == expected.proba_records(records).tolist()  # identical, not close
    assert got["pyfunc"] == pytest.approx(got["proba"], abs=1e-6)
    assert not (home / "artifacts").exists() and not (cwd / "mlruns").exists()


@pytest.mark.parametrize("named_by", ["option", "environment"])
def test_data_versions_lists_the_snapshot_from_another_node(node_a, client, tmp_path, named_by):
    store = node_a[3]
    [mv] = client.search_model_versions(f"name='{MODEL}'")
    env = _node_env(tmp_path / "home", "http://127.0.0.1:1", AWS_DEFAULT_REGION="us-east-1")
    command = [str(Path(sys.executable).with_name("rayapp")), "data", "versions"]
    if named_by == "option":
        command += ["--store", store]
    else:  # configs/pipeline.yaml names no store: the node's environment does
        env["RAYAPP_DATA_STORE"] = store
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=NODE_S)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert line.startswith(mv.tags["dataset_version"]) and "5,000 rows" in line, out.stdout
