"""The MLflow model registry: the one owner of aliases, their audit trail and version tags.

The alias vocabulary lives here. `candidate` marks a search's best version (`mark_candidate`);
only the gate (`promote`) and `rollback` move `staging` and `production`. Every move is
recorded on the registered model itself (a tag `audit.<time>.<alias>`), so the history lives
wherever the registry does.

An alias move and its audit entry are two registry writes with no transaction around them,
so the entry is written first, as the intent, and the alias second. A crash between the two
leaves an entry whose alias still points at its `from_version`; the next move of that alias
removes it, and `alias_history` never shows it. A move may name the version it expects the
alias to hold (`expected`): the gate passes the champion it scored, so two gates judged
against the same champion cannot both promote.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from ray_app.errors import RayAppError

CANDIDATE, STAGING, PRODUCTION = "candidate", "staging", "production"
AUDIT_PREFIX = "audit."
ROLLOUT_PREFIX = "rollout."  # serving events: deploys, switches, canary steps and rollbacks
THRESHOLD_TAG = "threshold"  # decision threshold, chosen by the gate on validation rows
_UNCHECKED = object()


class RegistryError(RayAppError, RuntimeError):
    """A registry operation that cannot be done, with the reason."""


class ConcurrentMoveError(RegistryError):
    """The alias moved since the caller looked at it (another gate or a rollback)."""


@dataclass(frozen=True)
class AliasMove:
    """One audit entry: who moved which alias from which version to which, and why."""

    when: str
    alias: str
    from_version: str | None
    to_version: str
    reason: str
    by: str
    run_id: str = ""
    dataset_version: str = ""
    gate_report: str = ""


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    return mlflow.register_model(model_uri, name, tags=tags)


def model_version(name: str, version: str | int) -> ModelVersion:
    try:
        return MlflowClient().get_model_version(name, str(version))
    except MlflowException as e:
        if _missing(e):
            raise RegistryError(f"{name}/{version} does not exist") from None
        raise


def _missing(error: MlflowException) -> bool:
    """A model or alias that does not exist (an unknown alias is an invalid parameter to
    MLflow), as opposed to a registry that cannot be reached or read."""
    if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
        return True
    unknown_alias = "alias" in str(error) and "not found" in str(error)
    return error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and unknown_alias


def aliased_version(name: str, alias: str = PRODUCTION) -> str | None:
    """The version an alias points at; None only when the model or the alias does not exist.
    Any other registry error is raised: a gate must never mistake an outage for "no champion"."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if _missing(e):
            return None
        raise


def version_for(name: str, alias: str = PRODUCTION) -> ModelVersion:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _missing(e):
            raise RegistryError(f"{name}@{alias} does not exist") from None
        raise


def versions_of_run(run_id: str, name: str | None = None) -> list[ModelVersion]:
    """Registered versions whose model was logged in `run_id` (of one model, if named)."""
    query = f"run_id = '{run_id}'" + (f" and name = '{name}'" if name else "")
    return list(MlflowClient().search_model_versions(query))


def set_threshold(name: str, version: str, threshold: float) -> None:
    MlflowClient().set_model_version_tag(name, version, THRESHOLD_TAG, f"{threshold:.6f}")


def threshold_of(version: ModelVersion) -> float | None:
    """The version's decision threshold, the gate's choice; None where it was never gated (it
    then answers at `model.loaded.DEFAULT_THRESHOLD`)."""
    tagged = version.tags.get(THRESHOLD_TAG)
    return None if tagged is None else float(tagged)


def _actor() -> str:
    """Who moves an alias: `RAYAPP_ACTOR`, else the login name, else the uid (containers often
    run as a uid with no passwd entry, where getpass fails)."""
    if actor := os.environ.get("RAYAPP_ACTOR"):
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def _entries(name: str) -> list[tuple[str, AliasMove]]:
    tags = MlflowClient().get_registered_model(name).tags
    found = [(k, AliasMove(**json.loads(v))) for k, v in tags.items() if k.startswith(AUDIT_PREFIX)]
    return sorted(found, key=lambda kv: kv[1].when)


def _dangling(entries: list[tuple[str, AliasMove]], alias: str, current: str | None) -> str | None:
    """The tag of an entry written by a move that died before it set the alias, if any."""
    mine = [(k, m) for k, m in entries if m.alias == alias]
    if mine and mine[-1][1].to_version != current and mine[-1][1].from_version == current:
        return mine[-1][0]
    return None


def _move(
    name: str,
    alias: str,
    version: str | int,
    reason: str,
    gate_report: str = "",
    expected: object = _UNCHECKED,
) -> AliasMove:
    client = MlflowClient()
    target = client.get_model_version(name, str(version))
    current = aliased_version(name, alias)
    if dangling := _dangling(_entries(name), alias, current):
        client.delete_registered_model_tag(name, dangling)
    if expected is not _UNCHECKED and current != (None if expected is None else str(expected)):
        raise ConcurrentMoveError(
            f"{name}@{alias} moved to version {current} while this was judged against "
            f"version {expected}; judge again"
        )
    now = dt.datetime.now(dt.UTC)
    entry = AliasMove(
        when=now.isoformat(timespec="microseconds"),
        alias=alias,
        from_version=current,
        to_version=str(version),
        reason=reason,
        by=_actor(),
        run_id=target.run_id or "",
        dataset_version=target.tags.get("dataset_version", ""),
        gate_report=gate_report,
    )
    key = f"{AUDIT_PREFIX}{now:%Y%m%dT%H%M%S.%f}.{alias}"
    client.set_registered_model_tag(name, key, json.dumps(asdict(entry)))  # the intent first
    client.set_registered_model_alias(name, alias, str(version))
    return entry


def mark_candidate(name: str, version: str | int, reason: str) -> AliasMove:
    """Point `candidate` at a version for the gate to judge (a search's best trial)."""
    return _move(name, CANDIDATE, version, reason)


def promote(
    name: str,
    alias: str,
    version: str | int,
    reason: str,
    gate_report: str,
    expected: str | int | None,
) -> AliasMove:
    """The gate's move of `staging` or `production`, refused if the alias no longer holds
    `expected` (the version the candidate was judged against)."""
    if alias not in (STAGING, PRODUCTION):
        raise RegistryError(f"the gate moves only {STAGING!r} and {PRODUCTION!r}, not {alias!r}")
    return _move(name, alias, version, reason, gate_report, expected)


def alias_history(name: str, alias: str | None = None) -> list[AliasMove]:
    """Every recorded alias move of a model, oldest first (moves that died half-way left out)."""
    entries = _entries(name)
    aliases = {m.alias for _, m in entries}
    dangling = {_dangling(entries, a, aliased_version(name, a)) for a in aliases}
    return [m for k, m in entries if k not in dangling and alias in (None, m.alias)]


def rollback(name: str, to: str | None = None, alias: str = PRODUCTION) -> AliasMove:
    """Move `production` back: to `to`, or to the version it pointed at before its last move.
    Only versions that were in production before qualify, so the gate is never bypassed."""
    current = aliased_version(name, alias)
    if current is None:
        raise RegistryError(f"{name}@{alias} does not exist")
    history = alias_history(name, alias)
    if to is None:
        earlier = [m for m in history if m.to_version == current]
        if not earlier or earlier[-1].from_version is None:
            raise RegistryError(
                f"{name}@{alias} is version {current} and no earlier version is recorded; "
                "name one with --to"
            )
        to = earlier[-1].from_version
    if str(to) == current:
        raise RegistryError(f"{name}@{alias} already points at version {current}")
    if not any(m.to_version == str(to) for m in history):
        # Only the gate puts a new version in production; rollback may not bypass it.
        raise RegistryError(
            f"{name} version {to} has never been {alias}; only versions that were can be "
            "rolled back to (a new one goes through `rayapp gate`)"
        )
    return _move(name, alias, to, f"rollback from version {current}", expected=current)


def gate_report(name: str, version: str | int) -> str | None:
    """The report of the gate that passed this version (its move to staging), or None: the
    proof a rollout asks for before it lets a version take production's traffic."""
    passed = [m for m in alias_history(name) if m.to_version == str(version) and m.gate_report]
    return passed[-1].gate_report if passed else None


@dataclass(frozen=True)
class RolloutEvent:
    """One serving change of a model's route (`rayapp deploy`, a canary's step, rollback or
    promotion), recorded beside the alias moves with who made it and why."""

    when: str
    action: str
    reason: str
    by: str
    rollout_id: str = ""
    detail: str = ""  # JSON: the route as it was set, or the figures behind a decision


def record_rollout(
    name: str, action: str, reason: str, rollout_id: str = "", detail: object = None
) -> RolloutEvent:
    now = dt.datetime.now(dt.UTC)
    event = RolloutEvent(
        when=now.isoformat(timespec="microseconds"),
        action=action,
        reason=reason,
        by=_actor(),
        rollout_id=rollout_id,
        detail="" if detail is None else json.dumps(detail, default=str)[:3000],
    )
    key = f"{ROLLOUT_PREFIX}{now:%Y%m%dT%H%M%S.%f}.{action}"
    MlflowClient().set_registered_model_tag(name, key, json.dumps(asdict(event)))
    return event


def rollout_history(name: str) -> list[RolloutEvent]:
    tags = MlflowClient().get_registered_model(name).tags
    found = [RolloutEvent(**json.loads(v)) for k, v in tags.items() if k.startswith(ROLLOUT_PREFIX)]
    return sorted(found, key=lambda e: e.when)
