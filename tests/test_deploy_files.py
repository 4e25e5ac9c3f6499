"""Deployment files are checked statically (no Kubernetes or Docker here): the KubeRay manifests
against the CRDs' own OpenAPI schemas, cluster.yaml against Ray's autoscaler schema, the
Dockerfile against the lock and the manifests, and one source for each shared fact.

The CRD schemas catch wrong types, missing required fields and bad enum values; they do not
catch misspelled fields (KubeRay's schemas allow unknown keys) or CEL rules, which
`kubectl apply --dry-run=server --validate=strict` against a cluster with the operator does.
"""

from __future__ import annotations

import copy
import fnmatch
import gzip
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from ray_app.config import DATA_STORE_ENV
from ray_app.serve.app import Router, ShadowScorer

ROOT = Path(__file__).resolve().parent.parent
CRDS = Path(__file__).resolve().parent / "kuberay_crds"
KUBERAY_VERSION = "v1.7.0"  # the CRDs under tests/kuberay_crds (see its README)
MANIFESTS = {  # file -> the CRD plural its kind belongs to
    "kuberay/raycluster.yaml": "rayclusters",
    "kuberay/rayjob.yaml": "rayjobs",
    "kuberay/rayservice.yaml": "rayservices",
}
IMAGE = "ray-app"  # the project image the Dockerfile builds
SHARED_ENV = ("MLFLOW_TRACKING_URI", DATA_STORE_ENV)  # what every node must share


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _crd_schema(plural: str) -> dict:
    return json.loads(gzip.decompress((CRDS / f"{plural}.v1.schema.json.gz").read_bytes()))


def _errors(manifest: dict, plural: str) -> list[str]:
    validator = jsonschema.Draft7Validator(_crd_schema(plural))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def _cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


def _groups(manifest: dict) -> list[dict]:
    spec = _cluster_spec(manifest)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(manifest: dict) -> list[dict]:
    return [c for g in _groups(manifest) for c in g["template"]["spec"]["containers"]]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _version() -> str:
    return re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]


def _mlflow_docs() -> dict[str, dict]:
    docs = yaml.safe_load_all((ROOT / "kuberay/mlflow.yaml").read_text())
    return {d["kind"]: d for d in docs}


# --- Serve config: one source ---


def test_serve_config_is_valid_and_names_real_deployments():
    config = ServeDeploySchema.model_validate(_yaml("serve_config.yaml"))
    assert config.http_options.host == "127.0.0.1"
    app = config.applications[0]
    assert app.import_path == "ray_app.serve.app:app_builder"
    names = {d.name for d in app.deployments}
    assert names == {Router.name, ShadowScorer.name}


def test_rayservice_embeds_serve_config_but_for_the_pod_settings_it_names():
    service = _yaml("kuberay/rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    local = _yaml("serve_config.yaml")
    # The two differences kuberay/rayservice.yaml's header gives, and nothing else.
    assert embedded["http_options"].pop("host") == "0.0.0.0"
    assert local["http_options"].pop("host") == "127.0.0.1"
    assert "proxy_location" not in embedded and local.pop("proxy_location") == "HeadOnly"
    assert embedded == local


# --- KubeRay manifests against the CRDs ---


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_kuberay_crd(name):
    manifest = _yaml(name)
    plural = MANIFESTS[name]
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"].lower() + "s" == plural
    assert _errors(manifest, plural) == []


def _set(path: str, value):
    def mutate(manifest: dict) -> None:
        *parents, last = path.split("/")
        node = _cluster_spec(manifest)
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


BROKEN = {  # a way to break a manifest -> the end of the path the validator must name
    "replicas as a string": (_set("workerGroupSpecs/0/replicas", "1"), "replicas"),
    "rayStartParams value not a string": (
        _set("headGroupSpec/rayStartParams/num-cpus", 0),
        "rayStartParams/num-cpus",
    ),
    "worker group without template": (
        _set("workerGroupSpecs/0/template", KeyError),
        "workerGroupSpecs/0",
    ),
    "unknown auth mode": (_set("authOptions/mode", "password"), "authOptions/mode"),
    "bad resource quantity": (
        _set("headGroupSpec/template/spec/containers/0/resources/limits/memory", "lots"),
        "limits/memory",
    ),
}


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("broken", BROKEN)
def test_validator_catches_broken_manifest(name, broken):
    manifest = copy.deepcopy(_yaml(name))
    mutate, where = BROKEN[broken]
    mutate(manifest)
    errors = _errors(manifest, MANIFESTS[name])
    assert any(e.split(":")[0].endswith(where) for e in errors), errors


def test_rayjob_fields_are_typed_by_the_crd():
    job = copy.deepcopy(_yaml("kuberay/rayjob.yaml"))
    job["spec"]["backoffLimit"] = "1"
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    errors = _errors(job, "rayjobs")
    assert {e.split(":")[0] for e in errors} == {
        "spec/backoffLimit",
        "spec/shutdownAfterJobFinishes",
    }


@pytest.mark.parametrize("name", MANIFESTS)
def test_clusters_autoscale_with_token_auth_and_private_dashboard(name):
    manifest = _yaml(name)
    spec = _cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # work lands on worker groups
    assert not head.get("enableIngress")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_pod_runs_the_project_image_and_shares_the_stores(name):
    version = _version()
    manifest = _yaml(name)
    for group in _groups(manifest):
        for container in group["template"]["spec"]["containers"]:
            gpu = "nvidia.com/gpu" in container["resources"].get("limits", {})
            assert container["image"] == f"{IMAGE}:{version}" + ("-gpu" if gpu else ""), name
            env = _env(container)
            assert urlsplit(env["MLFLOW_TRACKING_URI"]).scheme in ("http", "https"), name
            assert env[DATA_STORE_ENV].startswith("s3://"), name
            assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


TRAINING = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml")  # where trials and training run


@pytest.mark.parametrize("name", TRAINING)
def test_every_pod_keeps_checkpoints_on_one_shared_volume(name):
    """Ray refuses a results folder only the head sees: RAYAPP_RESULTS lies on the one
    ReadWriteMany claim, mounted at the same path in every pod."""
    (claim,) = yaml.safe_load_all((ROOT / "kuberay/results.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in _groups(_yaml(name)):
        pod = group["template"]["spec"]
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for container in pod["containers"]:
            results = Path(_env(container)["RAYAPP_RESULTS"])
            mounts = {
                m["mountPath"]: volumes.get(m["name"]) for m in container.get("volumeMounts", [])
            }
            shared = [path for path in mounts if results.is_relative_to(path)]
            assert shared and mounts[shared[0]] == claim["metadata"]["name"], (name, mounts)


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayservice.yaml"])
def test_every_pod_that_may_serve_has_the_api_keys(name):
    """Router replicas land on workers (the head has no task CPUs) and refuse to start
    without keys."""
    for container in _containers(_yaml(name)):
        (keys,) = [e for e in container["env"] if e["name"] == "RAYAPP_API_KEYS"]
        assert keys["valueFrom"]["secretKeyRef"] == {"name": "ray-app-api-keys", "key": "keys"}


def test_mlflow_admits_only_ray_pods():
    docs = _mlflow_docs()
    policy = docs["NetworkPolicy"]["spec"]
    pods = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchExpressions"] == [
        {"key": "ray.io/cluster", "operator": "Exists"}  # the label KubeRay puts on its pods
    ]
    assert [p["port"] for p in rule["ports"]] == [docs["Service"]["spec"]["ports"][0]["port"]]


def test_one_mlflow_and_one_store_for_every_manifest():
    values = {
        (key, _env(c)[key])
        for name in MANIFESTS
        for c in _containers(_yaml(name))
        for key in SHARED_ENV
    }
    assert len(values) == len(SHARED_ENV), values
    env = dict(values)
    docs = _mlflow_docs()
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    service = docs["Service"]
    assert (uri.hostname, uri.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    server = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in server["command"] if "=" in a)
    assert server["command"][:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in server["command"]
    assert urlsplit(args["backend-store-uri"]).scheme in ("sqlite", "postgresql", "mysql")
    artifacts, store = urlsplit(args["artifacts-destination"]), urlsplit(env[DATA_STORE_ENV])
    assert (artifacts.scheme, artifacts.hostname) == (store.scheme, store.hostname)  # one bucket
    assert server["image"] == f"{IMAGE}:{_version()}"


def test_rayjob_runs_the_pipeline_from_the_image():
    job = _yaml("kuberay/rayjob.yaml")["spec"]
    entry = job["entrypoint"].split()
    assert entry[:2] == ["python", "/home/ray/ray_app/jobs/pipeline.py"]
    assert entry[entry.index("--config") + 1] == "/home/ray/ray_app/configs/pipeline.yaml"
    assert (ROOT / "jobs/pipeline.py").is_file() and (ROOT / "configs/pipeline.yaml").is_file()
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env and "pip" not in runtime_env  # the image has both
    assert job["shutdownAfterJobFinishes"] is True
    assert job["backoffLimit"] == 0 and job["submitterConfig"]["backoffLimit"] >= 1
    assert job["submissionMode"] == "K8sJobMode"


# --- the image ---


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_builds_on_our_ray_and_python_from_the_lock():
    text = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", text, re.M))
    assert args["RAY_VERSION"] == ray.__version__
    assert args["PYTHON"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert re.search(
        r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}\$\{VARIANT\}$", text, re.M
    )
    installs = re.findall(r"pip install[^&\n]*", text)
    assert installs and all("-c requirements.lock" in i for i in installs), installs
    # The lock is copied and installed before the code, so a code change reuses that layer.
    assert text.index("COPY --chown=ray:users requirements.lock") < text.index(
        "COPY --chown=ray:users ray_app"
    )
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG) .*(KEY|TOKEN|SECRET|PASSWORD)", text, re.M | re.I)
    for path in ("jobs", "configs", "serve_config.yaml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.M), path


def test_dockerfile_builds_the_images_the_manifests_run():
    built = set(re.findall(r"docker build -t (\S+)", _dockerfile()))
    used = {c["image"] for name in MANIFESTS for c in _containers(_yaml(name))}
    used.add(_mlflow_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"])
    assert used == built
    assert not any(image.startswith("rayproject/") for image in used)


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".rayapp", ".git", "data"} <= ignored


# --- cluster.yaml (Ray cluster launcher) ---


def test_cluster_yaml_matches_ray_autoscaler_schema():
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(_yaml("cluster.yaml"), json.loads(schema_path.read_text()))


def test_cluster_yaml_node_types_put_work_on_workers_and_gpus_on_gpu_workers():
    cluster = _yaml("cluster.yaml")
    types = cluster["available_node_types"]
    head = types.pop(cluster["head_node_type"])
    assert head["resources"] == {"CPU": 0}
    assert set(types) == {"cpu_worker", "gpu_worker"}
    assert [n for n, t in types.items() if t["resources"].get("GPU")] == ["gpu_worker"]
    assert all(t["resources"]["CPU"] > 0 for t in types.values())
    for t in types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t["max_workers"] for t in types.values()) >= cluster["max_workers"]


def test_cluster_yaml_nodes_share_stores_and_token(tmp_path):
    cluster = _yaml("cluster.yaml")
    installs = [c for c in cluster["setup_commands"] if ".venv/bin/pip install" in c]
    assert installs and all("-c requirements.lock" in c for c in installs)
    # Run the command that writes the shared environment, then read it as `ray start` does.
    (env_cmd,) = [c for c in cluster["setup_commands"] if "ray_app.env" in c]
    home = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-c", env_cmd], env=home, check=True)
    out = subprocess.run(
        ["bash", "-c", ". ~/ray_app.env && env"],
        env=home,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["RAY_AUTH_MODE"] == "token"
    assert urlsplit(env["MLFLOW_TRACKING_URI"]).scheme in ("http", "https")
    assert urlsplit(env[DATA_STORE_ENV]).scheme == "s3"
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if " start " in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert command.startswith(". ~/ray_app.env && ~/ray_app/.venv/bin/ray start")
    assert all("~/ray_app/.venv/bin/ray " in c for c in starts)  # the venv's Ray, every time
    (head_start,) = [c for c in cluster["head_start_ray_commands"] if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "/home/ubuntu/.ray/auth_token" in cluster["file_mounts"]  # one token for all nodes
    # Checkpoints on a filesystem a setup command mounts on every node.
    results = Path(env["RAYAPP_RESULTS"])
    mounted = [c for c in cluster["setup_commands"] if "mount -t nfs4" in c]
    assert mounted and any(f" {path} " in mounted[0] for path in map(str, results.parents))
    # The Router's key file, where a replica on any node looks for it.
    assert f"{env['RAYAPP_HOME']}/api_keys" in cluster["file_mounts"]


def test_cluster_yaml_uploads_the_whole_package(tmp_path):
    """What `ray up` leaves out: what git ignores, and `rsync_exclude`, whose bare names rsync
    matches at any depth (`data` would drop ray_app/data)."""
    cluster = _yaml("cluster.yaml")
    assert cluster["rsync_filter"] == [".gitignore"]
    shipped = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    assert "ray_app/data/__init__.py" in shipped
    for pattern in cluster["rsync_exclude"]:
        if pattern.startswith("/"):
            continue  # anchored to the project folder
        for path in shipped:
            assert not any(fnmatch.fnmatch(part, pattern) for part in Path(path).parts), (
                pattern,
                path,
            )


def test_cluster_yaml_installs_what_its_provider_needs():
    """The head's autoscaler runs in the project's venv and launches EC2 workers with boto3;
    workers get an instance profile for the store (Ray gives its own to the head only)."""
    cluster = _yaml("cluster.yaml")
    assert cluster["provider"]["type"] == "aws"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (install,) = [c for c in cluster["setup_commands"] if ".venv/bin/pip install" in c]
    assert '".[aws]"' in install and "boto3" in extras["aws"]
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^boto3==", lock, re.M)
    for name, node in cluster["available_node_types"].items():
        if name != cluster["head_node_type"]:
            assert node["node_config"]["IamInstanceProfile"], name


def test_the_raycluster_and_rayservice_do_not_share_a_head_service():
    """KubeRay names a RayCluster's and a RayService's head Service `<name>-head-svc`: two
    objects of one name would fight over it, and a port-forward could land on the other."""
    names = {
        _yaml(f"kuberay/{kind}.yaml")["metadata"]["name"] for kind in ("raycluster", "rayservice")
    }
    assert len(names) == 2, names
