"""Batch scoring: a table through the one scoring path in Ray Data, the model loaded once per
actor, every output row stamped with the model version and the data version it came from.

Rows are checked against the contract's row-level rules first (`data.validate.row_reasons`,
the rules ingestion quarantines by); a row that breaks one is never scored but written, as it
was read, to a quarantine file with the reason (a second read, taken only when there are such
rows, so that the scoring pass carries only the id and the scores). The label and the
sensitive columns may be absent from a table to score; the model's inputs and the id may not.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray.data
from ray.data.expressions import col

from ray_app.data.contract import Contract
from ray_app.data.ingest import DataError, Source, on_this_node, open_source, read_raw
from ray_app.data.quarantine import REASON
from ray_app.data.validate import row_reasons
from ray_app.model.loaded import load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer

PROBABILITY, LABEL = "probability", "label"
MODEL_VERSION, DATA_VERSION = "model_version", "data_version"
BATCH_ROWS = 50_000


@dataclass
class BatchResult:
    model: str  # name/version
    data_version: str
    rows: int
    scored: int
    quarantined: int
    out: str
    quarantine: str | None
    seconds: float


def scoring_contract(contract: Contract, source: Source) -> Contract:
    """The contract a table to score is checked by: its label (and any sensitive column the
    table lacks) may be missing; everything the model reads, and the id, must be there."""
    required = [*contract.input_columns, *([contract.id_column] if contract.id_column else [])]
    missing = [c for c in required if c not in source.columns]
    if missing:
        raise DataError(
            f"{source.path}: missing columns {missing} that model {contract.name!r} needs "
            f"(found {source.columns})"
        )
    optional = {contract.label_column, *contract.sensitive_columns}
    relaxed = {
        name: spec.model_copy(update={"nullable": True}) if name in optional else spec
        for name, spec in contract.columns.items()
    }
    return contract.model_copy(update={"columns": relaxed})


class _Score:
    """A Ray Data actor: loads the model once, then checks and scores batch after batch."""

    def __init__(self, ref: str, contract_json: str, data_version: str):
        self.scorer = Scorer.of(load(ModelRef.parse(ref)))
        self.contract_json, self.data_version = contract_json, data_version
        self.contract = Contract.model_validate_json(contract_json)
        model = self.scorer.model
        self.version = f"{model.name}/{model.version}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        typed, reasons = row_reasons(_as_contract(batch, self.contract), self.contract_json)
        good = (reasons == "").to_numpy()
        proba = np.full(len(typed), np.nan)
        if good.any():
            proba[good] = self.scorer.proba(typed[good])
        labels = pd.Series(self.scorer.labels(proba), index=typed.index).where(good, None)
        ids = [self.contract.id_column] if self.contract.id_column else []
        return typed[ids].assign(
            **{
                PROBABILITY: proba,
                LABEL: labels.astype(object),
                MODEL_VERSION: self.version,
                DATA_VERSION: self.data_version,
                REASON: reasons.to_numpy(),
            }
        )


def _as_contract(batch: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """The contract's columns; an optional one the table lacks is all null."""
    return batch.reindex(columns=list(contract.columns))


def _quarantined(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    """The batch's rows that break the contract, as read (only the columns the table has),
    with the reason."""
    checked = _as_contract(batch, Contract.model_validate_json(contract_json))
    reasons = row_reasons(checked, contract_json)[1]
    bad = (reasons != "").to_numpy()
    raw = batch[bad]
    as_read = raw.astype("string").astype(object).where(raw.notna(), None)
    return as_read.assign(**{REASON: reasons[bad].to_numpy()})


def batch_predict(
    model: str,
    data: str | Path,
    out: str | Path,
    actors: tuple[int, int] = (1, 2),
    batch_rows: int = BATCH_ROWS,
) -> BatchResult:
    """Score `data` (CSV or Parquet) with `model` (name@alias, name/version) into a Parquet
    folder `out`: the id, probability, label, model and data version per row; rows that
    break the contract go to `<out>.quarantine/` with the reason."""
    started = time.perf_counter()
    ref = ModelRef.parse(model)
    name, version = ref.resolve()
    loaded = load(ModelRef(name, version=version))
    source = open_source(data)
    contract = scoring_contract(loaded.contract, source)
    out, bad_out = Path(out).resolve(), Path(f"{Path(out).resolve()}.quarantine")
    for target in (out, bad_out):
        if target.exists():
            raise DataError(f"{target} exists; batch scoring writes a new folder")
    scored = (
        read_raw(source, contract)
        .map_batches(
            _Score,
            fn_constructor_args=(f"{name}/{version}", contract.model_dump_json(), source.version),
            batch_format="pandas",
            batch_size=batch_rows,
            compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
        )
        .materialize()
    )
    _write(scored.filter(expr=col(REASON) == "").drop_columns([REASON]), out)
    quarantined = scored.filter(expr=col(REASON) != "").count()
    if quarantined:  # rare: read again, keeping the bad rows as read, rather than every row
        bad = read_raw(source, contract).map_batches(
            _quarantined,
            fn_kwargs={"contract_json": contract.model_dump_json()},
            batch_format="pandas",
            batch_size=batch_rows,
        )
        _write(bad, bad_out)
    rows = scored.count()
    return BatchResult(
        f"{name}/{version}",
        source.version,
        rows,
        rows - quarantined,
        quarantined,
        str(out),
        str(bad_out) if quarantined else None,
        time.perf_counter() - started,
    )


def _write(ds: ray.data.Dataset, target: Path) -> None:
    """Into a temporary sibling, renamed into place: a folder there is always complete."""
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        ds.write_parquet(on_this_node(tmp))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(result: BatchResult) -> list[str]:
    lines = [
        f"[batch] {result.rows:,} rows of data version {result.data_version} scored by "
        f"{result.model} in {result.seconds:.1f}s: {result.scored:,} written to {result.out}"
    ]
    if result.quarantine:
        lines.append(
            f"[batch] {result.quarantined:,} rows break the contract: not scored, written with "
            f"the reason to {result.quarantine}"
        )
    return lines
