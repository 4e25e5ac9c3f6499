"""Ray start-up and process environment for entry points (jobs, CLI, notebooks, benchmarks).

Library modules never call `ray.init` or set environment variables; what the processes of a
run need is decided here, once, before Ray starts.
"""

from __future__ import annotations

import logging
import os

import ray

ENVIRONMENT = {
    # Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    # default) and each report waits for that poll; 0.1 s makes start-up and reports cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    # Tune saves its experiment state at most this often; a killed search resumes from it, so
    # a trial finished more than this long before the kill is never run again.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations' telemetry
}
# What a Ray this process starts for itself ("local", one machine) needs besides. No node of it
# can be drained or preempted, so Ray Train's preemption watcher, an actor process per training
# run (about 1 s of a 2-core machine's training start-up, measured), would watch nothing. On a
# cluster it stays on: a reclaimed spot node then counts against Ray Train's
# `max_preemption_failures`, not `max_failures`.
LOCAL_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def init_ray(address: str | None = None, progress: bool = True, **kwargs) -> None:
    """Connect to a running cluster (address, RAY_ADDRESS or a local `ray start`) or start one.
    With `progress`, Ray Data's progress bars and the workers' logs reach this process (and so
    `ray job logs`); tests turn both off."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    context = ray.data.DataContext.get_current()
    # Rows reach training in the same order every run, so a data version, config and seed
    # reproduce a byte-identical model: set even on a Ray someone else started.
    context.execution_options.preserve_order = True
    if ray.is_initialized():
        return  # whoever started it chose how much it shows (a notebook, a test session)
    if address == "local":
        for key, value in LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    ray.init(address=address, log_to_driver=progress, **kwargs)
    context.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
