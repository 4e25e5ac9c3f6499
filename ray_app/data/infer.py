"""Draft a data contract from a trusted sample, for a person to review and edit.

Types are inferred from the text itself (numbers, ISO dates, few distinct values = category);
ranges and allowed values are the ones observed; null fractions get head-room. The draft is a
starting point: a person decides what is really allowed. Values that look like missing-value
markers ('?', 'n/a', '-', ...) are read as missing and said so, in the draft and to the user.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from ray_app.data.ingest import (
    MAX_SAFE_INTEGER,
    NULL_TOKENS,
    DataError,
    as_frame,
    csv_header,
    csv_options,
)

MAX_CATEGORIES = 25
# Text that usually means "no value" (compared trimmed and lower-cased); what is not already
# one of ingest's NULL_TOKENS goes into the column's `null_values` when the draft reads it so.
MISSING_MARKERS = frozenset(
    {"", "?", "??", "-", "--", "---", ".", "na", "n/a", "n.a.", "#n/a", "null", "none", "nil"}
    | {"nan", "missing", "(null)", "(blank)", "(missing)", "undefined"}
)
ID_NAME = re.compile(r"(?i:id|.*[_\- ]id)|.*[a-z0-9](?:Id|ID)")  # id, user_id, customerID
SENSITIVE_NAMES = {"gender", "sex", "race", "ethnicity", "religion", "seniorcitizen", "nationality"}


def _sample(path: Path, rows: int) -> pd.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        table = pq.ParquetDataset(path).read()
        return as_frame(table.slice(0, rows)).astype("string")  # ints with nulls stay ints
    reader = pacsv.open_csv(path, **csv_options(csv_header(path)))
    try:
        table = reader.read_next_batch().to_pandas()
    except StopIteration:
        raise DataError(f"{path}: no data rows, only a header, to draft a contract from") from None
    while len(table) < rows:
        try:
            table = pd.concat([table, reader.read_next_batch().to_pandas()])
        except StopIteration:
            break
    return table.head(rows).astype("string")


class Draft(dict):
    """A draft contract as a plain dict (ready for YAML), with notes per column for the person
    who reviews it: what the draft decided that the data did not say outright."""

    def __init__(self, contract: dict, notes: dict[str, list[str]]):
        super().__init__(contract)
        self.notes = notes


def _markers(text: pd.Series) -> dict[str, int]:
    """Rows per trimmed value that looks like a missing-value marker."""
    counts = text.value_counts(dropna=True)
    return {str(v): int(n) for v, n in counts.items() if str(v).lower() in MISSING_MARKERS}


def _note(marker: str, rows: int) -> str:
    shown = "empty text" if marker == "" else repr(marker)
    note = f"{shown} appeared in {rows} rows and was read as missing"
    if marker in NULL_TOKENS:
        return f"{note} (as in every column)"
    return f"{note} (null_values); if it is a real value, remove it from null_values"


def _column(values: pd.Series, rows: int) -> tuple[dict[str, Any], list[str]]:
    """A column's draft spec, and notes on the values it read as missing."""
    text = values.str.strip()
    markers = _markers(text)
    present = text[~text.isin([*NULL_TOKENS, *markers]) & text.notna()]
    spec: dict[str, Any] = {}
    null_fraction = 1 - len(present) / max(rows, 1)
    numbers = pd.to_numeric(present, errors="coerce")
    dates = pd.to_datetime(present, errors="coerce", format="ISO8601")
    distinct = present.unique()
    numeric = bool(len(present)) and numbers.notna().all() and len(distinct) > 2
    # An identifier is text whatever its digits: whole numbers written as digits, named like one
    # and all distinct (as a feature, a model would learn from it), or too large for a float64
    # to hold exactly (a measurement that large is written 1.5e+20, not in digits).
    whole = numeric and (numbers == numbers.round()).all()
    identifier = (
        whole
        and present.str.fullmatch(r"[+-]?\d+").all()
        and (
            numbers.abs().max() > MAX_SAFE_INTEGER
            or (ID_NAME.fullmatch(str(values.name)) is not None and len(distinct) == rows)
        )
    )
    if numeric and not identifier:
        exact = numbers.abs().max() <= MAX_SAFE_INTEGER  # else float64's integers are rounded
        spec["type"] = "integer" if whole and exact else "float"
        # Head-room beyond what the sample showed: half the observed span each way, and a
        # column never seen negative stays non-negative.
        low, high = float(numbers.min()), float(numbers.max())
        margin = (high - low) / 2
        spec["min"] = 0 if low >= 0 else math.floor(low - margin)
        spec["max"] = math.ceil(high + margin)
    elif len(present) and dates.notna().all() and not numbers.notna().all():
        spec.update(type="date", min=str(dates.min().date()), max="today")
    elif not len(present):  # no value to learn a type or a set from
        spec["type"] = "string"
    elif len(distinct) <= MAX_CATEGORIES and not identifier:
        spec.update(type="category", allowed=sorted(str(v) for v in distinct))
    else:
        spec["type"] = "string"
        if len(distinct) == len(present) == rows:
            spec["unique"] = True
    spec["nullable"] = null_fraction > 0
    if null_fraction > 0:
        spec["max_null_fraction"] = round(min(1.0, null_fraction * 2 + 0.001), 3)
    if null_values := [m for m in markers if m not in NULL_TOKENS]:
        spec["null_values"] = null_values
    notes = [_note(m, n) for m, n in markers.items()]
    if not len(present):
        notes.append("every value was missing: drafted as an optional string; set its type")
    return spec, notes


def _positive(allowed: list[str]) -> str:
    for guess in ("Yes", "yes", "1", "True", "true", "Y"):
        if guess in allowed:
            return guess
    return allowed[-1]


def infer(
    path: str | Path, label: str, name: str | None = None, rows: int = 100_000
) -> tuple[Draft, int]:
    """A draft contract (a dict ready for YAML) from the first `rows` rows of a file, and the
    number of rows it was drafted from."""
    path = Path(path)
    sample = _sample(path, rows)
    if sample.empty:
        raise DataError(f"{path}: no data rows to draft a contract from")
    if label not in sample.columns:
        raise DataError(f"{path}: label column {label!r} not found in {list(sample.columns)}")
    columns: dict[str, dict[str, Any]] = {}
    notes: dict[str, list[str]] = {}
    id_column = None
    for column in sample.columns:
        spec, notes[column] = _column(sample[column], len(sample))
        if column == label:
            if spec["type"] != "category" or len(spec["allowed"]) != 2:
                raise DataError(f"{path}: label {label!r} must have exactly two values")
            spec.update(roles=["label"], positive=_positive(spec["allowed"]))
        elif spec.pop("unique", False):
            spec["unique"] = True
            if id_column is None:
                id_column = column
                spec["roles"] = ["id"]
            else:  # distinct in every row: as a feature, a model could only memorise it
                spec["roles"] = []
                notes[column].append(
                    f"distinct in every row, like the id {id_column!r}: drafted with no role"
                )
        elif column.lower().replace("_", "") in SENSITIVE_NAMES:
            spec["roles"] = ["sensitive"]
        elif spec["type"] == "date":
            spec["roles"] = []
        else:
            spec["roles"] = ["feature"]
        columns[column] = spec
    draft = {
        "name": name or path.stem,
        "columns": columns,
        "rows": {"min": max(1, len(sample) // 10)},
    }
    return Draft(draft, notes), len(sample)


def _yaml(data: dict, flow: bool | None = None) -> str:
    """YAML text; flow=None writes lists and scalar-only mappings inline, as `{a: 1}`."""
    return yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=flow)


def write_draft(
    contract: dict, out: Path, source: Path, sampled: int, say: Callable[[str], None] = print
) -> Path:
    """Write the draft as YAML, each column's notes as comments above it; `say` each note too,
    so that what the draft read as missing is a person's decision, not a silent one."""
    header = (
        f"# Drafted by `rayapp contract infer` from {source} ({sampled} rows sampled).\n"
        "# Review before use: ranges and allowed values are what the sample showed, roles are\n"
        "# guesses (sensitive columns are kept out of the features).\n"
    )
    notes = contract.notes if isinstance(contract, Draft) else {}
    body = _yaml({"name": contract["name"]}, flow=False) + "columns:\n"
    for column, spec in contract["columns"].items():
        for note in notes.get(column, []):
            body += "".join(f"  # {line}\n" for line in textwrap.wrap(f"{column}: {note}", 96))
            say(f"{out}: column {column!r}: {note}")
        body += textwrap.indent(_yaml({column: spec}), "  ")
    body += _yaml({k: v for k, v in contract.items() if k not in ("name", "columns")})
    out.write_text(header + body)
    return out


def add_reference_profile(contract_path: Path, data: Path, rows: int) -> Path:
    """Profile the sample's features with the drafted contract's types, write it beside the
    contract, and point the contract's `reference` at it."""
    from ray_app.data import profile
    from ray_app.data.contract import load_contract
    from ray_app.data.ingest import coerce

    contract = load_contract(contract_path)
    typed, _ = coerce(_sample(data, rows), contract)
    kinds = {c: contract.columns[c].type for c in contract.feature_columns}
    numeric = [c for c, t in kinds.items() if t in ("integer", "float")]
    categorical = [c for c, t in kinds.items() if t in ("category", "string")]
    out = contract_path.with_suffix(".profile.json")
    out.write_text(json.dumps(profile.build(typed, numeric, categorical), indent=1))
    with contract_path.open("a") as f:
        f.write(f"reference:\n  profile: {out.name}   # statistics of the trusted sample\n")
    return out
