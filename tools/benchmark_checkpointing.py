#!/usr/bin/env python
"""Activation checkpointing (MODEL.BACKBONE.ACTIVATION_CHECKPOINTING): the memory autograd keeps for the backward,
the peak memory and the time of a training step, with and without, for the backbone alone and the whole model.

    python tools/benchmark_checkpointing.py                   # CPU, float32: DiNAT-L, 1024x1024, batch 1
    python tools/benchmark_checkpointing.py --device cuda --precision bfloat16
    python tools/benchmark_checkpointing.py --config-file configs/synthetic/panoptic/dinat_mini.yaml --size 128

Rows, each in a fresh process (so that its peak memory is its own), random weights (memory and time do not
depend on them), --config-file's model (default DiNAT-L COCO panoptic) on a --size x --size input:
- backbone: forward and backward of the backbone alone on one random image (the loss is the mean square of
  its features);
- whole model: a training step of the model at batch 1 (forward with its losses, backward, AdamW step) on a
  random image with six random instances as targets, as an LSJ crop of --size.
Columns: "kept for backward" is the bytes of the tensors autograd saves in the forward for the backward (each
storage once, the parameters left out; checkpointed blocks keep their inputs only); "peak" is how much the
first step raised the peak (CPU: the process's resident high-water mark; CUDA: allocated memory above the
weights); "step" is the best of --steps further steps. On CPU freed memory is kept for reuse, as train_net.py runs
(dinat_m2f.engine.reuse_freed_memory): with glibc's defaults every step faults its activations in afresh, which
costs the setting that keeps more memory more time. --precision autocasts the forward as training does
(bfloat16 is the DiNAT-L recipe; on a CPU without bfloat16 units it is emulated and tens of times slower).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.utils.benchmark import (  # noqa: E402
    best_time, limit_memory, peak_memory_mb, reset_peak_memory, saved_for_backward, training_input,
)

PARTS = ("backbone", "whole model")


def _measure(spec: dict) -> dict:
    """One row: the part with checkpointing on or off (run in a fresh process)."""
    from detectron2.modeling import build_backbone, build_model

    import dinat_m2f  # noqa: F401  (registers the model, the backbones and the datasets the config names)
    from dinat_m2f.config import load_project_config
    from dinat_m2f.engine import reuse_freed_memory

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cpu":
        limit_memory(spec["memory_fraction"])
        reuse_freed_memory()
    cfg = load_project_config(spec["config_file"], [
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", spec["device"],
        "MODEL.BACKBONE.ACTIVATION_CHECKPOINTING", str(spec["checkpointing"])])
    autocast = torch.autocast(device.type, dtype=getattr(torch, spec["precision"]),
                              enabled=spec["precision"] != "float32")
    torch.manual_seed(0)
    size = spec["size"]
    if spec["part"] == "backbone":
        model = build_backbone(cfg).to(device).train()
        image = torch.randn(1, 3, size, size, device=device)
        optimizer = None

        def loss():
            with autocast:
                return sum(feature.float().square().mean() for feature in model(image).values())
    else:
        model = build_model(cfg).train()
        batch = [training_input(size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def loss():
            with autocast:
                return sum(model(batch).values())

    def finish(value: torch.Tensor) -> None:
        value.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    result = {"activation_checkpointing": model.backbone.activation_checkpointing if optimizer else
              model.activation_checkpointing}
    try:
        base = reset_peak_memory(device)
        value, kept = saved_for_backward(loss, exclude=model.parameters())
        result["kept_mb"] = kept / 2 ** 20
        finish(value)
        del value
        result["peak_mb"] = peak_memory_mb(device) - base
        result["step_s"] = best_time(lambda: finish(loss()), spec["steps"], warmup=0)[0]
    except (RuntimeError, MemoryError) as error:  # out of memory: the row says so
        result["error"] = str(error).splitlines()[0][:120]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/coco/panoptic/dinat_l.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", type=int, default=1024, help="input height and width (default 1024: LSJ)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=1, help="timed steps after the first (default 1)")
    parser.add_argument("--settings", default="off,on", help="activation checkpointing settings to run: off,on")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the settings this many times, their order alternated: on a shared machine whose "
                             "speed drifts, each round's rows are what compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-fraction", type=float, default=0.75,
                        help="CPU: share of the RAM a row may map before it fails as out of memory")
    args = parser.parse_args()
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    settings = {"off": False, "on": True}
    if not args.settings or set(args.settings.split(",")) - set(settings):
        parser.error(f"--settings: expected off, on or off,on, got {args.settings!r}")
    enabled = [settings[name] for name in settings if name in args.settings.split(",")]

    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{args.config_file}, {args.size}x{args.size}, batch 1, {args.precision}, torch {torch.__version__}, "
          f"{args.device} ({where}), {args.threads} CPU threads, best of {args.steps} step(s) after the first")
    print("| round | part | activation checkpointing | kept for backward MB | peak MB | step s | kept / off "
          "| step / off |")
    print("|---|---|---|---|---|---|---|---|")
    context = mp.get_context("spawn")
    for part in parts:
        for number in range(args.rounds):
            rows = {}
            for checkpointing in (enabled if number % 2 == 0 else enabled[::-1]):
                spec = dict(vars(args), part=part, checkpointing=checkpointing)
                with context.Pool(1) as pool:
                    rows[checkpointing] = pool.apply(_measure, (spec,))
                assert rows[checkpointing]["activation_checkpointing"] is checkpointing
            for checkpointing in enabled:
                cells = _cells(rows[checkpointing], rows.get(False, {}))
                print(f"| {number + 1} | {part} | {'on' if checkpointing else 'off'} | " + " | ".join(cells) + " |",
                      flush=True)


def _cells(row: dict, off: dict) -> list[str]:
    """A row's measurements and its ratios to the row without checkpointing; n/a for what a failure left out
    (the forward's kept bytes are measured before the backward that may run out of memory)."""
    def number(result: dict, key: str, digits: int) -> str:
        return f"{result[key]:.{digits}f}" if key in result else "n/a"

    def ratio(key: str) -> str:
        return f"{row[key] / off[key]:.2f}" if key in row and key in off else "n/a"

    cells = [number(row, "kept_mb", 0), number(row, "peak_mb", 0), number(row, "step_s", 2), ratio("kept_mb"),
             ratio("step_s")]
    if "error" in row:
        cells[2] = f"n/a ({row['error']})"
    return cells


if __name__ == "__main__":
    main()
