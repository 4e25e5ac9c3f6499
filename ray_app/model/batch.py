"""Batch scoring: a table through the one scoring path in Ray Data, the model loaded once (by
the driver) and sent to every scoring task through the object store, every output row stamped
with the model version and the data version it came from.

Rows are checked against the contract's row-level rules first (`data.validate.row_reasons`,
the rules ingestion quarantines by); a row that breaks one is never scored but written, as it
was read, to a quarantine file with the reason (a second read, taken only when there are such
rows, so that the scoring pass carries only the id and the scores). The scoring pass streams:
read, checked, scored and written block by block, whatever the table's size. The label and the
sensitive columns may be absent from a table to score; the model's inputs and the id may not.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from ray_app.config import in_ray_job
from ray_app.data.contract import Contract
from ray_app.data.ingest import (
    ARROW_TYPES,
    DataError,
    Source,
    arrow_column,
    as_frame,
    open_source,
    pinned_args,
    read_raw,
    reading,
)
from ray_app.data.quarantine import held
from ray_app.data.validate import contract_from_json, row_reasons
from ray_app.model.scoring import Scorer

PROBABILITY, LABEL = "probability", "label"
MODEL_VERSION, DATA_VERSION = "model_version", "data_version"
# The one scoring pass writes every row, partitioned by this column (which the files do not
# keep): the scored rows are the output; the others, only counted, send the table to the
# quarantine pass. Nothing is held in memory across the table.
STATUS, SCORED, QUARANTINED = "_status", "scored", "quarantined"
BATCH_ROWS = 50_000
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://, gs://, file:/ (a Path keeps one slash)
# Blocks of 32 MiB (~250k rows here): a 1M-row file read as one block (the V2 reader's 128 MiB)
# is scored by one task alone, and the V1 reader's 1 MiB blocks are 124 tasks to schedule
# (measured with scoring actors: 6.8-7.3 s and, warm, 7.4-8.0 s against 5.8-6.3 and 4.1-5.0 s).
# The bound on what a read worker holds, too.
BLOCK_BYTES = 32 << 20
# Scoring runs in Ray Data tasks of a CPU each, not in a pool of actors holding the model:
# every actor is a new Ray process that imports xgboost before its first row (1.7 s here),
# where tasks reuse the job's idle worker processes. Measured on 2 CPUs, warm (a second call
# from the same driver), against two half-CPU actors: 1M rows in 2.3-2.6 s against 6.0-6.7 s,
# and 1,000 rows in 0.2 s against 2.9 s. A new job (a CLI command) starts its own workers
# either way: 2.8 s against 2.9-3.0 s for 1,000 rows. The model travels once to the object
# store; each task (a block) deserialises it, a few milliseconds.
SCORE_CPUS = 1.0
# The output columns of few values, dictionary-encoded in the Parquet files. Parquet writers
# try a dictionary for every column by default and give it up on a column of unique values
# such as the id, after building most of it: writing a 250k-row block took 0.095 s so, against
# 0.026 s with only these.
DICTIONARY_COLUMNS = [LABEL, MODEL_VERSION, DATA_VERSION]


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
    """The contract a table to score is checked by: everything the model reads, and the id,
    must be there and valid. Any other column (the label, sensitive or slice columns) may be
    absent or null, whatever its null tolerance in training data, and only the sensitive ones
    are checked at all (`unchecked`): a row is never set aside for a column the model does not
    read, except a sensitive value outside its set, which serving refuses too."""
    required = [*contract.input_columns, *([contract.id_column] if contract.id_column else [])]
    missing = [c for c in required if c not in source.columns]
    if missing:
        raise DataError(
            f"{source.path}: missing columns {missing} that model {contract.name!r} needs "
            f"(found {source.columns})"
        )
    relaxed = {
        name: spec
        if name in required
        else spec.model_copy(update={"nullable": True, "max_null_fraction": None})
        for name, spec in contract.columns.items()
    }
    return contract.model_copy(update={"columns": relaxed})


def _score_batch(
    batch: pa.Table, scorer: Scorer, contract_json: str, data_version: str
) -> pa.Table:
    """A Ray Data task's batch, checked and its good rows scored: every row with its id,
    probability and label (null for a row that broke the contract), the versions and its
    status."""
    contract = contract_from_json(contract_json)
    checked = as_frame(_as_contract(batch, contract))
    typed, reasons = row_reasons(checked, contract_json, unchecked(contract))
    good = reasons == ""
    proba = np.full(len(typed), np.nan)
    if good.any():  # the usual batch, all good, is scored without a copy
        proba[good] = scorer.proba(typed if good.all() else typed[good])
    schema = output_schema(contract, scorer)
    kept = pa.array(good)
    labels = pc.if_else(kept, pa.array(scorer.labels(proba), schema.field(LABEL).type), None)
    ids = contract.id_column
    columns = {ids: arrow_column(typed[ids], contract.columns[ids].type)} if ids else {}
    return pa.table(
        {
            **columns,
            PROBABILITY: proba,
            LABEL: labels,
            MODEL_VERSION: pa.repeat(f"{scorer.model.name}/{scorer.model.version}", len(typed)),
            DATA_VERSION: pa.repeat(data_version, len(typed)),
            STATUS: pc.if_else(kept, SCORED, QUARANTINED),
        },
        schema=schema.append(pa.field(STATUS, pa.string())),
    )


def unchecked(contract: Contract) -> tuple[str, ...]:
    """The columns a table to score is not judged by (typed, but no rule set a row aside for
    them): all but the model's inputs, the id and the sensitive columns."""
    judged = {*contract.input_columns, contract.id_column, *contract.sensitive_columns}
    return tuple(name for name in contract.columns if name not in judged)


def judged(contract: Contract, source: Source) -> list[str]:
    """The table's columns the scoring pass reads: those it judges rows by. A column the model
    does not read, and any the contract does not name, is never parsed (a wide table costs no
    more than its model's columns); the quarantine pass reads every column, to keep rows as
    they were."""
    skipped = set(unchecked(contract))
    return [c for c in source.columns if c in contract.columns and c not in skipped]


def output_schema(contract: Contract, scorer: Scorer) -> pa.Schema:
    """The columns of the scored output, the same in every file whatever its rows (a block of
    only quarantined rows has no label to infer a type from): the id as the contract types it,
    the probability, the label as the contract's label values are typed, the versions."""
    ids = contract.id_column
    return pa.schema(
        [
            *([(ids, ARROW_TYPES[contract.columns[ids].type])] if ids else []),
            (PROBABILITY, pa.float64()),
            (LABEL, pa.array([scorer.positive, scorer.negative]).type),
            (MODEL_VERSION, pa.string()),
            (DATA_VERSION, pa.string()),
        ]
    )


def _as_contract(batch: pa.Table, contract: Contract) -> pa.Table:
    """The batch with each contract column it lacks (one the table has not, or the scoring
    pass did not read) as all null. Appended in Arrow, the rest is not copied; pandas'
    `assign` copied every column (8% of scoring)."""
    for name in contract.columns:
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(len(batch), pa.string()))
    return batch


def _quarantined(batch: pa.Table, contract_json: str) -> pa.Table:
    """The batch's rows that break the contract, as read (only the columns the table has),
    with the reason; checked as the scoring pass checked them."""
    contract = contract_from_json(contract_json)
    checked = as_frame(_as_contract(batch, contract))
    reasons = row_reasons(checked, contract_json, unchecked(contract))[1]
    bad = reasons != ""
    return held(checked.loc[bad, batch.column_names], reasons[bad])


def batch_predict(
    model: str,
    data: str | Path,
    out: str | Path,
    batch_rows: int = BATCH_ROWS,
) -> BatchResult:
    """Score `data` (CSV or Parquet) with `model` (name@alias, name/version) into a Parquet
    folder `out`: the id, probability, label, model and data version per row; rows that
    break the contract go to `<out>.quarantine/` with the reason. Ray Data runs as many
    scoring tasks at once as the cluster has CPUs free."""
    started = time.perf_counter()
    _local_paths(data, out)
    out, bad_out = Path(out).resolve(), Path(f"{Path(out).resolve()}.quarantine")
    # Imported here, not above: the scoring tasks import this module and have no use for
    # the registry or MLflow (0.8 s more in each worker process).
    from ray_app.model.logged import load
    from ray_app.model.ref import ModelRef

    with _claimed(out, bad_out):
        name, version = ModelRef.parse(model).resolve()
        loaded = load(ModelRef(name, version=version))
        source = open_source(data)
        if out.is_relative_to(source.path):  # the next read of that folder would take it in
            raise DataError(f"{out} is inside the folder it scores ({source.path})")
        contract = scoring_contract(loaded.contract, source)
        written, quarantined = _score(
            source, contract, Scorer.of(loaded), (out, bad_out), batch_rows
        )
    return BatchResult(
        f"{name}/{version}",
        source.version,
        written + quarantined,
        written,
        quarantined,
        str(out),
        str(bad_out) if quarantined else None,
        time.perf_counter() - started,
    )


def _score(
    source: Source,
    contract: Contract,
    scorer: Scorer,
    targets: tuple[Path, Path],
    batch_rows: int,
) -> tuple[int, int]:
    """The scoring pass into a staging folder beside `out`, then the quarantine pass where
    rows broke the contract; the rows written to each of `targets` (out, quarantine)."""
    out, bad_out = targets
    staging = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    try:
        with _execution(BLOCK_BYTES), reading(source):
            read_raw(source, judged(contract, source)).map_batches(
                _score_batch,
                fn_kwargs={
                    "scorer": scorer,
                    "contract_json": contract.model_dump_json(),
                    "data_version": source.version,
                },
                batch_format="pyarrow",
                batch_size=batch_rows,
                num_cpus=SCORE_CPUS,
            ).write_parquet(
                str(staging),
                partition_cols=[STATUS],
                ray_remote_args=pinned_args(),
                use_dictionary=DICTIONARY_COLUMNS,
            )
        scored, set_aside = (staging / f"{STATUS}={status}" for status in (SCORED, QUARANTINED))
        quarantined = _rows(set_aside)
        if quarantined:  # rare: read again, keeping the bad rows as read, rather than every row
            bad = read_raw(source).map_batches(
                _quarantined,
                fn_kwargs={"contract_json": contract.model_dump_json()},
                batch_format="pyarrow",
                batch_size=batch_rows,
            )
            with reading(source):
                _write(bad, bad_out)
            if (again := _rows(bad_out)) != quarantined:
                raise DataError(
                    f"{source.path}: changed while it was scored ({quarantined:,} rows broke "
                    f"the contract, then {again:,}); score it again once it is still"
                )
        written = _rows(scored)
        if written:  # replaces the empty folder claimed for it
            scored.rename(out)
        else:  # no row to score: still a table, of no rows, for whatever reads it next
            pq.write_table(output_schema(contract, scorer).empty_table(), out / "empty.parquet")
        return written, quarantined
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _local_paths(data: str | Path, out: str | Path) -> None:
    """Refuse what would score or write somewhere other than the user meant: an object-store
    URI (a `Path` would make `s3://b/x` the local folder `s3:/b/x`), and, in a Ray job, a
    relative `out`, which would land in the job's temporary copy of its working directory."""
    for option, path in (("--data", data), ("--out", out)):
        if URI.match(str(path)):
            raise DataError(
                f"{option} {path}: batch scoring reads and writes files on the driver's machine "
                "or a filesystem every node mounts, not object-store URIs; score into a local "
                "folder, then copy it (aws s3 cp --recursive)"
            )
    if in_ray_job() and not Path(out).is_absolute():
        raise DataError(
            f"--out {out}: give an absolute path; a Ray job runs in a temporary copy of its "
            "working directory, deleted with everything in it when the job ends"
        )


@contextmanager
def _claimed(out: Path, bad_out: Path) -> Iterator[None]:
    """Claim the output and quarantine folders before any work by creating them empty, an
    atomic step: of two runs given the same `--out`, one is refused at once. What a claimed
    folder holds is this run's, so a run that fails removes it whole; a run with nothing to
    quarantine removes that empty folder."""
    made = []
    try:
        for target in (out, bad_out):
            try:
                target.mkdir(parents=True)
            except FileExistsError:
                raise DataError(f"{target} exists; batch scoring writes a new folder") from None
            except OSError as e:  # a file on the way, no permission, a read-only disk
                raise DataError(f"{target}: cannot create the folder: {e.strerror}") from None
            made.append(target)
        yield
    except BaseException:
        for target in made:
            shutil.rmtree(target, ignore_errors=True)
        raise
    with suppress(OSError):  # kept where it holds the quarantined rows
        bad_out.rmdir()


@contextmanager
def _execution(block_bytes: int) -> Iterator[None]:
    """Ray Data's settings for the datasets built and run inside (session settings, restored
    after): blocks of `block_bytes`, no larger and no smaller (`target_max_block_size`,
    `target_min_block_size`), and no per-operator resource budgets
    (`op_resource_reservation_enabled`). Those budgets reserve a whole task's CPU for the
    write operator, which on 2 CPUs left one scoring task running at a time (measured, 1M rows
    warm: 3.6-4.0 s against 2.3-2.6 s; a lower `op_resource_reservation_ratio` did not
    change it). Without them, what is held stays bounded by Ray Data's downstream-capacity
    backpressure: an operator whose queue holds more than twice what the next one has in
    flight gets no more input (and a task that asks for a CPU waits for one). Ray calls the
    switch a kill-switch it means to remove; on a Ray without it, this is the place to
    revisit."""
    context = ray.data.DataContext.get_current()
    settings = ("target_max_block_size", "target_min_block_size", "op_resource_reservation_enabled")
    before = [getattr(context, name) for name in settings]
    context.target_max_block_size = context.target_min_block_size = block_bytes
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        for name, value in zip(settings, before, strict=True):
            setattr(context, name, value)


def _rows(folder: Path) -> int:
    """Rows in the Parquet files under `folder` (from their footers); 0 when there is none."""
    return sum(pq.read_metadata(file).num_rows for file in folder.rglob("*.parquet"))


def _write(ds: ray.data.Dataset, target: Path) -> None:
    """Into a temporary sibling, renamed into place: a folder there is always complete."""
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        ds.write_parquet(str(tmp), ray_remote_args=pinned_args())
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
            f"[batch] {result.quarantined:,} "
            f"{'row breaks' if result.quarantined == 1 else 'rows break'} the contract: not "
            f"scored, written with the reason to {result.quarantine}"
        )
    return lines
