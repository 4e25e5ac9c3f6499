"""The retraining loop: decide whether a served model is trained again, and if so validate the
new data, train (or search), gate the candidate against production on that data, and roll it
out as a canary that the router promotes or rolls back.

`decide` is read-only apart from the monitor's own MLflow run: a cron schedule that is due, the
monitor's drift verdict, live quality from delayed labels, or `--force` start a retrain; a
cooldown keeps one persistent drift from retraining on every check. `execute` runs the steps.
Production moves only through the gate (whose champion check asks for `min_improvement` on
the new data's frozen test rows) and then the canary; a retrain that learns nothing new
changes nothing, and says why.

One retrain per model at a time: an exclusive `flock` that the kernel releases when its holder
dies. Each step's result is written to a journal (`$RAYAPP_HOME/retrain/<model>.json`) before
the next starts, so a retrain killed half-way is resumed from its last finished step by the
next run; one that failed is ended, its canary rolled back. Every retrain is an MLflow run
(experiment `ray_app-retrain`) whose tags follow the journal, and its outcome is a rollout
event on the registered model (`rayapp history`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import mlflow
from croniter import croniter
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from pydantic import Field, field_validator

from ray_app import pipeline, registry, tracking
from ray_app.config import (
    PipelineConfig,
    Strict,
    load_pipeline_config,
    load_search_config,
    load_yaml,
    rayapp_home,
    redacted,
)
from ray_app.data.contract import load_contract
from ray_app.data.snapshot import find_snapshot
from ray_app.data.sources import resolve_snapshot
from ray_app.data.store import DataStore, open_store
from ray_app.evaluate.gate import Gates, load_gates
from ray_app.evaluate.job import GateReport, run_gate
from ray_app.journal import Busy, hold, load_entry, save_entry
from ray_app.model.ref import ModelRef
from ray_app.monitor import drift, gauges
from ray_app.progress import Steps
from ray_app.publish import model_name
from ray_app.rollout.routing import ABANDON, CANARY, ENDINGS, PROMOTE, CanaryLimits, Route

logger = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENT = "ray_app-retrain"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# A journal's steps, in order; `done` is written with the outcome.
VALIDATE, TRAIN, GATE, ROLLOUT, DONE = "validate", "train", "gate", "rollout", "done"
OUTCOMES = PROMOTED, KEPT, SKIPPED, ROLLED_BACK, FAILED = (
    "promoted",
    "kept",
    "skipped",
    "rolled back",
    "failed",
)
# Outcomes that judged a model of their data: the same data would train the same model again
# (even with --force); one that failed or was skipped judged nothing, and is tried again.
JUDGED = (PROMOTED, KEPT, ROLLED_BACK)


class Triggers(Strict):
    drift: bool = True
    live_quality: bool = True


class Rollout(Strict):
    strategy: Literal["canary", "direct"] = "canary"
    steps: list[float] = Field(default=[10.0, 50.0, 100.0], min_length=1)
    step_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(7200.0, gt=0)
    limits: CanaryLimits = CanaryLimits()
    app: str = "ray_app"
    address: str | None = None

    def dashboard(self) -> str:
        return self.address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_DASHBOARD


class Watch(Strict):
    every_s: float = Field(300.0, gt=0)


class RetrainConfig(Strict):
    model: str | None = None
    pipeline: Path = Path("configs/pipeline.yaml")
    monitor: Path = Path("configs/monitor.yaml")
    search: Path | None = None
    data: str | None = None
    schedule: str | None = None
    triggers: Triggers = Triggers()
    cooldown_s: float = Field(3600.0, ge=0)
    rollout: Rollout = Rollout()
    watch: Watch = Watch()

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value


def load_retrain_config(path: str | Path) -> RetrainConfig:
    return RetrainConfig.model_validate(load_yaml(path))


class RetrainBusy(Busy):
    """Another process holds this model's retrain lock."""


# Journal fields its MLflow run holds from its start (as tags or the run itself).
_UNTAGGED = {"id", "model", "started", "reasons", "mlflow_run_id"}


@dataclass
class Journal:
    """One retrain: why it started and what each finished step produced."""

    id: str
    model: str
    started: str
    reasons: list[str]
    data: str
    production: str | None  # the version production held when it started
    mlflow_run_id: str = ""
    step: str = VALIDATE
    data_version: str = ""
    search: str = ""
    candidate: str = ""
    gate_passed: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    gated_against: str | None = None  # the production version the gate judged it against
    rollout_id: str = ""
    settings: str = ""  # `settings_key` at its start
    outcome: str = ""
    reason: str = ""
    finished: str = ""

    @staticmethod
    def path(model: str) -> Path:
        return rayapp_home() / "retrain" / f"{model}.json"

    @classmethod
    def load(cls, model: str) -> Journal | None:
        return load_entry(cls, cls.path(model))

    def save(self) -> None:
        save_entry(self, self.path(self.model))

    def update(self, **changes: Any) -> None:
        """Record a step's result: the journal first, then the MLflow run's tags, every field
        each time (one request), so that a kill between the two loses no tag for good."""
        for key, value in changes.items():
            setattr(self, key, value)
        self.save()
        tags = [
            RunTag(key, ("; ".join(value) if isinstance(value, list) else str(value))[:5000])
            for key, value in asdict(self).items()
            if key not in _UNTAGGED and value not in (None, "", [])
        ]
        MlflowClient().log_batch(self.mlflow_run_id, tags=tags)


@dataclass
class Decision:
    """Whether a retrain starts now, and every reason for or against."""

    model: str
    production: str | None
    retrain: bool
    reasons: list[str]
    data: str | None = None
    resume: Journal | None = None
    drift: drift.DriftSummary | None = None
    live: Any = None  # monitor.live.LiveReport, when delayed labels were judged

    def plan(self, cfg: RetrainConfig) -> list[str]:
        """What `execute` would do, step by step (`--dry-run`)."""
        if not self.retrain:
            return []
        if self.resume:
            return [f"resume retrain {self.resume.id} at step {self.resume.step!r}"]
        pcfg = load_pipeline_config(cfg.pipeline)
        limits = load_gates(pcfg.gates).for_model(self.model).champion
        metric = load_gates(pcfg.gates).for_model(self.model).primary_metric
        train = f"search {cfg.search}" if cfg.search else f"train once ({cfg.pipeline})"
        rollout = cfg.rollout
        ship = (
            f"canary {' -> '.join(f'{s:g}%' for s in rollout.steps)}, {rollout.step_s:g}s per "
            f"step, on app {rollout.app!r} at {rollout.dashboard()}; the router promotes it or "
            f"rolls it back (given up after {rollout.timeout_s:g}s)"
            if rollout.strategy == CANARY
            else "the gate moves production itself (rollout.strategy: direct)"
        )
        return [
            f"validate {self.data} against {pcfg.contract} and snapshot it (stop if its data "
            "version is production's, or one a retrain already tried)",
            f"{train} on that snapshot",
            f"gate the candidate against production v{self.production} on the new data's test "
            f"rows ({pcfg.gates}: {metric} better by {limits.min_improvement:g})",
            ship,
        ]


def locked(model: str) -> AbstractContextManager[None]:
    """The model's retrain lock: exclusive, and released by the kernel if its holder dies."""
    return hold(rayapp_home() / "retrain" / f"{model}.lock", f"a retrain of {model}", RetrainBusy)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _runs(model: str, where: str = "", limit: int = 1) -> list[mlflow.entities.Run]:
    tracking.configure()
    query = f"tags.model_name = '{model}'" + (f" and {where}" if where else "")
    return MlflowClient().search_runs(
        [tracking.experiment_id(EXPERIMENT)], query, max_results=limit, order_by=["start_time DESC"]
    )


def outcomes(model: str) -> dict[str, int]:
    """How many retrains of `model` ended with each outcome, from their MLflow runs."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for run in _runs(model, "tags.outcome != ''", limit=10_000):
        outcome = run.data.tags["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _schedule_due(cfg: RetrainConfig, model: str, now: dt.datetime) -> tuple[bool, str]:
    """Due when a cron time has passed since the last retrain started (or, before any, since
    the production version was registered)."""
    last = _runs(model)
    if last:
        since = dt.datetime.fromtimestamp(last[0].info.start_time / 1000, dt.UTC)
        what = f"retrain {last[0].data.tags.get('id', '')} started"
    else:
        version = registry.version_for(model)
        since = dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC)
        what = f"v{version.version} was registered"
    due = croniter(cfg.schedule, since).get_next(dt.datetime)
    if due <= now:
        return True, f"schedule {cfg.schedule!r}: due at {due:%F %T} UTC ({what} {since:%F %T})"
    return False, f"schedule {cfg.schedule!r}: next at {due:%F %T} UTC"


def decide(
    cfg: RetrainConfig,
    data: str | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Decision:
    """Whether to retrain now, and why (or why not). An interrupted retrain is resumed first."""
    now = now or _now()
    pcfg = load_pipeline_config(cfg.pipeline)
    model = cfg.model or model_name(pcfg)
    tracking.configure()
    production = registry.aliased_version(model)
    journal = Journal.load(model)
    if journal and not journal.finished:
        why = (
            f"retrain {journal.id} stopped while its outcome ({journal.outcome}) was recorded: "
            "finish recording it"
            if journal.outcome
            else f"retrain {journal.id} stopped at step {journal.step!r} without an outcome: "
            "resume it"
        )
        return Decision(model, production, True, [why], journal.data, journal)
    if production is None:
        why = f"{model} has no production version to watch; `rayapp pipeline` makes the first"
        return Decision(model, None, False, [why])
    decision = Decision(model, production, False, [])
    triggers, notes = [], []
    if force:
        triggers.append("forced (--force)")
    scheduled = False
    if cfg.schedule:
        scheduled, text = _schedule_due(cfg, model, now)
        (triggers if scheduled else notes).append(text)
    monitor_cfg = drift.load_monitor_config(cfg.monitor)
    store = open_store(pcfg.data.store)
    # A check that fails (an unreadable log, an unreachable registry) is said, and does not
    # keep the schedule or --force from starting a retrain.
    args, failed = (model, monitor_cfg, store, now), []
    summary = _checked(failed, "drift", drift.run, *args) if cfg.triggers.drift else None
    if summary is not None:
        decision.drift = summary
        if summary.drifted:
            triggers.append(
                f"drift in {summary.rows} rows of v{summary.version}: " + "; ".join(summary.reasons)
            )
        else:
            notes.append(
                f"drift: {summary.verdict} ({'; '.join(summary.reasons) or f'{summary.rows} rows'})"
            )
    live = _checked(failed, "live quality", _live, *args) if cfg.triggers.live_quality else None
    if live is not None:
        decision.live = live
        # only production's own breaches: an old version still in the window is no reason
        served = [v for v in live.versions if v.version == f"{model}/{production}"]
        breaches = [b for v in served for b in v.breaches]
        if breaches:
            triggers.append(f"live quality of v{production}: " + "; ".join(breaches))
        else:
            labelled = sum(v.labelled for v in served)
            notes.append(f"live quality: no breach ({labelled} labelled rows of v{production})")
    source = data or cfg.data or (str(pcfg.data.path) if pcfg.data.path else None)
    decision.data = source
    notes += failed
    if not triggers:
        decision.reasons = ["nothing calls for a retrain", *notes]
        return decision
    last = _runs(model)
    if last and not (force or scheduled):
        since = (now.timestamp() * 1000 - last[0].info.start_time) / 1000
        if since < cfg.cooldown_s:
            decision.reasons = [
                f"cooling down: retrain {last[0].data.tags.get('id')} started {since:.0f}s ago "
                f"(cooldown_s {cfg.cooldown_s:g})",
                *triggers,
                *notes,
            ]
            return decision
    if source is None:
        decision.reasons = [
            *triggers,
            "but no new data: set `data` in the retrain config or pass --data",
            *notes,
        ]
        return decision
    decision.retrain, decision.reasons = True, [*triggers, *failed]
    return decision


def execute(cfg: RetrainConfig, decision: Decision, log: Callable[[str], None] = print) -> Journal:
    """Run (or resume) the retrain a decision calls for, under the model's lock."""
    if not decision.retrain:
        raise ValueError("the decision was not to retrain")
    with locked(decision.model):
        journal = Journal.load(decision.model)  # read again under the lock
        settings = settings_key(cfg)
        if journal is not None and not journal.finished:
            log(f"[retrain] resuming {journal.id} at step {journal.step!r}")
            if journal.settings and journal.settings != settings:
                log(
                    f"[retrain] {journal.id}: the pipeline, search or rollout settings changed "
                    "since it started; it goes on with the new ones"
                )
        elif decision.resume is not None and journal is not None:
            return journal  # the retrain to resume was ended meanwhile by another process
        else:
            journal = _start(decision, settings)
            log(f"[retrain] {journal.id} of {journal.model}: " + "; ".join(journal.reasons))
        try:
            if journal.outcome:  # killed while it was being ended: end it
                _end(journal, journal.outcome, journal.reason, cfg)
            else:
                _run_steps(cfg, journal, Steps(log))
        except Exception as e:
            _end(journal, FAILED, f"{type(e).__name__}: {e}", cfg)
        log(f"[retrain] {journal.id}: {journal.outcome}: {journal.reason}")
        return journal


def settings_key(cfg: RetrainConfig) -> str:
    """What a retrain's work depends on besides its data: the pipeline's settings and contract
    (`pipeline.run_key`, by content, not path), the search's and the rollout's. The gates are
    read when the gate runs."""
    pcfg = load_pipeline_config(cfg.pipeline)
    search = redacted(load_search_config(cfg.search)) if cfg.search else None
    trained = pipeline.run_key(pcfg, load_contract(pcfg.contract), "")
    facts = [trained, search, redacted(cfg.rollout)]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _start(decision: Decision, settings: str) -> Journal:
    tracking.configure()
    rid = f"{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    run = MlflowClient().create_run(
        tracking.experiment_id(EXPERIMENT),
        run_name=f"retrain {decision.model} {rid}",
        tags={
            "model_name": decision.model,
            "id": rid,
            "reasons": "; ".join(decision.reasons)[:5000],
        },
    )
    journal = Journal(
        rid,
        decision.model,
        _now().isoformat(),
        decision.reasons,
        str(decision.data),
        decision.production,
        run.info.run_id,
    )
    journal.update(step=VALIDATE, data=journal.data, settings=settings)
    return journal


def _live(model: str, cfg: drift.MonitorConfig, store: DataStore, now: dt.datetime) -> Any:
    from ray_app.monitor.live import live_quality  # imported only where this trigger is on

    return live_quality(model, cfg, store, now=now)


def _checked(failed: list[str], what: str, check: Callable[..., T], *args: Any) -> T | None:
    """`check(*args)`, or None with why it failed added to `failed`."""
    try:
        return check(*args)
    except Exception as e:
        logger.exception("retrain: the %s check failed", what)
        failed.append(f"{what}: could not be judged: {type(e).__name__}: {e}"[:500])
        return None


def _tried(model: str, data_version: str, current: str) -> str | None:
    """How an earlier retrain that judged a model trained on the same data version ended, if
    one did (`JUDGED`)."""
    for run in _runs(model, f"tags.data_version = '{data_version}'", limit=20):
        tags = run.data.tags
        if tags.get("id") != current and tags.get("outcome") in JUDGED:
            return f"retrain {tags['id']} ({tags['outcome']}: {tags.get('reason', '')})"
    return None


def _run_steps(cfg: RetrainConfig, journal: Journal, step: Steps) -> None:
    pcfg = load_pipeline_config(cfg.pipeline)
    contract = load_contract(pcfg.contract)
    gates = load_gates(pcfg.gates)
    gates.for_contract(journal.model, contract)  # a column the contract lacks: before training
    if journal.step == VALIDATE:  # until both checks pass: a resume runs them again
        snap = resolve_snapshot(pcfg, contract, journal.data, None, step)
        journal.update(data_version=snap.version)
        trained_on = registry.version_for(journal.model).tags.get("dataset_version")
        if snap.version == trained_on:
            why = f"data version {snap.version} is what production was trained on: nothing new"
            return _end(journal, SKIPPED, why, cfg)
        if tried := _tried(journal.model, snap.version, journal.id):
            return _end(journal, SKIPPED, f"data version {snap.version} was tried by {tried}", cfg)
        journal.update(step=TRAIN)
    else:
        snap = find_snapshot(open_store(pcfg.data.store), journal.data_version, contract)
    direct = cfg.rollout.strategy != CANARY
    # Through a canary, the gate moves staging only: production follows the router's verdict.
    confirm = None if direct else (lambda report: False)
    if journal.gate_passed is None:
        if cfg.search:
            if not journal.candidate:  # else the search finished before the gate was stopped
                from ray_app.tuning import search as tuning

                name = journal.search or f"retrain-{journal.id}"
                if done := tuning.finished_version(name, journal.model):  # ended, unjournaled
                    journal.update(candidate=done, step=GATE)
                else:
                    journal.update(search=name)
                    found = tuning.run_search(
                        pcfg,
                        load_search_config(cfg.search),
                        data_version=snap.version,
                        name=name,
                        resume=tuning.resumable(name),  # Tune restores the trials it saved
                        log=step.log,
                    )
                    journal.update(candidate=found.model_version, step=GATE)
            _gate(pcfg, gates, journal, confirm)
        else:
            result = pipeline.train_and_gate(
                pcfg, contract, snap, gates, step, confirm, key=f"retrain-{journal.id}"
            )
            journal.update(candidate=result.model_version)
            _judged(journal, result.promoted, result.gate_reasons, result.champion)
    candidate = f"{journal.model}/{journal.candidate}"
    # Killed after the gate and resumed once production had moved (a rollback, another
    # promotion): a canary now would replace a version the candidate never beat.
    now = registry.aliased_version(journal.model)
    if journal.gate_passed and not (direct or journal.rollout_id) and now != journal.gated_against:
        step(f"[retrain] production moved to v{now} since the gate passed {candidate}: gate again")
        _gate(pcfg, gates, journal, confirm)
    if not journal.gate_passed:
        against = f"v{journal.gated_against}" if journal.gated_against else "(none)"
        why = (
            f"{candidate} failed the gate against production {against} on data "
            f"version {journal.data_version}: " + "; ".join(journal.gate_reasons)
        )
        return _end(journal, KEPT, why, cfg)
    if direct:
        if now == journal.candidate:
            return _end(
                journal, PROMOTED, f"the gate moved production {journal.production} -> {now}", cfg
            )
        return _end(journal, KEPT, f"the gate passed {candidate} but production is v{now}", cfg)
    _canary(cfg, journal, candidate, step)


def _gate(
    pcfg: PipelineConfig,
    gates: Gates,
    journal: Journal,
    confirm: Callable[[GateReport], bool] | None,
) -> None:
    """Judge the journal's registered candidate against production as it is now."""
    judged = ModelRef(journal.model, version=journal.candidate)
    report, _ = run_gate(pcfg, judged, gates, confirm)
    _judged(journal, report.passed, report.failures(), report.champion_version)


def _judged(journal: Journal, passed: bool, reasons: list[str], against: str | None) -> None:
    journal.update(gate_passed=passed, gate_reasons=reasons, gated_against=against, step=ROLLOUT)


def _canary(cfg: RetrainConfig, journal: Journal, candidate: str, step: Steps) -> None:
    from ray_app.rollout import deploy

    rollout = cfg.rollout
    if not journal.rollout_id:
        running = deploy.Running.read(rollout.dashboard(), rollout.app)
        if found := unjournaled_canary(journal, candidate, running.route(journal.model)):
            journal.update(rollout_id=found)
            step(f"[retrain] canary {candidate} was started before a stop ({found}): following it")
        else:
            route = deploy.start(
                running,
                journal.model,
                CANARY,
                candidate,
                rollout.steps,
                rollout.step_s,
                limits=rollout.limits,
            )
            journal.update(rollout_id=route.canary.rollout_id)  # type: ignore[union-attr]
            step(f"[retrain] canary {candidate} started ({journal.rollout_id})")
    started = float(journal.rollout_id.split("@", 1)[1])
    while time.time() < started + rollout.timeout_s:
        ended = [
            e
            for e in registry.rollout_history(journal.model)
            if e.rollout_id == journal.rollout_id and e.action in ENDINGS
        ]
        if ended:
            event = ended[-1]
            outcome = {PROMOTE: PROMOTED, ABANDON: KEPT}.get(event.action, ROLLED_BACK)
            return _end(journal, outcome, f"canary {candidate}: {event.reason}", cfg)
        time.sleep(1.0)
    _end(journal, ROLLED_BACK, f"canary {candidate} did not end within {rollout.timeout_s:g}s", cfg)


def unjournaled_canary(journal: Journal, candidate: str, route: Route) -> str | None:
    """The rollout id of a canary of `candidate` started since the retrain began, which its
    journal does not hold: the retrain was killed between starting it and saying so. Then it is
    followed, not started again (which the live canary would refuse, leaving it to run on
    untracked). The route's live canary, or the recorded start of one that has ended since."""
    since = dt.datetime.fromisoformat(journal.started).timestamp()
    live = route.model_dump(mode="json")
    if _canary_model(live) == candidate and route.canary.started_at >= since:
        return route.canary.rollout_id
    for event in reversed(registry.rollout_history(journal.model)):
        if dt.datetime.fromisoformat(event.when).timestamp() < since:
            break
        if event.action == f"{CANARY}-start":
            try:
                recorded = json.loads(event.detail)  # the route the start set
            except ValueError:  # none recorded, or a cut one
                continue
            if _canary_model(recorded) == candidate:
                return event.rollout_id
    return None


def _canary_model(route: Any) -> str | None:
    """The model a route's canary share goes to, read from the route as JSON data (so that a
    recorded route of an older or newer form is read too); None without a canary."""
    try:
        variant = route["canary"]["variant"]
        return next((v["model"] for v in route["variants"] if v["name"] == variant), None)
    except (KeyError, TypeError):
        return None


def _end(journal: Journal, outcome: str, reason: str, cfg: RetrainConfig) -> None:
    """The outcome, everywhere it is looked for: the journal, its MLflow run, the registry's
    history. A live canary of a failed retrain is rolled back first."""
    if outcome in (FAILED, ROLLED_BACK) and journal.rollout_id:
        _stop_canary(cfg, journal, reason)
    journal.update(outcome=outcome, reason=reason, step=DONE)
    finished = _now().isoformat()  # what is recorded holds the journal as it ends, finished
    ended = {**asdict(journal), "finished": finished}
    client = MlflowClient()
    client.log_dict(journal.mlflow_run_id, ended, "retrain.json")
    status = RunStatus.FAILED if outcome == FAILED else RunStatus.FINISHED
    client.set_terminated(journal.mlflow_run_id, RunStatus.to_string(status))
    registry.record_rollout(
        journal.model,
        f"retrain-{outcome.replace(' ', '-')}",
        reason,
        journal.rollout_id,
        ended,
    )
    # Last: a retrain killed before this is resumed at its end (`execute`), and says it there.
    journal.update(finished=finished)


def _stop_canary(cfg: RetrainConfig, journal: Journal, reason: str) -> None:
    """Roll back this retrain's canary if it is still the route's and has not ended."""
    from ray_app.rollout import deploy

    if any(
        e.rollout_id == journal.rollout_id and e.action in ENDINGS
        for e in registry.rollout_history(journal.model)
    ):
        return
    running = deploy.Running.read(cfg.rollout.dashboard(), cfg.rollout.app)
    route = running.route(journal.model)
    if route.canary is not None and route.canary.rollout_id == journal.rollout_id:
        deploy.rollback(running, journal.model, f"retrain {journal.id}: {reason}")


def watch(
    cfg: RetrainConfig,
    data: str | None = None,
    log: Callable[[str], None] = print,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Check every `watch.every_s` and retrain when called for, until `stop()` is true."""
    while not stop():
        try:
            decision = decide(cfg, data)
            report(decision, log)
            if decision.drift is not None:
                gauges.drift(decision.drift)
            if decision.live is not None:
                gauges.live(decision.live)
            gauges.retrains(decision.model, outcomes(decision.model))
            if decision.retrain:
                execute(cfg, decision, log)
        except Exception as e:  # one failed check must not end the watch
            log(f"[retrain] check failed: {type(e).__name__}: {e}")
        deadline = time.monotonic() + cfg.watch.every_s
        while time.monotonic() < deadline and not stop():
            gauges.refresh()
            time.sleep(min(1.0, cfg.watch.every_s))


def report(decision: Decision, log: Callable[[str], None]) -> None:
    verdict = "retrain" if decision.retrain else "no retrain"
    log(f"[retrain] {decision.model} (production v{decision.production}): {verdict}")
    for reason in decision.reasons:
        log(f"  - {reason}")
