#!/usr/bin/env python
"""Benchmark the whole DiNAT-L Mask2Former: inference images/s and peak memory, training step time.

    python tools/benchmark_model.py                                   # CPU, float32, one 640x640 image
    python tools/benchmark_model.py --device cuda --precision bfloat16 --size 800 1216 --train
    python tools/benchmark_model.py --device cuda --precision bfloat16 --size 800 1216 --compile --batch 4
    python tools/benchmark_model.py --backends eager,onnx,aoti        # CPU: PyTorch vs ONNX Runtime vs AOTInductor
    python tools/benchmark_model.py --before 7d345fa --rounds 3       # the model of another revision against this one

Inference runs the full model with the config's post-processing (panoptic, instance, semantic) on random
images, --batch of them per call. --backends picks what runs the network: `eager` (the PyTorch model), `onnx`
(ONNX Runtime, CPU), `pt2` (torch.export's ExportedProgram) or `aoti` (an AOTInductor package), the exported
ones float32 on the CPU, one image per call, through dinat_m2f.export.ExportedMaskFormer (same normalization,
padding and post-processing). Exported files are kept in --export-dir and reused by later runs (delete them
after changing the model or the weights); making them is timed separately. Each backend runs in a fresh process,
so its peak memory (the process's peak resident memory on CPU, weights included; allocated memory on CUDA) is
its own. Time is wall time per image; CPU time is the process's CPU time per image (all its threads), which
competing processes on a shared machine inflate less. --compile is the override MODEL.COMPILE.ENABLED True: the
backbone and the segmentation head run through torch.compile (post-processing stays eager); the warm-up call
compiles. MODEL.CHANNELS_LAST True (a trailing override) puts the convolutions' weights in channels-last.
Training (--train) runs optimizer steps on --train-batch random LSJ-sized images with generated instance targets,
under autocast in --precision, as train_net.py does. Weights are random unless MODEL.WEIGHTS is given: speed does
not depend on them. --ceiling first prints the machine's float32 matrix-product rate (a 4096^3 product and the
model's linear-layer shapes), the arithmetic limit the model's time compares with. Freed host memory is kept for
reuse (dinat_m2f.engine.reuse_freed_memory), as train_net.py and the demo do; --default-malloc leaves glibc's
thresholds as they are, the comparison row.
--before REV times the eager model of git revision REV (its dinat_m2f and configs, `git archive`d into a temporary
folder; nothing in the repository changes) and this checkout's, each in a fresh process, alternated --rounds times:
on a shared machine whose speed drifts, alternating is what makes the two comparable. Each runs as its own
train_net.py does: a revision from before dinat_m2f.engine.reuse_freed_memory runs with glibc's defaults (the
table's allocator column says so).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
# The package measured: this checkout's, or in a --before worker the revision's folder named by this variable.
PACKAGE_ROOT_ENV = "DINAT_M2F_BENCHMARK_PACKAGE_ROOT"
sys.path.insert(0, os.environ.get(PACKAGE_ROOT_ENV) or str(REPO))
import dinat_m2f  # noqa: E402  (registers the model and the datasets)
from dinat_m2f.config import load_project_config  # noqa: E402
from dinat_m2f.export import ExportedMaskFormer, export_onnx, export_pt2  # noqa: E402
# A --before revision's folder holds this checkout's copy of the module (extract_revision writes it there).
from dinat_m2f.utils.benchmark import (  # noqa: E402
    best_time, extract_revision, peak_memory_mb, random_image, reset_peak_memory, training_input,
)

try:
    from dinat_m2f.engine import reuse_freed_memory
except ImportError:  # a --before revision from before the allocator setting: glibc's defaults, as it ran
    reuse_freed_memory = None

# Exported backends: file name suffix and exporter.
EXPORTED = {
    "onnx": (".onnx", lambda model, size, path: export_onnx(model, size, path)),
    "pt2": (".pt2", lambda model, size, path: export_pt2(model, size, path)),
    "aoti": ("_aoti.pt2", lambda model, size, path: export_pt2(model, size, path, aoti=True)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _load_cfg(config_file: str, opts: list, device: str):
    cfg = load_project_config(config_file, opts)
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def _build_model(cfg):
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS and Path(cfg.MODEL.WEIGHTS).exists():
        from dinat_m2f.checkpoint import SafeDetectionCheckpointer

        SafeDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


# (M, K, N) float32 products: a large square one, and DiNAT-L's linear layers at a 640x640 input (tokens x in x
# out: stage 1 qkv and fc2, stage 3 qkv and fc1, stage 4 fc1).
CEILING_SHAPES = [(4096, 4096, 4096), (25600, 192, 576), (25600, 384, 192), (1600, 768, 2304), (1600, 768, 1536),
                  (400, 1536, 3072)]


def _matmul_ceiling(threads: int, repeats: int = 5) -> None:
    """Print the float32 matrix-product rate of this machine at `threads` threads: the arithmetic limit."""
    torch.set_num_threads(threads)
    print(f"float32 matrix products (addmm), {threads} threads, best of {repeats}")
    print("| M x K x N | ms | GFLOP/s |")
    print("|---|---|---|")
    for m, k, n in CEILING_SHAPES:
        a, b, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        best = best_time(lambda: torch.addmm(bias, a, b), repeats)[0]
        print(f"| {m} x {k} x {n} | {best * 1e3:.1f} | {2 * m * k * n / best / 1e9:.0f} |")


def _time_inference(spec: dict) -> dict:
    """Seconds per image and peak memory of one backend (run in a fresh process)."""
    torch.set_num_threads(spec["threads"])
    allocator = "glibc's defaults"
    if not spec["default_malloc"] and reuse_freed_memory is not None and reuse_freed_memory():
        allocator = "freed memory reused"
    config_file = spec["config_file"]
    if os.environ.get(PACKAGE_ROOT_ENV) and not Path(config_file).is_absolute():  # the revision's own config
        config_file = str(Path(os.environ[PACKAGE_ROOT_ENV]) / config_file)
    cfg = _load_cfg(config_file, spec["opts"], spec["device"])
    device = torch.device(spec["device"])
    if spec["backend"] == "eager":
        model = _build_model(cfg).eval()
    else:
        model = ExportedMaskFormer(spec["file"], cfg, threads=spec["threads"])
    autocast = torch.autocast(device.type, dtype=getattr(torch, spec["precision"]),
                              enabled=spec["precision"] != "float32")
    height, width = spec["size"]
    reset_peak_memory(device)
    with torch.no_grad(), autocast:
        model([random_image(height, width, device) for _ in range(spec["batch"])])  # warm-up: plans, kernels, compiling
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(spec["images"]):
            model([random_image(height, width, device) for _ in range(spec["batch"])])
        _sync(device)
    images = spec["images"] * spec["batch"]
    per_image = (time.perf_counter() - start) / images
    cpu_per_image = (time.process_time() - start_cpu) / images
    # The whole process on CPU (weights, runtime and activations), allocations on CUDA.
    peak = peak_memory_mb(device)
    return {"per_image": per_image, "cpu_per_image": cpu_per_image, "peak": peak, "allocator": allocator,
            "package": dinat_m2f.__file__}


def _compare_revisions(args, spec: dict) -> None:
    """Eager inference of --before's revision and of this checkout, fresh processes, alternated --rounds times."""
    context = mp.get_context("spawn")
    height, width = args.size
    print(f"{args.config_file}, {args.before} against this checkout, torch {torch.__version__}, {args.device} "
          f"({platform.processor() or platform.machine()}), {args.threads} CPU threads, {args.precision}, "
          f"{args.images} images after a warm-up, {args.rounds} alternated rounds")
    print("| round | code | input | time | CPU time | peak memory MB | allocator |")
    print("|---|---|---|---|---|---|---|")
    rows: dict[str, list] = {args.before: [], "this checkout": []}
    with tempfile.TemporaryDirectory() as folder:
        extract_revision(args.before, ["dinat_m2f", "configs"], folder)
        roots = {args.before: folder, "this checkout": None}
        for number in range(args.rounds):
            for name in (list(roots) if number % 2 == 0 else list(roots)[::-1]):
                previous = os.environ.pop(PACKAGE_ROOT_ENV, None)
                if roots[name]:
                    os.environ[PACKAGE_ROOT_ENV] = roots[name]  # read by the spawned worker as it starts
                try:
                    with context.Pool(1) as pool:
                        row = pool.apply(_time_inference, (spec,))
                finally:
                    os.environ.pop(PACKAGE_ROOT_ENV, None)
                    if previous is not None:
                        os.environ[PACKAGE_ROOT_ENV] = previous
                expected_root = Path(roots[name] or REPO).resolve()
                if expected_root not in Path(row["package"]).resolve().parents:
                    raise SystemExit(f"the {name} worker imported dinat_m2f from {row['package']}, not {expected_root}")
                rows[name].append(row)
                print(f"| {number + 1} | {name} | {args.batch} x {height}x{width} | {row['per_image']:.3f} s/image | "
                      f"{row['cpu_per_image']:.3f} s/image | {row['peak']:.0f} | {row['allocator']} |", flush=True)
    print("\n| code | time, best / median | CPU time, median | peak memory MB, median |")
    print("|---|---|---|---|")
    for name, measured in rows.items():
        times = [r["per_image"] for r in measured]
        print(f"| {name} | {min(times):.3f} / {statistics.median(times):.3f} s/image | "
              f"{statistics.median(r['cpu_per_image'] for r in measured):.3f} s/image | "
              f"{statistics.median(r['peak'] for r in measured):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/coco/panoptic/dinat_l.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=2, help="timed inference calls (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone and the head (MODEL.COMPILE.ENABLED True)")
    parser.add_argument("--backends", default="eager", help="comma-separated, of eager, " + ", ".join(EXPORTED))
    parser.add_argument("--export-dir", default="output/export", help="where exported files are kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="also time training steps")
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--ceiling", action="store_true",
                        help="first print this machine's float32 matrix-product rate (CPU)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (as DINAT_M2F_DEFAULT_MALLOC=1 does for train_net.py)")
    parser.add_argument("--before", metavar="REV", help="compare the eager model of git revision REV with this one")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of --before")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    backends = args.backends.split(",")
    unknown = [b for b in backends if b != "eager" and b not in EXPORTED]
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}; choose from eager, {', '.join(EXPORTED)}")
    exported = [b for b in backends if b != "eager"]
    if args.compile:
        args.opts = [*args.opts, "MODEL.COMPILE.ENABLED", "True"]
    if exported and (args.device != "cpu" or args.precision != "float32" or args.batch != 1):
        raise SystemExit(f"--backends {','.join(exported)}: exported networks run float32 on the CPU, one image "
                         "per call (--device cpu --precision float32 --batch 1)")

    if args.before:
        if exported or args.train or args.compile or args.ceiling:
            raise SystemExit("--before times eager inference only: no --backends, --train, --compile, --ceiling")
        _compare_revisions(args, dict(backend="eager", file="", config_file=args.config_file, opts=args.opts,
                                      device=args.device, precision=args.precision, size=tuple(args.size),
                                      batch=args.batch, images=args.images, threads=args.threads,
                                      default_malloc=args.default_malloc))
        return
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        # This process measures the ceiling and trains (--train); each inference worker sets it for itself.
        # Without it the ceiling's products fault their outputs in afresh (66 against about 95 GFLOP/s at
        # stage 1's qkv shape on the 2-core VM of docs/PERFORMANCE.md).
        reuse_freed_memory()
    if args.ceiling:
        _matmul_ceiling(args.threads)
    cfg = _load_cfg(args.config_file, args.opts, args.device)
    if exported and cfg.MODEL.COMPILE.ENABLED:
        raise SystemExit("MODEL.COMPILE.ENABLED applies to the eager model: leave it off for --backends "
                         f"{','.join(exported)}")
    device = torch.device(args.device)
    model = _build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{args.config_file}: {params / 1e6:.1f}M parameters, torch {torch.__version__}, "
          f"{args.device} ({name}), {args.threads} CPU threads, {args.precision}"
          f"{', torch.compile' if cfg.MODEL.COMPILE.ENABLED else ''}"
          f"{', channels-last weights' if cfg.MODEL.CHANNELS_LAST else ''}")

    height, width = args.size
    files = {}
    for backend in exported:
        suffix, export = EXPORTED[backend]
        files[backend] = Path(args.export_dir) / f"{Path(args.config_file).stem}_{height}x{width}{suffix}"
        if not files[backend].exists():
            files[backend].parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            export(model.eval(), (height, width), files[backend])
            print(f"exported {files[backend]} in {time.perf_counter() - start:.0f} s")

    if not args.train:
        del model  # the backends build their own, each in its own process
    print("| run | backend | input | precision | time | CPU time | throughput | peak memory MB |")
    print("|---|---|---|---|---|---|---|---|")
    context = mp.get_context("spawn")
    for backend in backends:
        spec = dict(backend=backend, file=str(files.get(backend, "")), config_file=args.config_file,
                    opts=args.opts, device=args.device, precision=args.precision, size=(height, width),
                    batch=args.batch, images=args.images, threads=args.threads, default_malloc=args.default_malloc)
        with context.Pool(1) as pool:
            row = pool.apply(_time_inference, (spec,))
        print(f"| inference | {backend} | {args.batch} x {height}x{width} | {args.precision} | "
              f"{row['per_image']:.3f} s/image | {row['cpu_per_image']:.3f} s/image | "
              f"{1 / row['per_image']:.2f} images/s | {row['peak']:.0f} |")

    if args.train:
        model.train()
        autocast = torch.autocast(device.type, dtype=getattr(torch, args.precision),
                                  enabled=args.precision != "float32")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        batch = [training_input(args.train_size, num_classes, device) for _ in range(args.train_batch)]
        base = reset_peak_memory(device)

        def train_step():
            with autocast:
                losses = sum(model(batch).values())
            optimizer.zero_grad(set_to_none=True)
            losses.backward()
            optimizer.step()
            _sync(device)

        _sync(device)
        step = best_time(train_step, args.train_steps)[0]
        # CUDA: all tensors (weights and optimizer state included); CPU: what the steps added to the process
        peak = peak_memory_mb(device) - (0 if device.type == "cuda" else base)
        print(f"| training step | eager | {args.train_batch} x {args.train_size}x{args.train_size} | "
              f"{args.precision} | {step:.3f} s/iter | -  | {args.train_batch / step:.2f} images/s | {peak:.0f} |")


if __name__ == "__main__":
    main()
