# dinat-m2f: DiNAT + Mask2Former on an official PyTorch CUDA image, with detectron2 and panopticapi
# built from their git repositories.
#   docker build -t dinat-m2f .
#   docker run --gpus all --shm-size 8g -v /path/to/datasets:/datasets dinat-m2f \
#       python train_net.py --config-file configs/coco/panoptic/dinat_l.yaml --num-gpus 8
# The devel image is needed: detectron2 compiles CUDA ops, and torch.compile (FlexAttention) needs a
# C compiler at run time. Another PyTorch devel tag works too: --build-arg BASE_IMAGE=... (docs/INSTALL.md says
# which torch versions the tests pass on). The image's torch is the base image's.
# Offline or CPU-only (scripts/docker_smoke.sh does this; docs/DOCKER.md): a base with python, pip and torch,
# detectron2 and panopticapi as directories or archives under docker/local/ (DETECTRON2_SPEC, PANOPTICAPI_SPEC,
# paths relative to the project root), FORCE_CUDA=0, APT_PACKAGES="" where Debian/Ubuntu mirrors are out of
# reach, and PIP_* build arguments to point pip at a mirror or a wheel folder.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

# Pinned to the commits this project is tested with.
ARG DETECTRON2_REF=02b5c4e295e990042a714712c21dc79b731e8833
ARG PANOPTICAPI_REF=7bb4655548f98f3fedc07bf37e9040a992b054b0
# What pip installs them from: their git repositories at those commits, or e.g. ./docker/local/detectron2.tar.gz
ARG DETECTRON2_SPEC="detectron2 @ git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_REF}"
ARG PANOPTICAPI_SPEC="panopticapi @ git+https://github.com/cocodataset/panopticapi.git@${PANOPTICAPI_REF}"
# 1 compiles detectron2's CUDA ops although no GPU is visible during `docker build`; 0 on a CPU-only base.
ARG FORCE_CUDA=1
# GPU generations detectron2's CUDA ops are compiled for (V100, T4, A100, RTX 30xx/A10, RTX 40xx/L4, H100).
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX"
# git for the pip installs from repositories; ninja speeds up detectron2's build. Empty: nothing from apt.
ARG APT_PACKAGES="git ninja-build"
# Where pip looks (unset: the base's pip configuration, PyPI by default): a mirror, or a wheel folder for an
# offline build (PIP_NO_INDEX=1 PIP_FIND_LINKS=/workspace/dinat-m2f/docker/local/wheels).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    FORCE_CUDA=${FORCE_CUDA} \
    DETECTRON2_DATASETS=/datasets

# hadolint ignore=DL3008
RUN if [ -n "${APT_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /workspace/dinat-m2f
# Local sources and wheels for offline builds (only its README unless docker/local/ holds them).
COPY docker/local ./docker/local

# detectron2's setup.py imports torch: build it against the image's torch (--no-build-isolation).
# The specs are pinned (commits or local archives): DL3013 cannot see through the build arguments.
# hadolint ignore=DL3013
RUN pip install --no-build-isolation "${DETECTRON2_SPEC}" \
    && python -c "import detectron2; print('detectron2', detectron2.__version__)"

# hadolint ignore=DL3013
RUN pip install "${PANOPTICAPI_SPEC}" \
    && python -c "import panopticapi"

# The package first (its dependencies change rarely), then the entry points, configs, tools and demo.
COPY pyproject.toml setup.py README.md ./
COPY dinat_m2f ./dinat_m2f
RUN pip install -e . \
    && python -c "import dinat_m2f, detectron2, panopticapi, torch; print('dinat_m2f ok, torch', torch.__version__)"
COPY . .

VOLUME ["/datasets"]
CMD ["python", "train_net.py", "--help"]
