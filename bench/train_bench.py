"""Training step against plain `xgboost.train`: same 1M built-in rows, rounds, depth, threads.

Workload: `ray_app.train.train` (Ray Train, one worker with 2 threads) on Ray
datasets of the transformed features. Baseline: `xgboost.train` on the same frame in this
process. The fixed start-up cost is the same comparison at 1k rows and 1 round. Goal: ratio at
most 1.5 at 1M rows and 200 rounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import ray
import ray.data
import xgboost as xgb

from bench.harness import compare, record
from ray_app.config import TrainConfig
from ray_app.data import synth
from ray_app.data.contract import load_contract
from ray_app.features import LABEL, encode_label, fit, transform
from ray_app.runtime import init_ray
from ray_app.train import train, xgb_params

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


def model_frame(rows: int) -> tuple[pd.DataFrame, list[str]]:
    contract = load_contract(ROOT / "configs" / "contract.yaml")
    raw = pd.concat(synth.generate(rows, seed=42), ignore_index=True)
    fs = fit(ray.data.from_pandas(raw.head(50_000)), contract)
    frame = transform(raw, fs)
    frame[LABEL] = encode_label(raw, contract)
    return frame, fs.feature_names


def run(rows: int, rounds: int, storage: Path) -> tuple:
    cfg = TrainConfig(
        num_workers=1,
        cpus_per_worker=THREADS,
        num_boost_round=rounds,
        early_stopping_rounds=None,
        params={
            "objective": "binary:logistic",
            "eval_metric": ["logloss"],
            "max_depth": 6,
            "eta": 0.1,
            "tree_method": "hist",
        },
    )
    frame, names = model_frame(rows)
    valid = frame.sample(frac=0.1, random_state=0)

    def project():
        train(
            ray.data.from_pandas(frame),
            ray.data.from_pandas(valid),
            names,
            cfg,
            storage,
            f"bench-{rows}-{rounds}-{uuid.uuid4().hex[:8]}",  # a new run each time
        )

    def plain():
        dtrain = xgb.DMatrix(frame[names], label=frame[LABEL])
        dvalid = xgb.DMatrix(valid[names], label=valid[LABEL])
        xgb.train(
            xgb_params(cfg, THREADS),
            dtrain,
            rounds,
            evals=[(dtrain, "train"), (dvalid, "valid")],
            verbose_eval=False,
        )

    return project, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray("local", progress=False, num_cpus=THREADS, include_dashboard=False)
    with tempfile.TemporaryDirectory() as storage:
        tiny_project, tiny_plain = run(1_000, 1, Path(storage))
        small = compare("startup", ("project", tiny_project), ("plain", tiny_plain), args.repeats)
        fixed = min(small.workload_s) - min(small.baseline_s)
        project, plain = run(args.rows, args.rounds, Path(storage))
        c = compare(
            "train_vs_xgboost",
            (
                f"ray_app.train.train, Ray Train DataParallelTrainer, 1 worker x {THREADS} threads",
                project,
            ),
            (f"plain xgboost.train, {THREADS} threads", plain),
            repeats=args.repeats,
        )
    c.extra = {"rows": args.rows, "rounds": args.rounds, "max_depth": 6, "fixed_startup_s": fixed}
    record(
        c,
        [
            ("rows x rounds x depth", f"{args.rows:,} x {args.rounds} x 6"),
            (f"plain xgboost.train (best of {args.repeats})", f"{min(c.baseline_s):.2f} s"),
            (f"ray_app training step (best of {args.repeats})", f"{min(c.workload_s):.2f} s"),
            ("fixed start-up cost (1k rows, 1 round, step minus plain)", f"{fixed:.2f} s"),
            ("**ratio** (goal <= 1.5)", f"**{c.ratio:.2f}**"),
            (
                "ratio without the fixed start-up cost",
                f"{(min(c.workload_s) - fixed) / min(c.baseline_s):.2f}",
            ),
        ],
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
