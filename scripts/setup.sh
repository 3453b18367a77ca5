#!/usr/bin/env bash
# Set up dinat-m2f on a machine with internet access: torch/torchvision (if absent), detectron2 and
# panopticapi from their git repositories (if not importable yet), NATTEN (optional, CPU-only machines), then
# this project with its test and web demo (app) extras.
# Usage: bash scripts/setup.sh   (env PYTHON picks the interpreter; SRC_DIR where git checkouts go)
set -euo pipefail
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC_DIR=${SRC_DIR:-$HOME/.cache/dinat_m2f_src}

have() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

if ! have torch || ! have torchvision; then
  echo "[setup] installing torch and torchvision"
  "$PYTHON" -m pip install torch torchvision
fi

if ! have detectron2; then
  echo "[setup] installing detectron2 from git (needs torch at build time: --no-build-isolation)"
  mkdir -p "$SRC_DIR"
  [ -d "$SRC_DIR/detectron2" ] || git clone https://github.com/facebookresearch/detectron2.git "$SRC_DIR/detectron2"
  "$PYTHON" -m pip install --no-build-isolation -e "$SRC_DIR/detectron2"
else
  echo "[setup] detectron2 already importable: skipping its git install"
fi

if ! have panopticapi; then
  echo "[setup] installing panopticapi from git"
  "$PYTHON" -m pip install "git+https://github.com/cocodataset/panopticapi.git"
else
  echo "[setup] panopticapi already importable: skipping its git install"
fi

# NATTEN is optional (the `natten` backend). Without a GPU it builds in seconds without its CUDA library and
# runs forward-only on CPU, which is what the comparison tests and benchmark rows need; on a GPU machine
# building its kernels takes long, so install one of NATTEN's prebuilt wheels there instead.
if ! have natten; then
  if "$PYTHON" -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then
    echo "[setup] installing NATTEN 0.21.7 without its CUDA library (optional; for comparisons on CPU)"
    "$PYTHON" -m pip install --no-build-isolation natten==0.21.7 || echo "[setup] NATTEN did not install: its tests skip"
  else
    echo "[setup] NATTEN not installed (optional): install a prebuilt NATTEN >= 0.20 wheel for its fused kernels"
  fi
fi

echo "[setup] installing dinat_m2f with its test and app extras"
"$PYTHON" -m pip install -q -e "$ROOT[test,app]"
"$PYTHON" -c "import dinat_m2f, detectron2, panopticapi, torch; print('[setup] ok: torch', torch.__version__)"
