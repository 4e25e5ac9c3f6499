"""Ray Train XGBoost: data-parallel workers, one checkpoint in XGBoost's own format."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.data
import xgboost as xgb

from ray_app.config import TrainConfig
from ray_app.features import LABEL
from ray_app.train import ROUNDS, _History, boost, summary, train, xgb_params


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + np.sin(3 * x[:, 1]) + rng.normal(0, 0.5, n) > 0).astype(np.int32)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], LABEL: y})


def _train(cfg: TrainConfig, storage: Path, name: str, rows: int):
    """Train on `rows` rows of the toy problem, validated on a quarter as many."""
    train_ds = ray.data.from_pandas(_frame(rows, 1))
    valid_ds = ray.data.from_pandas(_frame(rows // 4, 2))
    return train(train_ds, valid_ds, ["a", "b", "c"], cfg, storage, name)


def test_two_workers_train_one_booster_saved_as_ubj(ray_session, tmp_path):
    cfg = TrainConfig(
        num_workers=2,
        cpus_per_worker=1,
        num_boost_round=15,
        early_stopping_rounds=None,
        params={"objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "max_depth": 3},
    )
    result = _train(cfg, tmp_path, "two-workers", 4_000)
    assert result.booster.num_boosted_rounds() == 15
    assert result.booster.feature_names == ["a", "b", "c"]
    assert result.metrics["valid-auc"] > 0.75 and result.metrics["rounds"] == 15
    saved = Path(result.checkpoint_path) / "model.ubj"
    assert xgb.Booster(model_file=str(saved)).num_boosted_rounds() == 15


def test_one_worker_trains_what_xgboost_alone_trains(ray_session, tmp_path):
    """One worker runs without XGBoost's collective (it has no peer): the model is the one
    `xgboost.train` builds in this process from the same rows and parameters."""
    cfg = TrainConfig(
        num_workers=1,
        cpus_per_worker=1,
        num_boost_round=12,
        early_stopping_rounds=None,
        params={"objective": "binary:logistic", "eval_metric": ["logloss"], "max_depth": 3},
    )
    result = _train(cfg, tmp_path, "one-worker", 4_000)
    names = ["a", "b", "c"]
    train_rows, valid_rows = _frame(4_000, 1), _frame(1_000, 2)
    alone = boost(
        xgb_params(cfg, 1),
        xgb.DMatrix(train_rows[names], label=train_rows[LABEL]),
        xgb.DMatrix(valid_rows[names], label=valid_rows[LABEL]),
        12,
        None,
    )
    matrix = xgb.DMatrix(valid_rows[names])
    assert result.booster.num_boosted_rounds() == 12
    np.testing.assert_allclose(result.booster.predict(matrix), alone.predict(matrix), rtol=1e-6)


def test_a_ray_started_on_this_machine_trains_without_a_preemption_watcher(ray_session, tmp_path):
    """The session's Ray was started by `init_ray("local")`: no node of it can be preempted, so
    Ray Train starts no PreemptionWatcher actor (a process per run) to watch for it."""
    from ray.util.state import list_actors

    cfg = TrainConfig(
        num_workers=1,
        cpus_per_worker=1,
        num_boost_round=2,
        early_stopping_rounds=None,
        params={"objective": "binary:logistic"},
    )
    result = _train(cfg, tmp_path, "unwatched", 500)
    assert result.booster.num_boosted_rounds() == 2
    # This session's cluster by its address: another test's cluster may have left its own
    # address as the default one on this machine.
    here = ray.get_runtime_context().gcs_address

    def actors(name: str) -> list:
        return list_actors(address=here, filters=[("class_name", "=", name)], limit=10_000)

    trainers, watchers = actors("TrainController"), actors("PreemptionWatcher")
    assert trainers and not watchers, watchers


def _free_cpus() -> float:
    """Free CPUs once Ray's view has settled (it lags placement groups by a moment)."""
    import time

    before = -1.0
    while (now := ray.available_resources().get("CPU", 0)) != before:
        before = now
        time.sleep(0.5)
    return now


def _hold_cpus_leaving(free: float):
    """A placement group holding the cluster's CPUs but `free` (what Serve replicas do)."""
    from ray.util.placement_group import placement_group

    group = placement_group([{"CPU": _free_cpus() - free}])
    ray.get(group.ready(), timeout=30)
    assert _free_cpus() == free
    return group


def test_training_takes_the_cpus_that_are_free_beside_serving(ray_session, tmp_path):
    from ray.util.placement_group import remove_placement_group

    from ray_app.train import fit_to_cluster

    cfg = TrainConfig(
        cpus_per_worker=2,
        num_boost_round=5,
        early_stopping_rounds=None,
        placement_timeout_s=5,
        params={"objective": "binary:logistic", "eval_metric": ["logloss"]},
    )
    said: list[str] = []
    group = _hold_cpus_leaving(1.25)  # a 2-CPU machine with 0.75 held by Serve
    try:
        sized = fit_to_cluster(cfg, said.append)
        assert sized.cpus_per_worker == 1 and "1.25 CPUs free" in said[0]
        result = _train(sized, tmp_path, "beside-serving", 1_000)
        assert result.booster.num_boosted_rounds() == 5
    finally:
        remove_placement_group(group)


def test_training_that_cannot_be_placed_stops_in_time_saying_why(ray_session):
    import time

    import pytest
    from ray.util.placement_group import remove_placement_group

    from ray_app.train import ResourcesUnavailable, fit_to_cluster

    cfg = TrainConfig(num_workers=2, cpus_per_worker=2, placement_timeout_s=2)
    group = _hold_cpus_leaving(0.5)
    started = time.monotonic()
    try:
        with pytest.raises(ResourcesUnavailable) as err:
            fit_to_cluster(cfg, print)
    finally:
        remove_placement_group(group)
    assert time.monotonic() - started < 10  # the configured wait, not for ever
    message = str(err.value)
    assert "asks for 2 worker(s) x {CPU 1 to 2}" in message
    assert "the cluster has CPU 0.5, GPU 1 free of CPU 4" in message


def test_a_search_trial_that_cannot_be_placed_stops_in_time_saying_why(ray_session):
    import pytest
    from ray.util.placement_group import remove_placement_group

    from ray_app.train import ResourcesUnavailable, wait_for

    group = _hold_cpus_leaving(0.5)
    try:
        with pytest.raises(
            ResourcesUnavailable, match="each CPU trial of the search asks for CPU 1"
        ):
            wait_for({"CPU": 1.0}, 1, "each CPU trial of the search")
    finally:
        remove_placement_group(group)
    wait_for({"CPU": 1.0}, 1, "each CPU trial of the search")  # free again: no wait


class _SaveAt(xgb.callback.TrainingCallback):
    """Saves the model after round `round` as a checkpoint does (after early stopping's own
    bookkeeping for that round)."""

    def __init__(self, round: int, path: Path):
        self.round, self.path = round, path

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if epoch + 1 == self.round:
            model.save_model(str(self.path))
        return False


@pytest.mark.parametrize("after_best", [4, 10])
def test_early_stopping_resumed_from_a_checkpoint_keeps_the_uninterrupted_runs_model(
    tmp_path, after_best
):
    """A run restored from a checkpoint taken after its best round (a worker died there) goes
    on with that best and the rounds since it, as if never stopped: the same kept model, the
    same metrics. Afresh, it would forget that best and keep a later, worse round. 10 rounds
    after the best (the patience), it stops on its first round."""
    train_df, valid_df = _frame(2_000, 1), _frame(2_000, 2)
    names = ["a", "b", "c"]
    dtrain = xgb.DMatrix(train_df[names], label=train_df[LABEL])
    dvalid = xgb.DMatrix(valid_df[names], label=valid_df[LABEL])
    params = {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"], "eta": 0.6}
    params |= {"max_depth": 6, "seed": 0, "nthread": 1}
    history = _History()
    whole = boost(params, dtrain, dvalid, 300, 10, callbacks=[history])
    best = whole.best_iteration
    expected = summary(history.evals_log, whole, dvalid)
    assert best + 1 == whole.num_boosted_rounds() and expected[ROUNDS] == best + 11

    at = best + after_best  # rounds run at the checkpoint
    boost(params, dtrain, dvalid, 300, 10, callbacks=[_SaveAt(at, tmp_path / "model.ubj")])
    history = _History()
    resumed = boost(
        params,
        dtrain,
        dvalid,
        300 - at,
        10,
        callbacks=[history],
        start_from=xgb.Booster(model_file=str(tmp_path / "model.ubj")),
    )
    assert resumed.num_boosted_rounds() == whole.num_boosted_rounds()
    np.testing.assert_array_equal(resumed.predict(dvalid), whole.predict(dvalid))
    got = summary(history.evals_log, resumed, dvalid, start=at)
    assert got.keys() == expected.keys() and got[ROUNDS] == expected[ROUNDS]
    for key in ("valid-auc", "valid-logloss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6)
