# The image every Ray pod runs (kuberay/): Ray's own image for our Ray and Python, with the
# project installed from its lock file. Build from the repo root:
#   docker build -t ray-app:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker build -t ray-app:0.1.0-gpu --build-arg VARIANT=-gpu --build-arg GIT_COMMIT=... .
# tests/test_deploy_files.py checks that the base tag is the installed ray's version, that
# every install goes through requirements.lock, and that the manifests run this image.
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
# "" for CPU nodes; "-gpu" for Ray's CUDA image (GPU workers)
ARG VARIANT=""
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}${VARIANT}

# The base image's own unprivileged user (uid 1000); nothing here runs as root.
USER ray
WORKDIR /home/ray/ray_app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 RAYAPP_HOME=/home/ray/.rayapp

# Dependencies first, from the lock alone, so that a code change reuses this layer: the
# project is installed once as an empty package (its pins resolved), then dropped again.
COPY --chown=ray:users requirements.lock pyproject.toml ./
RUN mkdir ray_app && touch ray_app/__init__.py \
    && pip install -c requirements.lock . \
    && pip uninstall -y ray_app && rm -rf ray_app build ray_app.egg-info

COPY --chown=ray:users ray_app ray_app
RUN pip install --no-deps -c requirements.lock . && rm -rf build ray_app.egg-info
# What jobs and `serve deploy` read from the working directory.
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users configs configs
COPY --chown=ray:users serve_config.yaml ./

# Provenance for MLflow runs (the image has no .git): `--build-arg GIT_COMMIT=$(git rev-parse HEAD)`.
ARG GIT_COMMIT=unknown
ENV RAYAPP_GIT_COMMIT=${GIT_COMMIT}
