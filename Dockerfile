# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target cuda -t transformer-fundamentals:cuda .   (official PyTorch CUDA runtime base)
#   docker build --target cpu  -t transformer-fundamentals:cpu  .   (slim Python base, CPU build of torch)
# Both: non-root user, dependencies in their own cached layer, `python -m jobs` as the entrypoint, so
#   docker run IMAGE train --config configs/cpu_demo.yaml
# runs a job. The project source is copied last: editing code does not reinstall the dependencies.

ARG CUDA_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ARG CPU_BASE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu-base
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# git: the train job records the commit it ran; CPU wheels of torch come from PyTorch's own index.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/* \
    && pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE} AS cuda-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image already holds a CUDA build of torch; the constraint below keeps pip from replacing it.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/torch-constraint.txt

# ---------------------------------------------------------------------------------------------------------
# Shared steps, written once and applied to either base (see the two final stages).
FROM cpu-base AS cpu
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/torch-constraint.txt
COPY docker/install-deps.sh /tmp/install-deps.sh
COPY pyproject.toml README.md /app/
RUN sh /tmp/install-deps.sh
COPY model_zoo /app/model_zoo
COPY jobs /app/jobs
COPY bench /app/bench
COPY configs /app/configs
RUN pip install --no-deps -c /etc/torch-constraint.txt /app \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/assets && chown -R app:app /app
USER 1000:1000
WORKDIR /app
ENTRYPOINT ["python", "-m", "jobs"]
CMD ["--help"]

FROM cuda-base AS cuda
COPY docker/install-deps.sh /tmp/install-deps.sh
COPY pyproject.toml README.md /app/
RUN sh /tmp/install-deps.sh
COPY model_zoo /app/model_zoo
COPY jobs /app/jobs
COPY bench /app/bench
COPY configs /app/configs
RUN pip install --no-deps -c /etc/torch-constraint.txt /app \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/assets && chown -R app:app /app
USER 1000:1000
WORKDIR /app
ENV MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true
ENTRYPOINT ["python", "-m", "jobs"]
CMD ["--help"]
