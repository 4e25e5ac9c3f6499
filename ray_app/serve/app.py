"""The Serve application: one ingress `Router` that scores where the request lands, and a
`Shadow` deployment that scores mirrored traffic apart from it.

Why this shape (measured on 2 CPUs, bench/RESULTS.md): a `DeploymentHandle` call per request
to a model deployment cut throughput about five-fold against answering in the ingress
replica, so every variant a client can be answered by (primary, blue/green, canary) is loaded
in each router replica and scored there with the compiled feature path; only the shadow,
whose slowness or failure must never touch a client, sits behind a handle, fed in batches.

`app_builder` loads the version each served model's alias points at when the application is
built; its contract fixes that model's request schema for `/docs` and validation. Routes,
variants, weights, canary schedules and shadows are the router's `user_config`
(`routing.RouterConfig`), applied in place by `reconfigure`: `serve deploy` or
`rayapp deploy` change them in seconds without restarting replicas.

No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
"""

import asyncio
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge, Histogram

from ray_app import registry, tracking
from ray_app.auth import ENV_KEYS, ApiKeys, RateLimiter, default_keys_file
from ray_app.data.store import open_store
from ray_app.features import FeatureSet
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.schema import MAX_INSTANCES, ExplainResponse, PredictResponse, records
from ray_app.monitor.predictions import FLUSH_S, Answered, Flusher, PredictionLog
from ray_app.rollout.routing import KEY_HEADER, VARIANT_HEADER, RouterConfig, choose
from ray_app.serve.fleet import Deployed, Fleet, LiveRoute
from ray_app.serve.shadow import ShadowScorer

logger = logging.getLogger("ray.serve")
INLINE_ROWS = 64  # larger requests are scored off the event loop, so small ones keep flowing
LATENCY_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]
SCORE = [round(0.1 * i, 1) for i in range(1, 10)]
# A client's request id is logged with every row of its request (and shadowed), so it is
# bounded: what tracing ids and UUIDs use, no spaces or control characters.
REQUEST_ID = re.compile(r"[!-~]{1,128}")


class AuthArgs(BaseModel):
    """Bearer API keys for /predict, /explain and V1 predict; /healthz and V1 readiness stay
    open. Keys come from `RAYAPP_API_KEYS` and the key file (never from git)."""

    required: bool = True
    keys_file: str | None = Field(None, description="default: $RAYAPP_HOME/api_keys")
    rate_per_s: float = Field(0.0, ge=0, description="per key and router replica; 0: no limit")
    burst: int = Field(100, ge=1)


class LogArgs(BaseModel):
    """The prediction log (`ray_app.monitor.predictions`): written off the request path."""

    enabled: bool = True
    flush_s: float = Field(FLUSH_S, gt=0, description="a killed replica loses at most this much")
    max_rows: int = Field(100_000, ge=1, description="buffered rows; more are answered unlogged")


class AppArgs(BaseModel):
    """Arguments of the application, from `serve_config.yaml` (`args:`)."""

    models: list[str] = Field(min_length=1, description="served names; the first answers /predict")
    alias: str = registry.PRODUCTION
    max_instances: int = Field(MAX_INSTANCES, ge=1)  # rows per request; more is a 422
    max_body_bytes: int = Field(10 * 2**20, ge=1024)  # larger bodies get 413, unread
    store: str | None = Field(None, description="data store for shadow records")
    auth: AuthArgs = AuthArgs()
    prediction_log: LogArgs = LogArgs()
    mirror_flush_s: float = Field(0.25, gt=0, description="how often shadow batches leave")
    mirror_max_rows: int = Field(50_000, ge=1, description="buffered rows; more are dropped")


def _invalid(exc: ValidationError | RequestValidationError) -> JSONResponse:
    """422 naming each bad field as `instances.i.column` (or the query parameter), with what
    was expected: the first 50 (a 10,000-row body with every field wrong has 110,000, and
    describing them all held the replica for half a second), and how many there are."""
    found = exc.errors()
    errors = []
    for err in found[:50]:
        loc = [str(p) for p in err["loc"] if p not in ("body", "query")]
        where = "body" if err["type"] == "json_invalid" else ".".join(loc)
        errors.append(
            {"field": where or "body", "error": err["msg"], "input": _short(err.get("input"))}
        )
    summary = "; ".join(f"{e['field']}: {e['error']}" for e in errors[:10])
    if len(found) > 10:
        summary += f"; and {len(found) - 10} more"
    return JSONResponse(
        status_code=422, content={"detail": summary, "errors": errors, "count": len(found)}
    )


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


class Mirror:
    """Answered requests on their way to the shadow: buffered (bounded) and sent in batches by
    a background task, so no request waits for the shadow and a slow one only drops batches."""

    def __init__(self, shadow: DeploymentHandle, flush_s: float, max_rows: int, dropped: Counter):
        self.shadow, self.flush_s, self.max_rows, self.dropped = (
            shadow,
            flush_s,
            max_rows,
            dropped,
        )
        self.items: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
        self.size, self.task = 0, None

    def add(self, route: str, shadow: tuple[str, str, float], item: dict[str, Any]) -> None:
        rows = len(item["rows"])
        if self.size + rows > self.max_rows:
            self.dropped.inc(1, tags={"model": route, "reason": "buffer full"})
            return
        self.items.setdefault((route, *shadow), []).append(item)
        self.size += rows
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            batches, self.items, self.size = self.items, {}, 0
            for (route, name, version, threshold), items in batches.items():
                shadow = {"name": name, "version": version, "threshold": threshold}
                try:
                    await self.shadow.compare.remote(route, shadow, items)
                except BackPressureError:
                    self.dropped.inc(len(items), tags={"model": route, "reason": "shadow busy"})
                except Exception:
                    self.dropped.inc(len(items), tags={"model": route, "reason": "shadow failed"})
                    logger.exception("shadow %s of %s failed", version, route)


@serve.deployment(name="Router", ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Router:
    def __init__(
        self, shadow: DeploymentHandle, args: dict[str, Any], deployed: dict[str, dict[str, str]]
    ):
        tracking.configure()
        self.args = AppArgs.model_validate(args)
        served = {
            name: Deployed(d["ref"], d["version"], FeatureSet.from_json(d["features"]))
            for name, d in deployed.items()
        }
        self.default = next(iter(served))
        self.fleet = Fleet(served, self.args.max_instances)
        self.fleet.apply(RouterConfig())
        auth = self.args.auth
        self.keys = ApiKeys.load(auth.keys_file or _local_keys_file())
        if auth.required and not len(self.keys):
            raise RuntimeError(
                f"no API keys: set {ENV_KEYS} or create {default_keys_file()} with "
                "`rayapp keys create`; or set args.auth.required: false to serve without keys"
            )
        self.limiter = RateLimiter(auth.rate_per_s, auth.burst)
        tags = ("model", "variant", "version")
        self.requests = Counter(
            "rayapp_requests",
            "Prediction requests answered, by variant and status code",
            tag_keys=(*tags, "code"),
        )
        self.rows = Counter("rayapp_rows", "Rows scored", tag_keys=tags)
        self.latency = Histogram(
            "rayapp_latency_ms", "Scoring time of a request in the router, ms", LATENCY_MS, tags
        )
        self.score = Histogram("rayapp_score", "Mean probability of a request", SCORE, tags)
        self.refused = Counter(
            "rayapp_refused", "Requests refused before scoring", tag_keys=("model", "code")
        )
        dropped = Counter(
            "rayapp_shadow_dropped", "Mirrored requests not scored", tag_keys=("model", "reason")
        )
        self.mirror = Mirror(shadow, self.args.mirror_flush_s, self.args.mirror_max_rows, dropped)
        self.logs: dict[str, PredictionLog] = {}
        if self.args.prediction_log.enabled:
            store, kept = open_store(self.args.store), self.args.prediction_log
            self.logs = {
                name: PredictionLog(
                    store, name, d.features.parsed_contract(), kept.max_rows, kept.flush_s
                )
                for name, d in served.items()
            }
        self.flusher = Flusher(list(self.logs.values()), self.args.prediction_log.flush_s)
        # A gauge, set by the follower: exported (at 0) before anything is lost, so alerts
        # and dashboards can name it from the start.
        self.unlogged = Gauge(
            "rayapp_unlogged_rows",
            "Rows answered but not logged (buffer full) since the replica started",
            tag_keys=("model",),
        )
        self.reload_error: str | None = None
        self.replica = serve.get_replica_context().replica_id.unique_id  # which one answered
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, daemon=True)
        self._follower.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.fleet.apply(RouterConfig.model_validate(user_config or {}))

    def _follow(self) -> None:
        """Aliases resolved again every `poll_s`; canaries judged, stopped or promoted."""
        while not self._stop.wait(self.fleet.config.poll_s):
            for name, log in self.logs.items():
                self.unlogged.set(log.dropped_rows, tags={"model": name})
            errors = []
            for step in (self.fleet.refresh, lambda: self.fleet.judge(time.time())):
                try:  # each on its own: a failed refresh must not stop a canary's judgement
                    step()
                except Exception as e:  # the registry may be briefly unreachable: keep serving
                    errors.append(f"{type(e).__name__}: {e}")
                    logger.exception("could not refresh the routes or judge a canary")
            self.reload_error = "; ".join(errors)[:500] or None

    def check_health(self) -> None:
        """Serve replaces a replica whose follower died: it would serve stale versions and
        never judge a canary. A registry outage is not a reason (it shows as `degraded`)."""
        if not self._follower.is_alive():
            raise RuntimeError("the alias follower stopped")

    def __del__(self) -> None:
        """Serve's graceful shutdown: stop following, write the rest of the log."""
        self._stop.set()
        self.flusher.stop()

    # -- the request path -------------------------------------------------------------------

    def _route(self, name: str) -> LiveRoute:
        route = self.fleet.routes.get(name)
        if route is None:
            raise HTTPException(
                404, f"model {name!r} is not served here; served: {sorted(self.fleet.routes)}"
            )
        return route

    def _caller(self, http: Request, model: str) -> None:
        """401 without a valid key, 429 with Retry-After past the key's rate."""
        if not self.args.auth.required:
            return
        model = model if model in self.fleet.routes else "unknown"  # bounded metric tags
        who = self.keys.identify(http.headers.get("authorization"))
        if who is None:
            self.refused.inc(1, tags={"model": model, "code": "401"})
            raise HTTPException(
                401,
                "missing or unknown API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        wait = self.limiter.acquire(who)
        if wait > 0:
            self.refused.inc(1, tags={"model": model, "code": "429"})
            raise HTTPException(
                429,
                f"rate limit of {self.args.auth.rate_per_s:g} requests/s for key {who!r}",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    async def _answer(self, name: str, http: Request, top_k: int | None = None) -> Response:
        self._caller(http, name)
        request_id = http.headers.get("x-request-id") or uuid.uuid4().hex
        if not REQUEST_ID.fullmatch(request_id):
            self.refused.inc(1, tags={"model": name, "code": "400"})
            raise HTTPException(
                400,
                "X-Request-ID: 1 to 128 visible ASCII characters (no spaces), as logged with "
                f"every row of the request; got {len(request_id)} characters",
            )
        route = self._route(name)
        try:
            request = route.request_model.model_validate_json(await http.body())
        except ValidationError as e:
            self.refused.inc(1, tags={"model": name, "code": "422"})
            return _invalid(e)
        rows = records(request)
        variant, pinned = self._variant(route, http, rows)
        scorer = route.scorers[variant]
        version = str(scorer.model.version)
        tags = {"model": name, "variant": variant, "version": version}
        judged = top_k is None and not pinned  # a canary is judged on its weighted predictions
        start = time.perf_counter()
        try:
            if top_k is not None:
                answer = await asyncio.to_thread(scorer.explain, rows, top_k)
            elif len(rows) > INLINE_ROWS:
                answer = await asyncio.to_thread(scorer.predict, rows)
            else:
                answer = scorer.predict(rows)
        except Exception:
            self.requests.inc(1, tags={**tags, "code": "500"})
            if judged:
                self.fleet.observe(name, variant, (time.perf_counter() - start) * 1000, None)
            raise
        ms = (time.perf_counter() - start) * 1000
        listed = answer["explanations" if top_k is not None else "predictions"]
        mean = sum(p["probability"] for p in listed) / len(listed)
        if judged:
            self.fleet.observe(name, variant, ms, mean)
        self.requests.inc(1, tags={**tags, "code": "200"})
        self.rows.inc(len(rows), tags=tags)
        self.latency.observe(ms, tags=tags)
        self.score.observe(mean, tags=tags)
        served = f"{scorer.model.name}/{version}"
        if name in self.logs:
            probabilities = [p["probability"] for p in listed]
            labels = [p["label"] for p in listed]
            answered = Answered(
                time.time(), request_id, variant, served, rows, probabilities, labels, ms
            )
            self.logs[name].add(answered)
        if top_k is None and route.shadow is not None:
            self._mirror(route, variant, served, rows, listed, ms, request_id)
        answer = {"request_id": request_id, "variant": variant, **answer}
        # default=str: an id column the contract types as a date is echoed as its ISO text
        return Response(json.dumps(answer, default=str), media_type="application/json")

    def _variant(
        self, route: LiveRoute, http: Request, rows: list[dict[str, Any]]
    ) -> tuple[str, bool]:
        """The variant a header pins (and True), else one chosen by weight, sticky by the
        routing key (the header, else the first row's id)."""
        pinned = http.headers.get(VARIANT_HEADER)
        if pinned is not None:
            if pinned not in route.scorers:
                raise HTTPException(
                    404, f"variant {pinned!r} is not served; served: {sorted(route.scorers)}"
                )
            return pinned, True
        canary = route.config.canary
        stopped = canary is not None and self.fleet.canary_stopped(route.name, canary)
        key = http.headers.get(KEY_HEADER)
        id_column = route.scorers[route.config.primary.name].model.contract.id_column
        if key is None and id_column is not None and rows[0].get(id_column) is not None:
            key = str(rows[0][id_column])
        return choose(route.weights(time.time(), stopped), key), False

    def _mirror(self, route, variant, version, rows, listed, ms, request_id) -> None:
        config = route.config.shadow
        if random.random() >= config.fraction:
            return
        threshold = self.fleet.config.threshold
        item = {
            "time": time.time(),
            "request_id": request_id,
            "rows": rows,
            "primary": {
                "variant": variant,
                "version": version,
                "probabilities": [p["probability"] for p in listed],
                "labels": [p["label"] for p in listed],
                "latency_ms": ms,
            },
        }
        self.mirror.add(route.name, (config.name, route.shadow, threshold), item)

    def status(self) -> dict[str, Any]:
        now, fleet = time.time(), self.fleet
        routes = {}
        for name, route in fleet.routes.items():
            canary = route.config.canary
            stopped = canary is not None and fleet.canary_stopped(name, canary)
            routes[name] = {
                "deployed": fleet.deployed[name].version,
                "strategy": route.config.strategy,
                "serving": route.serving,
                "weights": route.weights(now, stopped),
                "configured": route.versions,
                "held_back": route.held_back or None,
                "shadow": route.shadow,
                "canary_stopped": fleet.stopped[name][1] if stopped else None,
            }
        fallback = any(r.config.primary.name in r.held_back for r in fleet.routes.values())
        logged = {
            name: {"written_rows": log.written_rows, "unlogged_rows": log.dropped_rows}
            for name, log in self.logs.items()
        }
        return {
            "status": "degraded" if self.reload_error or fallback else "ok",
            "replica": self.replica,
            "prediction_log": {"models": logged, "error": self.flusher.error},
            "reload_error": self.reload_error,
            "models": routes,
        }

    # -- HTTP -------------------------------------------------------------------------------

    async def __serve_build_asgi_app__(self) -> FastAPI:
        default = self.default
        api = FastAPI(
            title="ray_app prediction service",
            description=f"Serves {', '.join(self.fleet.deployed)}; `/predict` answers for "
            f"{default}.",
        )

        api.add_exception_handler(RequestValidationError, lambda _, e: _invalid(e))

        @api.middleware("http")
        async def edge(request: Request, call_next: Any) -> Any:
            """Bodies refused before they are read: wrong type, too large, no length."""
            if request.method == "POST":
                refused = _refuse_body(request, self.args.max_body_bytes)
                if refused is not None:
                    return refused
            return await call_next(request)

        body = _documented(api, self.fleet)
        top_k = Query(5, ge=1, le=100, description="features per row")

        @api.post("/predict", response_model=PredictResponse, openapi_extra=body[default])
        async def predict(http: Request) -> Response:
            """Each row's probability and label from the variant chosen for the request; a
            row's id column, when sent, is echoed; sensitive columns are never fed."""
            return await self._answer(default, http)

        @api.post("/explain", response_model=ExplainResponse, openapi_extra=body[default])
        async def explain(http: Request, top_k: int = top_k) -> Response:
            """Each row's prediction and the features that moved it most (SHAP, log-odds)."""
            return await self._answer(default, http, top_k)

        @api.post(
            "/v1/models/{name}:predict", response_model=PredictResponse, openapi_extra=body[None]
        )
        async def v1_predict(name: str, http: Request) -> Response:
            """KServe's V1 protocol: `{"instances": [...]}` in, `predictions` out."""
            return await self._answer(name, http)

        @api.get("/v1/models/{name}")
        async def v1_model(name: str) -> dict[str, Any]:
            """KServe's V1 readiness: the model, whether it answers, and its primary version."""
            route = self._route(name)
            primary = route.serving[route.config.primary.name].partition("/")[2]
            return {
                "name": name,
                "ready": True,
                "version": primary,
                **self.status()["models"][name],
            }

        @api.get("/healthz")
        async def healthz() -> dict[str, Any]:
            """Each model's variants, versions, weights now, anything held back, and a failing
            alias check (status `degraded`: replicas still answer with what they have)."""
            return self.status()

        return api


def _documented(api: FastAPI, fleet: Fleet) -> dict[str | None, dict[str, Any]]:
    """OpenAPI request bodies per served model (under None: any of them), from the pydantic
    models that validate. Validation is done by hand for speed, so FastAPI cannot see them;
    their definitions go into the document's components under the model's name."""
    components: dict[str, Any] = {}
    schemas = {}
    for name, model in fleet.requests.items():
        schema = model.model_json_schema(ref_template=f"#/components/schemas/{name}.{{model}}")
        components.update({f"{name}.{k}": v for k, v in schema.pop("$defs", {}).items()})
        components[f"{name}.PredictRequest"] = schema
        schemas[name] = {"$ref": f"#/components/schemas/{name}.PredictRequest"}

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        content = {"application/json": {"schema": schema}}
        return {"requestBody": {"required": True, "content": content}}

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(components)
            api.openapi_schema = document
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    bodies: dict[str | None, dict[str, Any]] = {name: body(s) for name, s in schemas.items()}
    any_of = list(schemas.values())
    bodies[None] = body(any_of[0] if len(any_of) == 1 else {"anyOf": any_of})
    return bodies


def _local_keys_file() -> Path | None:
    """The default key file if this node has one (keys may come from the environment only)."""
    return default_keys_file() if default_keys_file().exists() else None


def app_builder(args: dict[str, Any]) -> Application:
    """Build the application from `serve_config.yaml` args (validated by AppArgs). The version
    each model's alias points at now fixes its request schema in this deployment."""
    parsed = AppArgs.model_validate(args or {})
    tracking.configure()
    deployed = {}
    for ref in parsed.models:
        model = load(ModelRef.parse(ref, default_alias=parsed.alias))
        deployed[str(model.name)] = {
            "ref": ref if "@" in ref or "/" in ref else f"{ref}@{parsed.alias}",
            "version": f"{model.name}/{model.version}",
            "features": model.features.to_json(),
        }
    shadow = ShadowScorer.bind(parsed.store)
    return Router.bind(shadow, parsed.model_dump(), deployed)
