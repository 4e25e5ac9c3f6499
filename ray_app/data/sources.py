"""Where a run's data comes from: an existing snapshot, or a source (given, configured or the
built-in table) validated against its contract and snapshotted now. Bad data stops here."""

from __future__ import annotations

from pathlib import Path

from ray_app.config import PipelineConfig, rayapp_home
from ray_app.data import report as validation_report
from ray_app.data import synth
from ray_app.data.contract import Contract
from ray_app.data.ingest import inspect_source, read_raw
from ray_app.data.quarantine import good_rows, quarantine
from ray_app.data.snapshot import Snapshot, find_snapshot, write_snapshot
from ray_app.data.store import open_store
from ray_app.data.validate import validate
from ray_app.progress import Steps


def builtin_dataset(rows: int, seed: int) -> Path:
    """The built-in churn table for (rows, seed), generated once under `$RAYAPP_HOME`."""
    path = rayapp_home() / "builtin" / f"churn-{rows}-seed{seed}.csv"
    if not path.exists():
        synth.write(path, rows, seed)
    return path


def source_path(cfg: PipelineConfig, data: str | Path | None) -> Path:
    """The table a run reads: the one given, else the configured one, else the built-in one."""
    return Path(data or cfg.data.path or builtin_dataset(cfg.data.synth_rows, cfg.data.seed))


def ingest(cfg: PipelineConfig, contract: Contract, data: Path, step: Steps) -> Snapshot:
    """Validate a source against its contract and snapshot it; bad data stops here."""
    home = rayapp_home()
    source = inspect_source(data, contract)
    report = validate(read_raw(source), contract, source, cfg.data.batch_size)
    quarantined = 0
    if not report.success:
        page = validation_report.write(report, home / "reports" / source.version)
        if not (cfg.data.policy == "quarantine" and report.quarantinable):
            report.raise_for_failures(f"full report: {page}")
        folder, quarantined = quarantine(
            read_raw(source),
            contract,
            source,
            report.rows,
            cfg.data.max_bad_fraction,
            home / "quarantine",
        )
        step(f"[quarantine] {quarantined} of {report.rows} rows set aside with reasons in {folder}")
        # The checks of the whole table (row count, both label classes, null fractions) were
        # judged with the bad rows in: judged again on what is kept, before it is snapshotted.
        kept = read_raw(source).map_batches(
            good_rows,
            fn_kwargs={"contract_json": contract.model_dump_json()},
            batch_format="pandas",
        )
        left = validate(kept, contract, source, cfg.data.batch_size)
        left.raise_for_failures(
            f"(the {left.rows} rows left once {quarantined} were set aside in {folder})"
        )
    step(
        f"[validate] {report.rows - quarantined} rows of {source.path.name} passed "
        f"{len(report.checked)} checks of contract {contract.name!r}; "
        f"dataset version {source.version}"
    )
    store = open_store(cfg.data.store)
    snap = write_snapshot(read_raw(source), contract, source, report, store, quarantined)
    step(f"[snapshot] typed Parquet snapshot at {snap.url}")
    return snap


def resolve_snapshot(
    cfg: PipelineConfig,
    contract: Contract,
    data: str | Path | None,
    data_version: str | None,
    step: Steps,
) -> Snapshot:
    """An existing data version, or a source (given, configured or built-in) ingested now."""
    if data_version:
        snap = find_snapshot(open_store(cfg.data.store), data_version, contract)
        step(f"[snapshot] reusing data version {snap.version} ({snap.rows} rows of {snap.source})")
        return snap
    return ingest(cfg, contract, source_path(cfg, data), step)
