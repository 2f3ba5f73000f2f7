# syntax=docker/dockerfile:1
# moe-prefetch server image: the project and its pinned dependencies in a venv, CUDA from the torch
# wheel (no CUDA base image needed: the wheel ships its CUDA libraries, the host's NVIDIA container
# toolkit supplies the driver). Configured only through MOE_* variables; the model and predictor
# bundle are mounted at /models and /predictors. docs/deploy.md explains the choices.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# python3, not python: Debian's own python3.11 (a base made with debootstrap) has no `python` command.
RUN python3 -m venv /opt/venv
# pip's configuration (a package mirror, a local wheel folder, its CA) may come in as the optional build
# secret `pipconf` (`--secret id=pipconf,src=pip.conf`), mounted only while pip runs: it stays in no
# layer. Without it pip uses PyPI and TORCH_INDEX_URL.
# Dependencies first, each in its own cached layer: editing the source does not reinstall them.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY deploy/constraints.txt /tmp/constraints.txt
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install --requirement /tmp/constraints.txt
COPY . /src
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install --no-deps --constraint /tmp/constraints.txt /src \
    && pip check \
    && pip uninstall --yes pip \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 moe \
    && useradd --system --uid 10001 --gid moe --create-home --home-dir /home/moe --shell /usr/sbin/nologin moe \
    && mkdir -p /models /predictors
COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/moe/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8000
VOLUME ["/models", "/predictors"]
USER moe
WORKDIR /home/moe
EXPOSE 8000
# Loading a large checkpoint into pinned memory takes minutes: failures count only after start-period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/moe/healthcheck.py"]
ENTRYPOINT ["moe-prefetch", "serve"]
