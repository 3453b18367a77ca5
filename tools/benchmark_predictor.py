#!/usr/bin/env python
"""Benchmark dinat_m2f.Predictor on a model of the zoo: what asking for fewer tasks saves.

    python tools/benchmark_predictor.py                                # coco/panoptic/dinat_l, 640x640, CPU
    python tools/benchmark_predictor.py --tasks all panoptic semantic instance --repeat 5
    python tools/benchmark_predictor.py --opts MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD 0.0

One random image of --size (smooth random blobs) is fed at its own size (the config's test resize is switched off,
so --size is what the network sees) to one Predictor, once per task set and round, the task sets alternated over
--repeat rounds after a warm-up call each (a shared machine's speed drifts; alternating keeps the rows
comparable). A task set is "all" or task names joined by commas ("panoptic", "instance,semantic"). Time: the
Predictor call's wall time and the post-processing's part of it (MaskFormer.inference), medians over the rounds.

Weights are random unless --weights is given; the network's time does not depend on them, post-processing's does:
a random class head makes hardly any query confident, so panoptic inference keeps almost none and costs its
least. `--opts MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD 0.0` keeps every query that is not no-object, its
most; a trained model on a photo lies between (tools/benchmark_postprocessing.py --tasks measures generated
outputs with a quarter of the queries confident).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when it is not installed
from dinat_m2f import Predictor, model_zoo  # noqa: E402


def _image(height: int, width: int) -> np.ndarray:
    """Smooth random blobs (noise upsampled), so that masks vary across the image."""
    noise = torch.rand(1, 3, max(2, height // 64), max(2, width // 64), generator=torch.Generator().manual_seed(0))
    return (F.interpolate(noise, (height, width), mode="bilinear")[0].permute(1, 2, 0) * 255).byte().numpy()


def _task_set(text: str) -> tuple | None:
    return None if text == "all" else tuple(text.split(","))


class _Timed:
    """Wraps a callable and records the wall time of each call."""

    def __init__(self, function):
        self.function, self.seconds = function, []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.function(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        return result


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="coco/panoptic/dinat_l", help="model of the zoo (default %(default)s)")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    parser.add_argument("--tasks", nargs="+", default=["all", "panoptic"],
                        help="task sets to compare: 'all' or tasks joined by commas (default: all panoptic)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: random weights)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = model_zoo.get_config(args.name)
    cfg.merge_from_list(["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", args.device, "INPUT.MIN_SIZE_TEST", "0",
                         *args.opts])
    predictor = Predictor(cfg)
    task_sets = [_task_set(text) for text in args.tasks]
    for tasks in task_sets:
        predictor.tasks = tasks  # an unknown task fails here, before any timing
    postprocessing = _Timed(predictor.model.inference)
    predictor.model.inference = postprocessing
    image = _image(*args.size)

    calls: dict = {text: [] for text in args.tasks}
    parts: dict = {text: [] for text in args.tasks}
    for round_ in range(args.repeat + 1):  # round 0 warms up
        for text, tasks in zip(args.tasks, task_sets):
            predictor.tasks = tasks
            start = time.perf_counter()
            outputs = predictor(image)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if round_:
                calls[text].append(time.perf_counter() - start)
                parts[text].append(postprocessing.seconds[-1])
            del outputs

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"{args.name}, {args.weights or 'random weights'}, {args.size[0]}x{args.size[1]}, {args.device} "
          f"({machine}), {args.threads} threads, torch {torch.__version__}, median of {args.repeat} rounds"
          + (f", {' '.join(args.opts)}" if args.opts else "") + "\n")
    print("| tasks | Predictor call s | post-processing s | rest (network, resize) s |")
    print("|---|---|---|---|")
    for text, tasks in zip(args.tasks, task_sets):
        predictor.tasks = tasks
        call, part = statistics.median(calls[text]), statistics.median(parts[text])
        print(f"| {', '.join(predictor.tasks)} | {call:.3f} | {part:.3f} | {call - part:.3f} |")


if __name__ == "__main__":
    main()
