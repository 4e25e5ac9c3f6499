"""The data contract: the one source of truth for a table's columns, types, ranges and roles.

A contract is plain YAML (`configs/contract.yaml`). Everything downstream asks it questions
instead of naming columns: which column is the id or the label, which are features, which are
sensitive or slices. `expectations()` compiles it into a Great Expectations suite.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_app.config import ConfigError, load_yaml, validate

if TYPE_CHECKING:  # importing GX takes seconds; serving and training never need it
    import great_expectations.expectations as gxe

ColumnType = Literal["integer", "float", "string", "category", "date", "boolean"]
Role = Literal["id", "label", "feature", "sensitive", "slice", "timestamp"]
NUMERIC_TYPES = ("integer", "float")


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ColumnType
    nullable: bool = True
    max_null_fraction: float | None = Field(None, ge=0, le=1)  # for nullable columns
    min: float | dt.date | None = None
    max: float | dt.date | Literal["today"] | None = None  # "today": no dates in the future
    allowed: list[Any] | None = None
    pattern: str | None = None  # regular expression every value must match (text columns)
    unique: bool = False
    roles: list[Role] = Field(default_factory=list)
    positive: Any = None  # the label's positive class value (label column only)
    # Text that means "missing" in this column, besides what every column reads as missing
    # (ingest.NULL_TOKENS): e.g. ['?'] or ['-999']. Compared after trimming spaces.
    # `rayapp contract infer` writes it where it finds such markers.
    null_values: list[Any] = Field(default_factory=list)
    # Every `allowed` value must occur at least once in the whole dataset (counted across all
    # batches), e.g. each class a model must learn. The label always needs both its classes,
    # without this being set.
    require_all_values: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in (
            *NUMERIC_TYPES,
            "date",
        ):
            raise ValueError(f"min/max only apply to numeric and date columns, not {self.type}")
        if self.max == "today" and self.type != "date":
            raise ValueError("max: today only applies to date columns")
        for bound in (self.min, self.max):
            if bound not in (None, "today") and isinstance(bound, dt.date) != (self.type == "date"):
                kind = "a date" if self.type == "date" else "a number"
                raise ValueError(f"min/max of a {self.type} column must be {kind}, not {bound!r}")
        if self.pattern is not None and self.type not in ("string", "category"):
            raise ValueError("pattern only applies to string and category columns")
        if self.type == "category" and not self.allowed:
            raise ValueError("a category column needs its `allowed` values")
        if self.require_all_values and not self.allowed:
            raise ValueError("require_all_values needs the `allowed` values to require")
        self.null_values = [str(v).strip() for v in self.null_values]
        both = [v for v in self.allowed or [] if str(v) in self.null_values]
        if both:
            raise ValueError(f"values {both} are both allowed and in null_values")
        if self.type in ("category", "string"):
            if flags := [v for v in self.allowed or [] if isinstance(v, bool)]:
                raise ValueError(
                    f"allowed values {flags} were read by YAML as booleans (unquoted yes/no, "
                    "on/off, true/false): quote them, e.g. ['Yes', 'No'], as the data spells them"
                )
            # Text columns are compared as text, even where YAML wrote a value as a number.
            if self.allowed is not None:
                self.allowed = [str(v) for v in self.allowed]
            if self.positive is not None:
                self.positive = str(self.positive)
        if "label" in self.roles:
            if self.positive is None:
                raise ValueError("the label column needs `positive` (its positive class value)")
            if self.allowed is None or len(self.allowed) != 2:
                # A binary classifier: every prediction names one of the two classes (with
                # one only, a negative prediction had no label to write).
                raise ValueError(
                    f"the label column needs `allowed`: its two class values, got {self.allowed}"
                )
            if self.positive not in self.allowed:
                raise ValueError(f"positive label {self.positive!r} is not in allowed values")
        return self


class DerivedSpec(BaseModel):
    """A feature computed from other columns; `days_between` is end minus start in days."""

    model_config = ConfigDict(extra="forbid")

    name: str
    op: Literal["days_between"]
    start: str
    end: str

    @property
    def sources(self) -> list[str]:
        return [self.start, self.end]


class RowBounds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(1, ge=0)
    max: int | None = None


class Rule(BaseModel):
    """A cross-column rule, e.g. `{column: last_login, op: ">=", other: signup_date}`."""

    model_config = ConfigDict(extra="forbid")

    column: str
    op: Literal[">=", ">", "<=", "<", "=="]
    other: str

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.other}"


class ReferenceSpec(BaseModel):
    """Statistical checks against the profile of a trusted dataset (`rayapp contract infer`)."""

    model_config = ConfigDict(extra="forbid")

    profile: Path  # JSON written by ray_app.data.profile; relative to the contract file
    mean_tolerance: float = 0.2  # in reference standard deviations
    quantile_tolerance: float = 0.3  # in reference standard deviations
    ks_pvalue: float = 1e-3  # fail when the KS test's p-value is below this
    chi2_pvalue: float = 1e-3
    data: dict[str, Any] | None = None  # the loaded profile

    def numeric_edges(self) -> dict[str, list[float]]:
        return {c: s["edges"] for c, s in (self.data or {}).get("numeric", {}).items()}

    def categorical(self) -> list[str]:
        return list((self.data or {}).get("categorical", {}))


@dataclass(frozen=True)
class Check:
    """One compiled expectation (a Great Expectations type and its arguments) and the share of
    rows allowed to break it. Plain data, so that checking a batch needs no GX import
    (`data.rules` evaluates it); `expectation` builds the GX object where GX itself runs."""

    type: str  # a GX expectation type, e.g. expect_column_values_to_be_between
    kwargs: dict[str, Any]
    max_fraction: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        """(expectation type, column or rule) as reported."""
        return check_key(self.type, self.kwargs)

    @property
    def expectation(self) -> gxe.Expectation:
        import great_expectations.expectations as gxe

        cls = getattr(gxe, "".join(part.capitalize() for part in self.type.split("_")))
        return cls(**self.kwargs)


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    columns: dict[str, ColumnSpec]
    derived: list[DerivedSpec] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    rows: RowBounds = RowBounds()
    reference: ReferenceSpec | None = None

    @model_validator(mode="after")
    def _roles(self) -> Contract:
        counts = Counter(role for spec in self.columns.values() for role in spec.roles)
        if counts["label"] != 1:
            raise ValueError(f"exactly one column must have role `label`, found {counts['label']}")
        for role in ("id", "timestamp"):
            if counts[role] > 1:
                raise ValueError(f"at most one column may have role `{role}`")
        if not self.feature_columns and not self.derived:
            raise ValueError("no column has role `feature` and nothing is derived")
        for rule in self.rules:
            for name in (rule.column, rule.other):
                if name not in self.columns:
                    raise ValueError(f"rule `{rule}`: unknown column `{name}`")
        for d in self.derived:
            for src in d.sources:
                if src not in self.columns or self.columns[src].type != "date":
                    raise ValueError(f"derived `{d.name}`: source `{src}` must be a date column")
            if d.name in self.columns:
                raise ValueError(f"derived `{d.name}` clashes with a column of the same name")
        return self

    def _with_role(self, role: Role) -> list[str]:
        return [name for name, spec in self.columns.items() if role in spec.roles]

    def _one(self, role: Role) -> str | None:
        found = self._with_role(role)
        return found[0] if found else None

    @cached_property
    def label_column(self) -> str:
        return self._with_role("label")[0]

    @property
    def positive_label(self) -> Any:
        return self.columns[self.label_column].positive

    @property
    def negative_label(self) -> Any:
        """The other allowed label value, when the label has exactly two; else None."""
        allowed = self.columns[self.label_column].allowed or []
        others = [v for v in allowed if v != self.positive_label]
        return others[0] if len(allowed) == 2 and len(others) == 1 else None

    @property
    def id_column(self) -> str | None:
        return self._one("id")

    @property
    def timestamp_column(self) -> str | None:
        return self._one("timestamp")

    @cached_property
    def feature_columns(self) -> list[str]:
        return self._with_role("feature")

    @property
    def sensitive_columns(self) -> list[str]:
        return self._with_role("sensitive")

    @property
    def slice_columns(self) -> list[str]:
        return self._with_role("slice")

    @cached_property
    def input_columns(self) -> list[str]:
        """Columns a prediction request must carry: features plus sources of derived features."""
        needed = set(self.feature_columns) | {s for d in self.derived for s in d.sources}
        return [name for name in self.columns if name in needed]

    @cached_property
    def passthrough_columns(self) -> list[str]:
        """Columns a request may carry that are never fed to the model: the id (echoed, the key
        delayed labels are joined on) and sensitive columns (for live fairness)."""
        wanted = [self.id_column, *self.sensitive_columns]
        return [n for n in self.columns if n in wanted and n not in self.input_columns]

    def checks(self) -> list[Check]:
        """Compile the contract into Great Expectations expectations, one per rule. Tolerances
        (`max_null_fraction`) are applied to totals over all batches, not per batch."""
        out: list[Check] = []

        def add(expectation_type: str, max_fraction: float = 0.0, **kwargs: Any) -> None:
            out.append(Check(expectation_type, kwargs, max_fraction))

        for name, spec in self.columns.items():
            if not spec.nullable or spec.max_null_fraction is not None:
                tolerance = spec.max_null_fraction if spec.nullable else 0.0
                add("expect_column_values_to_not_be_null", tolerance or 0.0, column=name)
            if spec.min is not None or spec.max is not None:
                add(
                    "expect_column_values_to_be_between",
                    column=name,
                    min_value=_gx_bound(spec.min),
                    max_value=_gx_bound(spec.max),
                )
            if spec.allowed is not None:
                add("expect_column_values_to_be_in_set", column=name, value_set=spec.allowed)
            if spec.pattern is not None:
                add("expect_column_values_to_match_regex", column=name, regex=spec.pattern)
        for rule in self.rules:
            a, b = (
                (rule.column, rule.other) if rule.op in (">=", ">") else (rule.other, rule.column)
            )
            # A row missing either value is not judged (its nulls are the null checks'
            # business), as a request is not: a rule does not make a nullable column required.
            pair = {"column_A": a, "column_B": b, "ignore_row_if": "either_value_is_missing"}
            if rule.op == "==":
                add("expect_column_pair_values_to_be_equal", **pair)
            else:
                add(
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    **pair,
                    or_equal=rule.op in (">=", "<="),
                )
        return out

    def expectations(self) -> list[gxe.Expectation]:
        return [c.expectation for c in self.checks()]

    @property
    def presence_columns(self) -> list[str]:
        """Columns whose values are counted over the whole dataset, to check that the values a
        model needs occur at all: the label, and columns with `require_all_values`."""
        return [
            name
            for name, spec in self.columns.items()
            if spec.require_all_values or "label" in spec.roles
        ]

    @property
    def unique_columns(self) -> list[str]:
        """Columns whose values must be unique across the whole dataset (checked globally)."""
        return [n for n, s in self.columns.items() if s.unique]


def check_key(expectation_type: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    """How a check is named in reports: its type and its column (or `A,B` for pairs)."""
    column = kwargs.get("column") or ",".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if kwargs.get(k)
    )
    return expectation_type, column or ""


def _gx_bound(value: float | dt.date | str | None) -> Any:
    if value == "today":
        return dt.datetime.combine(dt.date.today(), dt.time.max)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return value


def load_contract(path: str | Path) -> Contract:
    """Load a contract YAML; errors name the file and the offending field."""
    contract = validate(Contract, load_yaml(path), f"invalid data contract {path}")
    if contract.reference is not None and contract.reference.data is None:
        profile = Path(path).parent / contract.reference.profile
        if not profile.is_file():
            raise ConfigError(
                f"invalid data contract {path}: reference profile {profile} not found"
            )
        contract.reference.data = json.loads(profile.read_text())
    return contract
