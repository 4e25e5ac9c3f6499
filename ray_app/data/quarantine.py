"""Quarantine policy: rows that break row-level rules go to their own versioned Parquet file,
with the reason for each row, and the run continues only if they are few enough.

Rows are kept exactly as read (text for CSV) so that nothing is lost: a person can fix and
re-ingest them. The quarantine file is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data

from ray_app.data.contract import Contract
from ray_app.data.ingest import DataError, Source, pinned_args
from ray_app.data.validate import row_reasons

REASON = "_quarantine_reason"


def held(rows: pd.DataFrame, reasons: np.ndarray) -> pa.Table:
    """Rows as read, as text (an integer as its digits, a null left null), with the reason.
    Every file of a quarantine folder has the same text columns, even one whose rows are all
    null in a column (Arrow would type it null there, and the folder would not read whole)."""
    text = rows.astype("string").astype(object).where(rows.notna(), None)
    text = text.assign(**{REASON: reasons})
    schema = pa.schema([(name, pa.string()) for name in text.columns])
    return pa.Table.from_pandas(text, schema=schema, preserve_index=False)


def _bad_rows(batch: pd.DataFrame, contract_json: str) -> pa.Table:
    _, reasons = row_reasons(batch, contract_json)
    bad = reasons != ""
    return held(batch[bad], reasons[bad])


def good_rows(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    """The batch without its quarantined rows (used by the snapshot pass)."""
    _, reasons = row_reasons(batch, contract_json)
    return batch[reasons == ""]


def quarantine(
    ds: ray.data.Dataset,
    contract: Contract,
    source: Source,
    rows: int,
    max_bad_fraction: float,
    store: Path,
) -> tuple[Path, int]:
    """Write the bad rows of a source to `store/<version>/`; returns the folder and the count.
    Raises DataError (and keeps nothing) when the bad fraction is above the threshold."""
    final = store / source.version
    tmp = store / f".tmp-{source.version}-{uuid.uuid4().hex[:8]}"
    try:
        bad = ds.map_batches(
            _bad_rows,
            fn_kwargs={"contract_json": contract.model_dump_json()},
            batch_format="pandas",
        ).materialize()
        count = bad.count()
        if count > max_bad_fraction * rows:
            reasons = bad.select_columns([REASON]).take(3)
            raise DataError(
                f"{source.path}: {count} of {rows} rows ({count / rows:.2%}) break the contract, "
                f"more than the {max_bad_fraction:.2%} the quarantine policy allows; e.g. "
                + "; ".join(r[REASON] for r in reasons)
            )
        bad.write_parquet(str(tmp), ray_remote_args=pinned_args())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final, count
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
