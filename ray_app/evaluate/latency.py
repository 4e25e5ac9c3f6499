"""Latency of the real serving code path, measured in-process for the gate.

One call is what a replica does for one HTTP request, less the network: parse and validate
the JSON body against the contract's request model, build features, predict, and serialise
the response. Ray Serve's routing is left out on purpose: it does not depend on the model.

The gate job shares its host with other work, and other processes only ever add time, so the
calls are timed in `rounds` and the round with the lowest p95 is the figure (the `timeit`
rule): a model slow on its own is slow in every round; a neighbour's burst spoils only one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from ray_app.model.schema import records, request_models, to_records
from ray_app.model.scoring import Scorer

BODIES = 16  # distinct request bodies per batch size, cycled, so no single row is favoured


def serving_call(scorer: Scorer) -> Callable[[bytes], bytes]:
    """The replica's work for one request body, as one function."""
    _, request_model = request_models(scorer.model.contract)

    def call(body: bytes) -> bytes:  # as the router does it (serve/app.py `_answer`)
        request = request_model.model_validate_json(body)
        return json.dumps(scorer.predict(records(request))).encode()

    return call


def measure(
    scorer: Scorer,
    rows: pd.DataFrame,
    batch_sizes: list[int],
    requests: int,
    warmup: int,
    rounds: int = 1,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """p50, p95 and p99 in milliseconds of `requests` timed calls per batch size, after
    `warmup` untimed ones, from the best of `rounds` rounds; bodies are drawn from `rows`
    (raw rows of the contract)."""
    contract = scorer.model.contract
    call = serving_call(scorer)
    out = {}
    for size in batch_sizes:
        bodies = [
            json.dumps(
                {
                    "instances": to_records(
                        rows.sample(size, replace=size > len(rows), random_state=seed + i),
                        contract,
                    )
                }
            ).encode()
            for i in range(BODIES)
        ]
        for i in range(warmup):
            call(bodies[i % BODIES])
        best = None
        for _ in range(rounds):
            times = np.empty(requests)
            for i in range(requests):
                start = time.perf_counter()
                call(bodies[i % BODIES])
                times[i] = (time.perf_counter() - start) * 1000
            q = np.percentile(times, [50, 95, 99])
            if best is None or q[1] < best[1]:
                best = q
        p50, p95, p99 = best
        out[size] = {
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "requests": requests,
            "rounds": rounds,
        }
    return out
