"""Immutable, typed Parquet snapshots of validated data, keyed by the dataset version.

A snapshot is written to a temporary folder and renamed into place only when complete, so a
failed or interrupted write never leaves a half snapshot that a later run could trust.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import ray.data

from ray_app.data import report as validation_report
from ray_app.data.contract import Contract
from ray_app.data.ingest import DataError, Source, coerce, to_arrow
from ray_app.data.quarantine import good_rows
from ray_app.data.validate import ValidationReport

META_FILE = "_snapshot.json"


@dataclass(frozen=True)
class Snapshot:
    """A validated, typed, immutable copy of a source, named by its content version."""

    version: str
    path: Path
    source: str
    rows: int
    contract: str
    contract_hash: str
    created: str = ""
    quarantined_rows: int = 0

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        meta = json.loads((path / META_FILE).read_text())
        return cls(path=path, **meta)


def list_snapshots(store: Path) -> list[Snapshot]:
    """Every complete snapshot in a store, newest first."""
    found = [Snapshot.load(p) for p in store.glob("*") if (p / META_FILE).is_file()]
    return sorted(found, key=lambda s: s.created, reverse=True)


def find_snapshot(store: Path, version: str, contract: Contract) -> Snapshot:
    """The snapshot of a data version, checked against the contract it must have been made with."""
    path = store / version
    if not (path / META_FILE).is_file():
        known = ", ".join(s.version for s in list_snapshots(store)) or "none"
        raise DataError(f"no snapshot of data version {version!r} in {store} (known: {known})")
    snap = Snapshot.load(path)
    if snap.contract_hash != contract_hash(contract):
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
    store: Path,
    quarantined: int = 0,
) -> Snapshot:
    """Write (or reuse) the typed snapshot of a validated source, with its validation report
    beside the data. With `quarantined` rows, those rows are left out of the snapshot."""
    final = store / source.version
    meta = {
        "version": source.version,
        "source": str(source.path),
        "rows": report.rows - quarantined,
        "contract": contract.name,
        "contract_hash": contract_hash(contract),
        "quarantined_rows": quarantined,
    }
    if (final / META_FILE).is_file():
        existing = Snapshot.load(final)
        if (existing.contract_hash, existing.rows) == (meta["contract_hash"], meta["rows"]):
            return existing
    meta["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = store / f".tmp-{source.version}-{uuid.uuid4().hex[:8]}"
    try:
        ds.map_batches(
            _typed_batch,
            fn_kwargs={"contract_json": contract.model_dump_json(), "drop_bad": quarantined > 0},
            batch_format="pandas",
        ).write_parquet(str(tmp))
        validation_report.write(report, tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if final.exists():  # same data, different contract: replace as a whole
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot.load(final)


def read_snapshot(path: Path) -> ray.data.Dataset:
    return ray.data.read_parquet(str(path), file_extensions=["parquet"])
