"""The running service fuzzed from its own OpenAPI document (schemathesis): nothing a client
sends, valid or not, gets a 5xx.

Every operation in `/openapi.json` is fed cases schemathesis generates from the schema, both
positive (bodies and parameters the schema allows) and negative (ones it forbids), with the
API key on every request. Operations with a model name in the path get the served model's name
as well as generated names, so the bodies reach validation and scoring, not only the 404.
Positive cases get their dates moved into the contract's range (the document cannot say "no
later than today"), so valid bodies are really scored. The only check is `not_a_server_error`:
the app's 4xx bodies are not in the document, so response conformance is not judged here.
Every 5xx (or dropped connection) is collected and reported together, each with its
operation, status, answer and a curl command to reproduce it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import requests
import schemathesis
from conftest import API_KEY
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup

pytestmark = pytest.mark.e2e

EXAMPLES = 20  # per operation and generation mode: 40 requests per operation
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SHOWN = 10  # failures reported in full
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database under .hypothesis/
    phases=[Phase.generate],  # failures are collected, never raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


@pytest.fixture(scope="module")
def schema(service):
    return schemathesis.openapi.from_url(f"{service}/openapi.json", timeout=30)


def _date_windows(contract) -> dict[str, tuple[int, int]]:
    """Each date column's allowed days (ordinals), from the contract: the document says only
    `format: date` (plus "no later than today"), so a schema-valid date is almost never one
    the service takes (any year from 1 to 9999)."""
    today = dt.date.today().toordinal()
    windows = {}
    for name, spec in contract.columns.items():
        if spec.type == "date":
            low = spec.min.toordinal() if isinstance(spec.min, dt.date) else 1
            high = today if spec.max in ("today", None) else spec.max.toordinal()
            windows[name] = (low, high)
    return windows


def _in_windows(windows: dict[str, tuple[int, int]]):
    """Moves each generated date of a positive case into its column's window (keeping its
    spread), so valid bodies reach scoring instead of stopping at a 422."""

    def move(case):
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("instances"), list):
            for row in body["instances"]:
                for name, (low, high) in windows.items():
                    if isinstance(row, dict) and isinstance(row.get(name), str):
                        try:
                            day = dt.date.fromisoformat(row[name]).toordinal()
                        except ValueError:
                            continue
                        row[name] = dt.date.fromordinal(low + day % (high - low + 1)).isoformat()
        return case

    return move


def _strategy(operation, mode, model: str, windows):
    """Cases for `operation`; with a `name` path parameter, half of them name the served model.
    Positive cases get their dates moved into the contract's windows."""
    generated = operation.as_strategy(generation_mode=mode)
    if "name" in {p.name for p in operation.path_parameters}:
        served = operation.as_strategy(generation_mode=mode, path_parameters={"name": model})
        generated = st.one_of(served, generated)
    if mode is schemathesis.GenerationMode.POSITIVE:
        generated = generated.map(_in_windows(windows))
    return generated


def test_no_server_errors(service, schema, result, contract):
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert labels == [
        "GET /healthz",
        "GET /v1/models/{name}",
        "POST /explain",
        "POST /predict",
        "POST /v1/models/{name}:predict",
    ], labels

    windows = _date_windows(contract)
    failures: list[str] = []
    answered: Counter[tuple[str, str, int]] = Counter()  # (operation, mode, status)

    def exercise(case, mode) -> None:
        label = f"{case.operation.label} ({mode.value})"
        try:
            response = case.call(base_url=service, headers=HEADERS, timeout=30)
        except requests.RequestException as e:  # a dropped connection is a server fault too
            answered[case.operation.label, mode.value, 0] += 1
            curl = case.as_curl_command(base_url=service)
            failures.append(f"{label}: {type(e).__name__}: {e}\n    {curl}")
            return
        answered[case.operation.label, mode.value, response.status_code] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=HEADERS)
        except FailureGroup as e:  # its message: the status, the answer and a curl command
            failures.append(f"{label}: {response.status_code}\n{str(e).strip()[:4000]}")

    def fuzz(operation, mode) -> None:
        @FUZZ
        @given(case=_strategy(operation, mode, result.model_name, windows))
        def run(case) -> None:
            exercise(case, mode)

        run()

    for operation in operations:
        for mode in schemathesis.GenerationMode:
            try:
                fuzz(operation, mode)
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no body, no constrained
                # parameter: GET /healthz, GET /v1/models/{name}); its positive cases ran.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
                assert not operation.body, operation.label

    assert not failures, (
        f"{len(failures)} server errors (first {min(len(failures), SHOWN)}; "
        f"the curl commands need `-H 'Authorization: Bearer {API_KEY}'`):\n\n"
        + "\n\n".join(failures[:SHOWN])
    )
    # Every operation was exercised; every body operation with invalid cases too, and with
    # valid ones that got through validation to the model (else the fuzzing stops at 422s).
    exercised = {(label, mode) for label, mode, _ in answered}
    tally = sorted(answered.items())
    for label in labels:
        assert (label, "positive") in exercised, (label, tally)
        if label.startswith("POST"):
            assert (label, "negative") in exercised, (label, tally)
            assert answered[label, "positive", 200] > 0, (label, "never scored", tally)
