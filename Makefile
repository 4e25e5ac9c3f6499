# ray_app: `make run` (pipeline to a served model) and `make test` on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(VENV)/bin
PYTHON    ?= python3
DASHBOARD := http://127.0.0.1:8265
SERVE_URL := http://127.0.0.1:8000

# Local state (data snapshots, MLflow store, Ray Train results) lives under .rayapp/.
export RAYAPP_HOME         ?= $(CURDIR)/.rayapp
export MLFLOW_TRACKING_URI ?= sqlite:///$(RAYAPP_HOME)/mlflow.db
export GX_ANALYTICS_ENABLED = false
export DO_NOT_TRACK         = 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = false

# The local cluster uses Ray token auth; client CLIs need the mode set to send the token.
CLUSTER_ENV := RAY_AUTH_MODE=token
# Serve's bundled HAProxy instead of the Python proxy: about 10x the requests/s on 2 cores
# (bench/RESULTS.md). Read by the cluster's processes, so it is set when the head starts.
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
# A request in flight on a router replica that dies is replayed on another one instead of its
# connection closing unanswered (scoring has no side effects; tests/test_failures.py).
export RAY_SERVE_HAPROXY_RETRY_ON ?= conn-failure empty-response

.PHONY: help install run cluster pipeline tune deploy test tools bench lint stop mlflow-ui strip-notebooks

help:
	@echo "make run      - install, start a local Ray cluster, run the pipeline, serve the model"
	@echo "make pipeline - the pipeline as a Ray job (DATA=path.csv for your own file)"
	@echo "make deploy   - serve serve_config.yaml and predict once"
	@echo "make tune     - hyperparameter search as a Ray job (configs/search_space.yaml)"
	@echo "make test     - install and run the test suite (lint included)"
	@echo "make install  - the virtual environment .venv from requirements.lock"
	@echo "make tools    - promtool for the alert-rule tests"
	@echo "make lint     - ruff"
	@echo "make stop     - stop the local Ray cluster"
	@echo "make bench    - run the benchmarks (bench/RESULTS.md)"
	@echo "make mlflow-ui - MLflow UI on http://127.0.0.1:5000"
	@echo "make strip-notebooks - clear notebook outputs before committing"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || { $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "[install] Python 3.11+ needed (the lock's numpy, scipy, scikit-learn): $(PYTHON) is" \
	    "$$($(PYTHON) --version 2>&1); run with PYTHON=python3.11"; exit 1; }; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	@touch $@

# A job runs in a temporary copy of the working directory: a relative DATA is made absolute here.
DATA_ARG = $(if $(DATA),--data $(abspath $(DATA)))

# A new head answers `ray job list` before its job agent can take jobs: a no-op job is
# submitted until one is accepted (the first `make pipeline` once failed without this).
# A running cluster is reused only if its processes have this checkout's RAYAPP_HOME (a no-op
# job prints theirs): Ray's processes keep the environment of whoever started them, so
# another checkout's cluster would run these jobs and replicas on its own MLflow store and keys.
cluster: install
	@mkdir -p $(RAYAPP_HOME)
	@if $(CLUSTER_ENV) $(BIN)/ray job list --address $(DASHBOARD) >/dev/null 2>&1; then \
	  $(CLUSTER_ENV) $(BIN)/ray job submit --address $(DASHBOARD) -- printenv RAYAPP_HOME \
	    2>/dev/null | grep -qxF "$(RAYAPP_HOME)" || { \
	    echo "[cluster] the Ray cluster at $(DASHBOARD) was started with another RAYAPP_HOME" \
	      "than $(RAYAPP_HOME): its jobs and replicas would use that one's MLflow store and" \
	      "keys. Stop it (ray stop) or run make where it was started."; exit 1; }; \
	  echo "[cluster] using the running Ray cluster (dashboard $(DASHBOARD))"; \
	else \
	  $(CLUSTER_ENV) $(BIN)/ray get-auth-token --generate >/dev/null && \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(CLUSTER_ENV) $(BIN)/ray start --head --node-ip-address 127.0.0.1 \
	    --dashboard-host 127.0.0.1 --dashboard-port 8265 --disable-usage-stats >/dev/null && \
	  for i in $$(seq 30); do \
	    $(CLUSTER_ENV) $(BIN)/ray job submit --address $(DASHBOARD) --no-wait -- true \
	      >/dev/null 2>&1 && break; sleep 2; \
	  done && \
	  echo "[cluster] started a local Ray head; dashboard $(DASHBOARD)"; \
	fi

pipeline: cluster
	$(CLUSTER_ENV) $(BIN)/ray job submit --address $(DASHBOARD) --working-dir . \
	  --runtime-env-json '{"env_vars": {"RAYAPP_GIT_COMMIT": "'"$$(git rev-parse HEAD 2>/dev/null || echo unknown)"'"}}' \
	  -- python jobs/pipeline.py --config configs/pipeline.yaml $(DATA_ARG)

tune: cluster
	$(CLUSTER_ENV) $(BIN)/ray job submit --address $(DASHBOARD) --working-dir . \
	  --runtime-env-json '{"env_vars": {"RAYAPP_GIT_COMMIT": "'"$$(git rev-parse HEAD 2>/dev/null || echo unknown)"'"}}' \
	  -- python jobs/tune.py --config configs/pipeline.yaml $(DATA_ARG) $(if $(RESUME),--resume)

deploy: cluster
	@$(BIN)/rayapp keys create   # the service's API key, outside git, mode 600
	$(CLUSTER_ENV) $(BIN)/serve deploy serve_config.yaml --address $(DASHBOARD)
	$(BIN)/rayapp predict --sample --wait 180 --url $(SERVE_URL)
	@echo "[serve] production model at $(SERVE_URL)/predict (docs: $(SERVE_URL)/docs)"
	@echo "[serve] rollouts: rayapp deploy --strategy bluegreen|canary|shadow --candidate churn_model/N"
	@echo "[ui] Ray dashboard: $(DASHBOARD)   MLflow UI: make mlflow-ui, then http://127.0.0.1:5000"

run: pipeline deploy

test: install tools
	$(BIN)/ruff check ray_app jobs tests bench notebooks
	$(BIN)/pytest

# Prometheus's own promtool checks and unit-tests monitoring/alerts.yml: taken from Debian's
# `prometheus` package (extracted, nothing installed or started) unless one is on PATH.
tools: .tools/bin/promtool

.tools/bin/promtool:
	@mkdir -p .tools/bin
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; \
	elif command -v apt-get >/dev/null && (cd .tools && { apt-get download -q prometheus || \
	    { apt-get update -q && apt-get download -q prometheus; }; } >/dev/null 2>&1); then \
	  dpkg-deb -x .tools/prometheus_*.deb .tools/deb && mv .tools/deb/usr/bin/promtool $@ && \
	  rm -rf .tools/deb .tools/prometheus_*.deb; \
	else echo "[tools] no promtool (no Debian package here): the alert-rule tests will skip"; fi

bench: install
	$(BIN)/python -m bench.train_bench
	$(BIN)/python -m bench.validate_bench
	$(BIN)/python -m bench.profile_bench
	$(BIN)/python -m bench.tune_bench
	$(BIN)/python -m bench.serving_bench
	$(BIN)/python -m bench.http_bench
	$(BIN)/python -m bench.monitor_bench
	$(BIN)/python -m bench.batch_bench --rows 1000000 10000000
	$(BIN)/python -m bench.scale_bench

lint: install
	$(BIN)/ruff check ray_app jobs tests bench notebooks

stop:
	@if [ -x $(BIN)/ray ]; then $(BIN)/ray stop; fi

# One worker and no GenAI job runner: 2 processes and 0.5 GB, against MLflow 3's default 15 and 3.2 GB.
# A tracking URI that is already a server (http://...) has its own UI.
mlflow-ui: install
	@case "$(MLFLOW_TRACKING_URI)" in http://*|https://*) \
	  echo "[ui] MLFLOW_TRACKING_URI is a server: open $(MLFLOW_TRACKING_URI)"; exit 0;; esac; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) \
		--host 127.0.0.1 --port 5000 --workers 1

strip-notebooks: install
	$(BIN)/python notebooks/strip.py
