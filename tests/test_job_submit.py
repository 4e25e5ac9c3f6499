"""Every entry point in jobs/ through `ray job submit --working-dir`, as the README tells users
to run them: against a head started with `ray start --head` and token auth on, from a client
with `RAY_AUTH_MODE=token`. Each job is judged by the exit status of `ray job submit` (1 when
the job fails), `ray job status` and `ray job logs`, and by what it left in the head's MLflow
store and data home, which jobs find through the head's environment (README, "On an existing
cluster").

Heavy jobs are few and overlap: the pipeline runs while the cheap checks do, and the jobs that
need its model (tune, monitor, retrain, batch scoring) are submitted together."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from conftest import untimed_copy
from mlflow.tracking import MlflowClient
from ray_head import RAY, RayHead, remove, start_head

from ray_app.data import synth

ROOT = Path(__file__).resolve().parent.parent
# A job, from submission to its end: the pipeline job took over 11 minutes on 2 cores beside
# other test sessions (load average 100-150).
JOB_TIMEOUT_S = 840
GIT_COMMIT = f"test-{uuid.uuid4().hex[:12]}"  # what `make pipeline` passes as RAYAPP_GIT_COMMIT


@dataclass
class Submitted:
    """A blocking `ray job submit` running in the background, its output in a file."""

    job_id: str
    process: subprocess.Popen
    out: Path
    submitted: float = field(default_factory=time.monotonic)

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> tuple[int, str]:
        """Until the job ends, at most `timeout_s` after its submission."""
        try:
            self.process.wait(timeout=max(1.0, self.submitted + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"job {self.job_id} not ended in {timeout_s}s:\n{self.output()[-3000:]}")
        return self.process.returncode, self.output()

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def submit(head: RayHead, job_id: str, *args: str, env_vars: dict | None = None) -> Submitted:
    """`ray job submit --working-dir . [--runtime-env-json ...] -- python ARGS` from the repo
    root with the README's client environment; returns at once."""
    cmd = [str(RAY), "job", "submit", "--address", head.dashboard, "--working-dir", "."]
    cmd += ["--submission-id", job_id]
    if env_vars:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    out = head.temp_dir / f"submit-{job_id}.log"
    with out.open("w") as f:
        process = subprocess.Popen(
            [*cmd, "--", "python", *args],
            cwd=ROOT,
            env=head.client_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return Submitted(job_id, process, out)


def job(head: RayHead, command: str, job_id: str) -> str:
    """`ray job status|logs JOB_ID`: its output, the command having succeeded."""
    done = head.ray("job", command, "--address", head.dashboard, job_id)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


# -- the cluster and the files jobs read ------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The head's RAYAPP_HOME: its MLflow store, snapshots and journals, not the session's."""
    return tmp_path_factory.mktemp("job_home")


@pytest.fixture(scope="module")
def head(home: Path) -> Iterator[RayHead]:
    started = start_head(
        {"RAYAPP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    )
    yield started
    left = started.stop()
    assert not left, f"processes of the test's Ray head alive after stop: {left}"
    remove(started)


@pytest.fixture(scope="module")
def mlflow_client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    # Both URIs: without registry_uri, MLflow uses the process's global registry URI, which
    # earlier tests set to the session's store.
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pipeline config (untimed gates, 5,000 built-in rows), a two-trial search, a table to
    score and one without its label column."""
    folder = tmp_path_factory.mktemp("job_files")
    config = untimed_copy(ROOT / "configs" / "pipeline.yaml", folder)
    small = json.loads(config.read_text())
    small["data"]["synth_rows"] = 5_000
    config.write_text(json.dumps(small))
    search = folder / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "algorithm": "random",
                "num_samples": 2,
                "max_concurrent_trials": 2,
                "num_boost_round": 20,
                "early_stopping_rounds": 5,
                "report_every": 10,
                "checkpoint_every": 10,
                "asha": {"enabled": False},
                "space": {"max_depth": {"type": "randint", "low": 2, "high": 5}},
            }
        )
    )
    score = synth.write(folder / "score.csv", rows=1_000, seed=11)
    unlabelled = folder / "no_label.csv"
    table = pd.read_csv(score, dtype=str, keep_default_na=False)
    table.drop(columns="churned").to_csv(unlabelled, index=False)
    return {"config": config, "search": search, "score": score, "no_label": unlabelled}


# The top-level names of every file the job's working directory holds (an excluded folder
# may still arrive as an empty one, which ships nothing)
LISTING = (
    "import os, ray_app; print('FILES', sorted({os.path.relpath(os.path.join(d, f)).split(os.sep)"
    "[0] for d, _, fs in os.walk('.') for f in fs})); print('CODE', ray_app.__file__);"
    " print('HOME', os.environ['RAYAPP_HOME'])"
)


@pytest.fixture(scope="module")
def early(head: RayHead, files: dict[str, Path]) -> dict[str, Submitted]:
    """The jobs that need no model, submitted together: the pipeline (with the commit, as
    `make pipeline` passes it), one that lists what the job sees, and one on bad data."""
    config = str(files["config"])
    return {
        "pipeline": submit(
            head, "pipeline", "jobs/pipeline.py", "--config", config,
            env_vars={"RAYAPP_GIT_COMMIT": GIT_COMMIT},
        ),
        "listing": submit(head, "listing", "-c", LISTING),
        "bad-data": submit(
            head, "bad-data", "jobs/pipeline.py", "--config", config,
            "--data", str(files["no_label"]),
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def promoted(early: dict[str, Submitted]) -> tuple[int, str]:
    return early["pipeline"].wait()


# -- checks that need no model: they run while the pipeline job does ----------------------------


def test_working_dir_ships_the_code_and_not_the_venv_or_local_state(early, home):
    code, out = early["listing"].wait()
    assert code == 0, out[-3000:]
    shipped = ast.literal_eval(re.search(r"^FILES (\[.*\])$", out, re.M).group(1))
    assert {"jobs", "ray_app", "configs", "pyproject.toml"} <= set(shipped)
    # .git and .venv by Ray's default excludes; the others because .gitignore names them
    assert not {".git", ".venv", ".rayapp", ".tools", "ray_app.egg-info"} & set(shipped), shipped
    code_path = re.search(r"^CODE (.*)$", out, re.M).group(1)
    assert "/working_dir_files/" in code_path  # the submitted copy, not the installed package
    assert re.search(r"^HOME (.*)$", out, re.M).group(1) == str(home)  # the head's environment


def test_a_client_without_token_mode_is_refused(head, early):
    """README: clients need RAY_AUTH_MODE=token even when RAY_AUTH_TOKEN is set; a token that is
    not the head's is refused too. Every other job here is the accepted case."""
    tries = {
        "no-mode": (head.client_env(RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=head.token), "Missing"),
        "wrong-token": (head.client_env(RAY_AUTH_TOKEN="0" * 64), "Invalid"),
    }
    running = {
        name: subprocess.Popen(
            [str(RAY), "job", "submit", "--address", head.dashboard]
            + ["--submission-id", f"refused-{name}", "--no-wait", "--", "true"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (env, _) in tries.items()
    }
    for name, process in running.items():
        out, _ = process.communicate(timeout=180)
        want = tries[name][1]
        assert process.returncode == 1, out[-2000:]
        said = "required" if want == "Missing" else "failed"
        assert f"AuthenticationError: Authentication {said}" in out, out[-2000:]
        assert f"{want} authentication token" in out, out[-2000:]
        known = requests.get(
            f"{head.dashboard}/api/jobs/refused-{name}",
            headers={"Authorization": f"Bearer {head.token}"},
            timeout=30,
        )
        assert known.status_code == 404, known.text  # nothing was submitted


def test_a_job_on_bad_data_fails_and_says_which_column(head, files, early):
    code, out = early["bad-data"].wait()
    assert code == 1, out[-3000:]  # `ray job submit` exits 1 when the job failed
    reason = f"pipeline stopped: {files['no_label']}: missing columns ['churned']"
    status = job(head, "status", "bad-data")
    assert "Job 'bad-data' failed" in status and "exit code 2" in status, status
    assert reason in status, status  # the status message carries the reason itself
    logs = job(head, "logs", "bad-data")
    assert reason in logs and "Traceback" not in logs, logs[-3000:]


# -- the pipeline, then the jobs that need its model ------------------------------------------


def test_pipeline_job_trains_gates_and_promotes(head, promoted, mlflow_client):
    code, out = promoted
    assert code == 0, out[-5000:]
    assert "[gate] churn_model version 1: passed" in out, out[-5000:]
    assert re.search(
        r"\[done\] dataset \w+ \(5000 rows\) -> run \w+ -> churn_model v1: gate passed", out
    )
    assert "Job 'pipeline' succeeded" in job(head, "status", "pipeline")
    assert "[gate] churn_model version 1: passed" in job(head, "logs", "pipeline")
    version = mlflow_client.get_model_version_by_alias("churn_model", "production")
    assert str(version.version) == "1"
    run = mlflow_client.get_run(version.run_id)
    assert run.data.tags["mlflow.source.git.commit"] == GIT_COMMIT  # --runtime-env-json env_vars


@pytest.fixture(scope="module")
def followers(head, files, promoted, home) -> dict[str, Submitted]:
    """Tune, monitor, a retrain dry run and batch scoring, submitted together once production
    exists."""
    code, out = promoted
    if code != 0:
        pytest.fail("the pipeline job failed (see test_pipeline_job_trains_gates_and_promotes)")
    version = re.search(r"\[done\] dataset (\w+) ", out).group(1)
    config = str(files["config"])
    return {
        "tune": submit(
            head, "tune", "jobs/tune.py", "--config", config, "--search", str(files["search"]),
            "--data-version", version, "--name", "jobtune",
        ),
        "monitor": submit(head, "monitor", "jobs/monitor.py", "--model", "churn_model"),
        "retrain": submit(
            head, "retrain", "jobs/retrain.py", "--dry-run", "--force", "--data",
            str(files["score"]),
        ),
        "batch": submit(
            head, "batch", "jobs/batch_predict.py", "--model", "churn_model@production",
            "--data", str(files["score"]), "--out", str(home / "scored"),
        ),
    }  # fmt: skip


def test_tune_job_registers_its_best_trial_as_candidate(followers, mlflow_client):
    code, out = followers["tune"].wait()
    assert code == 0, out[-5000:]
    found = re.search(
        r"\[done\] search jobtune: 2 trials \(0 errors\); best \S+ -> churn_model v(\d+) "
        r"\(candidate\)",
        out,
    )
    assert found, out[-5000:]
    candidate = mlflow_client.get_model_version_by_alias("churn_model", "candidate")
    assert str(candidate.version) == found.group(1)
    production = mlflow_client.get_model_version_by_alias("churn_model", "production")
    assert str(production.version) == "1"


def test_monitor_job_judges_production_and_says_it_has_too_few_rows(followers):
    code, out = followers["monitor"].wait()
    assert code == 0, out[-5000:]
    assert "[monitor] churn_model v1: too few rows (0 rows since" in out, out[-5000:]
    assert "0 logged rows of churn_model/1" in out and "need 200" in out


def test_retrain_dry_run_job_plans_and_does_nothing(followers, files, home, mlflow_client):
    code, out = followers["retrain"].wait()
    assert code == 0, out[-5000:]
    assert "[retrain] churn_model (production v1): retrain" in out, out[-5000:]
    assert "- forced (--force)" in out
    assert f"1. validate {files['score']} against" in out
    assert "gate the candidate against production v1" in out
    assert not (home / "retrain" / "churn_model.json").exists()  # no journal: nothing ran
    retrains = mlflow_client.get_experiment_by_name("ray_app-retrain")
    assert retrains is None or not mlflow_client.search_runs([retrains.experiment_id])


def test_batch_predict_job_scores_every_row_with_the_production_version(followers, home):
    code, out = followers["batch"].wait()
    assert code == 0, out[-5000:]
    assert re.search(r"\[batch\] 1,000 rows of data version \w+ scored by churn_model/1 in", out)
    scored = pq.read_table(home / "scored").to_pandas()
    assert len(scored) == 1_000 and set(scored["model_version"]) == {"churn_model/1"}
