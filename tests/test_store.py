"""Snapshots on an object store: a real S3 API (moto's server on loopback) through pyarrow's
S3 filesystem, the same code path as a bucket in the cloud."""

from __future__ import annotations

import pytest

from ray_app.data import sources, synth
from ray_app.data.ingest import DataError, inspect_source, read_raw
from ray_app.data.snapshot import (
    META_FILE,
    find_snapshot,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)
from ray_app.data.store import DataStore
from ray_app.data.validate import validate


@pytest.fixture(scope="module")
def s3_uri():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield (
        f"s3://snapshots/team-a?endpoint_override={host}:{port}&scheme=http"
        "&region=us-east-1&allow_bucket_creation=true"
    )
    server.stop()


@pytest.fixture(scope="module")
def store(s3_uri):
    store = DataStore(s3_uri)
    store.fs.create_dir("snapshots")
    return store


@pytest.fixture(scope="module")
def validated(ray_session, contract, churn_csv):
    source = inspect_source(churn_csv, contract)
    return source, validate(read_raw(source), contract, source, 5_000)


def test_uri_is_shown_without_its_query(store):
    assert store.uri == "s3://snapshots/team-a"
    assert not store.local


def test_snapshot_round_trip_on_s3(store, contract, validated):
    source, report = validated
    snap = write_snapshot(read_raw(source), contract, source, report, store)
    assert snap.url == f"s3://snapshots/team-a/{source.version}/{snap.attempt}"
    assert read_snapshot(snap).count() == report.rows
    assert "passed" in snap.read_text("validation.html")
    assert [s.version for s in list_snapshots(store)] == [source.version]
    assert find_snapshot(store, source.version, contract) == snap
    again = write_snapshot(read_raw(source), contract, source, report, store)
    assert again.attempt == snap.attempt  # immutable: reused, not rewritten


def test_failed_write_leaves_nothing_a_reader_trusts(store, contract, validated, monkeypatch):
    source, report = validated
    other = source.__class__(**{**source.__dict__, "version": "deadbeef00000000"})

    def broken(text, *parts):
        raise OSError("connection reset while committing")

    monkeypatch.setattr(store, "write_text", broken)
    with pytest.raises(OSError, match="connection reset"):
        write_snapshot(read_raw(source), contract, other, report, store)
    monkeypatch.undo()
    assert store.folders(other.version) == []  # the attempt's parts were removed
    assert other.version not in [s.version for s in list_snapshots(store)]
    with pytest.raises(DataError, match="no snapshot of data version 'deadbeef00000000'"):
        find_snapshot(store, other.version, contract)


def test_an_uncommitted_attempt_is_ignored_then_cleared(store, contract, validated):
    source, report = validated
    crashed = "crashed0000000000"
    store.write_text("half a part file", crashed, "attempt-old", "part-0.parquet")
    assert crashed not in [s.version for s in list_snapshots(store)]
    other = source.__class__(**{**source.__dict__, "version": crashed})
    snap = write_snapshot(read_raw(source), contract, other, report, store)
    assert sorted(store.folders(crashed)) == [snap.attempt]
    assert store.is_file(crashed, META_FILE)


def test_pipeline_ingests_into_the_configured_store(
    ray_session, pipeline_config, contract, s3_uri, tmp_path
):
    cfg = pipeline_config.model_copy(
        update={"data": pipeline_config.data.model_copy(update={"store": s3_uri})}
    )
    path = synth.write(tmp_path / "fresh.csv", 2_000, seed=31)
    snap = sources.ingest(cfg, contract, path, lambda m: None)
    assert snap.url.startswith("s3://snapshots/team-a/")
    assert read_snapshot(snap).to_pandas().customer_id.is_unique
