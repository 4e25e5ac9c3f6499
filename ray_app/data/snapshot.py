"""Immutable, typed Parquet snapshots of validated data, keyed by the dataset version.

A snapshot is written to a temporary folder and renamed into place only when complete, so a
failed or interrupted write never leaves a half snapshot that a later run could trust.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import ray.data

from ray_app.data.contract import Contract
from ray_app.data.ingest import Source, coerce, to_arrow

META_FILE = "_snapshot.json"


def contract_hash(contract: Contract) -> str:
    return hashlib.sha256(contract.model_dump_json().encode()).hexdigest()[:16]


def _typed_batch(batch: pd.DataFrame, contract_json: str) -> pa.Table:
    contract = Contract.model_validate_json(contract_json)
    typed, _ = coerce(batch, contract)
    return to_arrow(typed, contract)


def write_snapshot(
    ds: ray.data.Dataset, contract: Contract, source: Source, rows: int, store: Path
) -> Path:
    """Write (or reuse) the typed snapshot of a validated source; returns its folder."""
    final = store / source.version
    meta = {
        "version": source.version,
        "source": str(source.path),
        "rows": rows,
        "contract": contract.name,
        "contract_hash": contract_hash(contract),
    }
    meta_path = final / META_FILE
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return final
    tmp = store / f".tmp-{source.version}-{uuid.uuid4().hex[:8]}"
    try:
        ds.map_batches(
            _typed_batch,
            fn_kwargs={"contract_json": contract.model_dump_json()},
            batch_format="pandas",
        ).write_parquet(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if final.exists():  # same data, different contract: replace as a whole
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_snapshot(path: Path) -> ray.data.Dataset:
    return ray.data.read_parquet(str(path), file_extensions=["parquet"])
