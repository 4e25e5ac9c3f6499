"""The prediction log when a write fails, on a real local store: rows the store refused are
written by the next flush, a request Arrow cannot convert is dropped and counted alone, and
the health error names the log that is failing until it writes again."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from ray_app.data import synth
from ray_app.data.contract import load_contract
from ray_app.data.store import DataStore
from ray_app.monitor.predictions import (
    FOLDER,
    Answered,
    Flusher,
    PredictionLog,
    read,
    schema,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def contract():
    return load_contract(ROOT / "configs/contract.yaml")


@pytest.fixture(scope="module")
def rows(contract) -> list[dict]:
    frame = next(synth.generate(6, seed=9))
    sent = [*contract.input_columns, *contract.passthrough_columns]
    frame["signup_date"] = frame["signup_date"].dt.date
    frame["last_login"] = frame["last_login"].dt.date
    return frame[sent].to_dict("records")


def _answered(request_id: str, row: dict) -> Answered:
    return Answered(time.time(), request_id, "primary", "m/1", [row], [0.25], [0], 1.0)


def _logged(store: DataStore, model: str) -> list[str]:
    return sorted(read(store, model, columns=["_request_id"])["_request_id"].to_pylist())


def test_rows_the_store_refused_are_written_by_the_next_flush(contract, rows, tmp_path):
    store = DataStore(str(tmp_path))
    log = PredictionLog(store, "m", contract, max_rows=100, flush_s=60)
    for i, row in enumerate(rows[:3]):
        assert log.add(_answered(f"r{i}", row))
    # The store fails: a file where the log's folder must go (a real OSError from the disk).
    (tmp_path / FOLDER).write_text("not a folder")
    with pytest.raises(OSError):
        log.flush()
    assert log.pending_rows == 3 and log.dropped_rows == 0 and log.error
    assert log.add(_answered("r3", rows[3]))  # requests go on being queued meanwhile
    (tmp_path / FOLDER).unlink()
    assert log.flush() == 4
    assert _logged(store, "m") == ["r0", "r1", "r2", "r3"]
    assert log.error is None and log.pending_rows == 0 and log.written_rows == 4


def test_what_does_not_fit_back_in_the_buffer_is_counted_as_dropped(contract, rows, tmp_path):
    store = DataStore(str(tmp_path))
    log = PredictionLog(store, "m", contract, max_rows=3, flush_s=60)
    for i, row in enumerate(rows[:3]):
        assert log.add(_answered(f"r{i}", row))
    (tmp_path / FOLDER).write_text("not a folder")
    with pytest.raises(OSError):
        log.flush()
    # The outage went on and the buffer filled: the requeued rows keep their places first.
    assert not log.add(_answered("late", rows[3]))
    assert (log.pending_rows, log.dropped_rows) == (3, 1)
    (tmp_path / FOLDER).unlink()
    assert log.flush() == 3 and _logged(store, "m") == ["r0", "r1", "r2"]


def test_a_request_arrow_cannot_convert_is_dropped_alone(contract, rows, tmp_path):
    store = DataStore(str(tmp_path))
    log = PredictionLog(store, "m", contract, max_rows=100, flush_s=60)
    assert log.add(_answered("good-1", rows[0]))
    assert log.add(_answered("huge", {**rows[1], "total_purchases": 2**64}))  # past int64
    assert log.add(_answered("good-2", rows[2]))
    assert log.flush() == 2
    assert _logged(store, "m") == ["good-1", "good-2"]
    assert log.dropped_rows == 1 and log.error is None


def test_the_health_error_names_each_failing_log_until_it_writes(contract, rows, tmp_path):
    ok = PredictionLog(DataStore(str(tmp_path / "a")), "fine", contract, 100, 60)
    broken_root = tmp_path / "b"
    broken_root.mkdir()
    broken = PredictionLog(DataStore(str(broken_root)), "broken", contract, 100, 60)
    (broken_root / FOLDER).write_text("not a folder")
    flusher = Flusher([broken, ok], flush_s=3600)
    try:
        broken.add(_answered("b", rows[0]))
        ok.add(_answered("a", rows[1]))
        flusher.flush()  # the second log's success does not hide the first one's failure
        assert flusher.error and flusher.error.startswith("broken: ")
        assert "fine: " not in flusher.error and ok.written_rows == 1
        (broken_root / FOLDER).unlink()
        flusher.flush()
        assert flusher.error is None and broken.written_rows == 1
    finally:
        flusher.stop()


def test_a_column_a_newer_contract_added_reads_as_null_in_older_files(contract, rows, tmp_path):
    """The drift monitor reads the served version's columns through its contract's log
    schema; the log's oldest file would otherwise fix the columns, and asking for a newer
    one fails."""
    store = DataStore(str(tmp_path))
    fields = contract.model_dump()
    older = type(contract).model_validate(
        {**fields, "columns": {k: v for k, v in fields["columns"].items() if k != "gender"}}
    )
    first = PredictionLog(store, "m", older, max_rows=100, flush_s=60)
    first.add(_answered("old", {k: v for k, v in rows[0].items() if k != "gender"}))
    first.flush()
    time.sleep(0.01)  # a later file name
    second = PredictionLog(store, "m", contract, max_rows=100, flush_s=60)
    second.add(_answered("new", {**rows[1], "gender": "female"}))
    second.flush()
    with pytest.raises(pa.ArrowInvalid):
        read(store, "m", columns=["_request_id", "gender"])
    table = read(store, "m", columns=["_request_id", "gender"], schema=schema(contract))
    assert sorted(table.to_pylist(), key=str) == [
        {"_request_id": "new", "gender": "female"},
        {"_request_id": "old", "gender": None},
    ]
