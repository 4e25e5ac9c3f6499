"""The prediction log: every answered row, kept for drift, delayed labels and lineage.

The router hands each answered request to `PredictionLog.add` (a list append, nothing more)
and a background thread writes what gathered every `flush_s` seconds as Parquet under
`<store>/predictions/model=<name>/date=YYYY-MM-DD/hour=HH/`, one file per flush and hour, so
Ray Data and pyarrow read it as a hive-partitioned dataset. The buffer is bounded in rows (past
it, requests are answered but not logged, and counted); a graceful shutdown flushes it; a
killed replica loses at most the last `flush_s` seconds. Rows the store refuses (an outage) go
back to the buffer for the next flush; a request whose rows Arrow cannot convert is dropped and
counted alone, never with the others of its flush.

A row holds the model's input columns with their contract types, the non-feature columns the
client sent (id, sensitive), and the answer: `_time`, `_request_id`, `_row`, `_variant`,
`_model_version`, `_probability`, `_label`, `_latency_ms` (the request's scoring time).
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_app.data.contract import Contract
from ray_app.data.store import DataStore

logger = logging.getLogger(__name__)
FOLDER = "predictions"
ANSWER = [
    ("_time", pa.timestamp("us", tz="UTC")),
    ("_request_id", pa.string()),
    ("_row", pa.int32()),
    ("_variant", pa.string()),
    ("_model_version", pa.string()),
    ("_probability", pa.float64()),
    ("_label", pa.string()),
    ("_latency_ms", pa.float64()),
]
_ARROW = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "category": pa.string(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
}


def schema(contract: Contract) -> pa.Schema:
    """The log's columns for a model: what clients send (typed by the contract), then the
    answer."""
    sent = [*contract.input_columns, *contract.passthrough_columns]
    columns = [(name, _ARROW.get(contract.columns[name].type, pa.string())) for name in sent]
    return pa.schema([*columns, *ANSWER])


FLUSH_S = 1.0  # the default flush interval: a killed replica loses at most this much


@dataclass(frozen=True)
class Answered:
    """One answered request, as the router hands it over (expanded to rows when written)."""

    time: float
    request_id: str
    variant: str
    version: str
    rows: list[dict[str, Any]]
    probabilities: list[float]
    labels: list[Any]
    latency_ms: float


class PredictionLog:
    def __init__(
        self, store: DataStore, model: str, contract: Contract, max_rows: int, flush_s: float
    ):
        self.store, self.model, self.max_rows, self.flush_s = store, model, max_rows, flush_s
        self.schema = schema(contract)
        self.pending: list[Answered] = []
        self.pending_rows = 0
        self.dropped_rows = 0
        self.written_rows = 0
        self.error: str | None = None  # why the last flush failed, until one succeeds
        # The queue and its counts change together (a request's add, the flusher's swap), so no
        # row is counted in two places or in none; uncontended, it costs a request ~0.1 us.
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()  # the flusher and a shutdown flush never interleave

    def add(self, answered: Answered) -> bool:
        """Queue one answered request; False (and counted) when the buffer is full."""
        with self._queue_lock:
            if self.pending_rows + len(answered.rows) > self.max_rows:
                self.dropped_rows += len(answered.rows)
                return False
            self.pending.append(answered)
            self.pending_rows += len(answered.rows)
            return True

    def flush(self) -> int:
        """Write what is queued, one file per hour it spans; returns the rows written. When the
        store fails, what is not written goes back to the front of the queue (as far as
        `max_rows` allows; the rest is counted as dropped) and the error is raised."""
        with self._write_lock:
            with self._queue_lock:
                batch, self.pending, self.pending_rows = self.pending, [], 0
            by_hour: dict[tuple[str, str], list[Answered]] = {}
            for answered in batch:
                when = dt.datetime.fromtimestamp(answered.time, dt.UTC)
                by_hour.setdefault((f"{when.date()}", f"{when.hour:02d}"), []).append(answered)
            hours, written = list(by_hour.items()), 0
            try:
                for i, ((day, hour), answers) in enumerate(hours):
                    table, kept = self._table(answers)
                    try:
                        written += self._put(day, hour, table) if kept else 0
                    except Exception:
                        self._requeue([*kept, *(a for _, later in hours[i + 1 :] for a in later)])
                        raise
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"[:500]
                raise
            finally:
                self.written_rows += written
            self.error = None
            return written

    def _requeue(self, answers: list[Answered]) -> None:
        with self._queue_lock:
            room, kept = self.max_rows - self.pending_rows, []
            for answered in answers:
                if len(answered.rows) <= room:
                    kept.append(answered)
                    room -= len(answered.rows)
                else:
                    self.dropped_rows += len(answered.rows)
            self.pending = kept + self.pending
            self.pending_rows = self.max_rows - room

    def _table(self, answers: list[Answered]) -> tuple[pa.Table | None, list[Answered]]:
        """These requests' rows as one table, and the requests in it. Should Arrow refuse a
        value (an integer past 64 bits), each request is converted alone and only those it
        refuses are dropped, counted and logged."""
        try:
            return self._rows(answers), answers
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
        tables, kept = [], []
        for answered in answers:
            try:
                tables.append(self._rows([answered]))
                kept.append(answered)
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                with self._queue_lock:
                    self.dropped_rows += len(answered.rows)
                logger.warning(
                    "prediction log of %s: request %s not logged: %s: %s",
                    self.model,
                    answered.request_id,
                    type(e).__name__,
                    e,
                )
        return (pa.concat_tables(tables) if tables else None), kept

    def _rows(self, answers: list[Answered]) -> pa.Table:
        """What clients sent, converted by Arrow from the row dicts in one call (4x a
        column-by-column Python loop, and this thread shares the router's GIL), then the
        answer, a value per request repeated per row."""
        sent = pa.schema([f for f in self.schema if not f.name.startswith("_")])
        table = pa.Table.from_pylist([row for a in answers for row in a.rows], schema=sent)
        counts = [len(a.rows) for a in answers]

        def each(values: list[Any]) -> list[Any]:
            return [v for v, n in zip(values, counts, strict=True) for _ in range(n)]

        answer = {
            "_time": pa.array(each([round(a.time * 1e6) for a in answers]), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "_request_id": each([a.request_id for a in answers]),
            "_row": [i for n in counts for i in range(n)],
            "_variant": each([a.variant for a in answers]),
            "_model_version": each([a.version for a in answers]),
            "_probability": [p for a in answers for p in a.probabilities],
            "_label": [str(label) for a in answers for label in a.labels],
            "_latency_ms": each([a.latency_ms for a in answers]),
        }
        for name, kind in ANSWER:
            table = table.append_column(pa.field(name, kind), pa.array(answer[name], kind))
        return table

    def _put(self, day: str, hour: str, table: pa.Table) -> int:
        """One Parquet file in the hour's folder."""
        folder = self.store.path(FOLDER, f"model={self.model}", f"date={day}", f"hour={hour}")
        self.store.fs.create_dir(folder, recursive=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        # Written under a hidden name, then renamed: readers skip names starting with a dot, so
        # they never see half a file, and a replica killed mid-write leaves nothing they read.
        hidden = posixpath.join(folder, f".{name}")
        pq.write_table(table, hidden, filesystem=self.store.fs)
        self.store.fs.move(hidden, posixpath.join(folder, name))
        return table.num_rows


class Flusher:
    """A daemon thread that flushes the logs every `flush_s`, and once more when stopped."""

    def __init__(self, logs: list[PredictionLog], flush_s: float):
        self.logs, self.flush_s = logs, flush_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="prediction-log")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.flush_s):
            self.flush()

    @property
    def error(self) -> str | None:
        """Each failing log's last error (another log's success does not hide it)."""
        failing = [f"{log.model}: {log.error}" for log in self.logs if log.error]
        return "; ".join(failing) or None

    def flush(self) -> None:
        for log in self.logs:
            try:
                log.flush()
            except Exception:  # the store may be briefly unreachable: keep serving
                logger.exception("could not write the prediction log of %s", log.model)

    def stop(self) -> None:
        """Graceful shutdown: stop the thread and write what is left."""
        self.stop_event.set()
        self.flush()


# date= and hour= as text, so a window's partitions can be pruned by comparing strings.
PARTITIONS = pads.partitioning(
    pa.schema([("date", pa.string()), ("hour", pa.string())]), flavor="hive"
)
_STAMP = pa.timestamp("us", "UTC")


def read(
    store: DataStore,
    model: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    columns: list[str] | None = None,
    version: str | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """A model's logged predictions, in [since, until] and of one `version` ("name/N") when
    given, only `columns` when given. Partitions before `since` are never opened, and no
    file's Parquet footer is kept once read: the log has a file per flush (3,600 an hour at
    `flush_s` 1), whose cached footers would outweigh the rows (bench/RESULTS.md,
    monitor_drift). A file that is not whole (written by a replica killed before the rename
    that finishes every write) is skipped. `schema` (a version's `schema(contract)`) reads a
    file written before its contract added a column as nulls there; without it the columns
    are those of the oldest file, and asking for a newer one fails."""
    where = store.path(FOLDER, f"model={model}")
    if store.fs.get_file_info(where).type == pafs.FileType.NotFound:
        return _empty(columns)
    wanted = pads.scalar(True)
    if since is not None:
        start, date = since.astimezone(dt.UTC), pads.field("date")
        day, hour = f"{start:%F}", f"{start:%H}"
        wanted &= (date > day) | ((date == day) & (pads.field("hour") >= hour))
        wanted &= pads.field("_time") >= pa.scalar(since, _STAMP)
    if until is not None:
        wanted &= pads.field("_time") <= pa.scalar(until, _STAMP)
    if version is not None:
        wanted &= pads.field("_model_version") == version
    whole = None if schema is None else pa.unify_schemas([schema, PARTITIONS.schema])

    def scan(checked: bool) -> pa.Table:
        data = pads.dataset(
            where,
            schema=whole,
            filesystem=store.fs,
            format="parquet",
            partitioning=PARTITIONS,
            exclude_invalid_files=checked,  # opens every file of the log: only when needed
        )
        return data.to_table(filter=wanted, columns=columns, cache_metadata=False)

    try:
        return scan(False)
    except pa.ArrowInvalid:
        return scan(True)


def _empty(columns: list[str] | None) -> pa.Table:
    """No log yet: the answer columns (or those asked for), no rows."""
    kinds = dict(ANSWER)
    names = columns if columns is not None else list(kinds)
    return pa.table({name: pa.array([], kinds.get(name, pa.null())) for name in names})
