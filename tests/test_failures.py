"""Failures on a real multi-node cluster: a training node lost mid-run, a router replica
killed under load.

Node loss runs in its own process with its own `ray.cluster_utils.Cluster` (a head and two
worker raylets on this machine, its own temp dir), because the test session already holds a
local Ray; `Cluster.shutdown` kills only the processes of its own nodes. This file is that
process's script too: `python tests/test_failures.py node-loss WORKDIR OUT.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import API_KEY, HAPROXY_LOG, run_own_cluster_script, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e

ROUNDS = 300
CHECKPOINT_EVERY = 10
MB = 1024 * 1024
DRIVER_TIMEOUT_S = 600
APP = "ray_app"  # the application's name in serve_config.yaml
CLIENTS = 4  # keep-alive HTTP clients under load
LOAD_BEFORE_S = 4  # of load before a Router replica is killed
LOAD_AFTER_S = 3  # of load after its replacement runs


def _registered_rounds(run_dir: Path) -> int:
    """Rounds in the latest checkpoint that Ray Train's controller has registered (the one a
    restarted worker group gets; a checkpoint on disk counts only from then), read from the
    controller's snapshot in the run folder; 0: none yet."""
    from ray_app.train import ROUNDS as ROUNDS_KEY

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or being written
        return 0
    latest = snapshot.get("latest_checkpoint_result")
    return latest["metrics"][ROUNDS_KEY] if latest else 0


def _training_workers() -> list[dict]:
    """Ray Train's worker actors so far, alive or dead, from the GCS actor table."""
    import ray

    return [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"].endswith("RayTrainWorker")
    ]


def _wait(condition, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s}s")
        time.sleep(every_s)
    return value


def node_loss(workdir: Path) -> dict:
    """Trains churn with Ray Train on a head (1 CPU) and two 2-CPU worker nodes, and removes
    the training worker's node after its first checkpoint; then the same boosting loop,
    uninterrupted, in this process. What happened, for the test to judge."""
    import ray
    import xgboost as xgb
    from ray.cluster_utils import Cluster

    from ray_app import features
    from ray_app.config import TrainConfig, load_pipeline_config
    from ray_app.data.contract import load_contract
    from ray_app.data.sources import resolve_snapshot
    from ray_app.data.split import TRAIN, VALID
    from ray_app.features import LABEL
    from ray_app.progress import Steps
    from ray_app.runtime import init_ray
    from ray_app.train import boost, train, xgb_params

    step = Steps()
    store = {"object_store_memory": 200 * MB}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **store}
    )
    nodes = {n.node_id: n for n in (cluster.add_node(num_cpus=2, **store) for _ in range(2))}
    try:
        init_ray(cluster.address, progress=False)
        step("[node-loss] cluster of 3 nodes up")
        cfg = load_pipeline_config(ROOT / "configs" / "pipeline.yaml")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"synth_rows": 10_000})})
        contract = load_contract(cfg.contract)
        snap = resolve_snapshot(cfg, contract, None, None, step)
        prepared = features.prepare(snap, contract, cfg.data.split, step)
        train_cfg = TrainConfig(  # validated: a field TrainConfig lacks is an error
            **{
                **cfg.train.model_dump(),
                "num_boost_round": ROUNDS,
                "early_stopping_rounds": None,
                "checkpoint_every": CHECKPOINT_EVERY,
                "max_failures": 1,
            }
        )
        names = prepared.features.feature_names
        splits = {k: prepared.splits[k] for k in (TRAIN, VALID)}
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = train(
                    *splits.values(), names, train_cfg, workdir / "ray_results", "run"
                )
            except BaseException as e:  # reported to the test, which fails with it
                outcome["error"] = repr(e)

        thread = threading.Thread(target=run)
        thread.start()
        run_dir = workdir / "ray_results" / "run"
        _wait(lambda: _registered_rounds(run_dir), 240, "the first checkpoint", 0.05)
        # Freeze the worker at once, so that however fast this machine trains, its node is
        # lost mid-run; then the node goes, and with it (by its pid) the frozen worker.
        [worker] = [w for w in _training_workers() if w["State"] == "ALIVE"]
        os.kill(worker["Pid"], signal.SIGSTOP)
        checkpointed = _registered_rounds(run_dir)
        lost = worker["Address"]["NodeID"]
        cluster.remove_node(nodes[lost])
        with contextlib.suppress(ProcessLookupError):  # gone with its node already
            os.kill(worker["Pid"], signal.SIGKILL)
        step(f"[node-loss] removed node {lost[:12]} after checkpoint round {checkpointed}")
        thread.join(timeout=300)
        assert not thread.is_alive(), "the interrupted run did not end in 300s"
        assert "error" not in outcome, outcome["error"]
        result = outcome["result"]
        step(f"[node-loss] resumed run done: {result.metrics}")
        frames = {k: v.to_pandas() for k, v in splits.items()}
        dtrain, dvalid = (
            xgb.DMatrix(f[names], label=f[LABEL].to_numpy(), feature_names=names)
            for f in frames.values()
        )
        params = xgb_params(train_cfg, train_cfg.cpus_per_worker)
        reference = boost(params, dtrain, dvalid, ROUNDS, None)
        return {
            "checkpointed_at_kill": checkpointed,
            "lost_node": lost,
            "worker_nodes": [w["Address"]["NodeID"] for w in _training_workers()],
            "metrics": result.metrics,
            "trees": result.booster.num_boosted_rounds(),
            "reference_auc": _auc(reference, dvalid),
            "resumed_auc": _auc(result.booster, dvalid),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def _auc(booster, dvalid) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(dvalid.get_label(), booster.predict(dvalid)))


def test_training_resumes_from_its_checkpoint_when_its_node_is_lost(tmp_path):
    from ray_app.train import MODEL_ROUNDS, RESUMED_FROM

    out = tmp_path / "node_loss.json"
    driver = run_own_cluster_script(
        __file__, ["node-loss", str(tmp_path), str(out)], tmp_path, DRIVER_TIMEOUT_S
    )
    log = driver.stdout
    assert driver.returncode == 0, log[-8000:]
    print(log)  # shown with -s: each step's seconds
    seen = json.loads(out.read_text())
    # Ray Train started a second worker, on the node that survived, and the booster went on
    # from the checkpoint taken before the kill, not from round 0, to every configured round.
    lost, workers = seen["lost_node"], seen["worker_nodes"]
    assert len(workers) == 2 and workers.count(lost) == 1, seen
    resumed, checkpointed = seen["metrics"][RESUMED_FROM], seen["checkpointed_at_kill"]
    assert CHECKPOINT_EVERY <= checkpointed <= resumed <= checkpointed + CHECKPOINT_EVERY, seen
    assert seen["trees"] == seen["metrics"][MODEL_ROUNDS] == ROUNDS, seen
    # As good as the same boosting loop uninterrupted (not identical: the row subsampling's
    # random state is not in the checkpoint).
    assert abs(seen["resumed_auc"] - seen["reference_auc"]) < 0.01, seen


def _router(client) -> dict:
    return client.get_serve_details()["applications"][APP]["deployments"]["Router"]


def _running(router: dict) -> list[dict]:
    return [r for r in router["replicas"] if r["state"] == "RUNNING"]


def _scale_router(client, replicas: int, timeout_s: float = 180) -> None:
    """The live app's Router at `replicas` replicas, through Serve's config API as
    `serve deploy` does (the rest of the config as deployed), once they all run."""
    details = client.get_serve_details()
    app = details["applications"][APP]["deployed_app_config"]
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    router["num_replicas"] = replicas
    client.deploy_applications(
        {
            "proxy_location": details["proxy_location"],
            "http_options": details["http_options"],
            "applications": [app],
        }
    )
    _wait(
        lambda: len(_running(r := _router(client))) == replicas and r["status"] == "HEALTHY",
        timeout_s,
        f"{replicas} running Router replicas",
    )


def _replaced(client, victim: dict) -> bool:
    running = {r["replica_id"] for r in _running(_router(client))}
    return len(running) == 2 and victim["replica_id"] not in running


def _client_loop(url: str, body: dict, stop: threading.Event, seen: list) -> None:
    """One keep-alive HTTP client sending predictions until `stop`: (time, outcome) each."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        while not stop.is_set():
            try:
                response = session.post(url, json=body, timeout=30)
                # a failure shows what answered: HAProxy's own page or the app's JSON error
                status = response.status_code
                outcome: int | str = 200 if status == 200 else f"{status}: {response.text[:120]}"
            except requests.RequestException as e:
                outcome = f"{type(e).__name__}: {e}"[:200]
            seen.append((time.monotonic(), outcome))


def kill_router_under_load(url: str, body: dict, client) -> tuple[list, float]:
    """`CLIENTS` keep-alive clients post `body` to `url`/predict while one of the Router's two
    replicas is killed, until Serve has replaced it and `LOAD_AFTER_S` more: each request's
    (time, outcome) and the time of the kill."""
    import ray

    seen: list[tuple[float, int | str]] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client_loop, args=(f"{url}/predict", body, stop, seen))
        for _ in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    try:
        time.sleep(LOAD_BEFORE_S)
        victim = _running(_router(client))[0]
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"))
        # Both HAProxy reloads happen under load: the replica that went, the one that came.
        _wait(lambda: _replaced(client, victim), 120, "a replacement Router replica")
        time.sleep(LOAD_AFTER_S)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    return seen, killed_at


def _wired(replica: dict) -> bool:
    """Whether a Router replica's server took serve_config.yaml's HTTP callback (its log says
    so when it starts): its answers leave with their headers (ray_app/serve/wire.py)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    name = f"replica_{APP}_Router_{replica['replica_id']}"
    loaded = "callback from import path 'ray_app.serve.wire:middlewares'"  # Serve's words
    return any(loaded in log.read_text() for log in logs.glob(f"{name}*.log"))


def test_requests_keep_succeeding_while_a_router_replica_is_killed(result, service, api, dashboard):
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from ray_app.model.logged import sample_request

    client = ServeSubmissionClient(dashboard)
    body = sample_request(result.model_name)
    _scale_router(client, 2)
    replicas = _running(_router(client))
    assert all(_wired(r) for r in replicas), replicas
    logged_from = len(HAPROXY_LOG.lines)
    try:
        seen, killed_at = kill_router_under_load(service, body, client)
        logged = HAPROXY_LOG.lines[logged_from:]
    finally:
        _scale_router(client, 1)
        wait_healthy(service, api=api, body=body)
    failed = [(round(t - killed_at, 2), o) for t, o in seen if o != 200]
    after = sum(t >= killed_at for t, _ in seen)
    assert after > 50, f"only {after} requests after the kill"
    # The goal is zero. HAProxy replays a request the dying replica had not begun to answer
    # (RAY_SERVE_HAPROXY_RETRY_ON), and a replica sends an answer's headers with its body
    # (ray_app/serve/wire.py): to cut one short it must now die between two socket writes
    # microseconds apart, where before a loop turn lay between them (2 of 7,850 were cut). Once
    # in 6,911 requests, 0.12 s after the kill, a client's connection closed with no answer:
    # tolerated at most once per client, and shown.
    unanswered = [f for f in failed if "RemoteDisconnected" in f[1]]
    other = [f for f in failed if f not in unanswered]
    shown = (
        f"{len(failed)} of {len(seen)} requests failed ({after} after the kill): {failed[:20]}; "
        f"HAProxy logged: {_haproxy_errors(logged)[:20]}"
    )
    print(shown)  # the count against the goal of zero, in a passing run too (pytest -rP)
    assert not other and len(unanswered) <= CLIENTS, shown


def _haproxy_errors(lines: list[str]) -> list[str]:
    """HAProxy's access-log lines for /predict with a status other than 200 (the server, the
    timers, the status and the termination state say what happened), and its servers going
    down or running out."""
    events = (" is DOWN", "no server available")
    return [
        line
        for line in lines
        if ("/predict" in line and _status(line) != "200") or any(e in line for e in events)
    ]


def _status(line: str) -> str | None:
    """The status of an httplog line; None (so the line is shown) where the format differs."""
    found = _HTTPLOG_STATUS.search(line)
    return found[1] if found else None


# HAProxy's httplog: the timers Tq/Tw/Tc/Tr/Ta, then the status (then the bytes sent).
_HTTPLOG_STATUS = re.compile(r" (?:-?\d+/){4}\+?-?\d+ (\d{3}) ")


if __name__ == "__main__":
    command, workdir, into = sys.argv[1:]
    assert command == "node-loss", command
    Path(into).write_text(json.dumps(node_loss(Path(workdir))))
