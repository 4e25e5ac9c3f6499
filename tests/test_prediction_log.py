"""The prediction log over real HTTP: what each row records, Ray Data reading it, a killed
router losing at most the flush interval, and a graceful shutdown writing the rest."""

import time
import uuid

import pytest
import ray.data
import requests
from conftest import kill_replicas, wait_healthy
from ray.data.datasource import Partitioning

from ray_app.data.store import open_store
from ray_app.model.logged import sample_request
from ray_app.monitor.predictions import FOLDER, read

pytestmark = pytest.mark.e2e


def _logged(model: str, request_ids: set[str], timeout_s: float = 20) -> dict[str, list[dict]]:
    """The log's rows of these requests, once every one of them is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read(open_store(None), model).to_pylist()
        found: dict[str, list[dict]] = {}
        for row in rows:
            if row["_request_id"] in request_ids:
                found.setdefault(row["_request_id"], []).append(row)
        if set(found) == request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_each_answered_row_is_logged_with_its_ids_sensitive_columns_and_answer(
    result, service, api
):
    name = result.model_name
    good = sample_request(name)["instances"][0]
    rows = [
        {**good, "customer_id": "C000000001", "gender": "female"},
        {**good, "customer_id": "C000000002"},
    ]
    rid = f"log-{uuid.uuid4().hex}"
    answer = api.post(
        f"{service}/predict", json={"instances": rows}, headers={"X-Request-ID": rid}, timeout=30
    ).json()
    logged = sorted(_logged(name, {rid})[rid], key=lambda r: r["_row"])
    assert [r["customer_id"] for r in logged] == ["C000000001", "C000000002"]
    assert [r["gender"] for r in logged] == ["female", None]
    assert [r["_probability"] for r in logged] == [p["probability"] for p in answer["predictions"]]
    assert [r["_label"] for r in logged] == [str(p["label"]) for p in answer["predictions"]]
    first = logged[0]
    assert first["_variant"] == answer["variant"]
    assert first["_model_version"] == f"{name}/{answer['model_version']}"
    assert first["plan"] == good["plan"] and first["age"] == good["age"]
    assert first["_latency_ms"] > 0 and first["_time"].tzinfo is not None
    # Ray Data reads it as a hive-partitioned dataset: model, date and hour are columns.
    ds = ray.data.read_parquet(open_store(None).path(FOLDER), partitioning=Partitioning("hive"))
    mine = ds.filter(lambda r: r["_request_id"] == rid).take_all()
    assert len(mine) == 2 and {r["model"] for r in mine} == {name}
    assert {"date", "hour"} <= set(mine[0])


def test_a_killed_router_loses_at_most_the_flush_interval(result, service, api):
    name, body = result.model_name, sample_request(result.model_name)
    before = {f"kill-{uuid.uuid4().hex}" for _ in range(10)}
    for rid in before:
        assert (
            api.post(
                f"{service}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30
            ).status_code
            == 200
        )
    time.sleep(2.5)  # more than flush_s (1 s): these are on disk before the kill
    kill_replicas("Router")
    wait_healthy(service, api=api, body=body)
    assert set(_logged(name, before, timeout_s=5)) == before
    after = f"after-{uuid.uuid4().hex}"
    # A new connection: HAProxy reloads when replicas change and closes the connections it
    # held, once for the replica that went and again for the one that came.
    headers = {"X-Request-ID": after, "Authorization": api.headers["Authorization"]}
    for attempt in range(3):
        try:
            answer = requests.post(f"{service}/predict", json=body, headers=headers, timeout=30)
            break
        except requests.ConnectionError:
            if attempt == 2:
                raise
            time.sleep(1)
    assert answer.status_code == 200, answer.text
    assert set(_logged(name, {after})) == {after}  # the new replica logs too


def test_a_graceful_shutdown_writes_what_is_buffered(result, service, api):
    from ray import serve

    from ray_app.serve.app import app_builder

    name, body = result.model_name, sample_request(result.model_name)
    args = {"models": [name], "prediction_log": {"flush_s": 3600}}  # only shutdown flushes
    serve.run(app_builder(args), name="flushed", route_prefix="/flushed")
    try:
        wait_healthy(f"{service}/flushed", api=api, body=body)
        sent = {f"bye-{uuid.uuid4().hex}" for _ in range(5)}
        for rid in sent:
            api.post(f"{service}/flushed/predict", json=body, headers={"X-Request-ID": rid})
        assert _logged(name, sent, timeout_s=2) == {}  # not written yet
    finally:
        serve.delete("flushed")
    assert set(_logged(name, sent, timeout_s=10)) == sent
