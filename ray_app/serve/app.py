"""The Serve application: a FastAPI ingress in front of the model deployment.

`app_builder` (the import path of `serve_config.yaml` and `serve.run`) loads the version the
alias points at when the application is built; its contract fixes the request schema. The
ingress builds its FastAPI app from it at replica start (`__serve_build_asgi_app__`), so
`/docs` and request validation match the models that answer, and the model replicas serve
only versions with that schema. `/predict`, `/explain` and KServe's V1 routes share them.

No `from __future__ import annotations` here: FastAPI must see the request model built at
runtime as a real annotation, not a string it would look up in module globals.
"""

import json
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ray_app import registry, tracking
from ray_app.features import FeatureSet
from ray_app.model.loaded import load
from ray_app.model.ref import ModelRef
from ray_app.model.schema import (
    MAX_INSTANCES,
    ExplainResponse,
    PredictResponse,
    records,
    request_models,
)
from ray_app.serve.model import ModelServer


class AppArgs(BaseModel):
    """Arguments of the application, from `serve_config.yaml` (`args:`)."""

    model_name: str
    alias: str = registry.PRODUCTION
    max_instances: int = Field(MAX_INSTANCES, ge=1)  # rows per request; more is a 422
    max_body_bytes: int = Field(10 * 2**20, ge=1024)  # larger bodies get 413, unread


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field as `instances[i].column`, with what was expected."""
    errors = []
    for err in exc.errors():
        if err["type"] == "json_invalid":
            where = "body"  # the location is a character offset, not a field
        else:
            where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        errors.append({"field": where, "error": err["msg"], "input": _short(err.get("input"))})
    summary = "; ".join(f"{e['field']}: {e['error']}" for e in errors[:10])
    return JSONResponse(status_code=422, content={"detail": summary, "errors": errors[:50]})


def _short(value: Any) -> Any:
    """The offending input as the client sent it, if JSON can carry it back (NaN and Infinity
    cannot: they are shown as text), and cut to 200 characters."""
    try:
        text, shown = json.dumps(value, allow_nan=False), value
    except (TypeError, ValueError):
        text = shown = repr(value)
    return shown if len(text) <= 200 else text[:200] + "..."


def _refuse_body(request: Request, max_bytes: int) -> JSONResponse | None:
    """415 for a body that is not JSON, 413 for one over the limit: answered before the body
    is read or parsed, so a huge or foreign upload costs the replica nothing."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return JSONResponse(
            status_code=415,
            content={"detail": f"content-type must be application/json, got {kind or 'none'!r}"},
        )
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > max_bytes:
        said = f"{length} bytes" if length and length.isdigit() else "no Content-Length"
        return JSONResponse(
            status_code=413 if length and length.isdigit() else 411,
            content={"detail": f"request body: {said}; the limit is {max_bytes} bytes"},
        )
    return None


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    def __init__(
        self,
        model: DeploymentHandle,
        model_name: str,
        deployed: str,
        max_instances: int,
        max_body_bytes: int,
    ):
        self.model, self.model_name, self.deployed = model, model_name, deployed
        self.max_instances, self.max_body_bytes = max_instances, max_body_bytes

    async def __serve_build_asgi_app__(self) -> FastAPI:
        fs = FeatureSet.from_json(self.deployed)
        contract = fs.parsed_contract()
        _, PredictRequest = request_models(contract, self.max_instances)
        api = FastAPI(
            title="ray_app prediction service",
            description=f"Predicts `{contract.label_column}` for the `{contract.name}` contract.",
        )
        api.add_exception_handler(RequestValidationError, _validation_error)

        @api.middleware("http")
        async def edge(request: Request, call_next: Any) -> Any:
            """Bodies refused before they are read, and the request id for the answer: Serve's
            proxy puts the client's X-Request-ID (or one it made) on every request and echoes
            it in the response headers; answers carry it in the body too."""
            request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            refused = request.method == "POST" and _refuse_body(request, self.max_body_bytes)
            return refused or await call_next(request)

        @api.post("/predict", response_model=PredictResponse)
        async def predict(
            request: PredictRequest,  # type: ignore[valid-type]
            http: Request,
        ) -> dict[str, Any]:
            """Each row's probability and label; a row's id column, when sent, is echoed, and
            sensitive columns are accepted but never fed to the model."""
            answer = await self.model.predict.remote(records(request))
            return {**answer, "request_id": http.state.request_id}

        def served(name: str) -> None:
            if name != self.model_name:
                raise HTTPException(
                    404,
                    f"model {name!r} is not served here; this application serves "
                    f"{self.model_name!r}",
                )

        @api.post("/v1/models/{name}:predict", response_model=PredictResponse)
        async def v1_predict(
            name: str,
            request: PredictRequest,  # type: ignore[valid-type]
            http: Request,
        ) -> dict[str, Any]:
            """KServe's V1 protocol: `{"instances": [...]}` in, `predictions` out."""
            served(name)
            return await predict(request, http)

        @api.get("/v1/models/{name}")
        async def v1_model(name: str) -> dict[str, Any]:
            """KServe's V1 readiness: the model, whether it answers, and the version."""
            served(name)
            status = await self.model.status.remote()
            return {"name": name, "ready": True, "version": status["model_version"], **status}

        @api.post("/explain", response_model=ExplainResponse)
        async def explain(
            request: PredictRequest,  # type: ignore[valid-type]
            http: Request,
            top_k: int = Query(5, ge=1, le=len(fs.feature_names), description="features per row"),
        ) -> dict[str, Any]:
            """Each row's prediction and the features that moved it most (SHAP, log-odds)."""
            answer = await self.model.explain.remote(records(request), top_k)
            return {**answer, "request_id": http.state.request_id}

        @api.get("/healthz")
        async def healthz() -> dict[str, Any]:
            """The version answering, a version held back, and a failing alias check (status
            `degraded`: the replica still answers with the version it has)."""
            return await self.model.status.remote()

        return api


def app_builder(args: dict[str, Any]) -> Application:
    """Build the application from `serve_config.yaml` args (validated by AppArgs). The version
    the alias points at now fixes the request schema of this deployment: the ingress validates
    with it, and model replicas serve only versions that share it."""
    parsed = AppArgs.model_validate(args or {})
    tracking.configure()
    deployed = load(ModelRef(parsed.model_name, alias=parsed.alias))
    features = deployed.features.to_json()
    model = ModelServer.bind(parsed.model_name, features, str(deployed.version), parsed.alias)
    return Ingress.bind(
        model, parsed.model_name, features, parsed.max_instances, parsed.max_body_bytes
    )
