# syntax=docker/dockerfile:1
# One image for every popsync job: `popsync worker validator|synchronizer`,
# `popsync serve`, `popsync topics create`, `popsync db migrate`, `popsync backfill`. All
# configuration comes from POPSYNC_* environment variables at run time; nothing secret is
# baked in.
#
# Build: docker build -t popsync:local .
# Pin PYTHON_IMAGE to a digest (python:3.11-slim@sha256:...) in the release pipeline so
# rebuilds are reproducible; both stages must use the same image, as the venv is copied.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: make the popsync wheel, install it with its dependencies into a venv ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore). README.md* matches nothing
# until a README exists; pyproject.toml keeps the COPY from failing on an empty glob.
COPY pyproject.toml README.md* ./
COPY popsync ./popsync
COPY services ./services
# Every dependency ships a manylinux wheel for cp311/x86_64, so no compiler is needed.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /dist/popsync-*.whl

# --- runtime: the venv, the Avro contract, an unprivileged user -----------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="popsync" \
      org.opencontainers.image.description="popsync streaming workers (validator, synchronizer)" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify them without a passwd.
RUN groupadd --system --gid 10001 popsync \
 && useradd --system --uid 10001 --gid popsync --home-dir /var/lib/popsync \
            --no-create-home --shell /usr/sbin/nologin popsync \
 && install -d -o popsync -g popsync -m 0750 /var/lib/popsync

COPY --from=build /opt/venv /opt/venv
# The .avsc files are read at run time (popsync/contract/schemas.py) and are not in the
# wheel, so they ship beside it and POPSYNC_SCHEMA_DIR points at them.
COPY schemas/avro /opt/popsync/schemas/avro

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POPSYNC_SCHEMA_DIR=/opt/popsync/schemas/avro

# A working directory the user owns (an emptyDir in Kubernetes, whose root is read-only).
# The workers write nothing there (faust keeps no tables, so no `<group>-data/`), but a
# tool run in the container may.
WORKDIR /var/lib/popsync
USER 10001:10001

# Workers serve /metrics, /healthz and /readyz on POPSYNC_OBSERVABILITY__PORT (9400).
# No HEALTHCHECK here: the same image runs one-shot commands (`topics create`,
# `db migrate`) that serve nothing; docker-compose.yml gives the workers theirs, and
# Kubernetes probes /healthz and /readyz.
# `popsync serve` (the verification service) answers on POPSYNC_SERVE__PORT (8080).
EXPOSE 9400 8080
# Exec form: popsync is PID 1 and gets SIGTERM directly; mode's worker stops faust cleanly.
ENTRYPOINT ["popsync"]
CMD ["--help"]
