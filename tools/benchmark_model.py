#!/usr/bin/env python
"""Benchmark the whole DiNAT-L Mask2Former: inference images/s and peak memory, training step time.

    python tools/benchmark_model.py                                   # CPU, float32, one 640x640 image
    python tools/benchmark_model.py --device cuda --precision bfloat16 --size 800 1216 --train
    python tools/benchmark_model.py --device cuda --precision bfloat16 --size 800 1216 --compile --batch 4

Inference runs the full model with the config's post-processing (panoptic, instance, semantic) on random
images, --batch of them per call. --compile runs the backbone and the segmentation head through torch.compile
(post-processing stays eager); the warm-up call compiles. Training (--train) runs optimizer steps on
--train-batch random LSJ-sized images with generated instance targets, under autocast in --precision, as
train_net.py does. Weights are random unless MODEL.WEIGHTS is given: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dinat_m2f  # noqa: E402,F401  (registers the model and the datasets)
from dinat_m2f.config import load_project_config  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _image(height: int, width: int, device: torch.device) -> dict:
    return {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=device),
            "height": height, "width": width}


def _training_image(size: int, num_classes: int, device: torch.device) -> dict:
    item = _image(size, size, device)
    masks = torch.zeros(6, size, size, dtype=torch.bool, device=device)
    for n in range(6):  # six rectangles of random extent
        y0, x0 = torch.randint(0, size // 2, (2,)).tolist()
        masks[n, y0:y0 + size // 3, x0:x0 + size // 4] = True
    instances = Instances((size, size))
    instances.gt_classes = torch.randint(0, num_classes, (6,), device=device)
    instances.gt_masks = masks
    item["instances"] = instances
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/coco/panoptic/dinat_l.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=2, help="timed inference calls (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and the head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="also time training steps")
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_project_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    device = torch.device(args.device)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS and Path(cfg.MODEL.WEIGHTS).exists():
        from dinat_m2f.checkpoint import SafeDetectionCheckpointer

        SafeDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    if args.compile:
        model.backbone = torch.compile(model.backbone)
        model.sem_seg_head = torch.compile(model.sem_seg_head)
    autocast = torch.autocast(device.type, dtype=getattr(torch, args.precision),
                              enabled=args.precision != "float32")
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{args.config_file}: {params / 1e6:.1f}M parameters, torch {torch.__version__}, "
          f"{args.device} ({name}), {args.threads} CPU threads, {args.precision}"
          f"{', torch.compile' if args.compile else ''}")
    print("| run | input | precision | time | throughput | peak memory MB |")
    print("|---|---|---|---|---|---|")

    height, width = args.size
    model.eval()
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), autocast:
        model([_image(height, width, device) for _ in range(args.batch)])  # warm-up (plans, kernels, compiling)
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.images):
            model([_image(height, width, device) for _ in range(args.batch)])
        _sync(device)
    per_image = (time.perf_counter() - start) / (args.images * args.batch)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb() - base_rss
    print(f"| inference | {args.batch} x {height}x{width} | {args.precision} | {per_image:.3f} s/image | "
          f"{1 / per_image:.2f} images/s | {peak:.0f} |")

    if args.train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        batch = [_training_image(args.train_size, num_classes, device) for _ in range(args.train_batch)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base_rss = _rss_mb()
        times = []
        for _ in range(args.train_steps + 1):
            _sync(device)
            start = time.perf_counter()
            with autocast:
                losses = sum(model(batch).values())
            optimizer.zero_grad(set_to_none=True)
            losses.backward()
            optimizer.step()
            _sync(device)
            times.append(time.perf_counter() - start)
        step = min(times[1:])
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb() - base_rss
        print(f"| training step | {args.train_batch} x {args.train_size}x{args.train_size} | {args.precision} | "
              f"{step:.3f} s/iter | {args.train_batch / step:.2f} images/s | {peak:.0f} |")


if __name__ == "__main__":
    main()
