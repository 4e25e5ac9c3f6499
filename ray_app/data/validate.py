"""Validate a dataset against its contract with Great Expectations, batch by batch on Ray Data.

Each Ray Data task parses its batch (`ingest.coerce`), runs the contract's GX suite on it and
returns only counts and a few example values per expectation; the driver sums them. Memory on
the driver is therefore bounded by the number of expectations, not the number of rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
import ray.exceptions

from ray_app.data import profile
from ray_app.data.contract import Contract, check_key
from ray_app.data.ingest import DataError, Source, coerce

MAX_EXAMPLES = 5
ROW_COUNT = "row_count"
UNIQUE = "expect_column_values_to_be_unique"
PROFILE = "reference_profile"


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
        return f"{self.expectation}{where}: {self.bad_rows} bad rows{allowed}{shown}"


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


@lru_cache(maxsize=4)
def _validator(contract_json: str) -> tuple[Any, Any]:
    """A GX batch definition and suite, built once per worker process and contract."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    contract = Contract.model_validate_json(contract_json)
    context = gx.get_context(mode="ephemeral")
    batch_definition = (
        context.data_sources.add_pandas("ray_app")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=contract.name))
    for expectation in contract.expectations():
        suite.add_expectation(expectation)
    return batch_definition, suite


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


def row_reasons(batch: pd.DataFrame, contract_json: str) -> tuple[pd.DataFrame, pd.Series]:
    """The typed batch and, per row, why it breaks the contract ("" for a good row). Only
    row-level rules count here; null-fraction tolerances, uniqueness and row counts are
    properties of the whole dataset."""
    contract = Contract.model_validate_json(contract_json)
    typed, failures = coerce(batch, contract)
    reasons = pd.Series("", index=typed.index, dtype=object)
    for column, bad in failures.items():
        reasons.loc[bad.index] += f"{column}: not a valid {contract.columns[column].type}; "
    if len(typed):
        tolerance = {c.key: c.max_fraction for c in contract.checks()}
        batch_definition, suite = _validator(contract_json)
        result = batch_definition.get_batch(batch_parameters={"dataframe": typed}).validate(
            suite, result_format="COMPLETE"
        )
        for r in result.results:
            key = check_key(r.expectation_config.type, r.expectation_config.kwargs)
            if tolerance.get(key, 0.0) == 0.0 and not r.success:
                rows = r.result.get("unexpected_index_list") or []
                reasons.loc[rows] += f"{key[0]}({key[1]}); "
    return typed, reasons.str.rstrip("; ")


def validate_batch(batch: pd.DataFrame, contract_json: str) -> pd.DataFrame:
    """Counts of bad rows per expectation for one batch (a Ray Data `map_batches` UDF)."""
    contract = Contract.model_validate_json(contract_json)
    typed, failures = coerce(batch, contract)
    out = [_row(ROW_COUNT, "", 0, [], rows=len(batch))]
    if contract.reference is not None:
        stats = profile.partial(
            typed, contract.reference.numeric_edges(), contract.reference.categorical()
        )
        out.append({**_row(PROFILE, "", 0, []), "examples": json.dumps(stats)})
    for column in contract.unique_columns:
        out.append(_row(UNIQUE, column, 0, [], hashes=_hashes(typed[column])))
    for column, bad in failures.items():
        kind = contract.columns[column].type
        out.append(_row(f"expect_column_values_to_parse_as_{kind}", column, len(bad), list(bad)))
    if len(typed):
        batch_definition, suite = _validator(contract_json)
        result = batch_definition.get_batch(batch_parameters={"dataframe": typed}).validate(
            suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}
        )
        for r in result.results:
            cfg = r.expectation_config
            out.append(
                _row(
                    *check_key(cfg.type, cfg.kwargs),
                    r.result.get("unexpected_count", 0 if r.success else 1) or 0,
                    r.result.get("partial_unexpected_list") or [],
                )
            )
    return pd.DataFrame(out)


def _run_batches(ds: ray.data.Dataset, contract: Contract, source: Source, batch_size: int):
    try:
        return ds.map_batches(
            validate_batch,
            fn_kwargs={"contract_json": contract.model_dump_json()},
            batch_format="pandas",
            batch_size=batch_size,
        ).to_pandas()
    except (ray.exceptions.RayTaskError, pa.ArrowInvalid, UnicodeDecodeError) as e:
        cause = str(e).strip().splitlines()[-1]
        raise DataError(f"{source.path}: could not be read as {source.fmt} ({cause})") from None


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
    results = parts[~parts.expectation.isin([ROW_COUNT, UNIQUE, PROFILE])]
    for key, group in results.groupby(["expectation", "column"], sort=False):
        bad = int(group.bad_rows.sum())
        allowed = int(tolerance.get(key, 0.0) * rows)
        if bad > allowed:
            examples = [e for batch in group.examples for e in json.loads(batch)]
            row_level = tolerance.get(key, 0.0) == 0.0
            failures.append(Failure(*key, bad, examples[:MAX_EXAMPLES], allowed, row_level))
    for column in contract.unique_columns:
        blobs = parts.loc[(parts.expectation == UNIQUE) & (parts.column == column), "hashes"]
        hashes = np.frombuffer(b"".join(blobs), dtype=np.uint64)
        if found := _duplicates(ds, contract, column, hashes):
            failures.append(found)
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
