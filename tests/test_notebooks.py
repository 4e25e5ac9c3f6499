"""The notebooks run top to bottom in a Jupyter kernel of this virtualenv, connected to the
session's Ray (and, for serving and drift, its live Serve app), and are kept without outputs.

Each kernel is a separate process that joins the cluster by its GCS address, as a user's kernel
joins `make run`'s cluster. Notebooks 1 and 2 write data, runs and a registered model: they get
their own `RAYAPP_HOME` and MLflow store, so the session's registry is not touched. Notebook 3
reads the session's: the production model, its training snapshot and the prediction log.
A few check cells, added here and never saved, assert what each notebook computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import API_KEY
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "rayapp-venv"
CELL_TIMEOUT_S = 600  # the longest cell, the search, takes 1 min on 2 idle cores, 4+ on busy ones

CHECKS = {
    "01_explore_validate.ipynb": """
assert report.success and report.rows == ROWS == len(df) == snap.rows, report.failures
assert snap.version == source.version and set(contract.columns) <= set(df.columns)
assert not checked.success and checked.quarantinable
assert {f.column for f in checked.failures} == {"age", "monthly_charge", "last_login"}
assert 0 < count <= cfg.data.max_bad_fraction * checked.rows and len(quarantined) == count
""",
    "02_search_compare.ipynb": """
assert result.trials == TRIALS and result.errors == 0
assert len(trials) == TRIALS and trials[METRIC].notna().all()
assert trials.loc[trials["tags.best_trial"] == "true", "run_id"].tolist() == [result.best_run_id]
from ray_app import registry
assert registry.model_version(result.model_name, result.model_version).aliases == ["candidate"]
""",
    "03_serve_drift.ipynb": """
assert answer["model_name"] == MODEL and len(answer["predictions"]) == len(body["instances"])
assert clean.rows == ROWS and clean.verdict == "no drift", clean.reasons
assert shifted.rows == ROWS and shifted.verdict == "drift", shifted.reasons
assert shifted.features["monthly_charge"]["drifted"] and len(recent) >= 2
""",
}


def _kernel_specs(folder: Path) -> KernelSpecManager:
    """A kernel spec for this interpreter only: a `python3` spec elsewhere on the machine
    could start another Python without ray_app."""
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ray_app (.venv)",
        "language": "python",
    }
    (folder / KERNEL).mkdir(parents=True)
    (folder / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)])


def _execute(name: str, env: dict[str, str], tmp_path: Path) -> nbformat.NotebookNode:
    """Run the notebook and its checks in a fresh kernel with `env` added to this process's
    environment; a failing cell fails the test with its traceback."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[name]))
    km = AsyncKernelManager(
        kernel_name=KERNEL, kernel_spec_manager=_kernel_specs(tmp_path / "kernels")
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    started = time.monotonic()
    try:
        client.execute(env={**os.environ, **env})
    finally:  # kept with the outputs so far, to read after a failure
        nbformat.write(nb, tmp_path / name)
        print(f"{name}: {time.monotonic() - started:.0f}s, executed copy in {tmp_path / name}")
    return nb


def _cluster(ray_session) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


def _own_home(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {"RAYAPP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}


@pytest.mark.e2e
def test_explore_and_validate(ray_session, tmp_path):
    env = {**_cluster(ray_session), **_own_home(tmp_path), "RAYAPP_NB_ROWS": "2000"}
    _execute("01_explore_validate.ipynb", env, tmp_path)


@pytest.mark.e2e
def test_search_and_compare_in_mlflow(ray_session, tmp_path):
    env = {
        **_cluster(ray_session),
        **_own_home(tmp_path),
        "RAYAPP_NB_ROWS": "2000",
        "RAYAPP_NB_TRIALS": "3",
        "RAYAPP_NB_ROUNDS": "20",
    }
    _execute("02_search_compare.ipynb", env, tmp_path)


@pytest.mark.e2e
def test_serve_and_drift(ray_session, result, service, tmp_path):
    env = {
        **_cluster(ray_session),
        "RAYAPP_SERVE_URL": service,
        "RAYAPP_API_KEY": API_KEY,
        "RAYAPP_NB_MODEL": result.model_name,
        "RAYAPP_NB_ROWS": "400",
    }
    _execute("03_serve_drift.ipynb", env, tmp_path)


def test_every_notebook_is_run_here_and_saved_without_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(CHECKS), "a notebook without a test here, or a test without one"
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        dirty = [
            i
            for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
        ]
        assert not dirty, f"{name}: cells {dirty} keep outputs; run python notebooks/strip.py"


def test_strip_clears_outputs(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "01_explore_validate.ipynb", as_version=4)
    code = next(cell for cell in nb.cells if cell.cell_type == "code")
    code.execution_count = 3
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.metadata["collapsed"] = True
    nbformat.write(nb, tmp_path / "dirty.ipynb")
    strip = [sys.executable, str(NOTEBOOKS / "strip.py")]
    check = subprocess.run([*strip, "--check", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 1 and "dirty.ipynb" in check.stdout, check
    subprocess.run([*strip, str(tmp_path)], check=True, capture_output=True)
    cleaned = nbformat.read(tmp_path / "dirty.ipynb", as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None and not c.metadata
        for c in cleaned.cells
    )
    assert subprocess.run([*strip, "--check", str(tmp_path)]).returncode == 0
