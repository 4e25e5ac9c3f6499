"""The request schema is the contract's: real fields, types, ranges and allowed values."""

import pytest
from pydantic import ValidationError

from ray_app.model.schema import MAX_INSTANCES, request_models

GOOD = {
    "signup_date": "2020-01-01",
    "last_login": "2026-06-01",
    "monthly_charge": 49.9,
    "total_purchases": 12,
    "days_since_last_login": 29,
    "purchase_frequency": 0.5,
    "support_tickets": 1,
    "plan": "basic",
    "region": "north",
    "age": 40,
}


@pytest.fixture(scope="module")
def request_model(contract):
    return request_models(contract)[1]


def test_a_good_request_parses(request_model):
    parsed = request_model.model_validate({"instances": [GOOD]})
    assert parsed.instances[0].model_dump(by_alias=True)["plan"] == "basic"


def test_a_number_sent_for_a_category_of_digits_is_its_text():
    """Telco's SeniorCitizen is a category of "0" and "1", as a file's 0 and 1 read; a client
    sending the JSON number 0 means the same."""
    from ray_app.data.contract import load_contract

    model = request_models(load_contract("configs/telco_contract.yaml"))[0]

    def refused(value) -> list:  # the errors about this field alone (the row is partial)
        try:
            model.model_validate({"SeniorCitizen": value})
        except ValidationError as e:
            return [x for x in e.errors() if x["loc"][0] == "SeniorCitizen"]
        return []

    assert refused(0) == [] and refused("1") == []
    assert refused(2) and refused(True)


def test_a_number_sent_for_a_text_column_is_its_text(contract):
    """An id in digits is text in the contract (`contract infer` drafts it so); a client that
    sends it as a JSON number gets it read as a file's would be, not a 422."""
    ids = contract.columns["customer_id"].model_copy(update={"pattern": r"^\d+$"})
    digits = contract.model_copy(update={"columns": {**contract.columns, "customer_id": ids}})
    parsed = request_models(digits)[1].model_validate(
        {"instances": [{**GOOD, "customer_id": 1001}]}
    )
    assert parsed.instances[0].model_dump(by_alias=True)["customer_id"] == "1001"


@pytest.mark.parametrize(
    "instances, field",
    [
        ([], "instances"),
        ([{**GOOD, "plan": "gold"}], "plan"),
        ([{**GOOD, "age": "old"}], "age"),
        ([{**GOOD, "age": 7}], "age"),
        ([{**GOOD, "monthly_charge": float("nan")}], "monthly_charge"),
        ([{**GOOD, "last_login": "yesterday"}], "last_login"),
        ([{k: v for k, v in GOOD.items() if k != "region"}], "region"),
        ([{**GOOD, "shoe_size": 42}], "shoe_size"),
        ([GOOD] * (MAX_INSTANCES + 1), "instances"),
    ],
)
def test_bad_requests_name_the_field(request_model, instances, field):
    with pytest.raises(ValidationError) as err:
        request_model.model_validate({"instances": instances})
    assert field in {str(p) for e in err.value.errors() for p in e["loc"]}


def test_openapi_schema_shows_contract_types(request_model, contract):
    instance = request_model.model_json_schema()["$defs"]["Instance"]
    assert set(instance["properties"]) == {*contract.input_columns, "customer_id", "gender"}
    assert set(instance["required"]) == set(contract.input_columns)  # id, gender: optional
    assert instance["properties"]["plan"]["enum"] == ["basic", "standard", "premium"]
    assert instance["properties"]["age"]["minimum"] == 18
    assert instance["properties"]["gender"]["anyOf"][0]["enum"] == ["female", "male", "other"]


def test_today_is_the_day_of_the_request_not_of_the_replica_start(request_model, monkeypatch):
    import datetime as dt

    from ray_app.model import schema

    tomorrow = dt.date.today() + dt.timedelta(days=1)
    late = {**GOOD, "last_login": tomorrow.isoformat()}
    with pytest.raises(ValidationError, match="no later than today"):
        request_model.model_validate({"instances": [late]})
    monkeypatch.setattr(schema, "today", lambda: tomorrow)  # the clock after midnight
    request_model.model_validate({"instances": [late]})  # yesterday's model, today's rule


def test_an_integer_without_bounds_is_held_to_what_files_may_hold(contract):
    """An integer column with no `max` still refuses what a file's check refuses (past 2^53,
    `ingest.MAX_SAFE_INTEGER`), rather than scoring a value training never could have seen."""
    total = contract.columns["total_purchases"].model_copy(update={"min": None, "max": None})
    unbounded = contract.model_copy(
        update={"columns": {**contract.columns, "total_purchases": total}}
    )
    request_model = request_models(unbounded)[1]
    schema = request_model.model_json_schema()["$defs"]["Instance"]["properties"]
    assert schema["total_purchases"]["maximum"] == 2**53 - 1
    request_model.model_validate({"instances": [{**GOOD, "total_purchases": 2**53 - 1}]})
    for value in (2**53, -(2**53), 2**64):
        with pytest.raises(ValidationError, match="total_purchases"):
            request_model.model_validate({"instances": [{**GOOD, "total_purchases": value}]})
