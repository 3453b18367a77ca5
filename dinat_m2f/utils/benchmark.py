"""What the benchmark tools (tools/benchmark_*.py) share: the code of another git revision to measure beside
this checkout's, best-of timing, memory readings (peak, and what autograd keeps for the backward) and random
inputs. Each tool keeps its own measurements and table.

This module needs only the standard library and torch: `extract_revision` writes it into the extracted package
too, so a worker measuring an older revision reads time and memory with the same instrument as this checkout's.
"""
from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import torch

__all__ = ["REPO", "best_time", "extract_revision", "limit_memory", "peak_memory_mb", "peak_resident_mb",
           "random_image", "reset_peak_memory", "resident_mb", "saved_for_backward", "training_input"]

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


def extract_revision(revision: str, paths: Sequence[str], folder: str | Path) -> Path:
    """`paths` (files or folders of the repository) as they are at git revision `revision`, extracted into
    `folder` with `git archive`: nothing in the checkout changes. When the dinat_m2f package is among them,
    this module is added to the extracted one (dinat_m2f/utils/benchmark.py). SystemExit names the revision
    git refuses."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, *paths], capture_output=True,
                                 check=True).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"--before {revision}: git archive failed: {error.stderr.decode().strip()}") from None
    folder = Path(folder)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    if "dinat_m2f" in paths:
        utils = folder / "dinat_m2f" / "utils"
        utils.mkdir(exist_ok=True)
        (utils / "__init__.py").touch()
        shutil.copyfile(__file__, utils / "benchmark.py")
    return folder


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Best wall time and best CPU time (the process's, all threads: competing processes inflate it less) of
    `repeats` calls of `fn`, after `warmup` untimed calls (plans, kernels, caches). `fn` synchronizes a GPU
    itself where it uses one."""
    for _ in range(warmup):
        fn()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu


def limit_memory(fraction: float = 0.75) -> None:
    """Make an allocation beyond this share of the RAM a MemoryError / RuntimeError in this process (a row
    the table marks n/a) rather than a call for the kernel's OOM killer."""
    limit = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * fraction)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def resident_mb() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_resident_mb() -> float:
    """This process's peak resident memory. On Linux from /proc (VmHWM): ru_maxrss of a spawned worker also
    counts its parent's resident memory at the fork before the exec."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: torch.device) -> float:
    """Start a peak reading on `device`: CUDA's peak statistics are reset. Returns what `peak_memory_mb`
    reads now (allocated on CUDA, the resident peak so far on CPU), the base to subtract for a growth."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """The peak on `device`: memory allocated by tensors on CUDA (since `reset_peak_memory`), or the whole
    process's peak resident memory on CPU (weights, runtime and activations)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return peak_resident_mb()


def saved_for_backward(run: Callable[[], T], exclude: Iterable[torch.Tensor] = ()) -> tuple[T, int]:
    """`run()`'s result and the bytes of the tensors autograd keeps for its backward while it runs: each
    storage once, those of `exclude` (e.g. the parameters, kept anyway) left out. Blocks under activation
    checkpointing keep only their inputs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    return result, sum(size for pointer, size in storages.items() if pointer not in excluded)


def random_image(height: int, width: int, device: torch.device) -> dict:
    """A detectron2 input dict with a random uint8 image."""
    return {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=device),
            "height": height, "width": width}


def training_input(size: int, num_classes: int, device: torch.device, objects: int = 6) -> dict:
    """A random size x size image with `objects` rectangles of random place and class as instance targets."""
    from detectron2.structures import Instances

    item = random_image(size, size, device)
    masks = torch.zeros(objects, size, size, dtype=torch.bool, device=device)
    for n in range(objects):
        y0, x0 = torch.randint(0, size // 2, (2,)).tolist()
        masks[n, y0:y0 + size // 3, x0:x0 + size // 4] = True
    instances = Instances((size, size))
    instances.gt_classes = torch.randint(0, num_classes, (objects,), device=device)
    instances.gt_masks = masks
    item["instances"] = instances
    return item
