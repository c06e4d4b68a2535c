# syntax=docker/dockerfile:1
# Two images from one file, with the same torch version as .ci/run and the README:
#   docker build --build-arg FLAVOR=cuda -t transformer-fundamentals:cuda .   (torch's CUDA build, from PyPI)
#   docker build --build-arg FLAVOR=cpu  -t transformer-fundamentals:cpu  .   (torch's CPU build, from its own index)
# The CUDA image needs no CUDA base image: PyPI's torch wheels bring the CUDA runtime libraries with them, and
# the host's NVIDIA driver comes in through the NVIDIA container toolkit when a GPU is reserved (compose.yaml).
# Both: non-root user, dependencies in their own cached layer, `python -m jobs` as the entrypoint, so
#   docker run IMAGE train --config configs/cpu_demo.yaml
# runs a job. The project source is copied last: editing code does not reinstall the dependencies.

ARG PYTHON_BASE=python:3.11.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG FLAVOR=cuda

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# git: the train job records the commit it ran.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/*

# The one step that differs between the two images: which build of torch.
FROM base AS torch-cpu
ARG TORCH_VERSION
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

FROM base AS torch-cuda
ARG TORCH_VERSION
ENV MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true
RUN pip install "torch==${TORCH_VERSION}"

# ---------------------------------------------------------------------------------------------------------
# Everything else, written once for either build of torch.
# hadolint ignore=DL3006
FROM torch-${FLAVOR} AS app
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/torch-constraint.txt
COPY docker/install-deps.sh /tmp/install-deps.sh
COPY pyproject.toml README.md /app/
RUN sh /tmp/install-deps.sh
COPY model_zoo /app/model_zoo
COPY jobs /app/jobs
COPY bench /app/bench
COPY configs /app/configs
RUN pip install --no-cache-dir --no-deps -c /etc/torch-constraint.txt /app \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/assets && chown -R app:app /app
USER 1000:1000
WORKDIR /app
ENTRYPOINT ["python", "-m", "jobs"]
CMD ["--help"]
