"""Delayed labels: labels files joined to a real prediction log (written by `PredictionLog`,
scored by the real `Scorer` of the promoted version), live quality, bias and attribution drift
per version, the MLflow runs, and refusals of bad files with nothing stored."""

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from ray_app import tracking
from ray_app.cli import app as cli
from ray_app.data import synth
from ray_app.data.ingest import DataError
from ray_app.data.store import open_store
from ray_app.model.logged import load
from ray_app.model.scoring import Scorer
from ray_app.monitor.drift import LiveLimits, MonitorConfig
from ray_app.monitor.labels import LABEL_TIME, ingest, join, read_labels, read_log
from ray_app.monitor.live import live_quality
from ray_app.monitor.predictions import Answered, PredictionLog, read

ROOT = Path(__file__).resolve().parent.parent
HOUR = dt.timedelta(hours=1)
NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def model(result):
    return load(f"{result.model_name}@production")


def _config(tmp_path: Path, **live) -> tuple[MonitorConfig, Path]:
    """Hourly buckets judged from 100 rows; the shipped gates' fairness limits."""
    limits = {"gates": ROOT / "configs" / "gates.yaml", "bucket_s": 3600, "min_rows": 100}
    cfg = MonitorConfig(live=LiveLimits(**{**limits, **live}))
    path = tmp_path / "monitor.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    return cfg, path


def _rows(tmp_path: Path, n: int, seed: int, prefix: str, **drift) -> pd.DataFrame:
    """Built-in rows with their true label, ids of this test, dates as the log types them."""
    frame = pd.read_parquet(
        synth.write(tmp_path / f"{prefix}.parquet", n, seed=seed, drift=synth.Drift(**drift))
    )
    for column in ("signup_date", "last_login"):
        frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame.assign(customer_id=[f"{prefix}-{i}" for i in range(n)])


def _log(model, name: str, rows: pd.DataFrame, times: list[dt.datetime]) -> pd.DataFrame:
    """Each row scored by the real Scorer and written by the real prediction log as one request
    answered at its time; the rows with their answer."""
    scorer = Scorer.of(model)
    proba = scorer.proba(rows)
    labels = scorer.labels(proba)
    log = PredictionLog(open_store(None), name, model.contract, max_rows=len(rows), flush_s=60)
    version = f"{model.name}/{model.version}"
    for i, (record, p, label, when) in enumerate(
        zip(rows.to_dict("records"), proba, labels, times, strict=True)
    ):
        answered = Answered(
            when.timestamp(), f"{name}-{i}", "primary", version, [record], [p], [label], 1.0
        )
        assert log.add(answered)
    assert log.flush() == len(rows)
    return rows.assign(_probability=proba, _label=labels, _time=times)


def _labels_file(path: Path, ids, labels, times=None) -> Path:
    frame = pd.DataFrame({"customer_id": list(ids), "churned": list(labels)})
    if times is not None:
        frame[LABEL_TIME] = [t.isoformat() for t in times]
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def _ece(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    which = np.minimum((proba * bins).astype(int), bins - 1)
    return sum(
        (which == b).mean() * abs(proba[which == b].mean() - y[which == b].mean())
        for b in range(bins)
        if (which == b).any()
    )


def test_a_label_joins_its_ids_latest_prediction_before_it_within_the_horizon(model, tmp_path):
    name, t0 = "labels-join", NOW - dt.timedelta(days=10)
    rows = _rows(tmp_path, 4, seed=3, prefix="join")
    ids = ["A", "A", "B", "C"]
    _log(model, name, rows.assign(customer_id=ids), [t0, t0 + 2 * HOUR, t0, t0 + 5 * HOUR])
    cfg, _ = _config(tmp_path, max_label_delay_s=86400)
    labelled = _labels_file(
        tmp_path / "labels.csv",
        ["A", "A", "B", "C"],
        [1, 0, 1, 0],
        [t0 + HOUR, t0 + 3 * HOUR, t0 + dt.timedelta(days=1, seconds=60), t0 + 4 * HOUR],
    )
    added = ingest(labelled, name, open_store(None), cfg)
    assert (added.rows, added.stored, added.duplicates) == (4, 4, 0)
    # B's label came a minute past the horizon, C's before C's only prediction.
    assert (added.matched, added.late, added.no_prediction) == (2, 1, 1)

    log = read(open_store(None), name).to_pandas()
    joined = join(read_labels(open_store(None), name), log, model.contract, 86400)
    got = joined.rows.sort_values(LABEL_TIME)
    assert list(got["_request_id"]) == [f"{name}-0", f"{name}-1"]  # A at t0, then A at t0+2h
    assert list(got["churned"]) == [1, 0]
    assert (joined.matched, joined.late, joined.no_prediction) == (2, 1, 1)


def test_live_figures_equal_sklearn_per_bucket_with_bias_attribution_and_mlflow(model, tmp_path):
    name, t0 = "labels-live", NOW - dt.timedelta(days=3)
    rows = _rows(tmp_path, 1200, seed=21, prefix="live")
    times = [t0 + (i // 600) * HOUR + dt.timedelta(seconds=5 * (i % 600)) for i in range(1200)]
    answered = _log(model, name, rows, times)
    cfg, _ = _config(tmp_path)
    added = ingest(
        _labels_file(
            tmp_path / "labels.csv",
            rows["customer_id"],
            rows["churned"],
            [t + dt.timedelta(days=2) for t in times],
        ),
        name,
        open_store(None),
        cfg,
    )
    assert (added.stored, added.matched) == (1200, 1200)

    report = live_quality(name, cfg, open_store(None))
    assert (report.labels, report.matched, report.superseded) == (1200, 1200, 0)
    [version] = report.versions
    assert version.version == f"{model.name}/{model.version}"
    assert (version.logged, version.labelled) == (1200, 1200)
    y = answered["churned"].to_numpy()
    proba = answered["_probability"].to_numpy()
    pred = (answered["_label"] == 1).to_numpy(int)
    assert [b.start for b in version.buckets] == [t0.isoformat(), (t0 + HOUR).isoformat()]
    for bucket, part in zip(version.buckets, (slice(0, 600), slice(600, 1200)), strict=True):
        assert (bucket.rows, bucket.positives) == (600, int(y[part].sum()))
        assert bucket.roc_auc == pytest.approx(skm.roc_auc_score(y[part], proba[part]))
        assert bucket.f1 == pytest.approx(skm.f1_score(y[part], pred[part]))
        assert bucket.ece == pytest.approx(_ece(y[part], proba[part]))
    assert version.window.roc_auc == pytest.approx(skm.roc_auc_score(y, proba))
    assert version.window.roc_auc > 0.8 and version.window.ece < 0.1

    bias = {c["name"]: c for c in version.bias}
    assert {"gender demographic parity", "gender equalized odds"} <= set(bias)
    assert all(c["value"] is not None for c in bias.values())
    assert set(version.attribution) == set(model.features.feature_names)
    assert all({"live", "reference", "change"} <= set(a) for a in version.attribution.values())
    assert not [a for a in version.attribution.values() if a["drifted"]]  # same population
    assert not [b for b in report.breaches if "live " in b or "attribution" in b], report.breaches

    tracking.configure()
    run = mlflow.get_run(version.mlflow_run_id)
    assert run.data.tags["kind"] == "live"
    assert run.data.tags["model_version"] == str(model.version)
    assert run.data.tags["model_name"] == model.name
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "live_roc_auc")
    assert [m.step for m in history] == [
        int(t0.timestamp()) // 3600,
        int(t0.timestamp()) // 3600 + 1,
    ]
    assert [m.value for m in history] == [b.roc_auc for b in version.buckets]
    saved = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/live/live.json"))
    assert saved["labelled"] == 1200 and len(saved["buckets"]) == 2


def test_flipped_labels_on_shifted_traffic_breach_quality_and_attribution(model, tmp_path):
    name, t0 = "labels-flipped", NOW - dt.timedelta(days=2)
    rows = _rows(tmp_path, 600, seed=22, prefix="flip", shift={"days_since_last_login": 300.0})
    times = [t0 + dt.timedelta(seconds=5 * i) for i in range(600)]
    _log(model, name, rows, times)
    cfg, _ = _config(tmp_path)
    ingest(
        _labels_file(tmp_path / "flipped.csv", rows["customer_id"], 1 - rows["churned"], times),
        name,
        open_store(None),
        cfg,
    )
    report = live_quality(name, cfg, open_store(None))
    [version] = report.versions
    assert version.window.roc_auc < 0.5
    assert any("live roc_auc" in b and "< floor 0.75" in b for b in report.breaches), (
        report.breaches
    )
    assert any("live f1" in b for b in report.breaches), report.breaches
    assert version.attribution["days_since_last_login"]["drifted"], version.attribution
    assert any("attribution drift: days_since_last_login" in b for b in report.breaches)
    tracking.configure()
    assert mlflow.get_run(version.mlflow_run_id).data.tags["verdict"] == "breach"


def test_bad_labels_files_are_refused_with_file_column_and_counts_and_nothing_stored(
    model, tmp_path
):
    name = "labels-cli"
    rows = _rows(tmp_path, 300, seed=23, prefix="cli")
    times = [NOW - dt.timedelta(days=1) + dt.timedelta(seconds=i) for i in range(300)]
    _log(model, name, rows, times)
    _, config = _config(tmp_path)
    ids, y = list(rows["customer_id"]), list(rows["churned"])
    later = [t + HOUR for t in times]
    bad = {
        "no_id.csv": (
            pd.DataFrame({"id": ids, "churned": y}),
            ["missing column(s) ['customer_id']", "the label column 'churned'"],
        ),
        "outside.csv": (
            pd.DataFrame({"customer_id": ids, "churned": ["2", "yes", *map(str, y[2:])]}),
            ["(300 rows)", "column 'churned': 2 rows", "allowed values [0, 1]", "['2', 'yes']"],
        ),
        "unknown.csv": (
            pd.DataFrame({"customer_id": ["X1", "X2", "X3", *ids[3:]], "churned": y}),
            [
                "column 'customer_id': 3 rows with ids 'labels-cli' never logged",
                "['X1', 'X2', 'X3']",
            ],
        ),
        "twice.csv": (
            pd.DataFrame(
                {
                    "customer_id": [ids[0], *ids[:-1]],
                    "churned": y,
                    LABEL_TIME: [later[0], *later[:-1]],
                }
            ),
            ["column 'customer_id': 2 rows label an id another row labels too", f"['{ids[0]}']"],
        ),
        "times.csv": (
            pd.DataFrame({"customer_id": ids, "churned": y, LABEL_TIME: ["yesterday", *later[1:]]}),
            ["column 'label_time': 1 rows without an ISO 8601 time", "['yesterday']"],
        ),
    }
    for file, (frame, expected) in bad.items():
        path = tmp_path / file
        frame.to_csv(path, index=False)
        out = CliRunner().invoke(
            cli, ["labels", "ingest", "--data", str(path), "--model", name, "--config", str(config)]
        )
        assert out.exit_code == 2, out.output
        assert str(path) in out.output and all(e in out.output for e in expected), out.output
    assert read_labels(open_store(None), name).empty  # refused whole: nothing stored

    good = _labels_file(tmp_path / "good.parquet", ids, y, later)
    out = CliRunner().invoke(
        cli, ["labels", "ingest", "--data", str(good), "--model", name, "--config", str(config)]
    )
    assert out.exit_code == 0, out.output
    assert "300 new labels stored" in out.output and "300 to a prediction" in out.output
    assert f"[live] {model.name}/{model.version}: 300 of 300 predictions labelled" in out.output
    assert "MLflow run" in out.output


def test_labels_ingested_again_are_never_counted_twice(model, tmp_path):
    name = "labels-again"
    rows = _rows(tmp_path, 300, seed=24, prefix="again")
    times = [NOW - dt.timedelta(days=2) + dt.timedelta(seconds=i) for i in range(300)]
    _log(model, name, rows, times)
    cfg, _ = _config(tmp_path)
    store, ids, y = open_store(None), rows["customer_id"], rows["churned"]
    later = [t + dt.timedelta(days=1) for t in times]
    timed = _labels_file(tmp_path / "timed.csv", ids, y, later)
    assert ingest(timed, name, store, cfg).stored == 300
    again = ingest(timed, name, store, cfg)  # the same file
    assert (again.stored, again.duplicates, again.matched) == (0, 300, 0)
    reordered = _labels_file(tmp_path / "reordered.csv", ids[::-1], y[::-1], later[::-1])
    assert (ingest(reordered, name, store, cfg).stored, len(read_labels(store, name))) == (0, 300)
    untimed = _labels_file(tmp_path / "untimed.csv", ids, y)  # labelled at ingest time
    assert ingest(untimed, name, store, cfg).stored == 300
    assert ingest(untimed, name, store, cfg).stored == 0

    report = live_quality(name, cfg, store)
    [version] = report.versions
    # Two labels per prediction stored, each prediction counted once (its latest label).
    assert (report.matched, report.superseded, version.labelled) == (600, 300, 300)
    assert version.window.rows == 300

    flipped = _labels_file(tmp_path / "flipped.csv", ids, 1 - y, later)
    with pytest.raises(DataError, match="300 rows contradict labels stored for the same id"):
        ingest(flipped, name, store, cfg)


def test_integer_ids_in_the_log_read_as_their_digits(model, tmp_path):
    """A log whose id column is an integer with a null in it (a request left the id out):
    pandas alone would read 1001 as 1001.0, which no labels file's "1001" ever matches."""
    store = open_store(str(tmp_path / "store"))
    folder = Path(store.path("predictions", "model=ints", f"date={NOW:%F}", f"hour={NOW:%H}"))
    folder.mkdir(parents=True)
    when = pa.array([NOW, NOW + dt.timedelta(seconds=1)], pa.timestamp("us", tz="UTC"))
    version = f"{model.name}/{model.version}"
    table = pa.table(
        {"customer_id": pa.array([1001, None], pa.int64()), "_time": when,
         "_model_version": [version, version]}
    )  # fmt: skip
    pq.write_table(table, folder / "part-0.parquet")
    log, served = read_log(store, "ints")
    assert served.version == model.version
    assert log["customer_id"].tolist() == ["1001", None]
