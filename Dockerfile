# syntax=docker/dockerfile:1
#
# rlsproxy container image.
#
#   docker build -t rlsproxy:dev .
#   docker run --rm -v "$PWD/my-rlsproxy.yaml:/etc/rlsproxy/rlsproxy.yaml:ro" \
#       -e RLSPROXY_JWT_SECRET=... -e RLSPROXY_UPSTREAM_PASSWORD=... -e RLSPROXY_SERVICE_PASSWORD=... \
#       -p 6432:6432 -p 9432:9432 rlsproxy:dev
# (deploy/docker-compose.yml does all of this, with PostgreSQL; see deploy/README.md.)
#
# The image carries no configuration: mount one at /etc/rlsproxy/rlsproxy.yaml (or point
# RLSPROXY_CONFIG elsewhere). In a container http.host must be 0.0.0.0, or port mappings, the
# kubelet's probes and Prometheus cannot reach it; so must listen.host when clients are outside the
# container (compose), while a Kubernetes sidecar keeps listen on 127.0.0.1 for the app in its pod.
# Secrets come from the environment through ${VAR} in the config.

# The Python the test suite runs on (pyproject: requires-python >= 3.11). Override with
# --build-arg PYTHON_VERSION=3.12 after running the tests on that version.
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
# Stage 1: build wheels for rlsproxy and every runtime dependency. Compilers, pip's cache and the
# source tree stay in this stage; only the wheels reach the final image.
FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# The hot path is compiled with mypyc (setup.py: the wire codec, the session machines, the asyncio
# edge; README "Performance" has what it saves). `--build-arg RLSPROXY_COMPILE=0` builds the
# pure-Python wheel instead. The compiler, mypy and the stubs stay in this stage.
ARG RLSPROXY_COMPILE=1
RUN if [ "$RLSPROXY_COMPILE" = "1" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Only what the wheel is built from: pyproject.toml (metadata, package list), setup.py (the
# optional compiled build), README.md (the `readme` field) and the package itself (including
# rlsproxy/sql/*.sql, declared package data). Tests, examples, docs and the dev extras are not part
# of the runtime.
COPY pyproject.toml setup.py README.md ./
COPY rlsproxy ./rlsproxy

# Compiled: the `compile` extra installs mypy and, with rlsproxy itself, the runtime dependencies
# whose types mypyc reads; the wheel is built without build isolation so it uses them. Then, as
# for the pure build, `pip wheel` collects a wheel for every [project] dependency (binary wheels
# from PyPI where they exist); the dev extras are not requested, so they are not built.
RUN if [ "$RLSPROXY_COMPILE" = "1" ]; then \
        pip install ".[compile]" && rm -rf build \
        && RLSPROXY_COMPILE=1 pip wheel --no-build-isolation --no-deps --wheel-dir /built . \
        && pip wheel --wheel-dir /wheels /built/rlsproxy-*.whl; \
    else \
        pip wheel --wheel-dir /wheels .; \
    fi

# ---------------------------------------------------------------------------------------------
# Stage 2: the runtime.
FROM python:${PYTHON_VERSION}-slim

# tini runs as PID 1. The kernel gives PID 1 no default signal actions: a SIGTERM sent before
# rlsproxy has installed its own handler (while it imports and reads its config) would be
# ignored and `docker stop` / pod deletion would wait out the whole grace period. tini forwards
# SIGTERM/SIGINT/SIGHUP to rlsproxy (which stops gracefully on SIGTERM) and reaps zombies.
# (Without tini, `docker run --init` gives the same; Kubernetes has no equivalent, hence tini.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed, numeric uid/gid so Kubernetes `runAsNonRoot` can verify the user without a passwd
# lookup and `runAsUser: 10001` in the manifests matches the image.
RUN groupadd --system --gid 10001 rlsproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rlsproxy

# Install only the wheels from stage 1 (--no-index: nothing is fetched or compiled here). The
# bind mount keeps the wheel files themselves out of the image layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links=/wheels rlsproxy \
    && rlsproxy --version

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the Kubernetes manifests.
# PYTHONUNBUFFERED: log and audit lines reach `docker logs` / the log collector immediately.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RLSPROXY_CONFIG=/etc/rlsproxy/rlsproxy.yaml

# 6432: PostgreSQL clients (listen.port). 9432: /metrics, /healthz, /readyz (http.port).
EXPOSE 6432 9432

USER 10001:10001

# slim has no curl: use the Python that is already here. urlopen raises (non-zero exit) on a
# refused connection, a timeout or any non-2xx status. /healthz is liveness only (the process
# serves requests); it does not depend on PostgreSQL, so a database outage does not get the
# proxy restarted. Assumes http.port 9432; change it here if the config uses another port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9432/healthz', timeout=2)"]

ENTRYPOINT ["tini", "--", "rlsproxy"]
CMD ["serve"]
