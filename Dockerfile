# syntax=docker/dockerfile:1
# One image for the whole service: the API (default CMD), the Celery workers and the sweeper.
# docker-compose.yml picks the role with `command:`. Build: `docker build -t bmgkd .`
#
# Layers, from least to most often changed:
#   1. torch/torchvision from the CUDA wheel index (large, changes only with the build args);
#   2. the remaining dependencies of ".[service]", resolved from pyproject.toml alone
#      (the package directories are empty stubs here, so a code edit does not re-download them);
#   3. the source itself, installed with --no-deps.
FROM python:3.11-slim

ARG TORCH_VERSION=2.11.0
ARG TORCHVISION_VERSION=0.26.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root runtime user; /data is the mount point of the shared data volume. Creating it here,
# owned by bmgkd, makes a fresh named volume inherit that ownership.
RUN groupadd --system bmgkd \
    && useradd --system --gid bmgkd --home-dir /home/bmgkd --create-home bmgkd \
    && mkdir -p /app /data \
    && chown bmgkd:bmgkd /data

WORKDIR /app

# 1. torch + torchvision as a tested pair (pyproject admits torch 2.11-2.14 / torchvision 0.26-0.29).
RUN pip install \
        --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2. Dependencies only: hatchling needs the package directories to exist, so build against stubs.
COPY pyproject.toml README.md ./
RUN mkdir -p bmgkd_core api worker \
    && touch bmgkd_core/__init__.py api/__init__.py worker/__init__.py \
    && pip install ".[service]" \
    && rm -rf bmgkd_core api worker

# 3. The source, kept in /app as well as installed: PYTHONPATH=/app (below) makes every entry point
#    (uvicorn, celery, the `bmgkd` console script) import from /app, so api.settings finds the repo
#    root there (web/, alembic.ini) rather than in site-packages.
COPY alembic.ini ./
COPY bmgkd_core/ bmgkd_core/
COPY api/ api/
COPY worker/ worker/
COPY web/ web/
RUN pip install --no-deps --force-reinstall .

# TORCH_HOME: downloaded torchvision weights persist on the data volume.
ENV PYTHONPATH=/app \
    BMGKD_DATA_DIR=/data \
    BMGKD_WEB_DIR=/app/web \
    TORCH_HOME=/data/cache/torch

USER bmgkd
EXPOSE 8000

CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
