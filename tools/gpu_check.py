#!/usr/bin/env python
"""The GPU check in one prepared run: the suite's CUDA tests, neighborhood attention's kernels and the whole
model timed beside the machine's measured ceilings, activation checkpointing measured, and a real training run.
Writes gpu_check.json (sections ceilings, cuda_tests, na_benchmark, model_benchmark, checkpointing, train_run,
then the goals) under --out and prints a table last.

    python tools/gpu_check.py --out DIR             # on a CUDA machine (at most 6 minutes: --budget)
    python tools/gpu_check.py --dry-run --out DIR   # every step on CPU, tiny shapes (2 minutes of CPU time)
    python tools/gpu_check.py --out DIR --steps cuda_tests,model_benchmark   # a re-run of some steps

Steps, in the order they run (each job in its own process group with a time cap; a job that fails or runs out
of time is recorded with its error and the run goes on; --budget bounds the whole run, keeping 30 s for each
later step):
  ceilings         the machine (GPU, driver, torch, triton) and its measured ceilings: an 8192^3 bf16 matrix
                   product (TFLOP/s) and a 2 GiB device-to-device copy (GB/s, bytes read plus written)
  cuda_tests       the test suite's tests marked `cuda` (pytest -m cuda over CUDA_TEST_FILES): among them
                   tests/layers/test_na_cuda.py, every neighborhood-attention backend forward + backward in
                   float32, bfloat16 and float16 against the float64 tiled op at every DiNAT-L layer shape at
                   800x1333 and 1024x1024; each test's outcome, time and recorded relative errors come from
                   pytest's junit XML (a dry run on a machine without CUDA: every one skipped)
  train_run        train_net.py on configs/synthetic/panoptic/dinat_mini.yaml on CUDA in bf16 autocast,
                   200 iterations, then --eval-only of its model_final.pth: finite losses, PQ, AP, mIoU
  na_benchmark     tools/benchmark_na.py --device cuda --dtypes bfloat16 --backends tiled,flex,gather
                   --image 1024,800x1216 --one-process; each time also as a multiple of its memory floor
                   (q, k, v, out moved once at the measured copy bandwidth; fwd+bwd adds grad_out, dq, dk, dv
                   and the backward's second read of q, k, v, out) and of its arithmetic floor
  model_benchmark  tools/benchmark_model.py, DiNAT-L COCO panoptic at 800x1216 in bf16: inference at batch 4
                   and 1, eager and compiled (images/s, peak memory), and the training step on 2 LSJ
                   1024x1024 images (s/step, peak memory)
  checkpointing    tools/benchmark_checkpointing.py, DiNAT-L at 1024x1024 in bf16: the memory autograd keeps for
                   the backward, the peak and the step time of the backbone alone and of the whole model's
                   training step at batch 1, with and without MODEL.BACKBONE.ACTIVATION_CHECKPOINTING

On the GPU machine this project is lent (one H200, Python 3.12, torch 2.11 + CUDA 13, no network, none of
detectron2, fvcore, iopath, yacs, pycocotools, omegaconf, panopticapi), after `bash tools/gpu_check_prepare.sh`
here, the device tool's run, with carry [".gpu_check"] and timeout_s 420:

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --target /tmp/site .gpu_check/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/.gpu_check/src:$PWD
    PYTHONUNBUFFERED=1 && python3 tools/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log

(one line). It writes four files back: gpu_check.json, steps.log (every job's output), cuda_tests.xml
(pytest's junit report) and gpu_check.log.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SECTIONS = ("ceilings", "cuda_tests", "na_benchmark", "model_benchmark", "checkpointing", "train_run")
RUN_ORDER = ("ceilings", "cuda_tests", "train_run", "na_benchmark", "model_benchmark", "checkpointing")
# The test files holding tests marked `cuda` (tests/tools/test_gpu_check.py checks the list against the suite):
# only these are collected, since the GPU machine lacks what other test files import (timm, onnx, ...).
CUDA_TEST_FILES = ("tests/layers/test_na_backends.py", "tests/layers/test_na_cuda.py")
OUTCOMES = ("passed", "failed", "skipped")
DEFAULT_BUDGET = {"gpu": 360.0, "dry": 3000.0}
RESERVE_PER_STEP = 30.0  # seconds kept for each later step
MIN_JOB_SECONDS = 10.0  # a job given less than this is skipped
# Time caps of the jobs, seconds: (on the GPU, in a dry run). A dry run's caps only stop a runaway job: on a
# shared 2-core machine its jobs take up to ten times as long as on a quiet one.
CAPS = {
    "ceilings": (45, 600),
    "cuda_tests": (110, 600),
    "train_run": (100, 600),
    "eval_run": (50, 600),
    "na_benchmark": (90, 600),
    "model_benchmark": (80, 600),
    "checkpointing": (90, 600),
}
SYNTHETIC = "configs/synthetic/panoptic/dinat_mini.yaml"
# A tiny model on tiny images for the dry run's training run (seconds on 2 CPU cores).
TINY_MODEL = [
    "MODEL.DINAT.EMBED_DIM", "16", "MODEL.DINAT.DEPTHS", "[1, 1, 1, 1]", "MODEL.DINAT.NUM_HEADS", "[1, 1, 2, 2]",
    "MODEL.DINAT.KERNEL_SIZE", "3", "MODEL.DINAT.DILATIONS", "[[2], [1], [1], [1]]",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "INPUT.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
]


# --- running jobs under a budget ------------------------------------------------------------------------------

@dataclass
class Runner:
    """Runs each job as a subprocess of its own process group, killed at its time cap; logs to steps.log."""
    dry_run: bool
    out: Path
    work: Path
    deadline: float
    caps: dict
    reserve: float = 0.0  # seconds kept for the steps after the current one

    def cap(self, job: str) -> float:
        return float(self.caps.get(job, CAPS[job][1 if self.dry_run else 0]))

    def run(self, job: str, argv: list[str], env: dict | None = None) -> tuple[dict, str]:
        """(record of the job: command, status, seconds, error, output tail; its whole output)."""
        timeout = min(self.cap(job), self.deadline - time.monotonic() - self.reserve)
        record: dict = {"command": shlex.join(argv)}
        if timeout < MIN_JOB_SECONDS:
            record.update(status="skipped", error="out of the time budget (--budget)")
            return record, ""
        environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        start = time.monotonic()
        with tempfile.TemporaryFile(mode="w+", errors="replace") as output:
            process = subprocess.Popen(argv, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            _kill_group(process)  # also what it left running (pool workers, compile workers, data loaders)
            output.seek(0)
            text = output.read()
        seconds = time.monotonic() - start
        status = "timeout" if returncode is None else "ok" if returncode == 0 else "failed"
        with open(self.out / "steps.log", "a") as log:
            log.write(f"\n===== {job}: {record['command']}\n===== {status}, rc {returncode}, {seconds:.1f} s\n")
            log.write(text[-1_000_000:])
        lines = text.rstrip().splitlines()
        record.update(status=status, returncode=returncode, seconds=round(seconds, 1), output_tail=lines[-25:])
        if status == "timeout":
            record["error"] = f"stopped at its time cap of {timeout:.0f} s"
        elif status == "failed":
            record["error"] = _last_error(lines) or f"exit code {returncode}"
        return record, text


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _last_error(lines: list[str]) -> str | None:
    """The exception line of the last traceback in a job's output, or its last line."""
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return line.strip()
    return lines[-1].strip() if lines else None


def _error(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}"


# --- the steps (run in this process; heavy work in subprocesses) ----------------------------------------------

def step_ceilings(runner: Runner) -> dict:
    return _worker_step(runner, "ceilings")


def step_cuda_tests(runner: Runner) -> dict:
    """pytest -m cuda over CUDA_TEST_FILES; the results from its junit XML (written next to gpu_check.json)."""
    report = runner.out / "cuda_tests.xml"
    report.unlink(missing_ok=True)
    argv = [PYTHON, "-m", "pytest", "-m", "cuda", *CUDA_TEST_FILES, "-p", "no:cacheprovider", "-q", "-rfE",
            f"--junitxml={report}", "-o", "junit_family=xunit1"]
    job, _ = runner.run("cuda_tests", argv)
    results = read_junit(report) if report.exists() else []
    counts = {outcome: sum(r["outcome"] == outcome for r in results) for outcome in OUTCOMES}
    section = {"status": job["status"], "job": job, "results": results, "summary": {"tests": len(results), **counts}}
    if job["status"] == "failed" and not counts["failed"]:  # pytest itself failed (collection, usage)
        section["error"] = job.get("error")
    elif counts["failed"]:
        section.update(status="failed", error=f"{counts['failed']} of {len(results)} tests failed")
    elif not runner.dry_run and not counts["passed"]:
        section.update(status="failed", error="no CUDA test ran (is the GPU visible to torch?)")
    elif job["status"] == "timeout":
        section["error"] = job["error"]
    return section


def read_junit(path: Path) -> list[dict]:
    """pytest's junit XML -> one record per test: its id, outcome, seconds, message and recorded properties."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        record = {"test": f"{case.get('classname')}::{case.get('name')}", "seconds": float(case.get("time", 0))}
        record["outcome"] = "passed"
        for outcome in ("failure", "error", "skipped"):
            found = case.find(outcome)
            if found is not None:
                record["outcome"] = "skipped" if outcome == "skipped" else "failed"
                record["message"] = (found.get("message") or found.text or "").strip().splitlines()[0][:300]
        for prop in case.iter("property"):
            value = prop.get("value")
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                pass  # strings stay strings
            record[prop.get("name")] = value
        results.append(record)
    return results


def step_checkpointing(runner: Runner) -> dict:
    """tools/benchmark_checkpointing.py: with and without activation checkpointing, its table's rows."""
    if runner.dry_run:
        args = ["--config-file", SYNTHETIC, "--device", "cpu", "--size", "64", "--threads", "2"]
    else:
        args = ["--device", "cuda", "--precision", "bfloat16", "--size", "1024", "--steps", "2"]
    job, output = runner.run("checkpointing", [PYTHON, "tools/benchmark_checkpointing.py", *args])
    rows = parse_markdown_table(output.splitlines())
    section = {"status": job["status"], "job": job, "rows": rows, **({"error": job["error"]} if "error" in job else {})}
    if job["status"] == "ok" and len(rows) != 4:
        section.update(status="failed", error=f"{len(rows)} rows instead of 4")
    return section


def _worker_step(runner: Runner, name: str) -> dict:
    """Runs `gpu_check.py --worker NAME` (in-process measurements); keeps what its part file holds even when
    the worker stopped part way."""
    part = runner.work / f"{name}.json"
    part.unlink(missing_ok=True)
    argv = [PYTHON, str(Path(__file__).resolve()), "--worker", name, "--part", str(part)]
    job, _ = runner.run(name, argv + (["--dry-run"] if runner.dry_run else []))
    section = json.loads(part.read_text()) if part.exists() else {}
    return {"status": job["status"], **({"error": job["error"]} if "error" in job else {}), "job": job, **section}


def step_na_benchmark(runner: Runner, ceilings: dict) -> dict:
    part = runner.work / "na_benchmark.json"
    part.unlink(missing_ok=True)
    backends = "tiled,flex,gather" + (",natten" if importlib.util.find_spec("natten") else "")
    if runner.dry_run:  # NATTEN's rows are the same code as the others (and NATTEN is not on the GPU machine)
        backends = "tiled,flex,gather"
        sizes = ["--device", "cpu", "--image", "64", "--no-reference-layer", "--repeats", "1", "--threads", "2"]
    else:
        sizes = ["--device", "cuda", "--image", "1024,800x1216", "--repeats", "5"]
    argv = [PYTHON, "tools/benchmark_na.py", *sizes, "--dtypes", "bfloat16", "--backends", backends,
            "--one-process", "--json", str(part)]
    job, _ = runner.run("na_benchmark", argv)
    rows = json.loads(part.read_text()) if part.exists() else []
    for row in rows:
        row.update(na_floors(row, ceilings))
    section = {"status": job["status"], "job": job, "rows": rows}
    if job["status"] == "ok" and not rows:
        section.update(status="failed", error="no rows")
    elif "error" in job:
        section["error"] = job["error"]
    return section


def na_floors(row: dict, ceilings: dict) -> dict:
    """Memory and arithmetic floors of one benchmark_na row, and its times as multiples of them."""
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[row["dtype"]]
    elements = row["batch"] * row["heads"] * row["height"] * row["width"] * 32
    # Forward: q, k, v read and out written once. Backward: q, k, v, out, grad_out read, dq, dk, dv written.
    moved = {"forward_s": 4 * elements * itemsize, "train_s": 12 * elements * itemsize}
    # Forward: q k^T and p v, 2 * k^2 * D multiply-adds per query; the backward does 5 such products.
    flops = {"forward_s": 4 * elements * row["kernel"] ** 2, "train_s": 14 * elements * row["kernel"] ** 2}
    bandwidth = ceilings.get("copy", {}).get("bytes_per_s")
    rate = ceilings.get("bf16_matmul", {}).get("flop_per_s")
    floors = {}
    for key, name in (("forward_s", "forward"), ("train_s", "train")):
        memory_s = moved[key] / bandwidth if bandwidth else None
        compute_s = flops[key] / rate if rate else None
        floors[f"{name}_memory_floor_s"] = memory_s
        floors[f"{name}_compute_floor_s"] = compute_s
        measured = row.get(key)
        floors[f"{name}_x_memory_floor"] = measured / memory_s if measured and memory_s else None
        floors[f"{name}_x_compute_floor"] = measured / compute_s if measured and compute_s else None
    return floors


MODEL_RUNS = (  # (name, arguments): the most wanted first, the budget may cut the last
    ("eager, batch 4, and the training step", ["--batch", "4", "--train"]),
    ("compiled, batch 4", ["--batch", "4", "--compile"]),
    ("eager, batch 1", ["--batch", "1"]),
    ("compiled, batch 1", ["--batch", "1", "--compile"]),
)
DRY_RUN_NO_COMPILE = ("not in a dry run: compiling the whole model takes minutes on 2 CPU cores "
                      "(tests/modeling/test_compile.py captures it with dynamo on CPU)")


def step_model_benchmark(runner: Runner) -> dict:
    if runner.dry_run:
        common = ["--config-file", SYNTHETIC, "--device", "cpu", "--size", "64", "64", "--images", "1",
                  "--train-size", "64", "--train-steps", "1", "--threads", "2"]
    else:
        common = ["--device", "cuda", "--size", "800", "1216", "--images", "5", "--train-size", "1024",
                  "--train-batch", "2", "--train-steps", "3"]
    runs = []
    for name, extra in MODEL_RUNS:
        if runner.dry_run and "--compile" in extra:
            runs.append({"run": name, "status": "not run", "rows": [], "note": DRY_RUN_NO_COMPILE})
            continue
        job, output = runner.run("model_benchmark", [PYTHON, "tools/benchmark_model.py", *common, "--precision",
                                                     "bfloat16", *extra])
        runs.append({"run": name, "status": job["status"], "rows": parse_markdown_table(output.splitlines()),
                     "job": job, **({"error": job["error"]} if "error" in job else {})})
    failed = [r["run"] for r in runs if r["status"] not in ("ok", "not run")]
    section = {"status": "ok" if not failed else "failed", "runs": runs}
    if failed:
        section["error"] = "not ok: " + "; ".join(failed)
    return section


def parse_markdown_table(lines: list[str]) -> list[dict]:
    """Rows of the last markdown table in `lines` as {header: cell}, plus the numbers read from the cells
    ("0.05 s/image" -> seconds, "20.1 images/s" -> images_per_s, "peak memory MB" -> peak_mb)."""
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    def is_rule(line: str) -> bool:
        return line.startswith("|") and all(cell and set(cell) <= set("-:") for cell in cells(line))

    rows: list[dict] = []
    header: list[str] | None = None
    for line, following in zip(lines, lines[1:] + [""]):
        if not line.startswith("|") or is_rule(line):
            continue
        if is_rule(following):  # a header line: a new table starts
            header, rows = cells(line), []
            continue
        if header is None:
            continue
        row = dict(zip(header, cells(line)))
        for key, value in list(row.items()):
            number = _leading_number(value)
            if number is None:
                continue
            if value.endswith(("s/image", "s/iter")):
                row["seconds"] = number
            elif value.endswith("images/s"):
                row["images_per_s"] = number
            elif key.startswith("peak memory"):
                row["peak_mb"] = number
        rows.append(row)
    return rows


def _leading_number(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def step_train_run(runner: Runner) -> dict:
    train_dir, eval_dir = runner.work / "train", runner.work / "eval"
    for folder in (train_dir, eval_dir):  # detectron2 appends to metrics.json
        shutil.rmtree(folder, ignore_errors=True)
    env = {"DETECTRON2_DATASETS": str(runner.work / "datasets")}
    if runner.dry_run:
        device = ["MODEL.DEVICE", "cpu", *TINY_MODEL, "DATALOADER.NUM_WORKERS", "0"]
        schedule = ["SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2"]
    else:  # data loading in the main process: nothing depends on the machine's shared memory
        device = ["MODEL.DEVICE", "cuda", "DATALOADER.NUM_WORKERS", "0"]
        schedule = ["SOLVER.MAX_ITER", "200"]
    base = [PYTHON, "train_net.py", "--config-file", SYNTHETIC]
    train, _ = runner.run("train_run", base + [*device, *schedule, "SOLVER.AMP.ENABLED", "True",
                                            "SOLVER.AMP.PRECISION", "bfloat16", "SOLVER.CHECKPOINT_PERIOD", "100000",
                                            "DATASETS.TEST", "()", "OUTPUT_DIR", str(train_dir)], env)
    section: dict = {"status": train["status"], "train_job": train, **read_training_metrics(train_dir)}
    log = _read(train_dir / "log.txt")
    section["autocast_logged"] = "autocast to torch.bfloat16" in log
    section["na_backends_logged"] = logged_na_backends(log)
    weights = train_dir / "model_final.pth"
    if train["status"] == "ok" and weights.exists():
        evaluation, _ = runner.run("eval_run", base + ["--eval-only", *device, "MODEL.WEIGHTS", str(weights),
                                                    "OUTPUT_DIR", str(eval_dir)], env)
        section["eval_job"] = evaluation
        log = _read(eval_dir / "log.txt")
        section["eval"] = parse_copypaste(log.splitlines())
        section["eval_na_backends_logged"] = logged_na_backends(log)
        if evaluation["status"] != "ok":
            section.update(status=evaluation["status"], error="--eval-only: " + evaluation.get("error", ""))
        elif "PQ" not in section["eval"].get("panoptic_seg", {}):
            section.update(status="failed", error="--eval-only printed no PQ")
    elif "error" in train:
        section["error"] = train["error"]
    if section["status"] == "ok" and not section.get("losses_finite"):
        section.update(status="failed", error="non-finite or missing losses in metrics.json")
    return section


def logged_na_backends(log: str) -> list[str]:
    """The neighborhood-attention backends a run logged (select_backend logs each choice once)."""
    marker = "neighborhood attention backend: "
    return sorted({line.split(marker, 1)[1].strip() for line in log.splitlines() if marker in line})


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def read_training_metrics(output_dir: Path) -> dict:
    """Iterations, loss values (finite?), first and last total loss and the median iteration time of a
    detectron2 run's metrics.json."""
    lines = [json.loads(line) for line in _read(output_dir / "metrics.json").splitlines() if line.strip()]
    losses = [value for m in lines for key, value in m.items() if key == "total_loss" or key.startswith("loss_")]
    totals = [m["total_loss"] for m in lines if "total_loss" in m]
    times = sorted(m["time"] for m in lines if "time" in m)
    return {"iterations": lines[-1]["iteration"] + 1 if lines else 0, "loss_values": len(losses),
            "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "first_total_loss": totals[0] if totals else None, "last_total_loss": totals[-1] if totals else None,
            "seconds_per_iteration": times[len(times) // 2] if times else None}


def parse_copypaste(lines: list[str]) -> dict:
    """detectron2's "copypaste:" result lines -> {task: {metric: value}}."""
    results: dict = {}
    rows = [line.split("copypaste: ", 1)[1].strip() for line in lines if "copypaste: " in line]
    for i, row in enumerate(rows):
        if row.startswith("Task: ") and i + 2 < len(rows):
            names, values = rows[i + 1].split(","), rows[i + 2].split(",")
            results[row[len("Task: "):]] = {n: _leading_number(v) for n, v in zip(names, values)}
    return results


# --- worker: in-process measurements ---------------------------------------------------------------------------

def _device(dry_run: bool):
    import torch

    return torch.device("cpu" if dry_run else "cuda")


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], object], device, warmup: int = 3, repeats: int = 10) -> float:
    """Median time of fn: CUDA events on the GPU, the host clock after a synchronize on CPU."""
    import torch

    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return sorted(times)[len(times) // 2]


def machine_info(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    for module in ("triton", "detectron2", "natten", "numpy"):
        try:
            info[module] = getattr(__import__(module), "__version__", "importable")
        except ImportError:
            info[module] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
        try:  # a read-only query: driver and the clocks as found
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            info["nvidia_smi"] = _error(error)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def measure_ceilings(dry_run: bool) -> dict:
    """bf16 matrix-product rate and device copy bandwidth, as MEASURED here (random data, medians)."""

    device = _device(dry_run)
    return {"machine": machine_info(device), "bf16_matmul": _matmul_rate(device, 256 if dry_run else 8192),
            "copy": _copy_bandwidth(device, (64 if dry_run else 2048) * 2**20)}


def _matmul_rate(device, n: int) -> dict:
    import torch

    left, right = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds = _median_seconds(lambda: torch.matmul(left, right), device)
    return {"n": n, "seconds": seconds, "flop_per_s": 2 * n**3 / seconds, "tflop_per_s": 2 * n**3 / seconds / 1e12}


def _copy_bandwidth(device, nbytes: int) -> dict:
    import torch

    source = torch.randn(nbytes // 4, device=device)
    target = torch.empty_like(source)
    seconds = _median_seconds(lambda: target.copy_(source), device)
    return {"buffer_bytes": nbytes, "seconds": seconds, "bytes_per_s": 2 * nbytes / seconds,
            "gb_per_s": 2 * nbytes / seconds / 1e9, "counted": "bytes read plus bytes written"}


def run_worker(name: str, dry_run: bool, part: Path) -> None:
    """The in-process step (ceilings), its section written to `part`."""
    write_json(part, measure_ceilings(dry_run))


def write_json(path: Path, data) -> None:
    """Whole or not at all: a job stopped while writing leaves the previous version."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


# --- goals and tables ----------------------------------------------------------------------------------------

def goals(report: dict) -> list[dict]:
    """The issue's goals, measured (never asserted): value, target and whether it is met (None: no value)."""
    rows = report.get("na_benchmark", {}).get("rows", [])
    images = [r["image"] for r in rows if r["image"] != "reference layer"]
    stage1 = {r["backend"]: r for r in rows if images and r["image"] == images[0] and r["heads"] == 6}
    flex, gather, natten = (stage1.get(name, {}) for name in ("flex", "gather", "natten"))
    where = f"{flex.get('height')}x{flex.get('width')} d={flex.get('dilation')}" if flex else "n/a"

    def ratio(a, b):
        return a / b if a and b else None

    found = [
        (f"flex fwd+bwd with RPB vs natten fused without RPB, stage 1 of {images[0] if images else 'n/a'} "
         f"({where})", ratio(flex.get("train_s"), natten.get("train_s")), "<=", 1.2,
         None if natten else "NATTEN not importable here"),
        ("gather fwd+bwd / flex fwd+bwd, same shape", ratio(gather.get("train_s"), flex.get("train_s")), ">=", 10,
         None),
        ("flex fwd+bwd as a multiple of its memory floor, same shape", flex.get("train_x_memory_floor"), "<=", 10,
         None),
    ]
    for run in report.get("model_benchmark", {}).get("runs", []):
        for row in run.get("rows", []):
            if row.get("run") == "inference" and row.get("input", "").startswith("4 x"):
                found.append((f"inference images/s, {run['run'].split(',')[0]}, batch 4, {row.get('input')}",
                              row.get("images_per_s"), ">=", 20, None))
            if row.get("run") == "training step" and "peak_mb" in row:
                found.append((f"training step peak memory GB, {row.get('input')}", row["peak_mb"] * 2**20 / 1e9,
                              "<=", 40, None))
    result = []
    for name, value, op, target, note in found:
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        result.append({"goal": name, "value": value, "target": f"{op} {target}", "met": met,
                       **({"note": note} if note else {})})
    return result


def table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def print_report(report: dict) -> None:
    machine = report.get("machine", {})
    print(f"\n# gpu_check{' (dry run, CPU)' if report['dry_run'] else ''}: {machine.get('gpu') or machine.get('cpu')}, "
          f"torch {machine.get('torch')}, CUDA {machine.get('cuda')}, triton {machine.get('triton')}, "
          f"{report.get('seconds')} s")
    ceilings = report.get("ceilings", {})
    if "copy" in ceilings:
        print(f"ceilings: bf16 matmul {ceilings['bf16_matmul']['tflop_per_s']:.1f} TFLOP/s "
              f"(n={ceilings['bf16_matmul']['n']}), copy {ceilings['copy']['gb_per_s']:.0f} GB/s (read + write)")
    tests = report.get("cuda_tests", {}).get("results", [])
    if tests:
        groups: dict = {}
        for r in tests:
            groups.setdefault((r["test"].split("[")[0].rsplit("::", 1)[-1], r.get("backend"), r.get("dtype")),
                              []).append(r)

        def worst(rs):
            errors = [value for r in rs for key, value in r.items() if key.startswith("rel_error_")]
            return max(errors, default=None)

        print("\n" + table(["cuda test", "backend", "dtype", "tests", "passed", "failed", "skipped",
                             "worst rel. error", "tolerance"], [
            [name, backend, dtype, len(rs), *(sum(r["outcome"] == o for r in rs) for o in OUTCOMES), worst(rs),
             rs[0].get("tolerance")] for (name, backend, dtype), rs in groups.items()]))
        for r in tests:
            if r["outcome"] == "failed":
                print(f"  FAILED {r['test']}: {r.get('message')}")
    rows = report.get("checkpointing", {}).get("rows", [])
    if rows:
        print("\n" + table(["activation checkpointing", "part", "kept for backward MB", "peak MB", "step s"], [
            [r.get("activation checkpointing"), r.get("part"), r.get("kept for backward MB"), r.get("peak MB"),
             r.get("step s")] for r in rows]))
    rows = report.get("na_benchmark", {}).get("rows", [])
    if rows:
        print("\n" + table(["image", "map", "heads", "d", "backend", "rpb", "fwd ms", "fwd x mem floor",
                            "fwd+bwd ms", "fwd+bwd x mem floor", "fwd+bwd x flop floor", "peak MB"], [
            [r["image"], f"{r['height']}x{r['width']}", r["heads"], r["dilation"], r["backend"], r["rpb"],
             _ms(r.get("forward_s")), r.get("forward_x_memory_floor"), _ms(r.get("train_s")),
             r.get("train_x_memory_floor"), r.get("train_x_compute_floor"), r.get("peak_mb")] for r in rows]))
    runs = report.get("model_benchmark", {}).get("runs", [])
    if runs:
        print("\n" + table(["benchmark_model", "run", "input", "time", "throughput", "peak MB"], [
            [run["run"], row.get("run"), row.get("input"), row.get("time"), row.get("throughput"), row.get("peak_mb")]
            for run in runs for row in run.get("rows") or [{"run": run["status"]}]]))
    train = report.get("train_run", {})
    if train:
        print(f"\ntrain_run: {train.get('iterations')} iterations, losses finite: {train.get('losses_finite')}, "
              f"total loss {train.get('first_total_loss')} -> {train.get('last_total_loss')}, "
              f"{train.get('seconds_per_iteration')} s/iteration, NA backends {train.get('na_backends_logged')}; "
              f"eval: {json.dumps(train.get('eval'))}")
    print("\n" + table(["goal", "value", "target", "met"],
                       [[g["goal"], g["value"], g["target"], g.get("note") or g["met"]] for g in report["goals"]]))
    print("\n" + table(["step", "status", "seconds", "error"], [
        [name, report[name]["status"], report[name].get("seconds"), report[name].get("error", "")]
        for name in RUN_ORDER if name in report]))


# --- main -----------------------------------------------------------------------------------------------------

def _caps(values: list[str]) -> dict:
    caps = {}
    for value in values:
        job, _, seconds = value.partition("=")
        if job not in CAPS or not seconds.replace(".", "", 1).isdigit():
            raise argparse.ArgumentTypeError(f"--cap: expected JOB=SECONDS with JOB one of {sorted(CAPS)}, "
                                             f"got {value!r}")
        caps[job] = float(seconds)
    return caps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("output/gpu_check"), help="where gpu_check.json goes")
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes")
    parser.add_argument("--steps", default=",".join(RUN_ORDER), help=f"comma-separated, of {', '.join(RUN_ORDER)}")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole run (default {DEFAULT_BUDGET['gpu']:.0f} on the GPU)")
    parser.add_argument("--cap", action="append", default=[], metavar="JOB=SECONDS",
                        help=f"time cap of a job, of {', '.join(CAPS)}")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--worker", choices=["ceilings"], help=argparse.SUPPRESS)
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.dry_run, args.part)
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(RUN_ORDER))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {', '.join(RUN_ORDER)}")
    try:
        caps = _caps(args.cap)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.log").write_text("")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget or DEFAULT_BUDGET["dry" if args.dry_run else "gpu"]
    started = time.monotonic()
    runner = Runner(dry_run=args.dry_run, out=args.out, work=work, deadline=started + budget, caps=caps)
    report: dict = {"dry_run": args.dry_run, "budget_s": budget, "steps": steps,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "work": str(work)}
    selected = [name for name in RUN_ORDER if name in steps]
    for index, name in enumerate(selected):
        runner.reserve = RESERVE_PER_STEP * (len(selected) - index - 1)
        start = time.monotonic()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            if name == "na_benchmark":
                section = step_na_benchmark(runner, report.get("ceilings", {}))
            else:
                section = globals()[f"step_{name}"](runner)
        except Exception as error:  # noqa: BLE001  (this tool's own fault: recorded, the run goes on)
            traceback.print_exc()
            section = {"status": "failed", "error": _error(error)}
        section["seconds"] = round(time.monotonic() - start, 1)
        if name == "ceilings":
            report["machine"] = section.pop("machine", {})
        report[name] = section
        print(f"[gpu_check] {name}: {section['status']} in {section['seconds']} s "
              f"{section.get('error', '')}", flush=True)
        _write(args.out, report)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["goals"] = goals(report)
    _write(args.out, report)
    print_report(report)
    return 0 if all(report[name]["status"] == "ok" for name in selected) else 1


def _write(out: Path, report: dict) -> None:
    """gpu_check.json with the sections in the issue's order, after each step (a stopped run keeps them)."""
    head = [key for key in report if key not in SECTIONS and key != "goals"]
    ordered = {key: report[key] for key in [*head, *SECTIONS, "goals"] if key in report}
    write_json(out / "gpu_check.json", _finite(ordered))


def _finite(value):
    """NaN and infinities as the strings "nan", "inf", "-inf", so that the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
