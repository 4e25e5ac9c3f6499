"""The project's tuner against a plain loop: 16 fixed XGBoost configurations (300 rounds,
depth 4 to 8) on the same 200k built-in rows, 2 cores each side.

Workload: `ray_app.tuning.search.search_prepared`, i.e. Ray Tune with two 1-CPU trials at a
time, a report every 10 rounds, a checkpoint every 50, a nested MLflow run per trial with its
learning curve, then the best model scored on test, logged and registered. Baseline: a Python
loop calling `xgboost.train` (2 threads) on one DMatrix built once, with the same evaluation
set and metrics. Data preparation (validation, split, features) is shared and not timed.
Goal: the tuner's wall time at most 1.5 times the loop's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPTHS, ETAS = [4, 5, 6, 8], [0.05, 0.1, 0.2, 0.3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="tune_bench_")
    os.environ.update({"RAYAPP_HOME": home, "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"})
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import xgboost as xgb

    from bench.harness import compare, record
    from ray_app.config import SearchConfig, load_pipeline_config
    from ray_app.data.contract import load_contract
    from ray_app.data.sources import builtin_dataset, ingest
    from ray_app.features import prepare
    from ray_app.progress import Steps
    from ray_app.runtime import init_ray
    from ray_app.tuning.search import search_prepared
    from ray_app.tuning.trials import TrialData

    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    cfg = load_pipeline_config(ROOT / "configs" / "pipeline.yaml")
    contract = load_contract(cfg.contract)
    quiet = Steps(lambda m: None)
    data = builtin_dataset(args.rows, seed=1)
    snap = ingest(cfg, contract, data, quiet)
    prepared = prepare(snap, contract, cfg.data.split, quiet)
    search = SearchConfig.model_validate(
        {
            "algorithm": "grid",
            "num_samples": 1,
            "max_concurrent_trials": 2,
            "num_boost_round": args.rounds,
            "early_stopping_rounds": None,
            "asha": {"enabled": False},
            "resources": {"cpus_per_trial": 1},
            "space": {
                "max_depth": {"type": "grid", "values": DEPTHS},
                "eta": {"type": "grid", "values": ETAS},
            },
        }
    )
    names = prepared.features.feature_names
    arrays = TrialData.from_datasets(prepared.splits["train"], prepared.splits["valid"], names)
    trials = len(DEPTHS) * len(ETAS)
    searches = itertools.count()

    def tuner() -> None:
        result = search_prepared(
            cfg, search, contract, snap, prepared, f"bench-{next(searches)}", False, quiet
        )
        assert result.trials == trials and result.errors == 0

    def plain_loop() -> None:
        dtrain = xgb.DMatrix(arrays.x_train, label=arrays.y_train, feature_names=names)
        dvalid = xgb.DMatrix(arrays.x_valid, label=arrays.y_valid, feature_names=names)
        for depth, eta in itertools.product(DEPTHS, ETAS):
            params = {**cfg.train.params, "max_depth": depth, "eta": eta, "nthread": 2, "seed": 42}
            xgb.train(params, dtrain, args.rounds, evals=[(dvalid, "valid")], verbose_eval=False)

    c = compare(
        "tune_vs_plain_loop",
        ("ray_app tuner (Ray Tune, 2 trials x 1 CPU, MLflow, checkpoints)", tuner),
        ("plain loop of xgboost.train, 2 threads", plain_loop),
    )
    per_min = {
        k: trials / (min(v) / 60) for k, v in (("tuner", c.workload_s), ("loop", c.baseline_s))
    }
    c.extra = {
        "rows": args.rows,
        "rounds": args.rounds,
        "trials": trials,
        "trials_per_min": per_min,
    }
    record(
        c,
        [
            (
                "rows (train/valid) x rounds x configs",
                f"{arrays.x_train.shape[0]:,}/{arrays.x_valid.shape[0]:,} x {args.rounds} x "
                f"{trials} (depth {DEPTHS}, eta {ETAS})",
            ),
            ("plain loop", f"{min(c.baseline_s):.1f} s, {per_min['loop']:.1f} trials/min"),
            ("ray_app tuner", f"{min(c.workload_s):.1f} s, {per_min['tuner']:.1f} trials/min"),
            ("**ratio** tuner / loop (goal <= 1.5)", f"**{c.ratio:.2f}**"),
        ],
        notes="The tuner's time includes Tune's start-up, trial actors, reports, checkpoints, "
        "a nested MLflow run per trial, and scoring, logging and registering the best model.",
    )


if __name__ == "__main__":
    main()
