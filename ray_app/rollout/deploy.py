"""`rayapp deploy`: change a model's route in the running application the way `serve deploy`
does, through the Serve REST API, so the router applies it in place (`reconfigure`).

Each command reads the deployed config, rewrites one route of the router's `user_config` and
puts the config back; nothing else changes, so no replica restarts. Traffic and the registry
move together: a blue/green switch moves `production` to green through the gate's owner
(`registry.promote`, only for a version the gate passed) and its rollback moves it back
(`registry.rollback`); a canary moves `production` itself when its schedule completes. Every
change is recorded on the registered model with who made it and why.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

from ray_app import registry
from ray_app.errors import RayAppError
from ray_app.model.ref import ModelRef
from ray_app.rollout.routing import (
    BLUEGREEN,
    CANARY,
    ENDINGS,
    PRIMARY,
    PROMOTE,
    SHADOW,
    SINGLE,
    Canary,
    CanaryLimits,
    Route,
    RouterConfig,
    Shadow,
    Variant,
    default_route,
)

ROUTER = "Router"


class DeployError(RayAppError, RuntimeError):
    """A deploy command that cannot be carried out, with the reason."""


@dataclass
class Running:
    """The running Serve config and the router's settings in it."""

    client: ServeSubmissionClient
    config: dict[str, Any]
    app: str

    @classmethod
    def read(cls, address: str, app: str) -> Running:
        client = ServeSubmissionClient(address)
        details = client.get_serve_details()
        apps = details.get("applications", {})
        if app not in apps or not apps[app].get("deployed_app_config"):
            raise DeployError(
                f"no application {app!r} deployed through the config API at {address} "
                f"(deployed: {sorted(apps)}); start it with `serve deploy serve_config.yaml`"
            )
        config = {
            "proxy_location": details.get("proxy_location"),
            "http_options": {
                k: v
                for k, v in (details.get("http_options") or {}).items()
                if k in ("host", "port", "root_path", "request_timeout_s", "keep_alive_timeout_s")
            },
            # apps started with serve.run have no config to put back; they are left alone
            "target_capacity": details.get("target_capacity"),
            "applications": [
                a["deployed_app_config"] for a in apps.values() if a.get("deployed_app_config")
            ],
        }
        return cls(client, config, app)

    def _app(self) -> dict[str, Any]:
        return next(a for a in self.config["applications"] if a["name"] == self.app)

    def refs(self) -> dict[str, str]:
        """Served model name -> the reference its default route serves."""
        args = self._app().get("args", {})
        alias = args.get("alias", registry.PRODUCTION)
        out = {}
        for ref in args.get("models", []):
            parsed = ModelRef.parse(ref, default_alias=alias)
            out[str(parsed.name)] = ref if "@" in ref or "/" in ref else f"{ref}@{alias}"
        return out

    def router(self) -> RouterConfig:
        for deployment in self._app().get("deployments", []):
            if deployment["name"] == ROUTER:
                return RouterConfig.model_validate(deployment.get("user_config") or {})
        return RouterConfig()

    def route(self, model: str) -> Route:
        refs = self.refs()
        if model not in refs:
            raise DeployError(f"{model!r} is not served by {self.app!r}; it serves {sorted(refs)}")
        return self.router().routes.get(model) or default_route(refs[model])

    def put(self, model: str, route: Route | None) -> None:
        """Write one route (None: back to the default) and deploy the config."""
        config = copy.deepcopy(self.config)
        app = next(a for a in config["applications"] if a["name"] == self.app)
        router = self.router()
        routes = {k: v for k, v in router.routes.items() if k != model}
        if route is not None:
            routes[model] = route
        user_config = router.model_copy(update={"routes": routes}).model_dump(mode="json")
        deployments = app.setdefault("deployments", [])
        entry = next((d for d in deployments if d["name"] == ROUTER), None)
        if entry is None:
            deployments.append(entry := {"name": ROUTER})
        entry["user_config"] = user_config
        self.client.deploy_applications(config)
        self.config = config


def _pinned(ref: str) -> str:
    """A reference fixed to the version it points at now (blue must not move with the alias)."""
    name, version = ModelRef.parse(ref).resolve()
    return f"{name}/{version}"


def _gated(ref: str) -> tuple[str, str, str]:
    name, version = ModelRef.parse(ref).resolve()
    report = registry.gate_report(name, version)
    if report is None:
        raise DeployError(
            f"{name} version {version} has not passed the gate; only a gated version may take "
            f"client traffic (run `rayapp gate {name}/{version}`), or deploy it as a shadow"
        )
    return name, version, report


def start(
    running: Running,
    model: str,
    strategy: str,
    candidate: str,
    steps: list[float] | None = None,
    step_s: float = 300.0,
    fraction: float = 1.0,
    promote: bool = True,
    limits: CanaryLimits | None = None,
) -> Route:
    """A new rollout of `candidate` beside what serves `model` now."""
    current = running.route(model)
    live_canary = current.canary is not None and not _ended(model, current.canary)
    if live_canary or (current.strategy == BLUEGREEN and _blue_live(current)):
        live = current.strategy
        raise DeployError(
            f"{model} has a {live} rollout in progress; finish it (--switch) or roll it back "
            "(--rollback) first"
        )
    serving = _live(current)
    production = f"{model}@{registry.PRODUCTION}"
    if strategy == BLUEGREEN:
        _gated(candidate)
        route = Route(
            strategy=BLUEGREEN,
            variants=[
                Variant(name="blue", model=_pinned(serving.model), weight=100),
                Variant(name="green", model=_pinned(candidate), weight=0),
            ],
        )
    elif strategy == CANARY:
        _gated(candidate)
        canary = Canary(
            variant=CANARY,
            steps=steps or [10.0, 50.0, 100.0],
            step_s=step_s,
            started_at=time.time(),
            promote=promote,
            production=registry.aliased_version(model, registry.PRODUCTION),
            limits=limits or CanaryLimits(),
        )
        route = Route(
            strategy=CANARY,
            variants=[
                Variant(name=PRIMARY, model=production, weight=100),
                Variant(name=CANARY, model=_pinned(candidate), weight=0),
            ],
            canary=canary,
        )
    elif strategy == SHADOW:
        route = Route(
            strategy=SHADOW,
            variants=[Variant(name=PRIMARY, model=serving.model, weight=100)],
            shadow=Shadow(model=_pinned(candidate), fraction=fraction),
        )
    else:
        raise DeployError(f"unknown strategy {strategy!r}; use bluegreen, canary or shadow")
    running.put(model, route)
    rollout = route.canary.rollout_id if route.canary else ""
    registry.record_rollout(
        model,
        f"{strategy}-start",
        f"{candidate} beside {serving.model}",
        rollout,
        route.model_dump(mode="json"),
    )
    return route


def _ended(model: str, canary: Canary) -> str | None:
    """The recorded end of a canary rollout (rolled back, promoted, abandoned), if any."""
    for event in registry.rollout_history(model):
        if event.rollout_id == canary.rollout_id and event.action in ENDINGS:
            return event.action
    return None


def _live(route: Route) -> Variant:
    """The variant taking the traffic (the primary unless blue/green switched to green)."""
    return max(route.variants, key=lambda v: v.weight)


def _live_on(route: Route, colour: str) -> Route:
    """The blue/green route with all traffic on `colour`."""
    variants = [
        v.model_copy(update={"weight": 100 if v.name == colour else 0}) for v in route.variants
    ]
    return route.model_copy(update={"variants": variants})


def _blue_live(route: Route) -> bool:
    return route.variants[0].weight == 100


def switch(running: Running, model: str) -> Route:
    """Blue/green: all traffic to green at once, and `production` with it."""
    route = running.route(model)
    if route.strategy != BLUEGREEN or not _blue_live(route):
        raise DeployError(f"{model}: no blue/green rollout waiting for a switch ({route.strategy})")
    blue, green = route.variants
    name, version, report = _gated(green.model)
    expected = ModelRef.parse(blue.model).resolve()[1]
    if registry.aliased_version(name, registry.PRODUCTION) != version:
        registry.promote(name, registry.PRODUCTION, version, "blue/green switch", report, expected)
    switched = _live_on(route, green.name)
    running.put(model, switched)
    registry.record_rollout(model, "bluegreen-switch", f"all traffic to {green.model}")
    return switched


def rollback(running: Running, model: str, reason: str = "rollback by hand") -> Route | None:
    """Undo the rollout: a switched blue/green goes back to blue (and `production` with it);
    a canary, a shadow or an unswitched green is removed."""
    route = running.route(model)
    if route.strategy == SINGLE:
        raise DeployError(
            f"{model} has no rollout to roll back; `rayapp rollback` moves production"
        )
    if route.strategy == BLUEGREEN and not _blue_live(route):
        blue, green = route.variants
        name, version = ModelRef.parse(blue.model).resolve()
        # production goes back only if the switch's move is still the latest (not a gate's)
        if (
            registry.aliased_version(name, registry.PRODUCTION)
            == ModelRef.parse(green.model).resolve()[1]
        ):
            registry.rollback(name, to=version)
        back = _live_on(route, blue.name)
        running.put(model, back)
        registry.record_rollout(model, "bluegreen-rollback", reason)
        return back
    canary = route.canary
    if canary is not None and _ended(model, canary) == PROMOTE and canary.production:
        name, version = ModelRef.parse(route.variants[1].model).resolve()
        if registry.aliased_version(name, registry.PRODUCTION) == version:
            registry.rollback(name, to=canary.production)  # undo the canary's promotion
    running.put(model, None)  # back to the default route: <model>@production alone
    rollout = route.canary.rollout_id if route.canary else ""
    registry.record_rollout(model, f"{route.strategy}-rollback", reason, rollout)
    return None
