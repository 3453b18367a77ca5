#!/usr/bin/env bash
# Set up dinat-m2f on a machine with internet access: torch/torchvision (if absent), detectron2 and
# panopticapi from their git repositories (if not importable yet), then this project with its test extra.
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

echo "[setup] installing dinat_m2f with its test extra"
"$PYTHON" -m pip install -q -e "$ROOT[test]"
"$PYTHON" -c "import dinat_m2f, detectron2, panopticapi, torch; print('[setup] ok: torch', torch.__version__)"
