"""The alert rules, checked and unit-tested by Prometheus's own promtool (monitoring/)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana_dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool") or ROOT / ".tools" / "bin" / "promtool"
    if not Path(found).is_file():
        pytest.skip("promtool not found: `make tools` extracts it from Debian's prometheus package")
    return str(found)


def metric_names() -> set[str]:
    """The metric families the rules and the dashboard read (histogram and counter suffixes
    dropped, as the Prometheus text parser names families)."""
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = set()
    for name in re.findall(r"\b(ray_[a-z0-9_]+)", " ".join(exprs)):
        names.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    return names


@pytest.mark.parametrize(
    "command", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]]
)
def test_promtool_accepts_and_unit_tests_the_rules(command):
    out = subprocess.run(
        [promtool(), *command], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_rules_name_the_four_alerts_of_the_design():
    alerts = {
        r["alert"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert {
        "RayAppHighLatency",
        "RayAppErrorRate",
        "RayAppPredictionShift",
        "RayAppLowTraffic",
    } <= alerts
    assert {"ray_rayapp_requests", "ray_serve_deployment_processing_latency_ms"} <= metric_names()


def test_the_dashboard_shows_throughput_errors_latency_and_scores_per_variant():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("requests/s", "error rate", "latency", "mean prediction"):
        assert topic in titles
    per_variant = [p for p in dashboard["panels"] if "variant" in json.dumps(p["targets"])]
    assert len(per_variant) >= 4
