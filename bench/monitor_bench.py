"""The drift monitor (`rayapp monitor`, `ray_app.monitor.drift.run`) on a prediction log of 100k
and 1M rows: wall time and peak memory of the job, each in a fresh process.

The log is written as the router writes it: `predictions.schema(contract)` rows of built-in
data scored by the real production model (the pipeline's, registered and gated in a temporary
MLflow), one Parquet file per second (`flush_s` 1 s, one router replica) under
`model=/date=/hour=` folders, spread over `--hours` hours; the monitor judges that whole window.
Baselines, each in its own fresh process on the same window: the floor of reading the window
into pandas with the log's own reader (`predictions.read(...).to_pandas()`, every column), and
Evidently's `DataDriftPreset` alone on every row of the window against the monitor's reference
sample (frames built before the clock starts, Evidently imported). `rayapp trace` of one
request in the middle of the largest log is timed beside.

Goal (issue 14): the monitor on 1M logged predictions within a minute and 2 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import posixpath
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import peak_rss_mb, report, run_child

ROOT = Path(__file__).resolve().parent.parent
MODEL = "churn_model"
ROWS_PER_REQUEST = 4
END = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)  # the window's end: fixed


def _env(home: Path) -> None:
    os.environ.update(
        {
            "RAYAPP_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def production_model(home: Path) -> None:
    """The pipeline on the built-in 20k rows, its version in production (promoted directly if
    the gate's latency check failed on a busy host: this measures the monitor, not the gate)."""
    from ray_app import pipeline, registry
    from ray_app.config import load_pipeline_config
    from ray_app.runtime import init_ray

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    result = pipeline.run(load_pipeline_config(ROOT / "configs" / "pipeline.yaml"), log=print)
    if registry.aliased_version(result.model_name) != result.model_version:
        registry.promote(
            result.model_name, registry.PRODUCTION, result.model_version, "bench", "", None
        )
    import ray

    ray.shutdown()


def write_log(store_root: Path, rows: int, hours: float, seed: int) -> int:
    """`rows` logged predictions ending at END, one file per second; returns the file count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_app import registry, tracking
    from ray_app.data import synth
    from ray_app.data.store import DataStore
    from ray_app.model.logged import load
    from ray_app.model.ref import ModelRef
    from ray_app.model.scoring import Scorer
    from ray_app.monitor.predictions import FOLDER, schema

    tracking.configure()
    model = load(ModelRef(MODEL, alias=registry.PRODUCTION))
    scorer, contract = Scorer.of(model), model.contract
    log_schema = schema(contract)
    served = f"{model.name}/{model.version}"
    store = DataStore(store_root)
    seconds = int(hours * 3600)
    start = END - dt.timedelta(seconds=seconds)
    files, done = 0, 0
    for frame in synth.generate(rows, seed=seed):
        n = len(frame)
        proba = scorer.proba(frame)
        index = np.arange(done, done + n)
        second = index * seconds // rows  # which flush (second of the window) a row is in
        request = index // ROWS_PER_REQUEST
        columns = {}
        for field in log_schema:
            if field.name in frame:
                values = frame[field.name]
                if pa.types.is_date32(field.type):
                    values = values.dt.date
                columns[field.name] = pa.array(values, type=field.type)
        times = np.datetime64(start.replace(tzinfo=None), "us") + second * 1_000_000
        columns.update(
            {
                "_time": pa.array(times, pa.timestamp("us", tz="UTC")),
                "_request_id": pa.array([f"bench-{r}" for r in request]),
                "_row": pa.array(index % ROWS_PER_REQUEST, pa.int32()),
                "_variant": pa.array(["primary"] * n),
                "_model_version": pa.array([served] * n),
                "_probability": pa.array(proba, pa.float64()),
                "_label": pa.array([str(v) for v in scorer.labels(proba)]),
                "_latency_ms": pa.array(np.full(n, 1.5)),
            }
        )
        table = pa.table(columns, schema=log_schema)
        bounds = np.flatnonzero(np.diff(second)) + 1
        for lo, hi in zip([0, *bounds], [*bounds, n], strict=True):
            when = start + dt.timedelta(seconds=int(second[lo]))
            folder = store.path(FOLDER, f"model={MODEL}", f"date={when.date()}", f"hour={when:%H}")
            os.makedirs(folder, exist_ok=True)
            name = f"part-{int(when.timestamp() * 1e9)}-{done + lo:09d}.parquet"
            pq.write_table(table.slice(lo, hi - lo), posixpath.join(folder, name))
            files += 1
        done += n
    return files


def _window(hours: float) -> tuple[dt.datetime, float]:
    return END + dt.timedelta(seconds=1), hours * 3600 + 1


def child(mode: str, store_root: str, hours: float, profile: bool) -> None:
    """One measured run in this fresh process; prints RESULT {...}."""
    import cProfile
    import pstats

    from ray_app.data.store import DataStore
    from ray_app.monitor import drift
    from ray_app.monitor.predictions import read

    store = DataStore(store_root)
    now, window_s = _window(hours)
    cfg = drift.MonitorConfig(window_s=window_s)
    out: dict = {"imports_rss_mb": peak_rss_mb()}  # what the process holds before the work
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    if mode == "monitor":
        summary = drift.run(MODEL, cfg, store, now=now)
        out.update(rows=summary.rows, verdict=summary.verdict, reasons=summary.reasons)
    elif mode == "read":
        frame = read(store, MODEL, now - dt.timedelta(seconds=window_s)).to_pandas()
        out.update(rows=len(frame))
    elif mode == "evidently":
        import evidently.presets  # noqa: F401  (its import, 3 to 4 s, is not timed)

        from ray_app import registry, tracking
        from ray_app.model.logged import load
        from ray_app.model.ref import ModelRef

        tracking.configure()
        model = load(ModelRef(MODEL, alias=registry.PRODUCTION))
        numeric, categorical = drift._features(model.contract, model)
        since = now - dt.timedelta(seconds=window_s)
        cur = read(store, MODEL, since).to_pandas()[[*numeric, *categorical]]
        ref = drift.reference(model, store, cfg.reference_rows, cfg.seed)
        started = time.perf_counter()  # Evidently alone, on every row of the window
        drift._feature_drift(ref, cur, numeric, categorical, cfg)
        out.update(rows=len(cur))
    elif mode == "trace":
        from ray_app.monitor.trace import trace

        middle = f"bench-{int(os.environ['BENCH_TRACE_REQUEST'])}"
        found = trace(store, middle)
        out.update(rows=len(found.rows))
    out["seconds"] = time.perf_counter() - started
    if profiler:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)
    out["peak_rss_mb"] = peak_rss_mb()
    report(out)


def measure(mode: str, store: Path, hours: float, profile: bool = False, **env: str) -> dict:
    args = ["--child", mode, "--store", str(store), "--hours", str(hours)]
    return run_child(
        "bench.monitor_bench", *args, *(["--profile"] if profile else []), env=env, echo=profile
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--hours", type=float, default=3.0, help="the window the log spans")
    parser.add_argument("--home", type=Path, help="reuse this RAYAPP_HOME (its production model)")
    parser.add_argument("--profile", action="store_true", help="cProfile the monitor runs")
    parser.add_argument("--dry", action="store_true", help="print the figures, record nothing")
    parser.add_argument("--child", choices=["monitor", "read", "evidently", "trace"])
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store, args.hours, args.profile)
        return

    from bench.harness import Comparison, record

    home = args.home or Path(tempfile.mkdtemp(prefix="monitor_bench_"))
    _env(home)
    if args.home is None:
        production_model(home)
    from ray_app import registry, tracking

    tracking.configure()
    version = registry.model_version(MODEL, registry.aliased_version(MODEL))
    snapshot = home / "data" / version.tags["dataset_version"]
    figures: dict[int, dict] = {}
    for rows in args.rows:
        # A store per size: the log and a copy of the model's training snapshot (reference).
        store = home / f"store-{rows}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(snapshot, store / snapshot.name)
        started = time.perf_counter()
        files = write_log(store, rows, args.hours, seed=7)
        took = time.perf_counter() - started
        print(f"[bench] wrote {rows:,} rows in {files:,} files ({took:.0f} s)")
        figures[rows] = {"files": files}
        for mode in ("read", "evidently", "monitor"):
            figures[rows][mode] = measure(
                mode, store, args.hours, args.profile and mode == "monitor"
            )
            print(f"[bench] {rows:,} rows, {mode}: {figures[rows][mode]}")
        if rows == max(args.rows):
            middle = str(rows // ROWS_PER_REQUEST // 2)
            figures[rows]["trace"] = measure("trace", store, args.hours, BENCH_TRACE_REQUEST=middle)
        shutil.rmtree(store)

    def cell(q: dict) -> str:
        peak, over = q["peak_rss_mb"], q["peak_rss_mb"] - q["imports_rss_mb"]
        return f"{q['seconds']:.1f} s, peak {peak:,.0f} MB ({over:,.0f} MB over imports)"

    table = []
    for rows, f in figures.items():
        label = f"{rows:,} rows ({f['files']:,} files)"
        table += [
            (f"{label}: predictions.read of the window to pandas (floor)", cell(f["read"])),
            (f"{label}: Evidently DataDriftPreset alone, every row", cell(f["evidently"])),
            (f"{label}: **monitor job** (drift.run)", f"**{cell(f['monitor'])}**"),
            (
                f"{label}: monitor / read floor, time and peak memory",
                f"{f['monitor']['seconds'] / f['read']['seconds']:.1f} / "
                f"{f['monitor']['peak_rss_mb'] / f['read']['peak_rss_mb']:.1f}",
            ),
        ]
    largest = max(figures)
    big = figures[largest]["monitor"]
    table.append(
        (
            f"**goal: {largest:,} rows within 60 s and 2 GB**",
            f"**{big['seconds']:.1f} s, {big['peak_rss_mb']:,.0f} MB**",
        )
    )
    if "trace" in figures[largest]:
        table.append(
            (
                f"`rayapp trace` of one request in the {largest:,}-row log",
                cell(figures[largest]["trace"]),
            )
        )
    c = Comparison(
        "monitor_drift",
        f"ray_app.monitor.drift.run on {largest:,} logged predictions ({args.hours:g} h window)",
        "the same window read into pandas by predictions.read, in a fresh process",
        [figures[largest]["monitor"]["seconds"]],
        [figures[largest]["read"]["seconds"]],
        extra={"figures": figures, "hours": args.hours},
    )
    if args.dry:
        print("\n".join(f"{k}: {v}" for k, v in table))
        return
    record(
        c,
        table,
        notes=f"Each cell is one fresh process: the time of the call (imports before it not "
        "counted; Evidently's 3 to 4 s import is inside the monitor's call), and the process's "
        "peak resident memory (VmHWM), its imports (~300 MB: MLflow, pandas, pyarrow) "
        "included. The log: one file per second over "
        f"{args.hours:g} h ({ROWS_PER_REQUEST} rows per request), as the router writes it; the "
        "reference is the monitor's seeded 5,000-row sample of the training snapshot. "
        "Evidently alone is timed on frames already read; its peak includes that read. The "
        "log's reader (`predictions.read`, both cells) prunes partitions outside the window and "
        "keeps no Parquet footer once read (cached, they took ~800 MB for 10,800 files, whatever "
        "their rows); the monitor reads only the judged columns of the served version, and "
        "runs the KS and chi-squared tests on a seeded sample of at most "
        "`feature_drift.max_rows` (100,000) rows; the mean shift and data quality count every "
        "row. Before that change (2026-11-25, the same 1M-row log on this machine, run alone) "
        "the monitor took 16.2 s and peaked at 1,740 MB; after it, 9.7 s and 705 MB.",
    )


if __name__ == "__main__":
    main()
