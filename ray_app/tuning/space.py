"""From `configs/search_space.yaml` to Ray Tune objects: the space, the searcher, the scheduler
and what each trial asks Ray for.

Optuna (TPE) is the default searcher: it is seeded, so a search run one trial at a time is
reproducible; it models the space from finished trials, which random search does not; and
Ray's `OptunaSearch` keeps its state in Tune's experiment checkpoint, so `--resume` works.
HyperOpt offers the same algorithm with a less maintained library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from ray_app.config import Dimension, SearchConfig
from ray_app.errors import RayAppError
from ray_app.train import ROUNDS

DEVICE, CPU, CUDA = "device", "cpu", "cuda"


class NoGpuError(RayAppError, ValueError):
    """The search would ask for GPUs that the cluster does not have."""


def _dimension(d: Dimension) -> Any:
    if d.type == "uniform":
        return tune.uniform(d.low, d.high)
    if d.type == "loguniform":
        return tune.loguniform(d.low, d.high)
    if d.type == "randint":
        return tune.randint(int(d.low), int(d.high))  # type: ignore[arg-type]
    if d.type == "choice":
        return tune.choice(d.values)
    return tune.grid_search(d.values)


def param_space(cfg: SearchConfig, cluster_gpus: float, log: Callable[[str], None]) -> dict:
    """Tune's param space. A `device` dimension offering cuda on a cluster without GPUs either
    loses its cuda value (`on_missing_cuda: fallback`) or stops the search before it starts."""
    space = dict(cfg.space)
    device = space.get(DEVICE)
    if device is not None and CUDA in (device.values or []) and cluster_gpus <= 0:
        if cfg.resources.on_missing_cuda == "fail":
            raise NoGpuError(
                "the search space offers device=cuda but this Ray cluster has no GPU "
                "(ray.cluster_resources() has no 'GPU'); add GPU nodes, remove cuda from "
                "space.device, or set resources.on_missing_cuda: fallback"
            )
        values = [v for v in device.values if v != CUDA] or [CPU]  # type: ignore[union-attr]
        space[DEVICE] = device.model_copy(update={"values": values})
        log("[tune] no GPU in this Ray cluster: device=cuda left out of the search")
    return {name: _dimension(d) for name, d in space.items()}


def trial_resources(cfg: SearchConfig, distributed: bool) -> Callable[[dict], dict]:
    """Per-trial resources from the trial's own config: a cuda trial asks for a GPU, a CPU
    trial for `cpus_per_trial` CPUs (and trains with that many threads). A distributed trial is
    only a driver; its Ray Train workers ask for their own CPUs and GPUs."""
    res = cfg.resources

    def resources(config: dict) -> dict:
        if distributed:
            return {"cpu": 0.25}
        if config.get(DEVICE) == CUDA:
            return {"cpu": res.cpus_per_gpu_trial, "gpu": res.gpus_per_trial}
        return {"cpu": res.cpus_per_trial}

    return resources


def search_algorithm(cfg: SearchConfig) -> Searcher:
    if cfg.algorithm == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise
        return ConcurrencyLimiter(
            OptunaSearch(seed=cfg.seed),  # metric and mode come from TuneConfig
            max_concurrent=cfg.max_concurrent_trials,
        )
    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials)


def scheduler(cfg: SearchConfig) -> TrialScheduler:
    if not cfg.asha.enabled:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=ROUNDS,
        # Past the last round, so ASHA never stops a trial before its final report.
        max_t=cfg.num_boost_round + cfg.report_every,
        grace_period=cfg.asha.grace_rounds,
        reduction_factor=cfg.asha.reduction_factor,
    )
