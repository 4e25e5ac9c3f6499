"""The running service fuzzed from its own OpenAPI document (schemathesis): nothing a client
sends, valid or not, gets a 5xx.

Every operation in `/openapi.json` is fed cases schemathesis generates from the schema, both
positive (bodies and parameters the schema allows) and negative (ones it forbids), with the
API key on every request. Operations with a model name in the path get the served model's name
as well as generated names, so the bodies reach validation and scoring, not only the 404. The
only check is `not_a_server_error`: the app's 4xx bodies are not in the document, so response
conformance is not judged here. Every 5xx (or dropped connection) is collected and reported
together, each with its operation, status, body and a curl command to reproduce it.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from conftest import API_KEY
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup

pytestmark = pytest.mark.e2e

EXAMPLES = 20  # per operation and generation mode: 40 requests per operation
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database under .hypothesis/
    derandomize=False,
    phases=[Phase.generate],  # failures are collected, never raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


@pytest.fixture(scope="module")
def schema(service):
    return schemathesis.openapi.from_url(f"{service}/openapi.json", timeout=30)


def _strategy(operation, mode, model: str):
    """Cases for `operation`; with a `name` path parameter, half of them name the served model."""
    generated = operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.path_parameters}
    if "name" not in names:
        return generated
    served = operation.as_strategy(generation_mode=mode, path_parameters={"name": model})
    return st.one_of(served, generated)


def test_no_server_errors(service, schema, result):
    operations = [r.ok() for r in schema.get_all_operations()]
    import json, pathlib; pathlib.Path("/tmp/openapi.json").write_text(json.dumps(schema.raw_schema, indent=1))  # TMPDEBUG
    labels = sorted(op.label for op in operations)
    assert labels == [
        "GET /healthz",
        "GET /v1/models/{name}",
        "POST /explain",
        "POST /predict",
        "POST /v1/models/{name}:predict",
    ], labels

    failures: list[str] = []
    sent: dict[str, int] = {}

    def exercise(case) -> None:
        label = case.operation.label
        sent[label] = sent.get(label, 0) + 1
        try:
            response = case.call(base_url=service, headers=HEADERS, timeout=30)
        except requests.RequestException as e:  # a dropped connection is a server fault too
            failures.append(f"{label}: {type(e).__name__}: {e}\n  {case.as_curl_command()}")
            return
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=HEADERS)
        except FailureGroup as e:
            failures.append(
                f"{label}: {response.status_code}\n  body sent: {case.body!r}\n"
                f"  query: {case.query!r}  path: {case.path_parameters!r}\n"
                f"  answer: {response.text[:2000]}\n{e}"
            )

    for operation in operations:
        for mode in schemathesis.GenerationMode:

            @FUZZ
            @given(case=_strategy(operation, mode, result.model_name))
            def fuzz(case) -> None:
                exercise(case)

            try:  # TMPDEBUG
                fuzz()
            except Exception as e:  # TMPDEBUG
                print("UNSAT", operation.label, mode, type(e).__name__)  # TMPDEBUG

    print("SENT", sent)  # TMPDEBUG
    assert not failures, f"{len(failures)} server errors:\n\n" + "\n\n".join(failures)
    # Every operation was really exercised (one without inputs has a single distinct case).
    assert all(label in sent for label in labels), sent
