"""Batch scoring (`rayapp batch-predict`) against plain xgboost prediction of the same rows in one
process, same model, same machine, same run.

Workload: `model.batch.batch_predict` on a Parquet table (Ray Data read, contract row checks,
the one scoring path in actors loading the model once, Parquet out, quarantine split).
Baseline: pandas reads the same Parquet file, the one feature code builds the matrix, and
`booster.inplace_predict` scores it in this process: no checks, nothing written.
Goal (issue 15): at least 0.7 of the baseline's rows/s on the same cores, with bounded memory.
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison, record


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["RAYAPP_HOME"] = home
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
        import pandas as pd

        from ray_app import pipeline
        from ray_app.config import load_pipeline_config
        from ray_app.data import synth
        from ray_app.model.batch import batch_predict
        from ray_app.model.loaded import load
        from ray_app.model.ref import ModelRef
        from ray_app.runtime import init_ray

        init_ray("local", progress=False, num_cpus=2)
        cfg = load_pipeline_config("configs/pipeline.yaml")
        trained = pipeline.run(cfg, log=lambda m: None)
        ref = f"{trained.model_name}/{trained.model_version}"
        model = load(ModelRef.parse(ref))
        table, figures = [], {}
        for rows in args.rows:
            data = synth.write(Path(home) / f"score-{rows}.parquet", rows, seed=5)
            started = time.perf_counter()
            frame = pd.read_parquet(data)
            model.booster.inplace_predict(_matrix(model, frame))
            plain = time.perf_counter() - started
            del frame
            done = batch_predict(ref, data, Path(home) / f"scored-{rows}")
            ratio = plain / done.seconds
            figures[rows] = {"plain_s": plain, "batch_s": done.seconds, "ratio": ratio}
            table += [
                (
                    f"{rows:,} rows: plain xgboost, one process",
                    f"{rows / plain:,.0f} rows/s ({plain:.1f} s)",
                ),
                (
                    f"{rows:,} rows: rayapp batch-predict (Ray Data, 2 CPUs)",
                    f"{rows / done.seconds:,.0f} rows/s ({done.seconds:.1f} s), "
                    f"{done.quarantined} quarantined",
                ),
                (f"{rows:,} rows: **batch / plain rows/s** (goal >= 0.7)", f"**{ratio:.2f}**"),
            ]
            data.unlink()
        table.append(("driver peak resident memory", f"{_peak_mb():,.0f} MB"))
        largest = max(figures)
        record(
            Comparison(
                "batch_scoring",
                "rayapp batch-predict (Ray Data read, contract row checks, scoring actors, "
                "Parquet out)",
                "plain xgboost: pandas reads the Parquet file, features.transform, "
                "booster.inplace_predict, one process",
                [figures[largest]["batch_s"]],
                [figures[largest]["plain_s"]],
                extra={"figures": figures},
            ),
            table,
            notes="Same model and rows, same 2-core machine, same run. The batch path also parses "
            "and checks every row against the contract's row-level rules (`data.rules`), starts "
            "Ray Data's tasks and scoring actors (each loads the model from MLflow) and writes "
            "Parquet; the baseline does none of these.",
        )


def _matrix(model, frame):
    """The model's input as training built it: dates parsed, then the one feature code."""
    import pandas as pd

    from ray_app import features

    for name, spec in model.contract.columns.items():
        if spec.type == "date" and name in frame:
            frame[name] = pd.to_datetime(frame[name])
    return features.transform(frame, model.features).to_numpy()


if __name__ == "__main__":
    main()
