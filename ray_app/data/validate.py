"""Validate a dataset against its contract, batch by batch on Ray Data.

Each Ray Data task parses its batch (`ingest.coerce`), checks the contract's expectations on it
(`data.rules`: Great Expectations' semantics without its per-batch cost) and returns only
counts and a few example values per expectation; the driver sums them. Memory on the driver
is therefore bounded by the number of expectations, not the number of rows.
"""

from __future__ import annotations

import json
import math
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
import ray.exceptions

from ray_app.data import profile, rules
from ray_app.data.contract import Contract
from ray_app.data.ingest import (
    MAX_SAFE_INTEGER,
    DataError,
    Source,
    coerce,
    read_problem,
    reading,
    unreadable,
)

MAX_EXAMPLES = 5
ROW_COUNT = "row_count"
UNIQUE = "expect_column_values_to_be_unique"
PROFILE = "reference_profile"
VALUES = "value_counts"
PRESENCE = "expect_column_distinct_values_to_contain_set"
DATA_ERROR = "data_error"  # a batch whose text could not be decoded or parsed
TASK_ERROR = "task_error"  # a batch that failed for any other reason: not the data's fault
# What a value that does not parse may have got wrong, where the type's name does not say.
PARSE_HINTS = {
    "expect_column_values_to_parse_as_integer": f" (an integer is whole and within "
    f"±{MAX_SAFE_INTEGER:,}, what a float64 holds exactly; give larger identifiers type string)"
}
BOOKKEEPING = (ROW_COUNT, UNIQUE, PROFILE, VALUES, DATA_ERROR, TASK_ERROR)


class ValidationTaskError(RuntimeError):
    """A validation task that failed for a reason other than the data: a bug, out of memory,
    a lost worker. The message says which, with the task's error."""


class TaskTraceback(Exception):
    """The traceback of an exception raised inside a Ray task, chained to the error raised on
    the driver so that a bug can be found where it happened."""


@dataclass
class Failure:
    expectation: str
    column: str
    bad_rows: int
    examples: list[str] = field(default_factory=list)
    allowed_rows: int = 0
    row_level: bool = False  # a rule each bad row breaks on its own (can be quarantined)

    def __str__(self) -> str:
        if not self.bad_rows and self.examples:  # a dataset-level check: say what differs
            where = f" on column {self.column!r}" if self.column else ""
            return f"{self.expectation}{where}: {'; '.join(self.examples)}"
        shown = f", e.g. {self.examples}" if self.examples else ""
        allowed = f" (at most {self.allowed_rows} allowed)" if self.allowed_rows else ""
        where = f" on column {self.column!r}" if self.column else ""
        hint = PARSE_HINTS.get(self.expectation, "")
        return f"{self.expectation}{where}: {self.bad_rows} bad rows{allowed}{shown}{hint}"


@dataclass
class ValidationReport:
    source: str
    version: str
    rows: int
    checked: list[str]
    failures: list[Failure]

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def quarantinable(self) -> bool:
        """True when every failure is a row-level rule, so removing bad rows can fix the data."""
        return all(f.row_level for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success": self.success}

    def raise_for_failures(self, note: str = "") -> None:
        if self.failures:
            lines = "\n".join(f"  - {f}" for f in self.failures)
            raise DataError(
                f"{self.source}: validation failed ({len(self.failures)} of "
                f"{len(self.checked)} checks, {self.rows} rows):\n{lines}"
                + (f"\n{note}" if note else "")
            )


def _row(
    expectation: str, column: str, bad: int, examples: list[Any], rows: int = 0, hashes: bytes = b""
) -> dict:
    shown = [str(v) for v in examples[:MAX_EXAMPLES]]
    return {
        "expectation": expectation,
        "column": column,
        "bad_rows": int(bad),
        "examples": json.dumps(shown),
        "rows": rows,
        "hashes": hashes,
    }


def _hashes(values: pd.Series) -> bytes:
    """64-bit hashes of a batch's non-null values: 8 bytes a row on the driver, enough to find
    duplicates across all batches without a shuffle."""
    present = values.dropna()
    return pd.util.hash_pandas_object(present, index=False).to_numpy(np.uint64).tobytes()


def row_reasons(
    batch: pd.DataFrame, contract_json: str, unchecked: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, np.ndarray]:
    """The typed batch and, per row, why it breaks the contract ("" for a good row). Only
    row-level rules count here; null-fraction tolerances, uniqueness and row counts are
    properties of the whole dataset. The text is built only for the rows that break a rule.
    The `unchecked` columns are typed but judged by no rule, alone or in a pair (batch
    scoring's columns the model does not read)."""
    contract = contract_from_json(contract_json)
    typed, failures = coerce(batch, contract)
    broken = [
        (_rows_at(bad.index, len(typed)), f"{column}: not a valid {_kind(contract, column)}")
        for column, bad in failures.items()
        if column not in unchecked
    ]
    nulls: dict[str, np.ndarray] = {}
    for check in contract.checks():
        if set(check.key[1].split(",")) & set(unchecked):  # a pair rule's key is `A,B`
            continue
        if check.max_fraction == 0.0 and (mask := rules.broken(typed, check, nulls)).any():
            broken.append((mask, f"{check.key[0]}({check.key[1]})"))
    reasons = np.full(len(typed), "", dtype=object)
    if broken:
        for row in np.flatnonzero(np.logical_or.reduce([mask for mask, _ in broken])):
            reasons[row] = "; ".join(text for mask, text in broken if mask[row])
    return typed, reasons


def _rows_at(positions: pd.Index, rows: int) -> np.ndarray:
    mask = np.zeros(rows, dtype=bool)
    mask[positions.to_numpy()] = True
    return mask


def _kind(contract: Contract, column: str) -> str:
    """A column's type as a reason names it, with the limit a value can break unseen."""
    kind = contract.columns[column].type
    return f"{kind} (whole, within ±{MAX_SAFE_INTEGER:,})" if kind == "integer" else kind


@lru_cache(maxsize=4)
def contract_from_json(contract_json: str) -> Contract:
    """A contract sent to a worker as JSON, parsed once per process."""
    return Contract.model_validate_json(contract_json)


def validate_batch(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    """Counts of bad rows per expectation for one batch (a Ray Data `map_batches` UDF). An
    exception comes back as a row, with its type, message and traceback, which Ray Data
    would otherwise replace by its own UserCodeException."""
    try:
        return _validate_batch(batch, contract_json)
    except Exception as e:
        kind = DATA_ERROR if isinstance(e, (UnicodeDecodeError, pa.ArrowInvalid)) else TASK_ERROR
        detail = [f"{type(e).__name__}: {e}", traceback.format_exc()]
        return pd.DataFrame([{**_row(kind, "", 0, []), "examples": json.dumps(detail)}])


def _validate_batch(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    contract = contract_from_json(contract_json)
    typed, failures = coerce(batch, contract)
    out = [_row(ROW_COUNT, "", 0, [], rows=len(batch))]
    if contract.reference is not None:
        stats = profile.partial(
            typed, contract.reference.numeric_edges(), contract.reference.categorical()
        )
        out.append({**_row(PROFILE, "", 0, []), "examples": json.dumps(stats)})
    for column in contract.unique_columns:
        out.append(_row(UNIQUE, column, 0, [], hashes=_hashes(typed[column])))
    for column in contract.presence_columns:
        out.append({**_row(VALUES, column, 0, []), "examples": json.dumps(_counts(typed[column]))})
    for column, bad in failures.items():
        kind = contract.columns[column].type
        out.append(_row(f"expect_column_values_to_parse_as_{kind}", column, len(bad), list(bad)))
    nulls: dict[str, np.ndarray] = {}
    for check in contract.checks():
        mask = rules.broken(typed, check, nulls)
        out.append(_row(*check.key, mask.sum(), rules.examples(typed, check, mask, MAX_EXAMPLES)))
    return pd.DataFrame(out)


def _value_text(value: Any) -> str:
    """A value as reports and `allowed` lists show it: integers parsed as floats lose '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _counts(values: pd.Series) -> dict[str, int]:
    """Rows per distinct non-null value of one batch, keyed by `_value_text`."""
    out: Counter[str] = Counter()
    for value, n in values.value_counts(dropna=True).items():
        out[_value_text(value)] += int(n)
    return dict(out)


def _missing_values(contract: Contract, column: str, counts: Counter[str]) -> str | None:
    """Why the values of `column` over the whole dataset cannot serve, or None: a label with
    fewer than both classes, or an `allowed` value a `require_all_values` column never has."""
    spec = contract.columns[column]
    seen = ", ".join(f"{v}: {n} rows" for v, n in sorted(counts.items())) or "no values"
    positive = _value_text(spec.positive)
    if "label" in spec.roles and (len(counts) < 2 or positive not in counts):
        negative = contract.negative_label
        other = "another value" if negative is None else _value_text(negative)
        classes = {0: "no class", 1: "one class"}.get(len(counts), f"{len(counts)} classes")
        return (
            f"label column {column!r} has {classes}: {seen}; a model needs both {other} "
            f"and {positive}"
        )
    absent = [v for v in spec.allowed or [] if _value_text(v) not in counts]
    if spec.require_all_values and absent:
        return f"column {column!r} never has allowed values {absent} (require_all_values): {seen}"
    return None


def _task_failed(source: Source, detail: str) -> ValidationTaskError:
    return ValidationTaskError(
        f"{source.path}: validation task failed: {detail} "
        "(a bug or a lack of resources, not a problem in the data)"
    )


def _run_batches(
    ds: ray.data.Dataset, contract: Contract, source: Source, batch_size: int
) -> pd.DataFrame:
    """Every batch's results. Data that cannot be read stops here as a DataError naming the
    line; any other failure (a bug, out of memory) as a RuntimeError with the task's error."""
    try:
        with reading(source):
            parts = ds.map_batches(
                validate_batch,
                fn_kwargs={"contract_json": contract.model_dump_json()},
                batch_format="pandas",
                batch_size=batch_size,
            ).to_pandas()
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else e
        raise _task_failed(source, f"{type(cause).__name__}: {_first_line(cause)}") from e
    except ray.exceptions.RayError as e:  # out of memory, a worker or node lost
        raise _task_failed(source, f"{type(e).__name__}: {_first_line(e)}") from e
    errors = parts[parts.expectation.isin([DATA_ERROR, TASK_ERROR])] if len(parts) else parts
    if len(errors):
        detail, trace = json.loads(errors.examples.iloc[0])
        if errors.expectation.iloc[0] == DATA_ERROR:
            raise unreadable(source, read_problem(source) or detail) from None
        raise _task_failed(source, detail) from TaskTraceback(trace)
    return parts


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), "")


def _duplicates(
    ds: ray.data.Dataset, contract: Contract, column: str, hashes: np.ndarray
) -> Failure | None:
    """Rows whose value in `column` occurs more than once; examples come from a second pass
    over the data, taken only when duplicates exist."""
    values, counts = np.unique(hashes, return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return None
    wanted = set(repeated.tolist())

    def pick(batch: pd.DataFrame) -> pd.DataFrame:
        typed, _ = coerce(batch, contract)
        present = typed[column].dropna()
        h = pd.util.hash_pandas_object(present, index=False).to_numpy(np.uint64)
        return pd.DataFrame({"value": present[[x in wanted for x in h.tolist()]].astype(str)})

    examples = ds.map_batches(pick, batch_format="pandas").take(MAX_EXAMPLES * 4)
    shown = list(dict.fromkeys(e["value"] for e in examples))[:MAX_EXAMPLES]
    return Failure(UNIQUE, column, int(counts[counts > 1].sum()), shown)


def validate(
    ds: ray.data.Dataset, contract: Contract, source: Source, batch_size: int
) -> ValidationReport:
    """Run the contract over every batch of `ds` and aggregate the results on the driver."""
    parts = _run_batches(ds, contract, source, batch_size)
    if parts.empty:  # no data rows at all: no batch produced any result
        parts = pd.DataFrame([_row(ROW_COUNT, "", 0, [], rows=0)])
    rows = int(parts.loc[parts.expectation == ROW_COUNT, "rows"].sum())
    tolerance = {c.key: c.max_fraction for c in contract.checks()}
    failures = []
    results = parts[~parts.expectation.isin(BOOKKEEPING)]
    for key, group in results.groupby(["expectation", "column"], sort=False):
        bad = int(group.bad_rows.sum())
        # Rounded, not truncated: 0.29 * 100 is 28.999... in floats, and 29 rows are allowed.
        allowed = math.floor(round(tolerance.get(key, 0.0) * rows, 9))
        if bad > allowed:
            examples = [e for batch in group.examples for e in json.loads(batch)]
            row_level = tolerance.get(key, 0.0) == 0.0
            failures.append(Failure(*key, bad, examples[:MAX_EXAMPLES], allowed, row_level))
    for column in contract.unique_columns:
        blobs = parts.loc[(parts.expectation == UNIQUE) & (parts.column == column), "hashes"]
        hashes = np.frombuffer(b"".join(blobs), dtype=np.uint64)
        if found := _duplicates(ds, contract, column, hashes):
            failures.append(found)
    for column in contract.presence_columns if rows else []:
        found: Counter[str] = Counter()
        for blob in parts.loc[(parts.expectation == VALUES) & (parts.column == column), "examples"]:
            found.update(json.loads(blob))
        if problem := _missing_values(contract, column, found):
            failures.append(Failure(PRESENCE, column, 0, [problem]))
    bounds = contract.rows
    if rows < bounds.min or (bounds.max is not None and rows > bounds.max):
        expected = f"between {bounds.min} and {bounds.max}" if bounds.max else f">= {bounds.min}"
        failures.append(
            Failure(
                "expect_table_row_count_to_be_between",
                "",
                0,  # a table-level check: no single row is bad
                [f"{rows} data rows, expected {expected}"],
            )
        )
    if contract.reference is not None and rows:
        ref = contract.reference
        stats = [json.loads(e) for e in parts.loc[parts.expectation == PROFILE, "examples"]]
        current = profile.finish(profile.merge(stats), ref.numeric_edges())
        for check, column, detail in profile.compare(ref.data, current, ref):
            failures.append(Failure(f"expect_{check}", column, 0, [detail]))
    checked = [f"{t}({c})" for t, c in tolerance]
    checked += [f"expect_column_values_to_be_unique({c})" for c in contract.unique_columns]
    return ValidationReport(str(source.path), source.version, rows, checked, failures)
