"""Deployment files are checked statically (no Kubernetes here): schemas, and one source."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from ray_app.serve.app import Router, ShadowScorer

ROOT = Path(__file__).resolve().parent.parent


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_serve_config_is_valid_and_names_real_deployments():
    config = ServeDeploySchema.model_validate(_yaml("serve_config.yaml"))
    assert config.http_options.host == "127.0.0.1"
    app = config.applications[0]
    assert app.import_path == "ray_app.serve.app:app_builder"
    names = {d.name for d in app.deployments}
    assert names == {Router.name, ShadowScorer.name}


def test_rayservice_embeds_serve_config_applications():
    service = _yaml("kuberay/rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded["applications"] == _yaml("serve_config.yaml")["applications"]
    ServeDeploySchema.model_validate(embedded)
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_kuberay_manifests_pin_our_ray_version():
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        manifest = _yaml(name)
        assert manifest["apiVersion"] == "ray.io/v1"
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        assert spec["rayVersion"] == ray.__version__
    job = _yaml("kuberay/rayjob.yaml")
    assert job["spec"]["entrypoint"].startswith("python jobs/pipeline.py")


def test_cluster_yaml_matches_ray_autoscaler_schema():
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(_yaml("cluster.yaml"), json.loads(schema_path.read_text()))
    types = _yaml("cluster.yaml")["available_node_types"]
    assert {"cpu_worker", "gpu_worker"} <= set(types)
