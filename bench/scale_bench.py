"""The pipeline at growing sizes: wall time and the driver's peak memory per step.

Each size runs `pipeline.run` (validate, snapshot, features, train, publish, gate) on built-in
rows in a fresh child process with its own local Ray (2 CPUs), MLflow store and data home;
the CSV is written beforehand, so generating it is not counted. A step's time is the one its
progress line reports; its memory is the driver's peak resident set (VmHWM) while it ran,
reset between steps. Baseline: the smallest size, per row. Goal (issue 15): 10M rows complete
on this 2-core machine with the driver's peak under 2 GB, and each step's cost per row does not
grow with the data.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison, record, report, run_child

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^\[(\w+)\].*\((\d+(?:\.\d+)?)s\)$")


def _peak_mb_and_reset() -> float:
    """The driver's peak resident memory since the last reset (Linux), then a reset."""
    status = Path("/proc/self/status").read_text()
    peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024
    Path("/proc/self/clear_refs").write_text("5")
    return peak


def child(data: Path, home: Path) -> None:
    os.environ.update(
        {
            "RAYAPP_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
            "RAY_AUTH_MODE": "disabled",
        }
    )
    from ray_app import pipeline
    from ray_app.config import load_pipeline_config
    from ray_app.runtime import init_ray

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    steps: list[dict] = []
    _peak_mb_and_reset()

    def log(message: str) -> None:
        found = STEP.match(message.strip())
        if found:
            name, seconds = found.groups()
            steps.append({"step": name, "seconds": float(seconds), "peak_mb": _peak_mb_and_reset()})

    started = time.perf_counter()
    result = pipeline.run(load_pipeline_config(ROOT / "configs" / "pipeline.yaml"), data, log=log)
    total = time.perf_counter() - started
    report({"steps": steps, "total": total, "rows": result.rows})


def measure(rows: int, tmp: Path) -> dict:
    from ray_app.data import synth

    data = synth.write(tmp / f"churn-{rows}.csv", rows, seed=7)
    home = tmp / f"home-{rows}"
    try:
        return run_child("bench.scale_bench", "--child", str(data), "--home", str(home))
    finally:
        data.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--child", type=Path)
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home)
        return
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sorted(args.rows):
            figures[rows] = measure(rows, Path(tmp))
            print(f"{rows:,} rows: {figures[rows]['total']:.1f} s", flush=True)
    sizes = sorted(figures)
    names = list(dict.fromkeys(s["step"] for f in figures.values() for s in f["steps"]))
    table = []
    for name in names:
        cells = []
        for rows in sizes:
            found = [s for s in figures[rows]["steps"] if s["step"] == name]
            seconds = sum(s["seconds"] for s in found)
            peak = max((s["peak_mb"] for s in found), default=0)
            cells.append(f"{seconds:,.1f} s / {peak:,.0f} MB")
        table.append(
            (f"`{name}` (" + " · ".join(f"{r:,}" for r in sizes) + " rows)", " · ".join(cells))
        )
    small, large = sizes[0], sizes[-1]
    per_row = [figures[r]["total"] / r for r in (small, large)]
    table += [
        ("total wall time", " · ".join(f"{figures[r]['total']:,.1f} s" for r in sizes)),
        (
            "driver peak, whole run",
            " · ".join(f"{max(s['peak_mb'] for s in figures[r]['steps']):,.0f} MB" for r in sizes),
        ),
        (
            f"**time per row, {large:,} / {small:,} rows**",
            f"**{per_row[1] / per_row[0]:.2f}**",
        ),
    ]
    record(
        Comparison(
            "pipeline_scale",
            f"the pipeline on {large:,} built-in rows",
            f"the same pipeline on {small:,} rows, per row",
            [figures[large]["total"] / large],
            [figures[small]["total"] / small],
            extra={"figures": figures},
        ),
        table,
        notes="Each cell: the step's wall time / the driver's peak resident memory during it. "
        "A ratio under 1 means the fixed costs (Ray start-up of tasks and actors, MLflow, the "
        "gate's fixed checks) are being amortised; the goal at 10M rows is a driver peak under "
        "2 GB.",
    )


if __name__ == "__main__":
    main()
