"""Delayed labels: outcomes that arrive after the answer, stored and joined to the prediction
log (`monitor/live.py` judges live quality on them).

`ingest` reads a labels file (the contract's id and label columns, and `label_time` when the
outcome's time is known; else the time of ingest), refuses it whole on bad input with the
file, column and row counts, and appends what is new as Parquet under
`<store>/labels/model=<name>/`. Re-ingesting a file, or labels already stored for the same id
and time, adds nothing. A label belongs to the entity's latest logged prediction at or before
the label's time, within `live.max_label_delay_s`; a prediction takes one label (the latest),
so labels sent twice are never counted twice.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_app import tracking
from ray_app.data.contract import NUMERIC_TYPES, ColumnSpec, Contract
from ray_app.data.ingest import (
    ARROW_TYPES,
    DataError,
    Source,
    csv_header,
    csv_options,
    dataset_version,
    read_problem,
)
from ray_app.data.store import DataStore
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.monitor.drift import MonitorConfig
from ray_app.monitor.predictions import read

FOLDER = "labels"
LABEL_TIME = "label_time"  # optional column of a labels file: when the outcome was known
INGESTED, SOURCE, DIGEST = "_ingested_at", "_source", "_digest"  # stored beside each label
PREDICTION = ["_request_id", "_row", "_time"]  # one logged prediction
TIMESTAMP = pa.timestamp("us", tz="UTC")
_EXAMPLES = 5


@dataclass
class IngestResult:
    """What one labels file added, and how its new labels joined the prediction log."""

    source: str
    rows: int
    stored: int  # new labels written
    duplicates: int  # already stored: the same file, or the same id, time and label
    matched: int  # new labels joined to a prediction
    late: int  # the id's latest prediction before the label is older than the horizon
    no_prediction: int  # the id has no prediction at or before the label's time
    ignored_columns: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"[labels] {self.source}: {self.rows:,} rows; {self.stored:,} new labels stored, "
            f"{self.duplicates:,} already stored",
            f"[labels] new labels joined: {self.matched:,} to a prediction, {self.late:,} too "
            f"late after their id's last prediction, {self.no_prediction:,} with none before",
        ]
        if self.ignored_columns:
            out.append(f"[labels] columns not read: {self.ignored_columns}")
        return out


@dataclass
class Joined:
    """Labels joined to logged predictions: each matched prediction with its label."""

    rows: pd.DataFrame
    labels: int
    matched: int
    late: int
    no_prediction: int
    superseded: int  # matched a prediction that a later label also matched


def _refused(path: Path, rows: int, problems: list[str]) -> DataError:
    listed = "\n".join(f"  - {p}" for p in problems)
    return DataError(f"{path} ({rows:,} rows): refused, nothing stored:\n{listed}")


def _examples(values: pd.Series) -> list[str]:
    return [str(v) for v in values.head(_EXAMPLES)]


def _read_file(path: Path) -> pd.DataFrame:
    """A labels file: CSV with every column as text (type guessing would hide a bad value),
    or Parquet as typed."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if suffix not in (".csv", ".txt"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")
    columns = csv_header(path)
    try:
        return pacsv.read_csv(path, **csv_options(columns)).to_pandas()
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: {read_problem(Source(path, 'csv', '', columns)) or e}") from None


def _label(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, np.ndarray]:
    """The label in the contract's type, and which rows miss it or hold a value not allowed."""
    text = raw.astype("string").str.strip()
    if spec.type in NUMERIC_TYPES:
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        whole = values == np.round(values) if spec.type == "integer" else True
        values = values.where(np.isfinite(values) & whole)
        values = values.astype("Int64") if spec.type == "integer" else values
    elif spec.type == "boolean":
        values = text.str.lower().map({"true": True, "false": False, "1": True, "0": False})
    else:
        values = text
    bad = values.isna()
    if spec.allowed is not None:
        bad |= ~values.isin(spec.allowed)
    return values, bad.to_numpy(dtype=bool)


def _parse(
    frame: pd.DataFrame, path: Path, contract: Contract, now: dt.datetime
) -> tuple[pd.DataFrame, list[str]]:
    """The file's labels as (id, label, label_time) and what is wrong with them."""
    key, target = contract.id_column, contract.label_column
    if key is None:
        raise DataError(f"contract {contract.name!r} has no id column: labels cannot be joined")
    missing = [c for c in (key, target) if c not in frame]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; a labels file holds the id column {key!r}, "
            f"the label column {target!r} and optionally {LABEL_TIME!r} "
            f"(found {list(frame.columns)})"
        )
    if frame.empty:
        raise DataError(f"{path}: no label rows")
    problems = []
    ids = frame[key].astype("string").str.strip()
    no_id = (ids.isna() | (ids == "")).to_numpy()
    if no_id.any():
        problems.append(f"column {key!r}: {no_id.sum():,} rows without an id")
    values, bad = _label(frame[target], contract.columns[target])
    if bad.any():
        problems.append(
            f"column {target!r}: {bad.sum():,} rows whose label is missing or not one of the "
            f"contract's allowed values {contract.columns[target].allowed}, "
            f"e.g. {_examples(frame[target][bad])}"
        )
    if LABEL_TIME in frame:
        when = pd.to_datetime(frame[LABEL_TIME], utc=True, errors="coerce", format="ISO8601")
        if (no_time := when.isna().to_numpy()).any():
            problems.append(
                f"column {LABEL_TIME!r}: {no_time.sum():,} rows without an ISO 8601 time, "
                f"e.g. {_examples(frame[LABEL_TIME][no_time])}"
            )
    else:
        when = pd.Series(pd.Timestamp(now), index=frame.index)
    labels = pd.DataFrame(
        {key: ids, target: values, LABEL_TIME: when.astype("datetime64[us, UTC]")}
    )
    repeated = labels.duplicated([key, LABEL_TIME], keep=False).to_numpy() & ~no_id
    if repeated.any():
        at = f"at the same {LABEL_TIME!r}" if LABEL_TIME in frame else "(the file has no times)"
        problems.append(
            f"column {key!r}: {repeated.sum():,} rows label an id another row labels too {at}, "
            f"e.g. {_examples(ids[repeated].drop_duplicates())}"
        )
    return labels, problems


def read_labels(store: DataStore, model_name: str) -> pd.DataFrame:
    """Every label ingested for a model (an empty frame before the first)."""
    where = store.path(FOLDER, f"model={model_name}")
    if store.fs.get_file_info(where).type == pafs.FileType.NotFound:
        return pd.DataFrame()
    return pads.dataset(where, filesystem=store.fs, format="parquet").to_table().to_pandas()


def _write(store: DataStore, model_name: str, labels: pd.DataFrame, contract: Contract) -> None:
    """One Parquet file, written under a hidden name and then renamed, so a reader never sees
    half of it (dataset discovery skips names starting with a dot)."""
    spec = contract.columns[contract.label_column]
    schema = pa.schema(
        [
            (contract.id_column, pa.string()),
            (contract.label_column, ARROW_TYPES[spec.type]),
            (LABEL_TIME, TIMESTAMP),
            (INGESTED, TIMESTAMP),
            (SOURCE, pa.string()),
            (DIGEST, pa.string()),
        ]
    )
    table = pa.Table.from_pandas(labels[schema.names], schema=schema, preserve_index=False)
    folder = store.path(FOLDER, f"model={model_name}")
    store.fs.create_dir(folder, recursive=True)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table, posixpath.join(folder, f".{name}"), filesystem=store.fs)
    store.fs.move(posixpath.join(folder, f".{name}"), posixpath.join(folder, name))


def join(labels: pd.DataFrame, log: pd.DataFrame, contract: Contract, max_delay_s: float) -> Joined:
    """Each label to the latest prediction of its id at or before the label's time, when that
    is at most `max_delay_s` earlier; a prediction keeps only its latest label."""
    key = contract.id_column
    if labels.empty:
        return Joined(log.iloc[:0], 0, 0, 0, 0, 0)
    left = labels.assign(**{key: labels[key].astype(str)}).sort_values(LABEL_TIME)
    right = log.dropna(subset=[key]).sort_values("_time")
    right = right.assign(**{key: right[key].astype(str)})
    both = pd.merge_asof(
        left.assign(**{LABEL_TIME: left[LABEL_TIME].astype("datetime64[us, UTC]")}),
        right.assign(_time=right["_time"].astype("datetime64[us, UTC]")),
        left_on=LABEL_TIME,
        right_on="_time",
        by=key,
        direction="backward",
    )
    found = both["_time"].notna()
    within = found & (both[LABEL_TIME] - both["_time"] <= pd.Timedelta(seconds=max_delay_s))
    order = [LABEL_TIME, INGESTED] if INGESTED in both else [LABEL_TIME]
    matched = both[within].sort_values(order).drop_duplicates(PREDICTION, keep="last")
    return Joined(
        rows=matched.reset_index(drop=True),
        labels=len(both),
        matched=int(within.sum()),
        late=int((found & ~within).sum()),
        no_prediction=int((~found).sum()),
        superseded=int(within.sum()) - len(matched),
    )


def read_log(
    store: DataStore,
    model_name: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[pd.DataFrame, LoadedModel | None]:
    """The prediction log in [since, until] as pandas, and the version that answered last
    (None when nothing is logged), whose contract names the id and the label. The id is cast
    to text in Arrow: pandas makes floats of an integer id column with a null (a request may
    omit the id), and "1001.0" would never match the "1001" of a labels file."""
    table = read(store, model_name, since, until)
    if not table.num_rows:
        return table.to_pandas(), None
    last = pc.index(table["_time"], pc.max(table["_time"])).as_py()
    served = load(ModelRef.parse(table["_model_version"][last].as_py()))
    key = served.contract.id_column
    if key in table.column_names and not pa.types.is_string(table.schema.field(key).type):
        where = table.schema.get_field_index(key)
        table = table.set_column(where, key, pc.cast(table[key], pa.string()))
    return table.to_pandas(), served


def ingest(
    path: str | Path,
    model_name: str,
    store: DataStore,
    cfg: MonitorConfig,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Validate a labels file against the served model's contract and its prediction log,
    store its new labels, and say how they joined. Bad input stores nothing (DataError)."""
    tracking.configure()
    path, now = Path(path).resolve(), now or dt.datetime.now(dt.UTC)
    frame = _read_file(path)
    log, served = read_log(store, model_name)
    if served is None:
        raise DataError(f"{path}: no predictions of {model_name!r} are logged in {store.uri}")
    contract = served.contract
    labels, problems = _parse(frame, path, contract, now)
    key, target = contract.id_column, contract.label_column
    known = set(log[key].dropna().astype(str))
    unknown = labels[key].notna() & ~labels[key].isin(known)
    if unknown.any():
        problems.append(
            f"column {key!r}: {unknown.sum():,} rows with ids {model_name!r} never logged a "
            f"prediction for, e.g. {_examples(labels[key][unknown])}"
        )
    stored = read_labels(store, model_name)
    digest = dataset_version(path)
    if not problems and not stored.empty and digest in set(stored[DIGEST]):
        return IngestResult(str(path), len(labels), 0, len(labels), 0, 0, 0)
    if not stored.empty:
        old = stored[[key, target, LABEL_TIME]].drop_duplicates([key, LABEL_TIME], keep="last")
        old = old.astype({key: "string", LABEL_TIME: "datetime64[us, UTC]"})
        both = labels.merge(old, on=[key, LABEL_TIME], how="left", suffixes=("", "_stored"))
        seen = both[f"{target}_stored"].notna().to_numpy()
        differs = seen & (both[target] != both[f"{target}_stored"]).fillna(False).to_numpy()
        if differs.any():
            problems.append(
                f"column {target!r}: {differs.sum():,} rows contradict labels stored for the "
                f"same id and time, e.g. {_examples(labels[key][differs])}"
            )
        labels = labels[~seen]
    else:
        seen = np.zeros(len(labels), dtype=bool)
    if problems:
        raise _refused(path, len(frame), problems)
    labels = labels.assign(**{INGESTED: pd.Timestamp(now), SOURCE: str(path), DIGEST: digest})
    if not labels.empty:
        _write(store, model_name, labels, contract)
    joined = join(labels, log, contract, cfg.live.max_label_delay_s)
    ignored = [c for c in frame.columns if c not in (key, target, LABEL_TIME)]
    return IngestResult(
        str(path),
        len(frame),
        len(labels),
        int(seen.sum()),
        joined.matched,
        joined.late,
        joined.no_prediction,
        ignored,
    )
