# mcserve images, two targets:
#   train  torch + torchvision + the training package + Debian's Fashion-MNIST; writes an artifact to /models
#   serve  torch + the service only (no training code, no torchvision, no data set); non-root, HEALTHCHECK /readyz
#
# Online (users):  docker build --target serve -t mcserve-api .
#                  TORCH_INDEX_URL picks the torch build: CPU by default, a CUDA index for GPUs, e.g.
#                  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Offline (CI):    put wheels in deploy/wheelhouse/ and pass pip's own settings as build args:
#                  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse [--build-arg TORCH_SPEC=...]
#                  (the steps below are the same; pip reads PIP_* from the environment)
ARG BASE_IMAGE=debian:bookworm-slim

# ---- base: Debian's python3 in a venv, an unprivileged user, /models owned by it -------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN set -eux; \
    grep -rqs bookworm-updates /etc/apt/sources.list /etc/apt/sources.list.d/ \
      || echo "deb http://deb.debian.org/debian bookworm-updates main" >> /etc/apt/sources.list; \
    grep -rqs bookworm-security /etc/apt/sources.list /etc/apt/sources.list.d/ \
      || echo "deb http://deb.debian.org/debian-security bookworm-security main" >> /etc/apt/sources.list; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    python3 -m venv "$VIRTUAL_ENV"; \
    groupadd --system --gid 10001 mcserve; \
    useradd --system --uid 10001 --gid mcserve --home-dir /home/mcserve --create-home --shell /usr/sbin/nologin mcserve; \
    install -d -o mcserve -g mcserve /models
WORKDIR /home/mcserve

# ---- sources for each target, so training code can never reach the serve image -------------
FROM base AS src-serve
COPY pyproject.toml README.md /src/
COPY mcnet /src/mcnet
COPY service /src/service

FROM src-serve AS src-train
COPY training /src/training

# ---- serve --------------------------------------------------------------------------------------
FROM base AS serve
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
# torch first (its own layer, changes least), then the project's other deps, then the code.
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    pip install --index-url "$TORCH_INDEX_URL" $TORCH_SPEC
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    --mount=type=bind,from=src-serve,source=/src,target=/src,rw \
    pip install /src
COPY deploy/docker/healthcheck.py /usr/local/bin/mcserve-healthcheck
USER mcserve
ENV MCSERVE_MODEL_DIR=/models/current \
    MCSERVE_HOST=0.0.0.0 \
    MCSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["mcserve-healthcheck"]
CMD ["python", "-m", "service"]

# ---- train --------------------------------------------------------------------------------------
FROM base AS train
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch torchvision"
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    ls /usr/share/datasets/fashion-mnist/
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    pip install --index-url "$TORCH_INDEX_URL" $TORCH_SPEC
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    --mount=type=bind,from=src-train,source=/src,target=/src,rw \
    pip install "/src[train]"
COPY deploy/docker/train-job.sh /usr/local/bin/mcserve-train-job
USER mcserve
ENV MCSERVE_MODEL_DIR=/models/current \
    MPLCONFIGDIR=/tmp/matplotlib
ENTRYPOINT ["mcserve-train-job"]
