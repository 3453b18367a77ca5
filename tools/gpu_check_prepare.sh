#!/usr/bin/env bash
# Prepare .gpu_check/ (ignored by git) for tools/gpu_check.py on the GPU machine, which has Python 3.12,
# torch 2.11 + CUDA 13, Triton, numpy, scipy, opencv, Pillow, PyYAML, tabulate, portalocker, tqdm, matplotlib
# and tensorboard, but no network and none of the packages below. Run it here (it needs PyPI):
#   wheels/  cp312 manylinux and pure-Python wheels of what detectron2 and this project import at run time
#            (found by importing and running every step with only the machine's packages): fvcore, iopath,
#            yacs, termcolor, omegaconf, antlr4-python3-runtime, pycocotools; and pytest with its pluggy,
#            iniconfig and pygments, which the cuda_tests step runs. fvcore and antlr4 publish only source
#            archives; they are pure Python, so pip builds their wheels here.
#   src/     the Python sources of detectron2 and panopticapi, copied from their git checkouts (never
#            committed), used from PYTHONPATH. detectron2's compiled ops (detectron2._C) are not needed:
#            nothing the steps run imports them (its COCO evaluator falls back to pycocotools' COCOeval).
# Then checks that the working tree that travels (tracked and untracked-not-ignored files plus .gpu_check)
# stays under the device tool's 64 MiB.
# Usage: bash tools/gpu_check_prepare.sh
#   env PYTHON (the pip to use), SRC_DIR (checkouts, default ~/.cache/dinat_m2f_src, as scripts/setup.sh),
#   DETECTRON2_SRC and PANOPTICAPI_SRC (the checkouts themselves), GPU_CHECK_DIR (default .gpu_check).
set -euo pipefail
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC_DIR=${SRC_DIR:-$HOME/.cache/dinat_m2f_src}
DETECTRON2_SRC=${DETECTRON2_SRC:-$SRC_DIR/detectron2}
PANOPTICAPI_SRC=${PANOPTICAPI_SRC:-$SRC_DIR/panopticapi}
DEST=${GPU_CHECK_DIR:-$ROOT/.gpu_check}
LIMIT_MIB=64

# Versions as installed on the development machines (the suite passes with them).
BINARY_WHEELS="pycocotools==2.0.11 iopath==0.1.9 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1
  pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pygments==2.20.0"
SOURCE_ONLY="fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

for checkout in "$DETECTRON2_SRC/detectron2" "$PANOPTICAPI_SRC/panopticapi"; do
  if [ ! -f "$checkout/__init__.py" ]; then
    echo "[gpu_check_prepare] no Python package at $checkout: clone the repository there (scripts/setup.sh does)" >&2
    exit 1
  fi
done

rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/src"
echo "[gpu_check_prepare] wheels for Python 3.12 into $DEST/wheels"
# shellcheck disable=SC2086  # the lists are meant to split
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $PLATFORMS -d "$DEST/wheels" $BINARY_WHEELS
# shellcheck disable=SC2086
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST/wheels" $SOURCE_ONLY
for wheel in "$DEST"/wheels/*.whl; do
  case "$(basename "$wheel")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*manylinux*.whl) ;;
    *) echo "[gpu_check_prepare] $wheel will not install on the GPU machine (Python 3.12, x86_64)" >&2; exit 1 ;;
  esac
done

echo "[gpu_check_prepare] detectron2 and panopticapi sources into $DEST/src"
# Python files only: no compiled extension (built for this machine's Python), no caches, no links (the
# model zoo's configs link points outside the package).
copy_package() {
  (cd "$1" && find "$2" -name __pycache__ -prune -o \( -type f ! -name '*.so' -print \) | tar -cf - -T -) \
    | tar -xf - -C "$DEST/src"
}
copy_package "$DETECTRON2_SRC" detectron2
copy_package "$PANOPTICAPI_SRC" panopticapi
{
  echo "prepared $(date -u '+%Y-%m-%d %H:%M UTC') by tools/gpu_check_prepare.sh"
  echo "detectron2 $(git -C "$DETECTRON2_SRC" rev-parse HEAD 2>/dev/null || echo '(not a git checkout)')"
  echo "panopticapi $(git -C "$PANOPTICAPI_SRC" rev-parse HEAD 2>/dev/null || echo '(not a git checkout)')"
  (cd "$DEST/wheels" && ls -1)
} > "$DEST/MANIFEST.txt"

cd "$ROOT"
if ! git check-ignore -q "$DEST/wheels"; then
  echo "[gpu_check_prepare] $DEST is not ignored by git: it would be committed" >&2
  exit 1
fi
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true) \
  | awk '{s += $1} END {print s + 0}')
dest_bytes=$(find "$DEST" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total_mib=$(( (tree_bytes + dest_bytes) / 1048576 ))
echo "[gpu_check_prepare] $DEST: $(( dest_bytes / 1024 )) KiB; working tree: $(( tree_bytes / 1024 )) KiB;" \
  "together ${total_mib} MiB of the ${LIMIT_MIB} MiB that may travel"
if [ "$total_mib" -ge "$LIMIT_MIB" ]; then
  echo "[gpu_check_prepare] too large to travel" >&2
  exit 1
fi
echo "[gpu_check_prepare] ok: run tools/gpu_check.py on the GPU machine as its docstring says (carry .gpu_check)"
