"""Request and response schemas of a model, generated from its data contract.

They belong to the model, not to HTTP: Serve validates requests with them, the gate's latency
check times the same validation, and `to_records` turns table rows into request instances.
The request model has one field per input column of the contract, with its real type, range
and allowed values, so FastAPI rejects bad input with a 422 naming the field and `/docs`
shows the true schema instead of a free-form dict.
"""

from __future__ import annotations

import datetime as dt
import operator
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from ray_app.data.contract import ColumnSpec, Contract, Rule
from ray_app.data.ingest import MAX_SAFE_INTEGER
from ray_app.features import FeatureSet

MAX_INSTANCES = 10_000  # rows per request unless the application's args say otherwise
_PY_TYPES: dict[str, Any] = {
    "integer": int,
    "float": float,
    "string": str,
    "date": dt.date,
    "boolean": bool,
}


def today() -> dt.date:
    return dt.date.today()


def _not_after_today(value: dt.date | None) -> dt.date | None:
    """`max: today`, judged on the day of the request (not the day the replica started)."""
    if value is not None and value > today():
        raise ValueError(f"Date should be no later than today ({today()})")
    return value


def _as_text(value: Any) -> Any:
    """A number sent for a text column's allowed values is its text, as a file's would be."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _field(name: str, spec: ColumnSpec) -> tuple[Any, Any]:
    kind: Any = Literal[tuple(spec.allowed)] if spec.allowed else _PY_TYPES.get(spec.type, str)
    if spec.allowed and spec.type in ("string", "category"):
        kind = Annotated[kind, BeforeValidator(_as_text)]
    bounds: dict[str, Any] = {}
    if spec.type in ("integer", "float", "date"):
        bounds = {"ge": spec.min, "le": None if spec.max == "today" else spec.max}
    if spec.type == "float":
        bounds["allow_inf_nan"] = False
    if spec.type == "integer":  # what files may hold too (`ingest.MAX_SAFE_INTEGER`)
        low, high = bounds["ge"], bounds["le"]
        bounds["ge"] = -MAX_SAFE_INTEGER if low is None else max(low, -MAX_SAFE_INTEGER)
        bounds["le"] = MAX_SAFE_INTEGER if high is None else min(high, MAX_SAFE_INTEGER)
    if spec.max == "today":
        kind = Annotated[kind, AfterValidator(_not_after_today)]
        bounds["description"] = "no later than today"
    if spec.pattern is not None and not spec.allowed:
        bounds["pattern"] = spec.pattern
    if spec.nullable:
        return (kind | None, Field(None, alias=name, **bounds))
    return (kind, Field(..., alias=name, **bounds))


def request_models(
    contract: Contract, max_instances: int = MAX_INSTANCES
) -> tuple[type[BaseModel], type[BaseModel]]:
    """(Instance, PredictRequest) pydantic models for a contract's input columns; a request
    holds 1 to `max_instances` rows."""
    fields = {
        f"f{i}": _field(name, contract.columns[name])
        for i, name in enumerate(contract.input_columns)
    }
    for i, name in enumerate(contract.passthrough_columns):  # optional, never fed to the model
        spec = contract.columns[name].model_copy(update={"nullable": True})
        fields[f"p{i}"] = _field(name, spec)
    keys = {spec.alias: key for key, (_, spec) in fields.items()}  # column -> field name
    rules = [r for r in contract.rules if r.column in keys and r.other in keys]
    instance = create_model(
        "Instance",
        # Python's `re`, as the contract's checks of files use (GX's pandas engine, batch
        # scoring): a pattern means the same thing in a file and in a request. A number sent
        # for a text column (an id in digits) is its text, as a file's would be.
        __config__=ConfigDict(
            extra="forbid",
            populate_by_name=False,
            regex_engine="python-re",
            coerce_numbers_to_str=True,
        ),
        __validators__={"_rules": model_validator(mode="after")(_rules_check(rules, keys))},
        **fields,
    )
    request = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        instances=(list[instance], Field(..., min_length=1, max_length=max_instances)),
    )
    return instance, request


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def _rules_check(rules: list[Rule], keys: dict[str, str]) -> Any:
    """The contract's cross-column rules (`last_login >= signup_date`) on one row, as the
    checks of files apply them: a row with either value null is not judged."""

    def check(row: BaseModel) -> BaseModel:
        for rule in rules:
            a, b = getattr(row, keys[rule.column]), getattr(row, keys[rule.other])
            if a is not None and b is not None and not _OPS[rule.op](a, b):
                raise ValueError(f"{rule.column} ({a}) must be {rule.op} {rule.other} ({b})")
        return row

    return check


def request_schema(fs: FeatureSet) -> dict[str, Any]:
    """The JSON schema a model's requests are validated against: equal for two models means
    one ingress can serve both."""
    return request_models(fs.parsed_contract())[1].model_json_schema()


class Prediction(BaseModel):
    probability: float = Field(description="probability of the positive label")
    label: Any = Field(description="predicted label value at the serving threshold")
    id: Any = Field(None, description="the row's id column, when the request carried it")


class PredictResponse(BaseModel):
    request_id: str | None = Field(None, description="X-Request-ID as sent, else generated")
    variant: str | None = Field(None, description="the route's variant that answered")
    model_name: str
    model_version: str
    threshold: float = Field(description="probability at or above which the label is positive")
    predictions: list[Prediction]


class Contribution(BaseModel):
    feature: str
    value: Any = Field(description="the feature's value in this row")
    contribution: float = Field(description="SHAP value, in log-odds")


class Explanation(Prediction):
    base_value: float = Field(description="the model's mean output, in log-odds")
    contributions: list[Contribution] = Field(description="largest absolute SHAP values first")


class ExplainResponse(BaseModel):
    request_id: str | None = None
    variant: str | None = None
    model_name: str
    model_version: str
    threshold: float
    explanations: list[Explanation]


def records(request: BaseModel) -> list[dict[str, Any]]:
    """A validated request's instances as raw records keyed by column name."""
    return [i.model_dump(by_alias=True) for i in request.instances]  # type: ignore[attr-defined]


def to_records(df: pd.DataFrame, contract: Contract) -> list[dict[str, Any]]:
    """Rows of a typed frame as JSON-ready request instances (dates as YYYY-MM-DD)."""
    out = df[contract.input_columns].copy()
    for name in contract.input_columns:
        if contract.columns[name].type == "date":
            out[name] = out[name].dt.strftime("%Y-%m-%d")
    out = out.astype(object).where(out.notna(), None)
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in out.to_dict("records")
    ]
