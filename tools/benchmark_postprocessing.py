#!/usr/bin/env python
"""Benchmark Mask2Former's post-processing (MaskFormerPostProcessor: semantic + panoptic + instance results)
on generated network outputs, for this checkout and optionally an earlier git revision, in one run.

    python tools/benchmark_postprocessing.py                          # the default cases below
    python tools/benchmark_postprocessing.py --before HEAD~1          # also the code of another revision
    python tools/benchmark_postprocessing.py --case 200,133,800x1216,800x1216 --repeat 5
    python tools/benchmark_postprocessing.py --tasks all panoptic semantic   # only some results (see below)

A case is QUERIES,CLASSES,PADDEDxSIZE,OUTPUTxSIZE: the network's outputs for one image padded to PADDED (mask
logits at stride 4), results wanted at OUTPUT (the original image size at evaluation). Defaults: COCO panoptic
DiNAT-L at 640x640 (200 queries, 133 classes) and the synthetic model (20 queries, 5 classes, 128x128 test size)
on a 6000x6000 image. About a quarter of the queries are confident (softmax score ~0.97, so panoptic keeps them),
the others no-object; masks are smooth random blobs; the first 60% of the classes are things. --tasks gives the
task sets measured ("all", or tasks joined by commas: "panoptic", "instance,semantic"; MaskFormerPostProcessor's
`tasks`), each a row per case.

Each (case, revision) runs in a fresh process that may map --memory-limit GB more than it maps before the first
call, so a row that would need more fails with "over limit" instead of swapping a shared machine. --before REV
runs the package as it is at REV (`git archive` into a temporary folder; nothing in the repository changes),
the honest "before" row: the code users had. Time: wall and CPU time (the process's, all threads; competing
processes inflate it less) per call, median of --repeat calls after one warm-up call (none when --repeat is 1).
Peak memory: the process's peak resident memory minus its resident memory before the first call, i.e. what
post-processing added.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ["200,133,640x640,640x640", "20,5,128x128,6000x6000"]


def _size(text: str):
    height, width = text.lower().split("x")
    return int(height), int(width)


def _parse_case(text: str):
    try:
        queries, classes, padded, output = text.split(",")
        return int(queries), int(classes), _size(padded), _size(output)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--case {text!r}: expected QUERIES,CLASSES,HxW,HxW") from None


def _worker(args) -> None:
    """One case with the package under --package-root; prints one JSON line."""
    sys.path.insert(0, args.package_root)
    import torch
    from detectron2.data.catalog import Metadata

    from dinat_m2f.modeling.postprocessing import MaskFormerPostProcessor
    from dinat_m2f.utils.benchmark import peak_resident_mb, resident_mb  # a revision's folder has this checkout's

    torch.set_num_threads(args.threads)
    queries, classes, padded, output = _parse_case(args.case)
    things = {i: i for i in range(max(1, int(0.6 * classes)))}
    processor = MaskFormerPostProcessor(
        num_classes=classes, metadata=Metadata(name="benchmark", thing_dataset_id_to_contiguous_id=things),
        object_mask_threshold=0.8, overlap_threshold=0.8, sem_seg_postprocess_before_inference=True,
        semantic_on=True, panoptic_on=True, instance_on=True, test_topk_per_image=100)
    if args.tasks != "all":
        processor.tasks = args.tasks.split(",")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, queries, classes + 1, generator=generator)
    logits[..., -1] += 6.0
    confident = torch.arange(queries) % 4 == 0
    logits[0, confident, torch.randint(0, classes, (int(confident.sum()),), generator=generator)] += 10.0
    coarse = torch.randn(1, queries, padded[0] // 16, padded[1] // 16, generator=generator)
    masks = 4 * torch.nn.functional.interpolate(coarse, size=(padded[0] // 4, padded[1] // 4), mode="bilinear")
    image_size = padded

    def call():
        with torch.no_grad():
            return processor(logits, masks, [image_size], [output], padded)

    with open("/proc/self/status") as status:
        mapped_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = mapped_kb * 1024 + int(args.memory_limit * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    before_mb = resident_mb()
    wall, cpu = [], []
    try:
        for i in range(args.repeat + (args.repeat > 1)):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            result = call()
            if i or args.repeat == 1:
                wall.append(time.perf_counter() - start_wall)
                cpu.append(time.process_time() - start_cpu)
            del result
    except (MemoryError, RuntimeError) as error:
        if "alloc" not in str(error) and not isinstance(error, MemoryError):
            raise
        print(json.dumps({"error": f"over limit ({args.memory_limit:g} GB)"}))
        return
    peak_mb = peak_resident_mb()
    print(json.dumps({"wall": statistics.median(wall), "cpu": statistics.median(cpu), "peak_mb": peak_mb - before_mb}))


def _run(case: str, tasks: str, package_root: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", "--case", case, "--tasks", tasks, "--package-root", package_root,
               "--repeat", str(args.repeat), "--threads", str(args.threads), "--memory-limit", str(args.memory_limit)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": package_root})
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"failed: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", metavar="Q,K,HxW,HxW",
                        help=f"a case (repeatable); default: {' '.join(DEFAULT_CASES)}")
    parser.add_argument("--before", metavar="REV", help="also run the package as it is at this git revision")
    parser.add_argument("--tasks", nargs="+", default=["all"],
                        help="task sets: 'all' or tasks joined by commas (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per row (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--memory-limit", type=float, default=8.0, help="memory a row may add, GB (default 8)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--package-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.case or DEFAULT_CASES
    for case in cases:
        try:
            _parse_case(case)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    if args.worker:
        args.case, args.tasks = cases[0], args.tasks[0]
        _worker(args)
        return
    revisions = [("this checkout", str(ROOT))]
    with tempfile.TemporaryDirectory() as before_root:
        if args.before:
            sys.path.insert(0, str(ROOT))
            from dinat_m2f.utils.benchmark import extract_revision

            extract_revision(args.before, ["dinat_m2f"], before_root)
            revisions.insert(0, (args.before, before_root))
        print(f"Post-processing, {args.threads} threads, {_cpu_name()}, torch {_torch_version()}\n")
        print("| queries | classes | padded size | output size | tasks | code | wall s | CPU s | peak memory MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for case in cases:
            queries, classes, padded, output = case.split(",")
            for tasks in args.tasks:
                for name, package_root in revisions:
                    row = _run(case, tasks, package_root, args)
                    if "error" in row:
                        cells = f"{row['error']} | | "
                    else:
                        cells = f"{row['wall']:.3f} | {row['cpu']:.3f} | {row['peak_mb']:.0f}"
                    print(f"| {queries} | {classes} | {padded} | {output} | {tasks} | {name} | {cells} |", flush=True)


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return names[0] if names else platform.machine()


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
