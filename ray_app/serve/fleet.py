"""The models a router replica serves, loaded and kept current: one `LiveRoute` per model name,
rebuilt whole and swapped in one assignment when the config changes or an alias moves, so a
request never sees half a change.

Each route's request schema is fixed when the application is built (the contract of the version
its alias pointed at then): a variant whose schema differs is held back, not served, until a
redeploy, and its traffic goes to the primary. The fleet also keeps each variant's recent
requests to judge a canary: it stops a canary that breaches its limits and moves `production`
to one that finished its schedule cleanly, through the registry and recorded there with the
reason. Replicas judge their own traffic; a stop recorded by one is obeyed by all.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field

from pydantic import BaseModel

from ray_app import registry
from ray_app.features import FeatureSet
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.schema import request_models, request_schema
from ray_app.model.scoring import Scorer
from ray_app.rollout.routing import (
    ABANDON,
    ENDINGS,
    PROMOTE,
    ROLLBACK,
    Canary,
    Route,
    RouterConfig,
    VariantStats,
    breach,
    default_route,
)

logger = logging.getLogger("ray.serve")
# A variant that resolved but would not load (a registry or artefact-store blip) is tried
# again this often, not on every poll, until it loads or its alias moves.
RELOAD_S = 60.0


@dataclass(frozen=True)
class LiveRoute:
    """A route ready to answer: its config, request model and a scorer per servable variant."""

    name: str
    config: Route
    request_model: type[BaseModel]
    scorers: dict[str, Scorer]  # variant name -> scorer, servable variants only
    shadow: str | None  # the shadow's "name/version", scored by the Shadow deployment
    held_back: dict[str, str]  # variant name -> why it is not served (as configured)
    versions: dict[str, str]  # variant (and shadow) name -> "name/version" it resolved to
    unloaded: frozenset[str] = frozenset()  # variants that resolved but would not load
    built: float = field(default_factory=time.monotonic)

    @property
    def serving(self) -> dict[str, str]:
        """Variant -> "name/version" actually answering (a held-back primary's fallback)."""
        return {n: f"{s.model.name}/{s.model.version}" for n, s in self.scorers.items()}

    def weights(self, now: float, canary_stopped: bool) -> dict[str, float]:
        """Weights now; the share of a variant that cannot answer goes to the primary."""
        weights = self.config.weights(now, canary_stopped)
        served = {n: w for n, w in weights.items() if n in self.scorers}
        served[self.config.primary.name] += sum(weights.values()) - sum(served.values())
        return served


@dataclass(frozen=True)
class Deployed:
    """A served model as the application was built: the reference its default route serves,
    the version that reference pointed at then and its features, which fix the schema."""

    ref: str
    version: str  # "name/version"
    features: FeatureSet


@dataclass
class Fleet:
    deployed: dict[str, Deployed]
    max_instances: int
    config: RouterConfig = field(default_factory=RouterConfig)
    routes: dict[str, LiveRoute] = field(default_factory=dict)
    stats: dict[tuple[str, str], VariantStats] = field(default_factory=dict)
    stopped: dict[str, tuple[str, str]] = field(default_factory=dict)  # route -> (rollout, why)
    _models: dict[str, LoadedModel] = field(default_factory=dict)  # "name/version" -> model
    # Canary endings stopped here but not yet recorded in the registry (it was unreachable):
    # recorded on the next judgement, so that other replicas learn of them.
    unrecorded: list[tuple] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._schemas = {name: request_schema(d.features) for name, d in self.deployed.items()}
        self.requests = {
            name: request_models(d.features.parsed_contract(), self.max_instances)[1]
            for name, d in self.deployed.items()
        }

    def route_config(self, name: str) -> Route:
        return self.config.routes.get(name) or default_route(self.deployed[name].ref)

    def apply(self, config: RouterConfig) -> None:
        """Load what the config names and swap every route in (Serve's `reconfigure`)."""
        unknown = set(config.routes) - set(self.deployed)
        if unknown:
            raise ValueError(
                f"routes {sorted(unknown)} are not served by this application, which serves "
                f"{sorted(self.deployed)}; add them to the application's args.models"
            )
        with self._lock:
            before = {n: r.config.canary for n, r in self.routes.items()}
            self.config = config
            self._swap({name: self._build(name) for name in self.deployed})
            for name, canary in before.items():  # a new rollout is judged on its own requests
                now = self.routes[name].config.canary
                if (canary and canary.rollout_id) != (now and now.rollout_id):
                    self.stats = {k: v for k, v in list(self.stats.items()) if k[0] != name}

    def refresh(self) -> None:
        """Rebuild the routes whose aliases point elsewhere now (every `poll_s`), and those
        with a variant that would not load, every `RELOAD_S`."""
        with self._lock:
            now = time.monotonic()
            changed = {
                name: self._build(name)
                for name, live in self.routes.items()
                if self._resolve(live.config) != live.versions
                or (live.unloaded and now - live.built >= RELOAD_S)
            }
            if changed:
                self._swap({**self.routes, **changed})
                logger.info("routes now serve %s", {n: r.versions for n, r in changed.items()})

    def _swap(self, routes: dict[str, LiveRoute]) -> None:
        self.routes = routes
        in_use = {v for r in routes.values() for v in (*r.versions.values(), *r.serving.values())}
        self._models = {k: m for k, m in self._models.items() if k in in_use}
        self.stats = {k: s for k, s in list(self.stats.items()) if k[0] in routes}

    @staticmethod
    def _resolve(config: Route) -> dict[str, str]:
        """Variant (and shadow) name -> the "name/version" its reference points at now. One
        whose alias or run is gone is left out (held back when its route is built), so that it
        does not stop the others from following their aliases; an unreachable registry
        raises."""
        refs = {v.name: v.model for v in config.variants}
        if config.shadow is not None:
            refs[config.shadow.name] = config.shadow.model
        resolved = {}
        for name, ref in refs.items():
            with suppress(registry.RegistryError):
                resolved[name] = "/".join(ModelRef.parse(ref).resolve())
        return resolved

    def _load(self, ref: str) -> LoadedModel:
        name, version = ModelRef.parse(ref).resolve()
        key = f"{name}/{version}"
        if key not in self._models:
            self._models[key] = load(ModelRef(name, version=version))
        return self._models[key]

    def _build(self, name: str) -> LiveRoute:
        config = self.route_config(name)
        scorers, held, unloaded, why = {}, {}, set(), "gone"
        try:
            versions = self._resolve(config)
        except Exception as e:  # an unreachable registry: held back, the primary falls back
            versions, why = {}, f"{type(e).__name__}: {e}"
        for variant in config.variants:
            if variant.name not in versions:
                held[variant.name] = f"cannot resolve {variant.model}: {why}"
                continue
            try:
                model = self._load(versions[variant.name])
            except Exception as e:  # one variant that cannot load must not take down the rest
                held[variant.name] = f"cannot load {variant.model}: {type(e).__name__}: {e}"
                unloaded.add(variant.name)
                continue
            if request_schema(model.features) != self._schemas[name]:
                held[variant.name] = (
                    f"{model.name} version {model.version}: its request schema differs from "
                    "the deployed one; redeploy (serve deploy) to serve it"
                )
                continue
            scorers[variant.name] = Scorer.of(model, self.config.threshold)
        shadow = None
        if config.shadow is not None:  # scored in its own deployment, which loads it
            shadow = versions.get(config.shadow.name)
            if shadow is None:
                held[config.shadow.name] = f"cannot resolve {config.shadow.model}: {why}"
        for variant, reason in held.items():
            logger.error("route %s, variant %s: %s", name, variant, reason)
        primary = config.primary.name
        if primary not in scorers:
            scorers[primary] = self._fallback(name)
            logger.error(
                "route %s: answering with %s instead", name, scorers[primary].model.version
            )
        return LiveRoute(
            name, config, self.requests[name], scorers, shadow, held, versions, frozenset(unloaded)
        )

    def _fallback(self, name: str) -> Scorer:
        """What answers when the primary cannot: the version this replica serves now, else the
        one the application was built with (a replica restarted after its alias moved)."""
        live = self.routes.get(name)
        if live is not None and self._schemas[name] == request_schema(
            live.scorers[live.config.primary.name].model.features
        ):
            return live.scorers[live.config.primary.name]
        return Scorer.of(self._load(self.deployed[name].version), self.config.threshold)

    # -- canaries ---------------------------------------------------------------------------

    def canary_stopped(self, name: str, canary: Canary) -> bool:
        """Whether this rollout ended (rolled back, promoted or abandoned): all traffic then
        goes to the primary, which follows production (the canary's version once promoted)."""
        return self.stopped.get(name, ("",))[0] == canary.rollout_id

    def observe(self, name: str, variant: str, latency_ms: float, mean_score: float | None) -> None:
        """One answered request (`mean_score` None: it failed), for the canary's judgement."""
        key = (name, variant)
        stats = self.stats.get(key)
        if stats is None:
            canary = self.routes[name].config.canary
            # No lock on the request path (apply holds it while loading models); the
            # follower copies the dict before iterating, and a lost first entry is harmless.
            stats = VariantStats(canary.limits.window if canary else 1000)
            self.stats[key] = stats
        stats.add(latency_ms, mean_score)

    def judge(self, now: float) -> None:
        """Each route's canary: stop one that breaches its limits (here or on another
        replica), promote one that finished its schedule cleanly with enough evidence. One
        route's failure does not keep the others from being judged."""
        failed = []
        for ending in list(self.unrecorded):
            try:
                registry.record_rollout(*ending)
                self.unrecorded.remove(ending)
            except Exception as e:
                failed.append(f"{ending[0]}: recording {ending[1]}: {type(e).__name__}: {e}")
        for name, live in list(self.routes.items()):
            canary = live.config.canary
            if canary is None or self.canary_stopped(name, canary):
                continue
            try:
                self._judge(live, canary, now)
            except Exception as e:  # the registry may be briefly unreachable
                failed.append(f"{name}: {type(e).__name__}: {e}")
                logger.exception("could not judge the canary of %s", name)
        if failed:
            raise RuntimeError("; ".join(failed))

    def _judge(self, live: LiveRoute, canary: Canary, now: float) -> None:
        """A breach on this replica's requests stops the canary here whether or not the
        registry answers: an outage must not keep a failing canary serving."""
        name = live.name
        try:
            ended, unreachable = self._recorded(name, canary), None
        except Exception as e:
            ended, unreachable = None, e
        if ended is not None:
            self.stopped[name] = (canary.rollout_id, ended)
            return
        primary, trial = (
            self._summary(name, v) for v in (live.config.primary.name, canary.variant)
        )
        why = breach(primary, trial, canary.limits)
        if why is not None:
            logger.error("route %s: canary %s rolled back: %s", name, canary.variant, why)
            self._end(name, canary, ROLLBACK, why, {"primary": primary, "canary": trial})
            return
        if unreachable is not None:
            raise unreachable
        enough = min(primary["requests"], trial["requests"]) >= canary.limits.min_requests
        servable = canary.variant in live.scorers
        if canary.finished(now) and canary.promote and enough and servable:
            self._promote(live, canary, primary, trial)

    def _end(self, name: str, canary: Canary, action: str, why: str, detail: object = None) -> None:
        """Stop the rollout here at once, then record it (again on each judgement until the
        registry takes it)."""
        self.stopped[name] = (canary.rollout_id, why)
        ending = (name, action, why, canary.rollout_id, detail)
        try:
            registry.record_rollout(*ending)
        except Exception:
            self.unrecorded.append(ending)
            raise

    def _summary(self, name: str, variant: str) -> dict[str, float]:
        stats = self.stats.get((name, variant))
        return stats.summary() if stats else VariantStats(1).summary()

    @staticmethod
    def _recorded(name: str, canary: Canary) -> str | None:
        """How this rollout ended, if a replica (this one before a restart, or another)
        recorded it: a rolled back or promoted canary is never judged again."""
        for event in reversed(registry.rollout_history(name)):
            if event.rollout_id == canary.rollout_id and event.action in ENDINGS:
                return f"{event.action}: {event.reason}"
        return None

    def _promote(self, live: LiveRoute, canary: Canary, primary: dict, trial: dict) -> None:
        """`production` to the canary's version through the registry's gate move: only a
        version the gate passed, and only from the version production held when the rollout
        started (a gate that moved it meanwhile wins; the canary is abandoned)."""
        model, _, version = live.versions[canary.variant].partition("/")
        if registry.aliased_version(model, registry.PRODUCTION) == version:
            return  # another replica is recording its promotion
        report = registry.gate_report(model, version)
        if report is None:
            why = f"{model}/{version} never passed the gate; not promoted"
            self._end(live.name, canary, ABANDON, why)
            return
        expected = canary.production or live.versions[live.config.primary.name].partition("/")[2]
        reason = (
            f"canary {canary.variant} passed steps {canary.steps} over "
            f"{canary.step_s * len(canary.steps):.0f} s: {trial} against {primary}"
        )
        try:
            registry.promote(model, registry.PRODUCTION, version, reason, report, expected)
        except registry.ConcurrentMoveError as e:
            self._end(live.name, canary, ABANDON, f"not promoted: {e}")
            return
        self._end(live.name, canary, PROMOTE, reason)
        logger.info("route %s: production is now %s/%s", live.name, model, version)
        self.refresh()  # the primary follows production to the canary's version now
