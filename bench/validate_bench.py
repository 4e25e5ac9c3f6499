"""Validation at scale: ray_app's validation over Ray Data batches against Great Expectations on
one in-memory pandas frame, same contract and expectations, at 1M and 10M built-in rows.
ray_app evaluates the expectations GX's contract suite holds as vectorised masks
(`data.rules`, checked row for row against GX in tests/test_rules.py).

Each side runs in its own child process so that the driver's peak memory (max RSS) of one
does not hide the other's; both children run inside this one benchmark run. Throughput counts
reading the CSV and checking every row. Goal at 10M rows: at least as fast as the single-frame
baseline, with the driver's peak memory under 2 GB.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison, peak_rss_mb, record, report, run_child

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "configs" / "contract.yaml"


def run_ray(path: Path, contract_path: Path) -> dict:
    from ray_app.data.contract import load_contract
    from ray_app.data.ingest import inspect_source, read_raw
    from ray_app.data.validate import validate
    from ray_app.runtime import init_ray

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    contract = load_contract(contract_path)
    source = inspect_source(path, contract)
    start = time.perf_counter()
    report = validate(read_raw(source), contract, source, batch_size=100_000)
    return {"seconds": time.perf_counter() - start, "rows": report.rows, "ok": report.success}


def run_gx(path: Path, contract_path: Path) -> dict:
    import great_expectations as gx
    import pandas as pd

    from ray_app.data.contract import load_contract
    from ray_app.data.ingest import coerce

    contract = load_contract(contract_path)
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("p")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("w")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="s"))
    for expectation in contract.expectations():
        suite.add_expectation(expectation)
    start = time.perf_counter()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    typed, _ = coerce(raw, contract)
    result = batch.get_batch(batch_parameters={"dataframe": typed}).validate(suite)
    unique = typed[contract.unique_columns].apply(lambda c: c.is_unique).all()
    return {
        "seconds": time.perf_counter() - start,
        "rows": len(typed),
        "ok": bool(result.success and unique),
    }


def child(mode: str, path: Path, contract_path: Path) -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = (run_ray if mode == "ray" else run_gx)(path, contract_path)
    out["peak_rss_mb"] = peak_rss_mb()
    report(out)


def measure(mode: str, path: Path, contract_path: Path = CONTRACT) -> dict:
    """One side of the comparison in a fresh child process."""
    args = ["--child", mode, "--path", str(path), "--contract", str(contract_path)]
    return run_child("bench.validate_bench", *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", choices=["ray", "gx"])
    parser.add_argument("--path", type=Path)
    parser.add_argument("--contract", type=Path, default=CONTRACT)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.contract)
        return
    from ray_app.data import synth

    table, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = synth.write(Path(tmp) / f"churn-{rows}.csv", rows, seed=1)
            base, work = measure("gx", path), measure("ray", path)
            assert base["ok"] and work["ok"] and base["rows"] == work["rows"] == rows
            figures[rows] = {"gx": base, "ray": work}
            speedup = base["seconds"] / work["seconds"]
            table += [
                (
                    f"{rows:,} rows: GX on one pandas frame",
                    f"{rows / base['seconds']:,.0f} rows/s "
                    f"({base['seconds']:.1f} s), driver peak {base['peak_rss_mb']:,.0f} MB",
                ),
                (
                    f"{rows:,} rows: ray_app over Ray Data batches",
                    f"{rows / work['seconds']:,.0f} rows/s "
                    f"({work['seconds']:.1f} s), driver peak {work['peak_rss_mb']:,.0f} MB",
                ),
                (
                    f"{rows:,} rows: **speed-up** (baseline time / ray_app time)",
                    f"**{speedup:.2f}**",
                ),
            ]
            path.unlink()
    largest = max(figures)
    c = Comparison(
        "validate_vs_gx_pandas",
        "ray_app validate (the contract's checks as vectorised masks per Ray Data batch, 2 CPUs)",
        "GX on one in-memory pandas frame",
        [figures[largest]["ray"]["seconds"]],
        [figures[largest]["gx"]["seconds"]],
        extra={"figures": figures},
    )
    record(
        c,
        table,
        notes="Both sides read the CSV, parse types per the contract and run the "
        "same expectations; the goal is speed-up >= 1 at 10M rows with driver peak < 2 GB.",
    )


if __name__ == "__main__":
    main()
