# syntax=docker/dockerfile:1
#
# process-status container image.
#
#   docker build -t process-status:0.2.0 .
#   docker run -d --name process-status --stop-timeout 60 \
#     -e PROCESS_STATUS_WRITE_TOKENS="$(openssl rand -hex 32)" \
#     -p 8080:8080 -p 127.0.0.1:9464:9464 -v process-status-data:/data \
#     process-status:0.2.0
#
# A write token is REQUIRED: the image binds the API to 0.0.0.0, and `serve` refuses to
# start (exit code 2) on a non-loopback bind without one. Give it either
#   - PROCESS_STATUS_WRITE_TOKENS: comma-separated tokens (each >= 16 characters, no spaces
#     or commas, e.g. `openssl rand -hex 32`), or
#   - --write-tokens-file /run/secrets/write-tokens (a mounted secret, one token per line),
#     e.g. `docker run ... process-status:0.2.0 serve --write-tokens-file /run/secrets/...`.
# Optional read tokens: PROCESS_STATUS_READ_TOKENS or --read-tokens-file.
#
# Stopping: on SIGTERM the service finishes in-flight requests and writes a final snapshot.
# Its gunicorn graceful timeout is 2 x --shutdown-timeout + 31 s (41 s by default), longer
# than Docker's default 10 s stop timeout: use `--stop-timeout 60` (compose:
# `stop_grace_period: 60s`) or the final snapshot may be cut short (the journal still
# covers acknowledged writes).
#
# The metrics port (9464) lists entity names: publish it only to your Prometheus.
#
# TLS: terminate it in front (ingress, gateway, load balancer) when one is there, which is
# the usual case; to serve HTTPS from the container itself, mount a certificate and add
# `--tls-cert /run/secrets/tls.crt --tls-key /run/secrets/tls.key` (the metrics port
# stays plain HTTP).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a self-contained venv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md LICENSE openapi.yaml ./
# service/openapi.yaml links to ../openapi.yaml; the wheel gets the file itself.
COPY service/ service/
RUN pip install . \
 && python -c "import importlib.resources as r; assert r.files('service').joinpath('openapi.yaml').is_file()"

# ---- runtime: the venv, a non-root user, nothing else ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="process-status" \
      org.opencontainers.image.description="Tells API gateways and clients whether an event-driven read model has caught up with a write" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it and fsGroup can match.
RUN groupadd --system --gid 10001 process-status \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin process-status \
 && mkdir -p /data \
 && chown 10001:10001 /data

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROCESS_STATUS_BIND=0.0.0.0:8080 \
    PROCESS_STATUS_METRICS_BIND=0.0.0.0:9464 \
    PROCESS_STATUS_DATA_DIR=/data

USER 10001:10001
WORKDIR /data
VOLUME /data
# 8080: the API; 9464: Prometheus metrics (/metrics).
EXPOSE 8080 9464
STOPSIGNAL SIGTERM

# No curl in the slim image: probe with the standard library. The port follows
# PROCESS_STATUS_BIND (8080 unless overridden); urlopen raises on anything but 2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('PROCESS_STATUS_BIND', '').rpartition(':')[2] or '8080'; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

ENTRYPOINT ["process-status"]
CMD ["serve"]
