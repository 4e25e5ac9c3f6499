"""The jobs on the shape of cluster `cluster.yaml` and `kuberay/` start: a head with no task
CPUs (control plane and the job's driver) and a worker node that does the work. Files given
with `--data` are on the driver's machine, the head: Ray Data's read and write tasks pinned
there must still run (Ray refuses a pinned task that asks for a CPU the node lacks).

It runs in its own process with its own `ray.cluster_utils.Cluster` (the session already holds
a local Ray), and this file is that process's script too:
`python tests/test_zero_cpu_head.py run WORKDIR OUT.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_own_cluster_script

ROOT = Path(__file__).resolve().parent.parent
DRIVER_TIMEOUT_S = 420
MB = 1 << 20
pytestmark = pytest.mark.e2e


def run(workdir: Path) -> dict:
    """The pipeline on the built-in data (10,000 rows), then batch scoring of a CSV with a
    few bad rows into a folder, all driven from the 0-CPU head."""
    import ray
    from ray.cluster_utils import Cluster

    from ray_app import pipeline
    from ray_app.config import load_pipeline_config
    from ray_app.data import synth
    from ray_app.model.batch import batch_predict
    from ray_app.runtime import init_ray

    store = {"object_store_memory": 200 * MB}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **store}
    )
    worker = cluster.add_node(num_cpus=2, **store)
    try:
        init_ray(cluster.address, progress=False)
        cfg = load_pipeline_config(ROOT / "configs" / "pipeline.yaml")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"synth_rows": 10_000})})
        result = pipeline.run(cfg, log=print)
        bad = synth.Corruption(negative_amounts=0.01)
        table = synth.write(workdir / "score.csv", 2_000, seed=3, corruption=bad)
        scored = batch_predict(
            f"{result.model_name}/{result.model_version}", table, workdir / "scored"
        )
        return {
            "promoted": result.promoted,
            "rows": scored.rows,
            "scored": scored.scored,
            "quarantined": scored.quarantined,
            "worker": worker.node_id,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_pipeline_and_batch_scoring_run_from_a_head_without_task_cpus(tmp_path):
    out = tmp_path / "zero_cpu_head.json"
    driver = run_own_cluster_script(
        __file__, ["run", str(tmp_path), str(out)], tmp_path, DRIVER_TIMEOUT_S
    )
    log = driver.stdout
    assert driver.returncode == 0, log[-8000:]
    seen = json.loads(out.read_text())
    assert seen["promoted"], seen
    assert seen["rows"] == 2_000 and 0 < seen["quarantined"] < 100, seen
    assert seen["scored"] + seen["quarantined"] == seen["rows"]


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    Path(sys.argv[3]).write_text(json.dumps(run(Path(sys.argv[2]))))
