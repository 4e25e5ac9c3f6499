"""The retraining loop end to end on the live service: traffic is sent, the monitor judges it,
and a retrain runs only when drift calls for it; its candidate reaches production only through
the gate on the new data and a canary the router promotes. A retrain killed half-way resumes
from its last finished step; one retrain per model at a time."""

import dataclasses
import datetime as dt
import subprocess
import sys
import threading
import time
import uuid

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from ray_app import registry, retrain, tracking
from ray_app.cli import app as cli
from ray_app.config import load_pipeline_config
from ray_app.data import synth
from ray_app.model.schema import to_records
from ray_app.rollout.deploy import Running

pytestmark = pytest.mark.e2e
# The drift a season brings: charges and support tickets up (the served model's mean score
# moves by half), and southern customers now stay while tickets matter less (concept drift: a
# model trained before cannot know it; on this data a retrained one gains about 0.03 ROC-AUC).
SHIFT = {"monthly_charge": 40.0, "support_tickets": 1.0}
CONCEPT = {"south": -1.5, "tickets": 0.2}


@pytest.fixture(scope="module")
def production(result, service):
    """Production before these tests, restored after them with the service's default route."""
    before = registry.aliased_version(result.model_name)
    yield before
    if registry.aliased_version(result.model_name) != before:
        registry.rollback(result.model_name, to=before)
    running = Running.read(_dashboard(), "ray_app")
    running.put(result.model_name, None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = requests.get(f"{service}/healthz", timeout=10).json()["models"][result.model_name]
        if seen["strategy"] == "single" and seen["serving"]["primary"].endswith(f"/{before}"):
            return
        time.sleep(0.5)


def _dashboard() -> str:
    import os

    return os.environ["RAY_DASHBOARD_ADDRESS"]


def _config(tmp_path, pipeline_yaml, window_s: float, **over) -> retrain.RetrainConfig:
    """A retrain config file as users write one: drift only (no labels here), no schedule, a
    quick canary on the test's service."""
    monitor = tmp_path / "monitor.yaml"
    monitor.write_text(yaml.safe_dump({"window_s": window_s, "min_rows": 200}))
    raw = {
        "pipeline": str(pipeline_yaml),
        "monitor": str(monitor),
        "schedule": None,
        "triggers": {"drift": True, "live_quality": False},
        "cooldown_s": 0,
        "rollout": {
            "steps": [50, 100],
            "step_s": 3,
            "timeout_s": 240,
            "limits": {"min_requests": 20, "max_mean_score_shift": 0.5},
            "address": _dashboard(),
        },
        **over,
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    return retrain.load_retrain_config(path)


def _instances(path, contract) -> list[dict]:
    """A synth file's rows as clients send them: inputs, the customer's id and gender."""
    dates = [c for c in contract.input_columns if contract.columns[c].type == "date"]
    frame = pd.read_csv(path, parse_dates=dates, keep_default_na=False, na_values=[""])
    sent = frame[contract.passthrough_columns].astype(object).where(frame.notna(), None)
    return [
        {**row, **extra}
        for row, extra in zip(to_records(frame, contract), sent.to_dict("records"), strict=True)
    ]


def _send(service, api, contract, path, per_request=50) -> tuple[dt.datetime, dt.datetime]:
    """Every row of a synth file through /predict; the window it was answered in, once logged."""
    rows = _instances(path, contract)
    start = dt.datetime.now(dt.UTC)
    for i in range(0, len(rows), per_request):
        answer = api.post(f"{service}/predict", json={"instances": rows[i : i + per_request]})
        assert answer.status_code == 200, answer.text
    end = dt.datetime.now(dt.UTC)
    time.sleep(2.5)  # the log flushes every second
    return start, end


def _window(tmp_path, pipeline_yaml, sent, **over):
    start, end = sent
    cfg = _config(tmp_path, pipeline_yaml, (end - start).total_seconds() + 0.5, **over)
    return cfg, end + dt.timedelta(seconds=0.25)


def _exported(ray_session, wanted: set[str], timeout_s: float = 60) -> dict:
    """The metric families `wanted`, once the node's Prometheus endpoint has them all."""
    from prometheus_client.parser import text_string_to_metric_families

    port = ray_session.nodes()[0]["MetricsExportPort"]
    deadline, found = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = {f.name: f for f in text_string_to_metric_families(text) if f.name in wanted}
        if set(found) == wanted:
            return found
        time.sleep(2)
    raise AssertionError(f"exported {sorted(found)} of {sorted(wanted)}")


def _run_tags(journal: retrain.Journal) -> dict[str, str]:
    tracking.configure()
    return mlflow.get_run(journal.mlflow_run_id).data.tags


def test_traffic_like_training_starts_no_retrain(
    result, service, api, contract, production, pipeline_yaml, tmp_path
):
    sent = _send(service, api, contract, synth.write(tmp_path / "clean.csv", 600, seed=31))
    cfg, now = _window(tmp_path, pipeline_yaml, sent)
    decision = retrain.decide(cfg, data=str(tmp_path / "clean.csv"), now=now)
    assert not decision.retrain, decision.reasons
    assert decision.reasons[0] == "nothing calls for a retrain"
    assert any(r.startswith("drift: no drift") for r in decision.reasons), decision.reasons
    assert registry.aliased_version(result.model_name) == production


def test_drift_with_a_worse_candidate_keeps_production_and_says_why(
    result, service, api, contract, production, pipeline_yaml, tmp_path
):
    """The retrain is also killed after its data was validated, and resumed from there."""
    drift = synth.Drift(shift=SHIFT)
    sent = _send(service, api, contract, synth.write(tmp_path / "t.csv", 600, 32, drift=drift))
    new_data = synth.write(tmp_path / "new.csv", 4_000, seed=33, drift=drift)
    # a candidate that cannot be better: two stumps
    cfg = load_pipeline_config(pipeline_yaml)
    weak = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"num_boost_round": 2, "params": {**cfg.train.params, "max_depth": 1}}
            )
        }
    )
    weak_yaml = tmp_path / "weak.yaml"
    weak_yaml.write_text(weak.model_dump_json())
    config, now = _window(tmp_path, weak_yaml, sent)

    decision = retrain.decide(config, data=str(new_data), now=now)
    assert decision.retrain and decision.reasons[0].startswith("drift in 600 rows"), decision
    assert "prediction drift: mean probability" in decision.reasons[0]

    def killed_after_validation(line: str) -> None:
        if line.startswith("[features]"):
            raise KeyboardInterrupt  # as if the process died here
        lines.append(line)

    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        retrain.execute(config, decision, killed_after_validation)
    stopped = retrain.Journal.load(result.model_name)
    assert stopped.step == retrain.TRAIN and stopped.data_version and not stopped.finished
    assert any(line.startswith("[validate]") for line in lines)

    def killed_after_the_gate(line: str) -> None:  # before either journal has its verdict
        if line.startswith("[gate]"):
            raise KeyboardInterrupt
        lines.append(line)

    again = retrain.decide(config, now=now)
    assert again.retrain and again.resume.id == stopped.id
    assert "stopped at step 'train'" in again.reasons[0]
    lines.clear()
    with pytest.raises(KeyboardInterrupt):
        retrain.execute(config, again, killed_after_the_gate)
    assert not any(line.startswith(("[validate]", "[snapshot]")) for line in lines), lines
    versions = MlflowClient().search_model_versions(f"name = '{result.model_name}'")
    assert not retrain.Journal.load(result.model_name).candidate  # registered, not journaled

    again = retrain.decide(config, now=now)
    lines.clear()
    journal = retrain.execute(config, again, lines.append)
    assert journal.id == stopped.id and journal.data_version == stopped.data_version
    resumed = f"[resume] {result.model_name} version {journal.candidate} of MLflow run"
    assert any(line.startswith(resumed) for line in lines), lines  # not trained again
    assert not any(line.startswith("[train]") for line in lines), lines
    after = MlflowClient().search_model_versions(f"name = '{result.model_name}'")
    assert len(after) == len(versions)  # and not registered again
    assert journal.outcome == retrain.KEPT and not journal.gate_passed
    assert f"failed the gate against production v{production}" in journal.reason
    assert "champion: roc_auc" in journal.reason
    assert registry.aliased_version(result.model_name) == production
    tags = _run_tags(journal)
    assert tags["outcome"] == "kept" and tags["data_version"] == journal.data_version
    assert tags["candidate"] == journal.candidate and tags["gate_passed"] == "False"
    history = CliRunner().invoke(cli, ["history", "--model", result.model_name])
    assert "retrain-kept" in history.output

    # Killed just after a gate passed, resumed once production had moved (here: a gate of a
    # journal from before `gated_against` was kept): the candidate is judged again against
    # production as it is now, and no canary starts for a version it never beat.
    passed = dataclasses.replace(
        journal, step=retrain.ROLLOUT, gate_passed=True, gate_reasons=[], gated_against=None
    )
    dataclasses.replace(passed, outcome="", reason="", finished="").save()
    resumed = retrain.decide(config, now=now)
    assert resumed.retrain and resumed.resume.id == stopped.id
    lines.clear()
    journal = retrain.execute(config, resumed, lines.append)
    moved = f"[retrain] production moved to v{production} since the gate passed"
    assert any(line.startswith(moved) for line in lines), lines
    assert journal.outcome == retrain.KEPT and journal.gated_against == production, journal
    assert f"failed the gate against production v{production}" in journal.reason
    assert not journal.rollout_id and registry.aliased_version(result.model_name) == production

    # the same data again: nothing new to learn from, and it says which retrain tried it
    forced = retrain.decide(config, data=str(new_data), force=True, now=now)
    journal = retrain.execute(config, forced, lambda line: None)
    assert journal.outcome == retrain.SKIPPED and f"retrain {stopped.id} (kept" in journal.reason

    # killed after validating, before its checks had their say: resumed, it checks again
    unchecked = dataclasses.replace(journal, step=retrain.VALIDATE, outcome="", finished="")
    unchecked.save()
    resumed = retrain.decide(config, now=now)
    assert resumed.retrain and resumed.resume.id == journal.id
    journal = retrain.execute(config, resumed, lambda line: None)
    assert journal.outcome == retrain.SKIPPED and f"retrain {stopped.id} (kept" in journal.reason

    # killed while its outcome was being recorded (its MLflow run still running): resumed,
    # it finishes recording it, and does nothing else; settings changed meanwhile are named
    MlflowClient().update_run(journal.mlflow_run_id, status="RUNNING")
    dataclasses.replace(journal, finished="").save()
    resumed = retrain.decide(config, now=now)
    assert "finish recording it" in resumed.reasons[0], resumed.reasons
    lines.clear()
    slower = config.rollout.model_copy(update={"step_s": config.rollout.step_s + 1})
    ended = retrain.execute(config.model_copy(update={"rollout": slower}), resumed, lines.append)
    assert ended.finished and ended.outcome == retrain.SKIPPED and ended.reason == journal.reason
    assert MlflowClient().get_run(journal.mlflow_run_id).info.status == "FINISHED"
    artifact = mlflow.artifacts.load_dict(f"runs:/{journal.mlflow_run_id}/retrain.json")
    assert artifact == dataclasses.asdict(ended)  # the journal as it ended, `finished` too
    assert len(lines) == 3 and lines[0].startswith("[retrain] resuming"), lines
    assert "rollout settings changed since it started" in lines[1], lines


def test_drift_with_a_better_candidate_goes_through_a_canary_into_production(
    result, service, api, contract, production, pipeline_yaml, tmp_path
):
    """Nobody touches anything: the watcher sees the drift, retrains on the new data, the gate
    passes the candidate and the router's canary promotes it while traffic flows."""
    drift = synth.Drift(shift=SHIFT, effects=CONCEPT)
    traffic = synth.write(tmp_path / "traffic.csv", 3_000, seed=34, drift=drift)
    start, _ = _send(service, api, contract, traffic)
    new_data = synth.write(tmp_path / "new.csv", 20_000, seed=35, drift=drift)
    window = (dt.datetime.now(dt.UTC) - start).total_seconds() + 60
    cfg = _config(tmp_path, pipeline_yaml, window, data=str(new_data), watch={"every_s": 2})

    out = CliRunner().invoke(
        cli, ["retrain", "--config", str(tmp_path / "retrain.yaml"), "--dry-run"]
    )
    assert out.exit_code == 0, out.output
    assert f"{result.model_name} (production v{production}): retrain" in out.output
    assert "  - drift in " in out.output and f"  1. validate {new_data} " in out.output
    assert "  4. canary 50% -> 100%, 3s per step" in out.output
    before = retrain.Journal.load(result.model_name)
    assert before is None or before.finished  # a dry run starts nothing

    rows = _instances(traffic, contract)
    done, answered = threading.Event(), []

    def keep_sending() -> None:  # live traffic for the canary to be judged on
        with requests.Session() as session:
            session.headers.update(api.headers)
            i = 0
            while not done.is_set():
                reply = session.post(f"{service}/predict", json={"instances": [rows[i % 3000]]})
                answered.append(reply.status_code)
                i += 1

    deadline = time.monotonic() + 600

    def one_retrain_ended() -> bool:
        journal = retrain.Journal.load(result.model_name)
        ended = journal is not None and journal.finished and journal != before
        return ended or time.monotonic() > deadline

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    lines: list[str] = []
    try:
        retrain.watch(cfg, log=lines.append, stop=one_retrain_ended)
    finally:
        done.set()
        sender.join(10)
    journal = retrain.Journal.load(result.model_name)
    assert journal != before and journal.outcome == retrain.PROMOTED, (journal, lines)
    assert journal.gate_passed and journal.rollout_id.startswith("canary@")
    assert registry.aliased_version(result.model_name) == journal.candidate
    assert set(answered) == {200}, {c: answered.count(c) for c in set(answered)}
    events = [e.action for e in registry.rollout_history(result.model_name)]
    assert events[-3:] == ["canary-start", "canary-promote", "retrain-promoted"], events
    tags = _run_tags(journal)
    assert tags["outcome"] == "promoted" and tags["reasons"].startswith("drift in ")
    reply = api.post(f"{service}/predict", json={"instances": rows[:1]}).json()
    assert reply["model_version"] == journal.candidate


def test_a_retrain_can_search_and_let_the_gate_move_production(
    result, production, pipeline_yaml, tmp_path
):
    """`search:` runs a Ray Tune search on the new data instead of one training; with
    `rollout.strategy: direct` the gate moves production itself (no Serve app needed)."""
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "algorithm": "random",
                "num_samples": 2,
                "max_concurrent_trials": 2,
                "num_boost_round": 60,
                "early_stopping_rounds": 10,
                "report_every": 20,
                "checkpoint_every": 40,
                "asha": {"enabled": False},
                "space": {"max_depth": {"type": "randint", "low": 4, "high": 7}},
            }
        )
    )
    drift = synth.Drift(shift=SHIFT, effects=CONCEPT)
    new_data = synth.write(tmp_path / "new.csv", 20_000, seed=37, drift=drift)
    quiet = {"drift": False, "live_quality": False}
    cfg = _config(tmp_path, pipeline_yaml, 60, search=str(search), triggers=quiet)
    cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"strategy": "direct"})})
    before = registry.aliased_version(result.model_name)
    decision = retrain.decide(cfg, data=str(new_data), force=True)
    assert decision.retrain and decision.reasons == ["forced (--force)"]
    journal = retrain.execute(cfg, decision, lambda line: None)
    assert journal.outcome == retrain.PROMOTED, journal
    assert journal.search == f"retrain-{journal.id}" and journal.gate_passed
    assert f"the gate moved production {before} -> {journal.candidate}" == journal.reason
    assert registry.aliased_version(result.model_name) == journal.candidate
    version = registry.model_version(result.model_name, journal.candidate)
    assert version.tags["search"] == journal.search
    assert version.tags["dataset_version"] == journal.data_version


def test_one_retrain_per_model_and_a_dead_holder_frees_the_lock(result):
    busy = pytest.raises(retrain.RetrainBusy, match=r"already running \(pid \d+")
    with retrain.locked(result.model_name), busy, retrain.locked(result.model_name):
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from ray_app import retrain\n"
            f"with retrain.locked({result.model_name!r}): print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(retrain.RetrainBusy, match=f"pid {holder.pid}"),
            retrain.locked(result.model_name),
        ):
            pass
        holder.kill()
        holder.wait(10)
        with retrain.locked(result.model_name):  # the kernel let go of the dead holder's lock
            pass
    finally:
        holder.kill()


def test_the_watcher_checks_and_exports_what_the_alerts_read(
    result, service, api, contract, production, pipeline_yaml, tmp_path, ray_session
):
    """One check of `rayapp retrain --watch` on traffic with delayed labels: drift and live
    quality are judged and leave through Ray's metrics endpoint, where the rules find them."""
    from test_alerts import metric_names

    from ray_app.data.store import open_store
    from ray_app.monitor import gauges, labels
    from ray_app.monitor.drift import load_monitor_config

    traffic = synth.write(tmp_path / "traffic.csv", 600, seed=36)
    start, end = _send(service, api, contract, traffic)
    outcomes = tmp_path / "labels.csv"
    pd.read_csv(traffic)[["customer_id", "churned"]].to_csv(outcomes, index=False)
    window = (dt.datetime.now(dt.UTC) - start).total_seconds() + 30
    cfg = _config(tmp_path, pipeline_yaml, window, cooldown_s=3600)
    cfg = cfg.model_copy(update={"triggers": retrain.Triggers(drift=True, live_quality=True)})
    monitor = load_monitor_config(cfg.monitor)
    drift_config = monitor.model_copy(
        update={"live": monitor.live.model_copy(update={"window_s": window, "min_rows": 100})}
    )
    cfg.monitor.write_text(yaml.safe_dump(drift_config.model_dump(mode="json")))
    ingested = labels.ingest(outcomes, result.model_name, open_store(None), drift_config)
    assert ingested.matched == 600, ingested

    lines: list[str] = []
    retrain.watch(cfg, log=lines.append, stop=lambda: bool(lines))
    assert lines[0].startswith(f"[retrain] {result.model_name} (production v"), lines
    assert any("live quality" in line for line in lines), lines
    exported = _exported(ray_session, set(gauges.NAMES))
    serving = registry.aliased_version(result.model_name)
    roc = [x for x in exported["ray_rayapp_live_roc_auc"].samples if x.labels["version"] == serving]
    assert roc and 0.6 < roc[-1].value <= 1.0, exported["ray_rayapp_live_roc_auc"].samples
    counted = {x.labels["outcome"] for x in exported["ray_rayapp_retrains"].samples}
    assert counted >= set(retrain.OUTCOMES)
    assert metric_names() >= gauges.NAMES  # the rules and the dashboard read them all


def test_a_cron_schedule_that_is_due_starts_a_retrain_and_one_that_is_not_waits(
    result, pipeline_yaml, tmp_path
):
    quiet = {"triggers": {"drift": False, "live_quality": False}}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    every_minute = _config(tmp_path, pipeline_yaml, 60, schedule="* * * * *", **quiet)
    decision = retrain.decide(every_minute, data="new.csv", now=later)
    assert decision.retrain and decision.reasons[0].startswith("schedule '* * * * *': due at")
    yearly = _config(tmp_path, pipeline_yaml, 60, schedule="0 0 1 1 *", **quiet)
    decision = retrain.decide(yearly, data="new.csv", now=later)
    assert not decision.retrain and "schedule '0 0 1 1 *': next at" in decision.reasons[1]
    with pytest.raises(ValueError, match="is not a cron expression"):
        _config(tmp_path, pipeline_yaml, 60, schedule="every sunday")


def test_a_failed_retrain_does_not_keep_its_data_from_being_tried_again(ray_session):
    """A failure (a placement timeout, an unreachable dashboard) or a skip judged no model of
    the data; a kept, promoted or rolled-back one did."""
    tracking.configure()
    client, model = MlflowClient(), f"tried-{uuid.uuid4().hex[:8]}"  # touches no other test

    def ended(outcome: str) -> None:
        tags = {"model_name": model, "data_version": "v1", "id": outcome, "outcome": outcome}
        run = client.create_run(tracking.experiment_id(retrain.EXPERIMENT), tags=tags)
        client.set_terminated(run.info.run_id)

    ended(retrain.FAILED)
    ended(retrain.SKIPPED)
    assert retrain._tried(model, "v1", current="now") is None
    ended(retrain.KEPT)
    assert retrain._tried(model, "v1", current="now").startswith(f"retrain {retrain.KEPT} (kept")


def test_a_check_that_fails_is_said_and_does_not_stop_a_forced_retrain(
    result, pipeline_yaml, tmp_path
):
    """A prediction log that cannot be read fails the live quality check; the decision says
    so, and --force (or a due schedule) still starts the retrain."""
    store = tmp_path / "store"
    hour = store / "predictions" / f"model={result.model_name}" / "date=2026-01-01" / "hour=00"
    hour.mkdir(parents=True)
    version = f"{result.model_name}/{result.model_version}"  # a log whose times are not times
    pq.write_table(pa.table({"_time": ["soon"], "_model_version": [version]}), hour / "p.parquet")
    cfg = load_pipeline_config(pipeline_yaml)
    moved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": str(store)})})
    moved_yaml = tmp_path / "pipeline.yaml"
    moved_yaml.write_text(moved.model_dump_json())
    config = _config(tmp_path, moved_yaml, 3600, triggers={"drift": True, "live_quality": True})

    data = str(synth.write(tmp_path / "new.csv", 500, seed=71))
    decision = retrain.decide(config, data=data, force=True)
    assert decision.retrain and decision.reasons[0] == "forced (--force)", decision.reasons
    failed = [r for r in decision.reasons if "could not be judged" in r]
    assert [r.split(":")[0] for r in failed] == ["live quality"], decision.reasons
    assert not retrain.decide(config, data=data).retrain  # nothing else calls for one


def test_a_canary_started_but_not_journaled_is_followed_not_started_again(result):
    """A retrain killed between starting its canary and journaling it finds that canary when
    resumed: in the route while it runs, in the rollout history once it has ended."""
    from ray_app.rollout.routing import Canary, Route, Variant

    model = result.model_name
    version = registry.aliased_version(model)
    started = dt.datetime.now(dt.UTC)
    journal = retrain.Journal("t", model, started.isoformat(), [], "", version)
    candidate = f"{model}/{version}"
    primary = Variant(name="primary", model=f"{model}@production")

    def canary_of(ref: str, at: float) -> Route:
        return Route(
            strategy="canary",
            variants=[primary, Variant(name="canary", model=ref, weight=0)],
            canary=Canary(variant="canary", started_at=at),
        )

    now = time.time()
    ours = canary_of(candidate, now)
    assert retrain.unjournaled_canary(journal, candidate, ours) == ours.canary.rollout_id
    assert retrain.unjournaled_canary(journal, candidate, canary_of(candidate, now - 3600)) is None
    assert retrain.unjournaled_canary(journal, candidate, canary_of(f"{model}/99", now)) is None

    ended = Route(variants=[primary])  # back to one variant: only the history has it
    assert retrain.unjournaled_canary(journal, candidate, ended) is None
    # recorded as `rollout.deploy.start` records one: the route it set is the event's detail
    # (ours by a later version that added a field to routes, which is read all the same)
    other = canary_of(f"{model}/99", now - 1)
    events = [
        registry.record_rollout(model, "canary-start", "", r.canary.rollout_id, detail)
        for r, detail in ((ours, {**ours.model_dump(), "added": 1}), (other, other.model_dump()))
    ]  # then two it cannot read, which do not stop it looking further back
    cut = ours.model_dump_json()[:40]
    events += [registry.record_rollout(model, "canary-start", "", "x", d) for d in (None, cut)]
    try:
        assert retrain.unjournaled_canary(journal, candidate, ended) == ours.canary.rollout_id
        assert retrain.unjournaled_canary(journal, f"{model}/98", ended) is None
    finally:  # the shared model's history, as it was
        client = MlflowClient()
        for key, value in client.get_registered_model(model).tags.items():
            if key.startswith(registry.ROLLOUT_PREFIX) and any(e.when in value for e in events):
                client.delete_registered_model_tag(model, key)
