"""Ray start-up for entry points (jobs, CLI, notebooks); library modules never call ray.init."""

from __future__ import annotations

import logging
import os

import ray

# Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default)
# and each report waits for that poll; 0.1 s makes start-up and the final report cheap.
TRAIN_POLL_INTERVAL_S = "0.1"


def init_ray(address: str | None = None, **kwargs) -> None:
    """Connect to a running cluster (address, RAY_ADDRESS or a local `ray start`) or start one."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, **kwargs)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Rows reach training in the same order every run, so a data version, config and seed
    # reproduce a byte-identical model.
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
