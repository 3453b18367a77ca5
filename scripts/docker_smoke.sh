#!/usr/bin/env bash
# Build the Docker image from a given base and run the main job in it, shortened, on the CPU: train_net.py on the
# synthetic panoptic config for MAX_ITER iterations (it evaluates at the end), then --eval-only on the checkpoint
# it wrote, which must give the same PQ / AP / mIoU. Prints the time of each step.
#   bash scripts/docker_smoke.sh [BASE_IMAGE]
# BASE_IMAGE (argument or env) is an image with python, pip and torch + torchvision. Default:
# local/dinat-m2f-cpu-base, built first from docker/cpu-base.Dockerfile on DEBIAN_IMAGE (default
# local/debian:bookworm, see docs/DOCKER.md for making it with debootstrap) with TORCH_SPEC (default "torch
# torchvision") and the CA bundle CA_BUNDLE (default: this machine's, /etc/ssl/certs/ca-certificates.crt).
# Other env:
#   PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST  passed to both builds when set
#   SRC_DIR      git checkouts of detectron2 and panopticapi (default ~/.cache/dinat_m2f_src): archived at the
#                Dockerfile's pinned commits into docker/local/ (removed again at the end), so the build needs
#                no GitHub
#   OFFLINE=1    then also rebuild the image with `docker build --network none` (no PyPI, no apt), pip taking
#                every wheel from docker/local/wheels (downloaded here first with this machine's pip, the list
#                from the online image's `pip freeze`)
#   IMAGE (default dinat-m2f:smoke), MAX_ITER (default 50), WORK_DIR (default: a new temporary folder; the
#   dataset and outputs go there)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${1:-${BASE_IMAGE:-}}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-local/debian:bookworm}
TORCH_SPEC=${TORCH_SPEC:-torch torchvision}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SRC_DIR=${SRC_DIR:-$HOME/.cache/dinat_m2f_src}
IMAGE=${IMAGE:-dinat-m2f:smoke}
MAX_ITER=${MAX_ITER:-50}
WORK_DIR=${WORK_DIR:-$(mktemp -d /tmp/dinat_m2f_docker_smoke.XXXXXX)}
LOCAL="$ROOT/docker/local"

timings=()
step() {  # step NAME COMMAND...: runs it, records its wall time
  local name=$1 start
  shift
  echo "[smoke] $name"
  start=$(date +%s)
  "$@"
  timings+=("$(printf '%-60s %5d s' "$name" $(($(date +%s) - start)))")
}

pip_args=()
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
  if [ -n "${!name:-}" ]; then pip_args+=(--build-arg "$name=${!name}"); fi
done

copied=()
cleanup() { for path in "${copied[@]}"; do rm -rf "$path"; done; }
trap cleanup EXIT

pinned() { sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile"; }

archive_sources() {  # the pinned commits of the local checkouts, as archives pip installs
  local name ref
  for name in detectron2 panopticapi; do
    ref=$(pinned "${name^^}_REF")
    git -C "$SRC_DIR/$name" archive --format=tar.gz --prefix="$name/" -o "$LOCAL/$name.tar.gz" "$ref"
    copied+=("$LOCAL/$name.tar.gz")
  done
}

build_base() {
  local context
  context=$(mktemp -d)
  copied+=("$context")
  cp "$CA_BUNDLE" "$context/ca-certificates.crt"
  docker build -f "$ROOT/docker/cpu-base.Dockerfile" -t local/dinat-m2f-cpu-base \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg TORCH_SPEC="$TORCH_SPEC" "${pip_args[@]}" "$context"
}

build_image() {  # build_image TAG [docker build options]
  local tag=$1
  shift
  docker build -t "$tag" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg FORCE_CUDA=0 --build-arg APT_PACKAGES= \
    --build-arg DETECTRON2_SPEC=./docker/local/detectron2.tar.gz \
    --build-arg PANOPTICAPI_SPEC=./docker/local/panopticapi.tar.gz "$@" "$ROOT"
}

download_wheels() {  # everything the online image installed on top of its base, for the offline rebuild
  local requirement name
  mkdir -p "$LOCAL/wheels"
  copied+=("$LOCAL/wheels")
  docker run --rm "$BASE_IMAGE" pip freeze --all | cut -d= -f1 | tr A-Z_ a-z- | sort > "$WORK_DIR/base.txt"
  docker run --rm "$IMAGE" pip freeze --all | grep -v -E '^(#|-e |pip==|detectron2|panopticapi|dinat)' \
    | grep '==' | sort > "$WORK_DIR/image.txt"
  while IFS= read -r requirement; do
    name=$(echo "${requirement%%==*}" | tr A-Z_ a-z-)
    grep -qx "$name" "$WORK_DIR/base.txt" || echo "$requirement"
  done < "$WORK_DIR/image.txt" > "$WORK_DIR/wheels.txt"
  python3 -m pip download -q --no-deps -d "$LOCAL/wheels" -r "$WORK_DIR/wheels.txt"
  python3 -m pip download -q --no-deps -d "$LOCAL/wheels" "setuptools>=64" wheel  # build backends
}

in_container() {  # the job needs no network; bash's `time` reports its CPU time
  docker run --rm --network none --shm-size 1g -v "$WORK_DIR:/work" -e DETECTRON2_DATASETS=/work/datasets \
    "$IMAGE" bash -c 'TIMEFORMAT="[smoke] in the container: %R s wall, %U s user + %S s system CPU"; time "$@"' \
    bash "$@"
}

results() { grep -o "copypaste: .*" "$1" || true; }  # detectron2's CSV lines of every evaluator

train() {
  in_container python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml \
    SOLVER.MAX_ITER "$MAX_ITER" OUTPUT_DIR /work/train 2>&1 | tee "$WORK_DIR/train.log" \
    | grep -E "iter: |copypaste|^\[smoke\]"
}

evaluate() {
  in_container python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml --eval-only \
    MODEL.WEIGHTS /work/train/model_final.pth OUTPUT_DIR /work/eval 2>&1 | tee "$WORK_DIR/eval.log" \
    | grep -E "copypaste|^\[smoke\]"
}

mkdir -p "$WORK_DIR"
echo "[smoke] work folder: $WORK_DIR"
if [ -z "$BASE_IMAGE" ]; then
  BASE_IMAGE=local/dinat-m2f-cpu-base
  step "build the CPU base ($TORCH_SPEC)" build_base
fi
step "archive detectron2, panopticapi" archive_sources
step "build $IMAGE on $BASE_IMAGE" build_image "$IMAGE" "${pip_args[@]}"
if [ "${OFFLINE:-0}" = 1 ]; then
  step "download the wheels for the offline build" download_wheels
  step "build $IMAGE-offline, --network none" build_image "$IMAGE-offline" --network none --no-cache \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/workspace/dinat-m2f/docker/local/wheels
  IMAGE=$IMAGE-offline
fi
step "train $MAX_ITER iterations + evaluate (in $IMAGE)" train
step "--eval-only on model_final.pth" evaluate

# the same weights on the same data: the evaluation after training and the --eval-only run agree
diff <(results "$WORK_DIR/train.log") <(results "$WORK_DIR/eval.log") >/dev/null \
  || { echo "[smoke] FAILED: --eval-only differs from the evaluation after training" >&2; exit 1; }
grep -q "copypaste: " "$WORK_DIR/eval.log" || { echo "[smoke] FAILED: no results" >&2; exit 1; }
echo "[smoke] results (after training and from --eval-only, equal):"
results "$WORK_DIR/eval.log"
echo "[smoke] image: $IMAGE, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
echo "[smoke] wall time per step:"
printf '  %s\n' "${timings[@]}"
