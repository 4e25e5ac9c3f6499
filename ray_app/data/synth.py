"""The built-in customer-churn dataset: realistic, deterministic for a seed, any size.

This is the only module that names churn columns; everything else reads them from the
contract. Rows are produced in fixed-size chunks, each from its own `[seed, chunk]` random
stream, so the output is identical for a seed whatever the file size or format, and memory
stays bounded at 10M rows. Knobs inject drift (shifted distributions, a different churn rate,
changed effects of features on churn)
and corruption (nulls, negative amounts, future dates, swapped columns, numbers as strings) so
that monitoring and validation can be exercised on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REFERENCE_DATE = pd.Timestamp("2026-06-30")
CHUNK_ROWS = 100_000
PLANS = np.array(["basic", "standard", "premium"])
REGIONS = np.array(["north", "south", "east", "west"])
GENDERS = np.array(["female", "male", "other"])
NUMERIC_COLUMNS = (
    "monthly_charge",
    "total_purchases",
    "days_since_last_login",
    "purchase_frequency",
    "support_tickets",
    "age",
)
DEFAULT_CHURN_RATE = 0.25


# Weights of the churn log-odds' terms (`_logit`); `Drift.effects` changes them: concept drift,
# where the same customer churns at another rate, which only a retrained model can follow.
EFFECTS = {
    "login": 2.2,  # log1p(days since last login)
    "tickets": 0.9,  # support tickets (x1.6 on the basic plan, x0.8 otherwise)
    "frequency": -1.8,  # sqrt(purchase frequency)
    "tenure": -1.6,  # tanh(tenure years / 2)
    "age": 0.003,  # (age - 45)^2
    "charge": 0.03,  # monthly charge above 60
    "south": 0.6,  # customers in the south region
}


@dataclass(frozen=True)
class Drift:
    """Shift named numeric columns by a constant (covariate drift), change the class balance,
    and/or change how features drive churn (`effects`: concept drift)."""

    shift: dict[str, float] = field(default_factory=dict)
    churn_rate: float = DEFAULT_CHURN_RATE
    effects: dict[str, float] = field(default_factory=dict)

    def weights(self) -> tuple[tuple[str, float], ...]:
        unknown = sorted(set(self.effects) - set(EFFECTS))
        if unknown:
            raise ValueError(f"drift effects: unknown term(s) {unknown}; use {sorted(EFFECTS)}")
        return tuple({**EFFECTS, **self.effects}.items())


@dataclass(frozen=True)
class Corruption:
    """Fractions of rows to damage, for exercising validation. All off by default."""

    nulls: dict[str, float] = field(default_factory=dict)
    negative_amounts: float = 0.0
    future_dates: float = 0.0
    numbers_as_strings: dict[str, float] = field(default_factory=dict)
    swap_columns: tuple[str, str] | None = None


def _features(rng: np.random.Generator, n: int, shift: dict[str, float]) -> pd.DataFrame:
    plan = rng.choice(PLANS, n, p=[0.5, 0.35, 0.15])
    tenure = rng.integers(30, 4000, n)
    dsl = np.minimum(np.round(rng.exponential(20.0, n)), tenure - 1).astype(np.int64)
    base_charge = np.select([plan == "basic", plan == "standard"], [19.0, 49.0], 89.0)
    charge = np.round(np.maximum(base_charge + rng.normal(0, 8, n), 1.0), 2)
    months = np.maximum(tenure / 30.4, 1.0)
    frequency_rate = rng.gamma(2.0, 1.2, n)
    purchases = rng.poisson(frequency_rate * months)
    age = np.clip(np.round(rng.normal(44, 15, n)), 18, 95).astype(np.int64)
    df = pd.DataFrame(
        {
            "signup_date": REFERENCE_DATE - pd.to_timedelta(tenure, unit="D"),
            "last_login": REFERENCE_DATE - pd.to_timedelta(dsl, unit="D"),
            "monthly_charge": charge,
            "total_purchases": purchases.astype(np.int64),
            "days_since_last_login": dsl,
            "purchase_frequency": np.round(purchases / months, 3),
            "support_tickets": rng.poisson(0.6 + 1.5 * (charge > 70) * rng.random(n), n),
            "plan": plan,
            "region": rng.choice(REGIONS, n, p=[0.3, 0.25, 0.25, 0.2]),
            "age": age,
            "gender": rng.choice(GENDERS, n, p=[0.49, 0.49, 0.02]),
        }
    )
    for column, delta in shift.items():
        if column not in NUMERIC_COLUMNS:
            raise ValueError(
                f"drift shift: unknown numeric column {column!r}; use {NUMERIC_COLUMNS}"
            )
        df[column] = (df[column] + delta).astype(df[column].dtype)
    return df


def _logit(
    df: pd.DataFrame, noise: np.ndarray, weights: tuple[tuple[str, float], ...]
) -> np.ndarray:
    """Churn log-odds: non-linear in the features, with noise so no model reaches AUC 1.0."""
    w = dict(weights)
    tenure_years = (df["last_login"] - df["signup_date"]).dt.days.to_numpy() / 365.0
    basic = (df["plan"] == "basic").to_numpy()
    return (
        w["login"] * np.log1p(df["days_since_last_login"].to_numpy())
        + w["tickets"] * df["support_tickets"].to_numpy() * np.where(basic, 1.6, 0.8)
        + w["frequency"] * np.sqrt(df["purchase_frequency"].to_numpy())
        + w["tenure"] * np.tanh(tenure_years / 2.0)
        + w["age"] * (df["age"].to_numpy() - 45.0) ** 2
        + w["charge"] * np.maximum(df["monthly_charge"].to_numpy() - 60.0, 0.0)
        + w["south"] * (df["region"] == "south").to_numpy()
        + noise
    )


@lru_cache(maxsize=8)
def _intercept(churn_rate: float, weights: tuple[tuple[str, float], ...]) -> float:
    """Intercept that gives `churn_rate` on a fixed reference sample (bisection)."""
    if not 0.0 < churn_rate < 1.0:
        raise ValueError(f"churn_rate must be in (0, 1), got {churn_rate}")
    rng = np.random.default_rng([0, 0])
    ref = _features(rng, 50_000, {})
    z = _logit(ref, rng.normal(0, 0.6, len(ref)), weights)
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        rate = float(np.mean(1.0 / (1.0 + np.exp(-(z + mid)))))
        lo, hi = (mid, hi) if rate < churn_rate else (lo, mid)
    return (lo + hi) / 2


def _chunk(seed: int, index: int, n: int, drift: Drift) -> pd.DataFrame:
    rng = np.random.default_rng([seed, index])
    df = _features(rng, n, drift.shift)
    weights = drift.weights()
    z = _logit(df, rng.normal(0, 0.6, n), weights) + _intercept(drift.churn_rate, weights)
    df["churned"] = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    start = index * CHUNK_ROWS
    df.insert(0, "customer_id", [f"C{i:09d}" for i in range(start, start + n)])
    return df


def _corrupt(df: pd.DataFrame, rng: np.random.Generator, c: Corruption) -> pd.DataFrame:
    def pick(frac: float) -> np.ndarray:
        return rng.random(len(df)) < frac

    for column, frac in c.nulls.items():
        df[column] = df[column].astype(object).where(~pick(frac), None)
    if c.negative_amounts:  # of the amounts still there, with `nulls` on the same column
        rows = pick(c.negative_amounts) & df["monthly_charge"].notna().to_numpy()
        df.loc[rows, "monthly_charge"] = -df.loc[rows, "monthly_charge"]
    if c.future_dates:
        df.loc[pick(c.future_dates), "last_login"] = pd.Timestamp("2031-01-01")
    for column, frac in c.numbers_as_strings.items():
        as_text = df[column].map(lambda v: f"{v:.2f} USD" if pd.notna(v) else None)
        df[column] = df[column].astype(object).where(~pick(frac), as_text)
        df[column] = df[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    if c.swap_columns:
        a, b = c.swap_columns
        df = df.rename(columns={a: b, b: a})[list(df.columns)]
    return df


def generate(
    rows: int,
    seed: int = 42,
    drift: Drift | None = None,
    corruption: Corruption | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the table in chunks of at most CHUNK_ROWS rows."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    drift = drift or Drift()
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        df = _chunk(seed, index, min(CHUNK_ROWS, rows - start), drift)
        if corruption is not None:
            df = _corrupt(df, np.random.default_rng([seed, index, 1]), corruption)
        yield df


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    out = df.copy()
    for column in ("signup_date", "last_login"):
        if column in out and pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].dt.strftime("%Y-%m-%d")
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: None if v is None else str(v))
    return pa.Table.from_pandas(out, preserve_index=False)


def write(
    path: str | Path,
    rows: int,
    seed: int = 42,
    fmt: Literal["csv", "parquet"] | None = None,
    drift: Drift | None = None,
    corruption: Corruption | None = None,
) -> Path:
    """Write the table to one CSV or Parquet file, chunk by chunk; returns the path."""
    path = Path(path)
    fmt = fmt or ("parquet" if path.suffix == ".parquet" else "csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer: pacsv.CSVWriter | pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for df in generate(rows, seed, drift, corruption):
            table = _to_arrow(df)
            if writer is None:
                schema = table.schema
                writer = (
                    pq.ParquetWriter(tmp, schema)
                    if fmt == "parquet"
                    else pacsv.CSVWriter(tmp, schema)
                )
            writer.write_table(table.cast(schema))
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return path
