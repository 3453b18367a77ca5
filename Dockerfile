# dinat-m2f: DiNAT + Mask2Former on an official PyTorch CUDA image, with detectron2 and panopticapi
# built from their git repositories.
#   docker build -t dinat-m2f .
#   docker run --gpus all --shm-size 8g -v /path/to/datasets:/datasets dinat-m2f \
#       python train_net.py --config-file configs/coco/panoptic/dinat_l.yaml --num-gpus 8
# The devel image is needed: detectron2 compiles CUDA ops, and torch.compile (FlexAttention) needs a
# C compiler at run time. Another PyTorch >= 2.5 devel tag works too: --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

# Pinned to the commits this project is tested with.
ARG DETECTRON2_REF=02b5c4e295e990042a714712c21dc79b731e8833
ARG PANOPTICAPI_REF=7bb4655548f98f3fedc07bf37e9040a992b054b0
# GPU generations detectron2's CUDA ops are compiled for (V100, T4, A100, RTX 30xx/A10, RTX 40xx/L4, H100).
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX"

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    FORCE_CUDA=1 \
    DETECTRON2_DATASETS=/datasets

# git for the pip installs from repositories; ninja speeds up detectron2's build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ninja-build \
    && rm -rf /var/lib/apt/lists/*

# detectron2's setup.py imports torch: build it against the image's torch (--no-build-isolation).
# FORCE_CUDA=1 compiles the CUDA ops although no GPU is visible during `docker build`.
RUN pip install --no-build-isolation \
        "detectron2 @ git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_REF}" \
    && python -c "import detectron2; print('detectron2', detectron2.__version__)"

RUN pip install "panopticapi @ git+https://github.com/cocodataset/panopticapi.git@${PANOPTICAPI_REF}" \
    && python -c "import panopticapi"

WORKDIR /workspace/dinat-m2f

# The package first (its dependencies change rarely), then the entry points, configs, tools and demo.
COPY pyproject.toml README.md ./
COPY dinat_m2f ./dinat_m2f
RUN pip install -e . \
    && python -c "import dinat_m2f, detectron2, panopticapi, torch; print('dinat_m2f ok, torch', torch.__version__)"
COPY . .

VOLUME ["/datasets"]
CMD ["python", "train_net.py", "--help"]
