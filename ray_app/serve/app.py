"""The Serve application: a FastAPI ingress in front of the model deployment.

The ingress builds its FastAPI app at replica start (`__serve_build_asgi_app__`) from the
served model's own contract, so `/docs` and request validation always match the model that
answers. `app_builder` is the import path that `serve_config.yaml` and `serve.run` use.

No `from __future__ import annotations` here: FastAPI must see the request model built at
runtime as a real annotation, not a string it would look up in module globals.
"""

from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ray_app import registry
from ray_app.features import FeatureSet
from ray_app.model.schema import ExplainResponse, PredictResponse, records, request_models
from ray_app.serve.model import ModelServer


class AppArgs(BaseModel):
    """Arguments of the application, from `serve_config.yaml` (`args:`)."""

    model_name: str
    alias: str = registry.PRODUCTION


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
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "..."


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle):
        self.model = model

    async def __serve_build_asgi_app__(self) -> FastAPI:
        fs = FeatureSet.from_json(await self.model.features.remote())
        contract = fs.parsed_contract()
        _, PredictRequest = request_models(contract)
        api = FastAPI(
            title="ray_app prediction service",
            description=f"Predicts `{contract.label_column}` for the `{contract.name}` contract.",
        )
        api.add_exception_handler(RequestValidationError, _validation_error)

        @api.post("/predict", response_model=PredictResponse)
        async def predict(request: PredictRequest) -> dict[str, Any]:  # type: ignore[valid-type]
            return await self.model.predict.remote(records(request))

        @api.post("/explain", response_model=ExplainResponse)
        async def explain(
            request: PredictRequest,  # type: ignore[valid-type]
            top_k: int = Query(5, ge=1, le=len(fs.feature_names), description="features per row"),
        ) -> dict[str, Any]:
            """Each row's prediction and the features that moved it most (SHAP, log-odds)."""
            return await self.model.explain.remote(records(request), top_k)

        @api.get("/healthz")
        async def healthz() -> dict[str, Any]:
            """Liveness, the version answering, and a version held back, if any."""
            return {"status": "ok", **await self.model.status.remote()}

        return api


def app_builder(args: dict[str, Any]) -> Application:
    """Build the application from `serve_config.yaml` args (validated by AppArgs)."""
    parsed = AppArgs.model_validate(args or {})
    return Ingress.bind(ModelServer.bind(parsed.model_name, parsed.alias))
