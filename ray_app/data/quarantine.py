"""Quarantine policy: rows that break row-level rules go to their own versioned Parquet file,
with the reason for each row, and the run continues only if they are few enough.

Rows are kept exactly as read (text for CSV) so that nothing is lost: a person can fix and
re-ingest them. The quarantine file is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pandas as pd
import ray.data

from ray_app.data.contract import Contract
from ray_app.data.ingest import DataError, Source, on_this_node, pinned_args
from ray_app.data.validate import row_reasons

REASON = "_quarantine_reason"


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as text, as they were read (an integer as its digits), a null left null; every
    file of a quarantine folder then has the same, text, columns."""
    return frame.astype("string").astype(object).where(frame.notna(), None)


def _bad_rows(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    _, reasons = row_reasons(batch, contract_json)
    bad = reasons != ""
    return as_read(batch[bad]).assign(**{REASON: reasons[bad]})


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
        bad.write_parquet(on_this_node(tmp), ray_remote_args=pinned_args())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final, count
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
