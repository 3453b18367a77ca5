# A CPU-only base for the project's Dockerfile where no pytorch/pytorch image can be pulled: Debian's Python in
# a venv (/opt/venv, first on PATH, so `python` and `pip` are the venv's as in the pytorch images), a C++
# compiler (detectron2's ops; torch.compile), git and ninja, torch + torchvision, and the CA bundle of the
# machine that builds it (pip trusts the same certificate authorities as that machine).
# scripts/docker_smoke.sh builds it; by hand, with ca-certificates.crt in the build context:
#   docker build -f docker/cpu-base.Dockerfile -t local/dinat-m2f-cpu-base CONTEXT_DIR
# DEBIAN_IMAGE is a bookworm image, e.g. one made with debootstrap and `docker import` (see docs/DOCKER.md).
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv python3-dev g++ git \
        ninja-build \
    && rm -rf /var/lib/apt/lists/*

COPY ca-certificates.crt /etc/ssl/certs/build-host-ca-bundle.crt
ENV PATH=/opt/venv/bin:${PATH} \
    PIP_CERT=/etc/ssl/certs/build-host-ca-bundle.crt \
    SSL_CERT_FILE=/etc/ssl/certs/build-host-ca-bundle.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Where pip looks is the builder's choice (a mirror, a local index): PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS and PIP_TRUSTED_HOST pass through as build arguments; unset, pip uses PyPI.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG TORCH_SPEC="torch torchvision"
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install --upgrade pip setuptools wheel \
    && pip install ${TORCH_SPEC} \
    && python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
