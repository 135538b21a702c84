# syntax=docker/dockerfile:1.7
# storyline: multi-stage image. The builder has torch and builds/trains the ONNX artefacts;
# the runtime stage carries only the serving dependencies (no torch) and those artefacts.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 STORYLINE_DATA_DIR=/opt/storyline/data
WORKDIR /src
RUN python -m venv /opt/build-venv
ENV PATH=/opt/build-venv/bin:$PATH
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY index ./index
COPY service ./service
# torch first, CPU wheel, so nothing pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt '.[build]'
# Training data for the summary scorer and stance model, passed as a named build context:
#   docker build --build-context shared-data=../shared/data -t storyline .
# hadolint ignore=DL3022
COPY --from=shared-data . /src/shared-data
ENV STORYLINE_SHARED_DATA=/src/shared-data
# Build the artefacts, then a wheel of our own code for the runtime stage.
RUN storyline models build && pip wheel --no-deps -w /wheels .

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 STORYLINE_DATA_DIR=/data STORYLINE_MODELS_DIR=/opt/storyline/models \
    STORYLINE_HOST=0.0.0.0 STORYLINE_PORT=8000
# /data must exist, owned by the service user, before VOLUME: Docker seeds a new named volume
# with the image's directory (ownership included); without it the volume is root-owned and
# the store cannot be created there.
RUN groupadd --system --gid 10001 storyline \
 && useradd --system --uid 10001 --gid storyline --home /data storyline \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=builder /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
# Runtime dependencies only: the base requirements plus the PostgreSQL store (SQLAlchemy,
# Alembic, psycopg; STORYLINE_DATABASE_URL), no torch.
RUN whl="$(ls /wheels/storyline-*.whl)" \
 && pip install -c /tmp/constraints.txt "${whl}[postgres]" \
 && rm -rf /wheels /tmp/constraints.txt
COPY --from=builder --chown=10001:10001 /opt/storyline/data/models /opt/storyline/models
COPY seeds /app/seeds
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# Probes the port the service listens on (STORYLINE_PORT may move it off 8000).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('STORYLINE_PORT', '8000'), timeout=4).status != 200)"]
# `docker run IMAGE storyline digest --date 2021-10-18` runs the nightly job one-shot.
CMD ["storyline", "serve"]
