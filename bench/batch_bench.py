"""Batch scoring (`rayapp batch-predict`) against plain xgboost prediction of the same rows in one
process: same model, same machine, same run; each side in its own fresh process.

Workload: `model.batch.batch_predict` on a Parquet table, from a driver joined to a local Ray of
2 CPUs started before the clock (as a job joins a running cluster): Ray Data reads, the
contract's row checks, the scoring tasks, Parquet out, the quarantine split. Timed twice on a
new Ray: the first call (cold: every Ray worker process starts and imports, as for a one-off
`ray job submit`), then again (warm: a notebook scoring a second table on the same session;
the best of `WARM_CALLS` calls, as this machine's timings swing by a quarter from call to call).
The fixed cost is the same call on 1,000 rows, warm.
Baseline: pandas reads the same Parquet file, the one feature code builds the matrix, and
`booster.inplace_predict` scores it (2 threads) in one process: no checks, nothing written;
timed the same way (cold: the first call in the process; warm: the best of the next
`WARM_CALLS`). Each ratio compares
like with like.
Memory: the baseline's peak resident set; for batch scoring, the peak of the proportional set
size (shared object-store pages counted once) summed over the driver and every Ray process,
less what the idle Ray held before the call, sampled in a separate call so that the sampling
does not slow the timed ones.
Goal (issue 15): at least 0.7 of the baseline's rows/s on the same cores, with bounded memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import Comparison, peak_rss_mb, record, report, run_child

MODEL = "churn_model"
SMALL = 1_000
WARM_CALLS = 3


def _env(home: Path) -> None:
    os.environ.update(
        {
            "RAYAPP_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def train(home: Path) -> str:
    """The pipeline on the built-in rows; its registered version."""
    import ray

    from ray_app import pipeline
    from ray_app.config import load_pipeline_config
    from ray_app.runtime import init_ray

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    result = pipeline.run(load_pipeline_config("configs/pipeline.yaml"), log=lambda m: None)
    ray.shutdown()
    return f"{result.model_name}/{result.model_version}"


def plain(model: str, data: Path) -> dict:
    import pandas as pd

    from ray_app import features
    from ray_app.model.logged import load

    loaded = load(model)
    seconds = []
    for _ in range(1 + WARM_CALLS):
        started = time.perf_counter()
        frame = pd.read_parquet(data)
        for name, spec in loaded.contract.columns.items():  # dates parsed, as training did
            if spec.type == "date" and name in frame:
                frame[name] = pd.to_datetime(frame[name])
        loaded.booster.inplace_predict(features.transform(frame, loaded.features).to_numpy())
        seconds.append(time.perf_counter() - started)
        del frame
    return {"cold": seconds[0], "warm": min(seconds[1:]), "peak_mb": peak_rss_mb()}


class _TreeMemory:
    """The peak summed PSS of this process and its descendants (the Ray it started)."""

    def __init__(self) -> None:
        import psutil

        self.root, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()
        self.idle = self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        import psutil

        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_full_info().pss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def batch(model: str, data: Path, small: Path, out: Path) -> dict:
    from ray_app.model.batch import batch_predict
    from ray_app.runtime import init_ray

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    results = [batch_predict(model, data, out / f"call-{i}") for i in range(1 + WARM_CALLS)]
    figures: dict = {
        "cold": results[0].seconds,
        "warm": min(r.seconds for r in results[1:]),
        "quarantined": results[0].quarantined,
    }
    figures["fixed"] = batch_predict(model, small, out / "small").seconds
    with _TreeMemory() as memory:
        batch_predict(model, data, out / "sampled")
    figures["memory_mb"] = memory.peak - memory.idle
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--child", choices=["plain", "batch"])
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child == "plain":
        report(plain(args.model, args.data))
        return
    if args.child == "batch":
        small, out = args.data.with_name("small.parquet"), Path(tempfile.mkdtemp())
        report(batch(args.model, args.data, small, out))
        return

    from ray_app.data import synth

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        _env(home)
        model = train(home)
        synth.write(home / "small.parquet", SMALL, seed=5)
        table, figures = [], {}
        for rows in args.rows:
            data = synth.write(home / f"score-{rows}.parquet", rows, seed=5)
            child = ("--model", model, "--data", str(data))
            base = run_child("bench.batch_bench", "--child", "plain", *child)
            ours = run_child("bench.batch_bench", "--child", "batch", *child)
            data.unlink()
            figures[rows] = {"plain": base, "batch": ours}
            ratio = {run: base[run] / ours[run] for run in ("cold", "warm")}
            past_fixed = base["warm"] / (ours["warm"] - ours["fixed"])
            table += [
                (
                    f"{rows:,} rows: plain xgboost, one process, cold / warm",
                    f"{rows / base['cold']:,.0f} / {rows / base['warm']:,.0f} rows/s "
                    f"({base['cold']:.1f} / {base['warm']:.1f} s), peak {base['peak_mb']:,.0f} MB",
                ),
                (
                    f"{rows:,} rows: rayapp batch-predict, cold / warm",
                    f"{rows / ours['cold']:,.0f} / {rows / ours['warm']:,.0f} rows/s "
                    f"({ours['cold']:.1f} / {ours['warm']:.1f} s), "
                    f"{ours['quarantined']} quarantined, {ours['memory_mb']:,.0f} MB over idle Ray",
                ),
                (
                    f"{rows:,} rows: **batch / plain rows/s**, cold / warm (goal >= 0.7)",
                    f"**{ratio['cold']:.2f} / {ratio['warm']:.2f}**",
                ),
                (
                    f"{rows:,} rows: past the fixed cost ({ours['fixed']:.1f} s for "
                    f"{SMALL:,} rows), batch / plain rows/s, warm",
                    f"{past_fixed:.2f}",
                ),
            ]
        largest = figures[max(figures)]
        record(
            Comparison(
                "batch_scoring",
                "rayapp batch-predict (Ray Data read, contract row checks, scoring tasks, "
                "Parquet out), driver joined to a running 2-CPU Ray",
                "plain xgboost: pandas reads the Parquet file, features.transform, "
                "booster.inplace_predict, one process",
                [largest["batch"]["cold"], largest["batch"]["warm"]],
                [largest["plain"]["cold"], largest["plain"]["warm"]],
                extra={"figures": figures},
            ),
            table,
            notes="Same model and rows, same 2-core machine, same run; each side in a fresh "
            "process. The batch path also parses and checks every row against the contract's "
            "row-level rules (`data.rules`), runs Ray Data's read, scoring and write tasks and "
            "writes Parquet; the baseline does none of these. Cold: the first call (for batch "
            "scoring, on a new Ray whose worker processes start and import); warm: the best of "
            f"the next {WARM_CALLS} calls in the same process. Memory over idle "
            "Ray: summed PSS of the driver and every Ray process at its peak, less their sum "
            "before the call; the baseline's is its peak resident set.",
        )


if __name__ == "__main__":
    main()
