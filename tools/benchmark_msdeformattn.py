#!/usr/bin/env python
"""Benchmark multi-scale deformable attention: grid_sample (the reference) vs embedding_bag, per input size.

One row per (image size, implementation): the sampling of one MSDeformAttn encoder layer of the pixel decoder
(8 heads, head dim 32, 4 points, the 1/8, 1/16, 1/32 levels, every position a query), forward and
forward+backward, best of --repeats, in one process, with the largest difference from grid_sample.

    python tools/benchmark_msdeformattn.py                      # CPU, float32, 640x640 and 800x1216
    python tools/benchmark_msdeformattn.py --image 1024x2048 --threads 4
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.layers.ms_deform_attn import ms_deform_attn_embedding_bag, ms_deform_attn_grid_sample  # noqa: E402
from dinat_m2f.utils.benchmark import best_time  # noqa: E402

IMPLEMENTATIONS = {"grid_sample": ms_deform_attn_grid_sample, "embedding_bag": ms_deform_attn_embedding_bag}


def _inputs(height: int, width: int, device: torch.device, heads: int = 8, points: int = 4):
    shapes = [(-(-height // s), -(-width // s)) for s in (32, 16, 8)]  # coarse to fine, as the decoder orders
    total = sum(h * w for h, w in shapes)
    value = torch.randn(1, total, heads, 32, device=device)
    # Around each query's reference point, a few pixels away, some outside the map.
    locations = (torch.rand(1, total, heads, len(shapes), points, 2, device=device) * 1.1 - 0.05)
    weights = torch.rand(1, total, heads, len(shapes), points, device=device).softmax(-1)
    return value, shapes, locations, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="640x640,800x1216", help="comma-separated HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"MSDeformAttn sampling, one encoder layer, 8 heads x 32, 4 points, torch {torch.__version__}, "
          f"{device} ({platform.processor() or platform.machine()}), {args.threads} threads")
    print("| image | queries | implementation | forward ms | fwd+bwd ms | max abs difference |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for item in args.image.split(","):
        height, width = (int(v) for v in item.split("x"))
        value, shapes, locations, weights = _inputs(height, width, device)
        reference = ms_deform_attn_grid_sample(value, shapes, locations, weights)
        for name, implementation in IMPLEMENTATIONS.items():
            def forward():
                with torch.no_grad():
                    return implementation(value, shapes, locations, weights)

            def train():
                inputs = [t.detach().requires_grad_() for t in (value, locations, weights)]
                implementation(inputs[0], shapes, *inputs[1:]).sum().backward()

            difference = (forward() - reference).abs().max().item()
            print(f"| {height}x{width} | {value.shape[1]} | {name} | {best_time(forward, args.repeats)[0] * 1e3:.1f} "
                  f"| {best_time(train, args.repeats)[0] * 1e3:.1f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
