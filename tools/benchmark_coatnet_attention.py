#!/usr/bin/env python
"""Peak memory and time of one CoAtNet stride-16 (S3) transformer block at a dense input size.

The block is CoAtNet-0's (coatnet_0_rw_224: 384 channels, 12 heads of 32, tables trained at 224) on the
stride-16 map of an --image x --image input (64x64 tokens at 1024). Rows:
- eager: softmax(QK^T / sqrt(d) + bias) V written out (the bias, the scores and the probabilities are
  each heads x N x N: what timm's non-fused path computes);
- sdpa: the backbone's path, F.scaled_dot_product_attention with the bias as additive mask (global);
- window W: the backbone with MODEL.COATNET.ATTN_WINDOW W (W x W windows, the table as trained for W = 14).
Each row runs in a fresh process, so CPU peak memory (max RSS growth over the built block and its input) is
its own; on CPU that process may use 3/4 of the RAM, beyond it the row reads n/a.

    python tools/benchmark_coatnet_attention.py                                  # CPU, 1024, float32
    python tools/benchmark_coatnet_attention.py --device cuda --dtype bfloat16 --train
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.utils.benchmark import best_time, limit_memory, peak_memory_mb, reset_peak_memory  # noqa: E402


def eager_attention(q, k, v, attn_mask=None, dropout_p=0.0):
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(-1) @ v


def _measure(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    if spec["device"] == "cpu":
        limit_memory()
    from dinat_m2f.modeling.backbone import coatnet

    if spec["mode"] == "eager":  # only this process: the block's attention written out
        coatnet.F = types.SimpleNamespace(scaled_dot_product_attention=eager_attention)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    model = coatnet.build_variant("coatnet_0_rw_224", attn_window=spec["window"])
    block = model.stages[2].blocks[1].to(device)  # S3, not the first (pooling) block
    size = spec["image"] // 16
    x = torch.randn(spec["batch"], block.attn.qkv.in_channels, size, size, device=device)
    block.train(spec["train"]).requires_grad_(spec["train"])

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = block(x)
        if spec["train"]:
            out.float().square().mean().backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    result = dict(spec, tokens=size * size, heads=block.attn.num_heads)
    base = reset_peak_memory(device)
    try:
        with torch.set_grad_enabled(spec["train"]):
            result["seconds"] = best_time(lambda: (step(), sync()), spec["repeats"])[0]
    except (RuntimeError, MemoryError) as error:  # out of memory
        result["error"] = str(error).splitlines()[0]
    result["peak_mb"] = peak_memory_mb(device) - base
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--image", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--windows", default="14", help="comma-separated ATTN_WINDOW values for window rows")
    parser.add_argument("--train", action="store_true", help="forward + backward in training mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rows = [("eager", 0), ("sdpa", 0)] + [(f"window {w}", int(w)) for w in args.windows.split(",") if w]
    context = mp.get_context("spawn")
    print(f"One CoAtNet-0 S3 block at {args.image}x{args.image} ({args.image // 16}x{args.image // 16} tokens), "
          f"batch {args.batch}, {args.dtype}, {'forward + backward' if args.train else 'forward'}, "
          f"{args.device}, {args.threads} threads")
    print("| attention | peak memory MB | time ms |")
    print("|---|---|---|")
    for mode, window in rows:
        spec = dict(mode=mode.split()[0], window=window, device=args.device, dtype=args.dtype, image=args.image,
                    batch=args.batch, train=args.train, threads=args.threads, repeats=args.repeats)
        with context.Pool(1) as pool:
            result = pool.apply(_measure, (spec,))
        seconds = f"{result['seconds'] * 1e3:.0f}" if "seconds" in result else f"n/a ({result['error']})"
        peak = f"{result['peak_mb']:.0f}" if "seconds" in result else "n/a"
        print(f"| {mode} | {peak} | {seconds} |")


if __name__ == "__main__":
    main()
