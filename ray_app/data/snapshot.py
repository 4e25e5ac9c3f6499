"""Immutable, typed Parquet snapshots of validated data, keyed by the dataset version.

Layout in a `DataStore`: `<version>/<attempt>/` holds the Parquet parts and the validation
report; `<version>/_snapshot.json` is the commit marker that names the attempt. The marker is
written last, so a failed or interrupted write never leaves a snapshot a later run could trust.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field

import pandas as pd
import pyarrow as pa
import ray.data

from ray_app.data import report as validation_report
from ray_app.data.contract import Contract
from ray_app.data.ingest import DataError, Source, coerce, read_parquet, to_arrow
from ray_app.data.quarantine import good_rows
from ray_app.data.store import DataStore
from ray_app.data.validate import ValidationReport

META_FILE = "_snapshot.json"


@dataclass(frozen=True)
class Snapshot:
    """A validated, typed, immutable copy of a source, named by its content version."""

    version: str
    source: str
    rows: int
    contract: str
    contract_hash: str
    attempt: str
    created: str = ""
    quarantined_rows: int = 0
    store: DataStore = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    @property
    def url(self) -> str:
        """Where the Parquet files are, as a person would type it."""
        return self.store.url(self.version, self.attempt)

    def read_text(self, name: str) -> str:
        """A file kept beside the data, such as the validation report."""
        return self.store.read_text(self.version, self.attempt, name)

    @classmethod
    def load(cls, store: DataStore, version: str) -> Snapshot:
        return cls(store=store, **json.loads(store.read_text(version, META_FILE)))


def list_snapshots(store: DataStore) -> list[Snapshot]:
    """Every committed snapshot in a store, newest first."""
    found = [
        Snapshot.load(store, name) for name in store.folders() if store.is_file(name, META_FILE)
    ]
    return sorted(found, key=lambda s: s.created, reverse=True)


def find_snapshot(store: DataStore, version: str, contract: Contract | None) -> Snapshot:
    """The snapshot of a data version, checked against the contract it must have been made
    with (training); `None` reads it as it is (judging a model trained on it)."""
    if not store.is_file(version, META_FILE):
        known = ", ".join(s.version for s in list_snapshots(store)) or "none"
        raise DataError(f"no snapshot of data version {version!r} in {store.uri} (known: {known})")
    snap = Snapshot.load(store, version)
    if contract is not None and snap.contract_hash != contract_hash(contract):
        raise DataError(
            f"snapshot {version} was validated against another version of contract "
            f"{snap.contract!r}; ingest the source again with this contract"
        )
    return snap


def contract_hash(contract: Contract) -> str:
    return hashlib.sha256(contract.model_dump_json().encode()).hexdigest()[:16]


def _typed_batch(batch: pd.DataFrame, contract_json: str, drop_bad: bool) -> pa.Table:
    contract = Contract.model_validate_json(contract_json)
    if drop_bad:
        batch = good_rows(batch, contract_json)
    typed, _ = coerce(batch, contract)
    return to_arrow(typed, contract)


def write_snapshot(
    ds: ray.data.Dataset,
    contract: Contract,
    source: Source,
    report: ValidationReport,
    store: DataStore,
    quarantined: int = 0,
) -> Snapshot:
    """Write (or reuse) the typed snapshot of a validated source, with its validation report
    beside the data. With `quarantined` rows, those rows are left out of the snapshot."""
    version = source.version
    committed = Snapshot.load(store, version) if store.is_file(version, META_FILE) else None
    rows = report.rows - quarantined
    if committed and (committed.contract_hash, committed.rows) == (contract_hash(contract), rows):
        return committed
    snap = Snapshot(
        version=version,
        source=str(source.path),
        rows=rows,
        contract=contract.name,
        contract_hash=contract_hash(contract),
        attempt=f"attempt-{uuid.uuid4().hex[:12]}",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        quarantined_rows=quarantined,
        store=store,
    )
    try:
        ds.map_batches(
            _typed_batch,
            fn_kwargs={"contract_json": contract.model_dump_json(), "drop_bad": quarantined > 0},
            batch_format="pandas",
        ).write_parquet(store.path(version, snap.attempt), filesystem=store.fs)
        for name, text in validation_report.documents(report).items():
            store.write_text(text, version, snap.attempt, name)
        meta = {k: v for k, v in asdict(snap).items() if k != "store"}
        store.write_text(json.dumps(meta, indent=2), version, META_FILE)  # the commit
    except BaseException:
        store.delete(version, snap.attempt)
        raise
    # Attempts no marker names: crashed writers, or the data under an older contract.
    for stale in set(store.folders(version)) - {snap.attempt}:
        store.delete(version, stale)
    return snap


def read_snapshot(snap: Snapshot) -> ray.data.Dataset:
    return read_parquet(
        snap.store.path(snap.version, snap.attempt),
        filesystem=snap.store.fs,
        file_extensions=["parquet"],
    )


def parquet(snap: Snapshot):  # -> pyarrow.dataset.Dataset
    """The snapshot's Parquet files (not the reports beside them) as a pyarrow dataset, for
    reads too small to be worth a Ray job."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    folder = snap.store.path(snap.version, snap.attempt)
    files = sorted(
        info.path
        for info in snap.store.fs.get_file_info(pafs.FileSelector(folder))
        if info.path.endswith(".parquet")
    )
    return pads.dataset(files, filesystem=snap.store.fs, format="parquet")


def head(snap: Snapshot, rows: int) -> pd.DataFrame:
    """The first rows of a snapshot, read straight from Parquet: a Ray job costs seconds."""
    return parquet(snap).head(rows).to_pandas()
