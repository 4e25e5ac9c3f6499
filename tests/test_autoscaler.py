"""cluster.yaml's node types autoscale: Ray's fake multi-node provider on this machine.

A Ray head starts with an autoscaling config whose worker types are cluster.yaml's own (names,
min/max workers; resources scaled down), and the fake provider starts each "instance" as a real
raylet on this machine. A driver process runs a Ray Tune search whose trials need more than the
head has (CPU trials, and one GPU trial): the autoscaler adds cpu_worker and gpu_worker nodes,
and removes them again once idle. Ray's `AutoscalingCluster` is not used: it runs
`ray stop --force`, which would stop every Ray on the machine. This cluster runs in its own
process session and temp dir, and is stopped by its process ids alone.

Run as a script (`python tests/test_autoscaler.py ADDRESS TYPES_JSON STORAGE`), this module is
the driver.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type
CPU_SCALE = 8  # a fake node has 1/8 of the real type's CPUs (at least 1; the head keeps 0)
IDLE_MINUTES = 0.1  # idle workers go after 6 s here, not cluster.yaml's 10 minutes
NODE_LABEL = "rayapp/node-type"  # a label the fake config gives each worker type's nodes


def fake_config(cluster: dict, gcs_address: str) -> dict:
    """An autoscaling config for the fake provider with cluster.yaml's node types."""
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]

    def scaled(resources: dict) -> dict:
        out = dict(resources)
        if out.get("CPU"):
            out["CPU"] = max(1, math.ceil(out["CPU"] / CPU_SCALE))
        return out

    nodes = {
        name: {
            "resources": {**scaled(t["resources"]), "object_store_memory": 150 * 1024**2},
            "node_config": {},
            "labels": {NODE_LABEL: name},
            "min_workers": t.get("min_workers", 0),
            "max_workers": t["max_workers"],
        }
        for name, t in types.items()
        if name != head
    }
    nodes[HEAD_TYPE] = {"resources": scaled(types[head]["resources"]), "node_config": {}}
    nodes[HEAD_TYPE]["max_workers"] = 0
    return {
        "cluster_name": "fake-" + cluster["cluster_name"],
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": IDLE_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # not the default 6379: another Ray may hold it
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "available_node_types": nodes,
        "head_node_type": HEAD_TYPE,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# --- process bookkeeping through /proc (Linux), so nothing but our own cluster is touched ---


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) for every visible process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue  # a zombie holds nothing and waits for its parent
        found[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return found


def cluster_processes(root_pid: int, marker: str) -> set[int]:
    """Every live process of this cluster: the head's session (process group), its
    descendants, and anything whose command line names the cluster's own temp dir."""
    procs = _processes()
    ours = {pid for pid, (_, pgid, cmd) in procs.items() if pgid == root_pid or marker in cmd}
    ours.add(root_pid)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in ours} - ours
        ours |= more
        grew = bool(more)
    return ours & set(procs) - {os.getpid()}


def stop(root_pid: int, marker: str, timeout_s: float = 20) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after `timeout_s`; returns
    the processes still alive after that (none, unless something is badly wrong)."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        for pid in cluster_processes(root_pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while cluster_processes(root_pid, marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return cluster_processes(root_pid, marker)


# --- the driver (a separate process: the test session may have its own ray.init) ---


def workers_by_type() -> dict[str, int]:
    import ray

    counts: dict[str, int] = {}
    for node in ray.nodes():
        kind = node.get("Labels", {}).get(NODE_LABEL)
        if node["Alive"] and kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def wait_for(predicate, timeout_s: float, what: str) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = workers_by_type()
        if predicate(counts):
            return counts
        time.sleep(0.5)
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s; workers now: {counts}")


def trial(config: dict) -> dict:
    import ray
    from ray import tune

    time.sleep(config["hold_s"])  # hold the resources while the other trials ask for theirs
    node_id = ray.get_runtime_context().get_node_id()
    tune.report({"node_id": node_id, "gpu_ids": ray.get_gpu_ids()})


def drive(address: str, types: dict, storage: str) -> dict:
    """Scale up through a Tune search, then back down; returns what was seen."""
    import threading

    import ray
    from ray import tune

    t0 = time.monotonic()
    ray.init(address=address, log_to_driver=False)
    minimum = {n: t["min_workers"] for n, t in types.items() if t["min_workers"]}
    start = wait_for(lambda c: c == minimum, 120, f"min_workers {minimum}")
    timings = {"min_workers_up_s": time.monotonic() - t0}
    cpu = types["cpu_worker"]["resources"]["CPU"]
    gpu_cpu = types["gpu_worker"]["resources"]["CPU"]
    # One more CPU trial than the warm cpu_workers hold, and a GPU trial: neither fits now.
    n_cpu_trials = start.get("cpu_worker", 0) + 1
    peak: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for kind, n in workers_by_type().items():
                peak[kind] = max(peak.get(kind, 0), n)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    trainable = tune.with_resources(
        trial,
        lambda c: {"cpu": gpu_cpu, "gpu": 1} if c["device"] == "cuda" else {"cpu": cpu},
    )
    devices = ["cpu"] * n_cpu_trials + ["cuda"]
    results = tune.Tuner(
        trainable,
        param_space={"device": tune.grid_search(devices), "hold_s": 8},
        run_config=tune.RunConfig(name="autoscale", storage_path=storage),
    ).fit()
    done.set()
    watcher.join()
    timings["search_s"] = time.monotonic() - t0 - timings["min_workers_up_s"]
    node_kind = {n["NodeID"]: n.get("Labels", {}).get(NODE_LABEL, HEAD_TYPE) for n in ray.nodes()}
    trials = [
        {
            "device": r.config["device"],
            "node": node_kind.get(r.metrics["node_id"]),
            "gpu_ids": r.metrics["gpu_ids"],
        }
        for r in results
    ]
    errors = [str(r.error) for r in results if r.error]
    t1 = time.monotonic()
    end = wait_for(lambda c: c == minimum, 120, f"scale down to {minimum}")
    timings["scale_down_s"] = time.monotonic() - t1
    return {
        "start": start, "peak": peak, "end": end, "trials": trials, "errors": errors,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }  # fmt: skip


# --- the test ---


def wait_started(proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Until `ray start --block` says the head is up (GCS, raylet and autoscaler running)."""
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(
                f"ray start exited with {proc.returncode}: {log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fake cluster's head did not start in {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def fake_cluster():
    """A head with cluster.yaml's types on the fake provider; yields (address, fake types)."""
    from conftest import free_port

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    temp = tempfile.mkdtemp(prefix="ras-")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = fake_config(cluster, address)
    config_path = Path(temp) / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    head = config["available_node_types"][HEAD_TYPE]["resources"]
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_AUTH_MODE": "disabled",
        # Fake workers bind this machine's loopback address, as the head does.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    cmd = [
        str(RAY), "start", "--head", "--block", f"--autoscaling-config={config_path}",
        f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", f"--port={port}",
        f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}",
        f"--object-store-memory={200 * 1024**2}", "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        wait_started(proc, Path(temp) / "head.log", timeout_s=120)
        yield address, config["available_node_types"], temp, env
    finally:
        left = stop(proc.pid, temp)
        proc.wait(timeout=10)
        log.close()
        if not left:
            shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the fake cluster still alive: {sorted(left)}"


def test_fake_cluster_scales_cluster_yaml_types_up_and_down(fake_cluster, tmp_path):
    address, types, temp, env = fake_cluster
    workers = {n: t for n, t in types.items() if n != HEAD_TYPE}
    driver = subprocess.run(
        [sys.executable, __file__, address, json.dumps(workers), str(tmp_path / "tune")],
        env={**env, "PYTHONPATH": str(ROOT / "tests")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    seen = json.loads(driver.stdout.strip().splitlines()[-1])
    print("fake cluster:", seen)
    assert not seen["errors"], seen["errors"]
    minimum = {n: t["min_workers"] for n, t in workers.items() if t["min_workers"]}
    assert seen["start"] == minimum
    # The search needed a cpu_worker more than the warm ones and a gpu_worker: both were added.
    # The autoscaler may launch one more while the first is still registering (seen once: 3
    # cpu_workers for one needed); max_workers bounds it, and idle ones are removed below.
    assert seen["peak"]["cpu_worker"] >= minimum.get("cpu_worker", 0) + 1
    assert seen["peak"]["gpu_worker"] == 1
    assert all(n <= workers[kind]["max_workers"] for kind, n in seen["peak"].items())
    on = {(t["device"], t["node"]) for t in seen["trials"]}
    assert on == {("cpu", "cpu_worker"), ("cuda", "gpu_worker")}, seen["trials"]
    assert [t["gpu_ids"] for t in seen["trials"] if t["device"] == "cuda"] == [[0]]
    # Idle for IDLE_MINUTES: the added workers were removed, down to min_workers.
    assert seen["end"] == minimum


if __name__ == "__main__":
    address, types_json, storage = sys.argv[1:4]
    print(json.dumps(drive(address, json.loads(types_json), storage)))
