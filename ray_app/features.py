"""Features, defined once and applied by the same code in training and in Serve.

`fit` learns the categorical vocabularies on the training split with Ray Data's
`OrdinalEncoder`; the result is a small JSON document (`FeatureSet`) saved with the model, not a
pickle. `transform` turns a pandas frame into the model's float32 matrix: Ray Data batches in
training and the rows of an HTTP request in Serve go through this one function, so the two paths
cannot drift apart (tests/test_features.py proves it).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.preprocessors import OrdinalEncoder

from ray_app.config import SplitConfig
from ray_app.data.contract import Contract
from ray_app.data.ingest import is_arrow_text
from ray_app.data.snapshot import Snapshot, read_snapshot
from ray_app.data.split import TEST, TRAIN, VALID, split_dataset

LABEL = "label"  # column holding the 0/1 target in transformed datasets
_NULL = "__null__"  # placeholder so the encoder never sees nulls; never part of a vocabulary


@dataclass
class FeatureSet:
    """Everything needed to turn raw rows into model input, as plain JSON-able data."""

    contract: dict[str, Any]
    numeric: list[str]
    categorical: dict[str, list[str]]
    derived: list[dict[str, str]] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical, *(d["name"] for d in self.derived)]

    def parsed_contract(self) -> Contract:
        return Contract.model_validate(self.contract)

    def to_json(self) -> str:
        # Key order is feature order: sorting keys would reorder a model's columns on reload.
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> FeatureSet:
        return cls(**json.loads(text))


def fit(train: ray.data.Dataset, contract: Contract) -> FeatureSet:
    """Fit the vocabularies of the categorical features on the training split."""
    types = {name: contract.columns[name].type for name in contract.feature_columns}
    numeric = [n for n, t in types.items() if t in ("integer", "float", "boolean")]
    categorical = [n for n, t in types.items() if t in ("category", "string")]
    vocab: dict[str, list[str]] = {}
    if categorical:
        filled = train.select_columns(categorical).map_batches(
            lambda b: b.fillna(_NULL), batch_format="pandas"
        )
        stats = OrdinalEncoder(columns=categorical).fit(filled).stats_
        for name in categorical:
            seen = stats[f"unique_values({name})"]
            vocab[name] = sorted(v for v in seen if v != _NULL)
    return FeatureSet(
        contract=json.loads(contract.model_dump_json()),
        numeric=numeric,
        categorical=vocab,
        derived=[d.model_dump() for d in contract.derived],
    )


def transform(df: pd.DataFrame, fs: FeatureSet) -> pd.DataFrame:
    """Model input for raw rows: float32 columns in `fs.feature_names` order; null and
    unseen categories become NaN, which XGBoost treats as missing."""
    out: dict[str, np.ndarray] = {}
    for name in fs.numeric:
        out[name] = _numbers(df[name]).to_numpy(np.float32, na_value=np.nan)
    for name, values in fs.categorical.items():
        out[name] = _codes(df[name], values)
    for d in fs.derived:
        days = (_dates(df[d["end"]]) - _dates(df[d["start"]])).dt.days
        out[d["name"]] = days.to_numpy(np.float32, na_value=np.nan)
    return pd.DataFrame(out, index=df.index)


def encoder(fs: FeatureSet) -> Callable[[list[dict[str, Any]]], np.ndarray]:
    """`transform` compiled for request rows: records (validated against the contract) straight
    to the float32 matrix, with the vocabularies turned into dicts once. A request of a few rows
    never builds a frame, which costs more than the prediction. Same output as `transform`
    (tests/test_features.py compares them on real rows with nulls and unseen values)."""
    numeric = list(fs.numeric)
    codes = [(name, {v: float(i) for i, v in enumerate(vs)}) for name, vs in fs.categorical.items()]
    derived = [(d["start"], d["end"]) for d in fs.derived]
    width, nan = len(fs.feature_names), np.nan

    def encode(records: list[dict[str, Any]]) -> np.ndarray:
        out = np.empty((len(records), width), dtype=np.float32)
        for r, row in enumerate(records):
            values = [nan if (v := row.get(n)) is None else _number(v) for n in numeric]
            values += [vocab.get(row.get(n), nan) for n, vocab in codes]
            values += [_days(row.get(start), row.get(end)) for start, end in derived]
            out[r] = values
        return out

    return encode


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # what pd.to_numeric(errors="coerce") makes NaN
        return np.nan


def _days(start: Any, end: Any) -> float:
    start, end = _date(start), _date(end)
    return np.nan if start is None or end is None else float((end - start).days)


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()  # days between dates, as pandas counts them on midnight stamps
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value is not None else None
    except ValueError:
        return None


# Conversions only where needed: on the few rows of a request, pandas' per-call overhead is
# most of the cost of serving.
def _numbers(column: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        return column
    return pd.to_numeric(column, errors="coerce")


def _codes(column: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """A category's position in its vocabulary, NaN for null or a value not in it. Arrow's
    kernel for Arrow strings (what `coerce` makes of text, and Ray Data's pandas batches hold;
    4x pandas' `get_indexer` on them), pandas' for Python strings (a plain pandas frame)."""
    if is_arrow_text(column):
        kind = column.dtype.pyarrow_dtype
        found = pc.index_in(pa.array(column), value_set=pa.array(vocabulary, kind))
        return found.to_numpy(zero_copy_only=False).astype(np.float32)  # null → NaN
    codes = pd.Index(vocabulary).get_indexer(column).astype(np.float32)
    codes[codes < 0] = np.nan  # -1: null, or a category not in the vocabulary
    return codes


def _dates(column: pd.Series) -> pd.Series:
    """Midnight of each value's day: a day count is between calendar dates, as `encoder`
    counts it from a request's dates, whatever time of day a file's values carry."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        column = pd.to_datetime(column, errors="coerce")
    return column.dt.normalize()


def encode_label(df: pd.DataFrame, contract: Contract) -> np.ndarray:
    """The label as 0/1, positive class from the contract."""
    raw = df[contract.label_column]
    positive = contract.positive_label
    if contract.columns[contract.label_column].type in ("category", "string"):
        return (raw.astype(str) == str(positive)).to_numpy(np.int32)
    return (pd.to_numeric(raw) == positive).to_numpy(np.int32)


def _model_frame(batch: pd.DataFrame, fs_json: str) -> pd.DataFrame:
    fs = FeatureSet.from_json(fs_json)
    out = transform(batch, fs)
    out[LABEL] = encode_label(batch, fs.parsed_contract())
    return out


def transform_dataset(ds: ray.data.Dataset, fs: FeatureSet) -> ray.data.Dataset:
    """The batch path: features plus the 0/1 label for every row of a Ray dataset."""
    return ds.map_batches(_model_frame, fn_kwargs={"fs_json": fs.to_json()}, batch_format="pandas")


@dataclass
class ModelData:
    """A snapshot split by id and turned into model inputs, with the fitted features."""

    features: FeatureSet
    raw: dict[str, ray.data.Dataset]  # train/valid/test as typed rows of the contract (lazy)
    splits: dict[str, ray.data.Dataset]  # the same, transformed and materialised
    counts: dict[str, int]


def prepare(
    snap: Snapshot, contract: Contract, split: SplitConfig, log: Callable[[str], None]
) -> ModelData:
    """Split, fit features on train only, transform every split: what training and tuning
    both start from."""
    raw = split_dataset(read_snapshot(snap).materialize(), contract.id_column, split)
    fs = fit(raw[TRAIN], contract)
    model_data = {k: transform_dataset(v, fs).materialize() for k, v in raw.items()}
    counts = {k: v.count() for k, v in model_data.items()}
    log(
        f"[features] {len(fs.feature_names)} features fitted on train; rows train/valid/test = "
        f"{counts[TRAIN]}/{counts[VALID]}/{counts[TEST]}"
    )
    return ModelData(fs, raw, model_data, counts)
