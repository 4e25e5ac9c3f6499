"""What the serving path costs on top of the model: latency of one request through ray_app's
in-process serving path (JSON body validated against the contract, features, predict, JSON
response; what the gate's latency check times) against XGBoost's own `inplace_predict` on the
same rows already turned into a float32 array, the floor no serving layer can beat.

The model is trained like the pipeline's (200 rounds, depth 6) on the built-in rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.harness import Comparison, record

BATCHES = (1, 100)


def _percentiles(call, bodies: list, requests: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        call(bodies[i % len(bodies)])
    times = np.empty(requests)
    for i in range(requests):
        start = time.perf_counter()
        call(bodies[i % len(bodies)])
        times[i] = (time.perf_counter() - start) * 1000
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=1_000)
    args = parser.parse_args()
    import ray.data
    import xgboost as xgb

    from ray_app import features
    from ray_app.data import synth
    from ray_app.data.contract import load_contract
    from ray_app.evaluate.latency import BODIES, serving_call
    from ray_app.model.loaded import LoadedModel
    from ray_app.model.schema import to_records
    from ray_app.model.scoring import Scorer
    from ray_app.runtime import init_ray

    contract = load_contract(Path("configs/contract.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        path = synth.write(Path(tmp) / "churn.csv", args.rows, seed=1)
        dates = [c for c in contract.input_columns if contract.columns[c].type == "date"]
        rows = pd.read_csv(path, parse_dates=dates)
    init_ray("local", progress=False, num_cpus=2, include_dashboard=False)
    fs = features.fit(ray.data.from_pandas(rows), contract)
    matrix = features.transform(rows, fs)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1},
        xgb.DMatrix(matrix, features.encode_label(rows, contract)),
        200,
    )
    call = serving_call(Scorer.of(LoadedModel("bench", "1", booster, fs)))
    figures: dict[int, dict[str, dict[str, float]]] = {}
    for size in BATCHES:
        samples = [rows.sample(size, random_state=i) for i in range(BODIES)]
        bodies = [json.dumps({"instances": to_records(s, contract)}).encode() for s in samples]
        arrays = [matrix.loc[s.index].to_numpy() for s in samples]
        figures[size] = {
            "model": _percentiles(booster.inplace_predict, arrays, args.requests, 100),
            "path": _percentiles(call, bodies, args.requests, 100),
        }
    one = figures[1]
    c = Comparison(
        "serving_path_latency",
        "ray_app serving path in-process (validate JSON, features, predict, respond), 1 row",
        "xgboost inplace_predict on the same row as a float32 array",
        [one["path"]["p50"] / 1000],
        [one["model"]["p50"] / 1000],
        extra={"figures": figures, "requests": args.requests},
    )
    table = [
        (
            f"batch of {size}: {side}",
            f"p50 {q['p50']:.2f} / p95 {q['p95']:.2f} / p99 {q['p99']:.2f} ms",
        )
        for size, sides in figures.items()
        for side, q in (("xgboost alone", sides["model"]), ("ray_app serving path", sides["path"]))
    ]
    table.append(("**p95, batch of 1 / SLA 100 ms**", f"**{one['path']['p95'] / 100:.3f}**"))
    table.append(("p50 ratio, batch of 1 (path / xgboost alone)", f"{c.ratio:.1f}"))
    record(c, table, f"{args.requests} timed requests per cell after 100 warm-up ones.")
    for k, v in table:
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
