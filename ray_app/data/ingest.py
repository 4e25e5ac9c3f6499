"""Ingest: find a source's format and content version, read it with Ray Data, coerce its types.

CSV is read with every contract column as text and coerced per batch by `coerce`, so that a
value which does not parse is counted and reported (file, column, rows) rather than turned
into a null or a crash by a reader's type inference.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray.data

from ray_app.data.contract import Contract

NULL_TOKENS = ("", "null", "NULL", "None", "nan", "NaN", "NA", "N/A")
ARROW_TYPES = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "category": pa.string(),
    "date": pa.timestamp("ns"),
    "boolean": pa.bool_(),
}
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class DataError(ValueError):
    """Input data that breaks the contract; the message names the file, column and rows."""


@dataclass(frozen=True)
class Source:
    path: Path
    fmt: str
    version: str
    columns: list[str]


def dataset_version(path: Path) -> str:
    """Content hash of a file, or of every file under a folder (names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _format(path: Path) -> str:
    suffix = (next(path.glob("*.parquet"), path) if path.is_dir() else path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt", ""):
        return "csv"
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")


def _header(path: Path, fmt: str) -> list[str]:
    if fmt == "parquet":
        try:
            return list(
                pq.read_schema(path if path.is_file() else next(path.glob("*.parquet"))).names
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            row = next(csv.reader(f), None)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start} of the header)") from None
    if not row:
        raise DataError(f"{path}: the file is empty (no header row)")
    return [c.strip() for c in row]


def inspect_source(path: str | Path, contract: Contract) -> Source:
    """Check a source exists and its columns match the contract before any Ray work starts."""
    path = Path(path).resolve()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    fmt = _format(path)
    columns = _header(path, fmt)
    expected = list(contract.columns)
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in contract.columns]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unknown columns {extra}")
        hint = " (is the delimiter a comma?)" if len(columns) == 1 and len(expected) > 1 else ""
        raise DataError(f"{path}: {' and '.join(parts)} for contract {contract.name!r}{hint}")
    return Source(path=path, fmt=fmt, version=dataset_version(path), columns=columns)


def read_raw(source: Source, contract: Contract) -> ray.data.Dataset:
    """Read a source with Ray Data; CSV columns are kept as text for `coerce` to parse."""
    if source.fmt == "parquet":
        return ray.data.read_parquet(str(source.path))
    as_text = {name: pa.string() for name in source.columns}
    return ray.data.read_csv(
        str(source.path),
        convert_options=pacsv.ConvertOptions(
            column_types=as_text, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )


def _blank(raw: pd.Series) -> np.ndarray:
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        text = raw.astype("string").str.strip()
        return (raw.isna() | text.isin(NULL_TOKENS)).to_numpy()
    return raw.isna().to_numpy()


def _parse(raw: pd.Series, kind: str) -> pd.Series:
    if kind in ("integer", "float"):
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        finite = np.isfinite(values)  # infinity is a value no model or range check can use
        if kind == "integer":
            finite &= values == np.round(values)
        return values.where(finite)
    if kind == "date":
        return pd.to_datetime(raw, errors="coerce", format="ISO8601")
    if kind == "boolean":
        return raw.astype("string").str.strip().str.lower().map(_BOOLEANS)
    return raw.astype("string").str.strip().astype(object)


def coerce(batch: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Parse each contract column to its type. Returns the typed frame (blank → null) and,
    per column, the raw values that were present but did not parse."""
    typed: dict[str, pd.Series] = {}
    failures: dict[str, pd.Series] = {}
    for name, spec in contract.columns.items():
        raw = batch[name]
        blank = _blank(raw)
        parsed = _parse(raw, spec.type)
        bad = ~blank & parsed.isna().to_numpy()
        if bad.any():
            failures[name] = raw[bad]
        parsed = parsed.where(~blank & ~bad)
        if spec.type in ("string", "category"):
            parsed = parsed.astype(object).where(parsed.notna(), None)
        typed[name] = parsed
    return pd.DataFrame(typed, index=batch.index), failures


def arrow_schema(contract: Contract) -> pa.Schema:
    return pa.schema([(name, ARROW_TYPES[spec.type]) for name, spec in contract.columns.items()])


def to_arrow(typed: pd.DataFrame, contract: Contract) -> pa.Table:
    """A typed frame as an Arrow table with the contract's schema (stable across batches)."""
    columns = []
    for field in arrow_schema(contract):
        values = typed[field.name]
        if pa.types.is_integer(field.type):
            values = values.astype("Int64")
        columns.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(columns, schema=arrow_schema(contract))
