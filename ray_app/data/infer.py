"""Draft a data contract from a trusted sample, for a person to review and edit.

Types are inferred from the text itself (numbers, ISO dates, few distinct values = category);
ranges and allowed values are the ones observed; null fractions get head-room. The draft is a
starting point: a person decides what is really allowed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from ray_app.data.ingest import NULL_TOKENS

MAX_CATEGORIES = 25
SENSITIVE_NAMES = {"gender", "sex", "race", "ethnicity", "religion", "seniorcitizen", "nationality"}


def _sample(path: Path, rows: int) -> pd.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        table = pq.ParquetDataset(path).read()
        return table.slice(0, rows).to_pandas().astype("string")
    reader = pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    table = reader.read_next_batch().to_pandas()
    while len(table) < rows:
        try:
            table = pd.concat([table, reader.read_next_batch().to_pandas()])
        except StopIteration:
            break
    return table.head(rows).astype("string")


def _column(values: pd.Series, rows: int) -> dict[str, Any]:
    text = values.str.strip()
    present = text[~text.isin(NULL_TOKENS) & text.notna()]
    spec: dict[str, Any] = {}
    null_fraction = 1 - len(present) / max(rows, 1)
    numbers = pd.to_numeric(present, errors="coerce")
    dates = pd.to_datetime(present, errors="coerce", format="ISO8601")
    distinct = present.unique()
    if len(present) and numbers.notna().all() and len(distinct) > 2:
        integral = (numbers == numbers.round()).all()
        spec["type"] = "integer" if integral else "float"
        # Head-room beyond what the sample showed: half the observed span each way, and a
        # column never seen negative stays non-negative.
        low, high = float(numbers.min()), float(numbers.max())
        margin = (high - low) / 2
        spec["min"] = 0 if low >= 0 else math.floor(low - margin)
        spec["max"] = math.ceil(high + margin)
    elif len(present) and dates.notna().all() and not numbers.notna().all():
        spec.update(type="date", min=str(dates.min().date()), max="today")
    elif len(distinct) <= MAX_CATEGORIES:
        spec.update(type="category", allowed=sorted(str(v) for v in distinct))
    else:
        spec["type"] = "string"
        if len(distinct) == len(present) == rows:
            spec["unique"] = True
    spec["nullable"] = null_fraction > 0
    if null_fraction > 0:
        spec["max_null_fraction"] = round(min(1.0, null_fraction * 2 + 0.001), 3)
    return spec


def _positive(allowed: list[str]) -> str:
    for guess in ("Yes", "yes", "1", "True", "true", "Y"):
        if guess in allowed:
            return guess
    return allowed[-1]


def infer(
    path: str | Path, label: str, name: str | None = None, rows: int = 100_000
) -> tuple[dict, int]:
    """A draft contract (a dict ready for YAML) from the first `rows` rows of a file, and the
    number of rows it was drafted from."""
    path = Path(path)
    sample = _sample(path, rows)
    if label not in sample.columns:
        raise ValueError(f"{path}: label column {label!r} not found in {list(sample.columns)}")
    columns: dict[str, dict[str, Any]] = {}
    id_column = None
    for column in sample.columns:
        spec = _column(sample[column], len(sample))
        if column == label:
            if spec["type"] != "category" or len(spec["allowed"]) != 2:
                raise ValueError(f"{path}: label {label!r} must have exactly two values")
            spec.update(roles=["label"], positive=_positive(spec["allowed"]))
        elif spec.pop("unique", False) and id_column is None:
            id_column = column
            spec.update(unique=True, roles=["id"])
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
    return draft, len(sample)


def write_draft(contract: dict, out: Path, source: Path, sampled: int) -> Path:
    header = (
        f"# Drafted by `rayapp contract infer` from {source} ({sampled} rows sampled).\n"
        "# Review before use: ranges and allowed values are what the sample showed, roles are\n"
        "# guesses (sensitive columns are kept out of the features).\n"
    )
    body = yaml.safe_dump(contract, sort_keys=False, width=120, default_flow_style=None)
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
