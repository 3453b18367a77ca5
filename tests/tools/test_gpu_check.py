"""tools/gpu_check.py: its dry run (every step on CPU, the report the GPU run writes), the job runner's time
caps and failures, and the pieces that read the tools' output (pytest's junit XML, tables) and compute floors
and goals."""
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
from project_paths import REPO, import_script

from dinat_m2f.layers.neighborhood_attention import flex as na_flex

TOOL = REPO / "tools" / "gpu_check.py"
gpu_check = import_script(TOOL, "gpu_check")


def run_gpu_check(tmp_path, *args, timeout=3000):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    command = [sys.executable, str(TOOL), "--dry-run", "--out", str(tmp_path / "out"), "--work",
               str(tmp_path / "work"), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    return result, report


@pytest.mark.slow
def test_dry_run_writes_every_section_and_prints_the_table_last(tmp_path):
    result, report = run_gpu_check(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    sections = [key for key in report if key in gpu_check.SECTIONS or key == "goals"]
    assert sections == [*gpu_check.SECTIONS, "goals"]
    assert {report[name]["status"] for name in gpu_check.SECTIONS} == {"ok"}
    assert report["dry_run"] is True and report["machine"]["torch"]
    # Only what the device tool brings back: a few files directly under --out.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cuda_tests.xml", "gpu_check.json", "steps.log"]

    ceilings = report["ceilings"]
    assert ceilings["bf16_matmul"]["flop_per_s"] > 0 and ceilings["copy"]["bytes_per_s"] > 0

    # The suite's CUDA tests through pytest: here, without a GPU, every one collected and skipped.
    tests = report["cuda_tests"]
    assert tests["summary"]["tests"] == len(tests["results"]) > 100
    assert tests["summary"]["skipped"] == len(tests["results"]) and tests["summary"]["failed"] == 0
    assert {r["test"].split("::")[0] for r in tests["results"]} == {
        "tests.layers.test_na_backends", "tests.layers.test_na_cuda"}
    assert all(r["message"] == "needs a CUDA GPU" for r in tests["results"])

    no_flex = na_flex.flex_unavailable("cpu")
    rows = report["na_benchmark"]["rows"]
    measured = [r for r in rows if r.get("forward_s")]
    assert {r["backend"] for r in measured} == {"tiled", "gather"} | ({"flex"} if no_flex is None else set())
    # No measured time beats its memory floor; rows too small for the window are recorded with the error.
    assert all(r["forward_x_memory_floor"] > 1 for r in measured)
    assert any("error" in r for r in rows)

    runs = {run["run"]: run for run in report["model_benchmark"]["runs"]}
    eager = runs["eager, batch 4, and the training step"]["rows"]
    assert [row["run"] for row in eager] == ["inference", "training step"]
    assert eager[0]["images_per_s"] > 0 and eager[1]["seconds"] > 0 and eager[1]["peak_mb"] >= 0
    assert runs["compiled, batch 4"]["status"] == "not run"

    train = report["train_run"]
    assert train["iterations"] == 4 and train["losses_finite"] and train["autocast_logged"]
    assert train["na_backends_logged"] == ["tiled (cpu, torch.bfloat16)"]
    assert {"PQ", "SQ", "RQ"} <= set(train["eval"]["panoptic_seg"]) and "mIoU" in train["eval"]["sem_seg"]

    checkpointing = {(row["part"], row["activation checkpointing"]): row for row in report["checkpointing"]["rows"]}
    assert sorted(checkpointing) == [("backbone", "off"), ("backbone", "on"), ("whole model", "off"),
                                     ("whole model", "on")]
    for part in ("backbone", "whole model"):
        assert float(checkpointing[part, "on"]["kept for backward MB"]) < float(checkpointing[part, "off"]["kept for backward MB"])

    goals = {g["goal"].split(",")[0]: g for g in report["goals"]}
    assert goals["training step peak memory GB"]["met"] is True
    assert goals["inference images/s"]["value"] == eager[0]["images_per_s"]

    lines = result.stdout.strip().splitlines()
    assert lines[-len(gpu_check.RUN_ORDER) - 2].startswith("| step | status | seconds |")
    assert lines[-1].startswith("| checkpointing | ok |")


def test_a_stopped_or_failing_step_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "MIN_JOB_SECONDS", 0.5)

    def sleeping(runner):
        job, _ = runner.run("ceilings", [sys.executable, "-c", "import time; time.sleep(60)"])
        return {"status": job["status"], "error": job["error"], "job": job}

    def broken(runner):
        raise KeyError("no such row")

    monkeypatch.setattr(gpu_check, "step_ceilings", sleeping)
    monkeypatch.setattr(gpu_check, "step_cuda_tests", broken)
    monkeypatch.setattr(gpu_check, "step_train_run", lambda runner: {"status": "ok", "iterations": 4})
    out = tmp_path / "out"
    start = time.monotonic()
    code = gpu_check.main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
                           "--steps", "train_run,cuda_tests,ceilings", "--cap", "ceilings=1"])
    assert code == 1 and time.monotonic() - start < 30
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ceilings"]["status"] == "timeout"
    assert report["ceilings"]["error"] == "stopped at its time cap of 1 s"
    assert report["cuda_tests"]["status"] == "failed" and report["cuda_tests"]["error"] == "KeyError: 'no such row'"
    assert report["train_run"] == {"status": "ok", "iterations": 4, "seconds": report["train_run"]["seconds"]}
    assert "===== ceilings" in (out / "steps.log").read_text()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:] == [line for line in lines[-3:] if line.startswith("| ")]
    assert [line.split(" | ")[:2] for line in lines[-3:]] == [["| ceilings", "timeout"], ["| cuda_tests", "failed"],
                                                              ["| train_run", "ok"]]


def test_bad_arguments_are_named(tmp_path):
    for args, message in ((["--steps", "ceilings,gpu_speed"], "gpu_speed"),
                          (["--cap", "train_run=ten"], "train_run=ten")):
        result = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path), *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_JOB_SECONDS", 0.5)
    (tmp_path / "steps.log").write_text("")
    return gpu_check.Runner(dry_run=True, out=tmp_path, work=tmp_path, deadline=time.monotonic() + 60,
                            caps={"ceilings": 2})


def test_runner_records_a_failing_job_with_its_exception(runner, tmp_path):
    job, output = runner.run("ceilings", [sys.executable, "-c", "print('working'); raise ValueError('boom 3')"])
    assert job["status"] == "failed" and job["returncode"] == 1
    assert job["error"] == "ValueError: boom 3"
    assert "working" in output and "ValueError: boom 3" in (tmp_path / "steps.log").read_text()


def test_runner_kills_the_whole_process_group_at_the_cap(runner, tmp_path):
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(120)")
    start = time.monotonic()
    job, _ = runner.run("ceilings", [sys.executable, "-c", script, str(pid_file)])
    assert job["status"] == "timeout" and time.monotonic() - start < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the killed child is reaped by init shortly after
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_runner_skips_a_job_when_the_budget_is_spent(runner):
    runner.deadline = time.monotonic() + 20
    runner.reserve = 30  # the later steps' share
    job, output = runner.run("ceilings", [sys.executable, "-c", "pass"])
    assert job["status"] == "skipped" and "budget" in job["error"] and output == ""


def test_na_floors_count_bytes_and_flops():
    row = {"dtype": "bfloat16", "batch": 1, "heads": 6, "height": 256, "width": 256, "kernel": 11,
           "forward_s": 1e-3, "train_s": 4e-3}
    ceilings = {"copy": {"bytes_per_s": 4e12}, "bf16_matmul": {"flop_per_s": 8e14}}
    floors = gpu_check.na_floors(row, ceilings)
    elements = 6 * 256 * 256 * 32
    assert floors["forward_memory_floor_s"] == pytest.approx(4 * 2 * elements / 4e12)
    assert floors["train_memory_floor_s"] == pytest.approx(12 * 2 * elements / 4e12)
    assert floors["forward_compute_floor_s"] == pytest.approx(4 * 121 * elements / 8e14)
    assert floors["forward_x_memory_floor"] == pytest.approx(1e-3 / floors["forward_memory_floor_s"])
    assert gpu_check.na_floors({**row, "forward_s": None}, {})["forward_x_memory_floor"] is None


def test_benchmark_model_tables_are_read_by_their_headers():
    output = """config: 219.9M parameters, torch 2.11, cuda (NVIDIA H200)
| run | backend | input | precision | time | throughput | peak memory MB |
|---|---|---|---|---|---|---|
W1201 a warning printed in between
| inference | flex | 4 x 800x1216 | bfloat16 | 0.040 s/image | 25.00 images/s | 9120 |
| training step | flex | 2 x 1024x1024 | bfloat16 | 0.812 s/iter | 2.46 images/s | 30517 |
"""
    rows = gpu_check.parse_markdown_table(output.splitlines())
    assert [r["run"] for r in rows] == ["inference", "training step"]
    assert rows[0]["backend"] == "flex" and rows[0]["images_per_s"] == 25.0 and rows[0]["seconds"] == 0.04
    assert rows[1]["peak_mb"] == 30517 and rows[1]["seconds"] == 0.812
    assert gpu_check.parse_markdown_table(["Traceback (most recent call last):", "RuntimeError: no"]) == []


def test_detectron2_copypaste_results_are_read():
    lines = ["[d2.evaluation.testing]: copypaste: Task: panoptic_seg",
             "[d2.evaluation.testing]: copypaste: PQ,SQ,RQ", "[d2.evaluation.testing]: copypaste: 41.5,70.1,50.0",
             "[d2.evaluation.testing]: copypaste: Task: segm", "copypaste: AP,APl", "copypaste: 12.0,nan"]
    results = gpu_check.parse_copypaste(lines)
    assert results["panoptic_seg"] == {"PQ": 41.5, "SQ": 70.1, "RQ": 50.0}
    assert results["segm"]["AP"] == 12.0 and math.isnan(results["segm"]["APl"])
    assert gpu_check._finite(results)["segm"]["APl"] == "nan"


def test_goals_are_measured_against_the_issue_targets():
    def row(backend, train_s, floor_multiple=None):
        return {"image": "1024x1024", "backend": backend, "heads": 6, "height": 256, "width": 256, "dilation": 14,
                "train_s": train_s, "train_x_memory_floor": floor_multiple}

    report = {"na_benchmark": {"rows": [row("flex", 2e-3, 25.0), row("gather", 30e-3), row("tiled", 9e-3)]},
              "model_benchmark": {"runs": [{"run": "compiled, batch 4", "rows": [
                  {"run": "inference", "input": "4 x 800x1216", "images_per_s": 21.0},
                  {"run": "training step", "input": "2 x 1024x1024", "peak_mb": 41000.0}]}]}}
    goals = gpu_check.goals(report)
    natten, gather, floor, inference, memory = goals
    assert natten["met"] is None and natten["note"] == "NATTEN not importable here"
    assert gather["value"] == pytest.approx(15) and gather["met"] is True
    assert floor["value"] == 25.0 and floor["met"] is False
    assert inference["goal"].startswith("inference images/s, compiled") and inference["met"] is True
    assert memory["value"] == pytest.approx(41000 * 2**20 / 1e9) and memory["met"] is False


def test_cuda_test_files_are_the_files_with_cuda_tests():
    marked = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
                    if re.search(r"pytest\.mark\.cuda\b", path.read_text()))
    assert marked == sorted(gpu_check.CUDA_TEST_FILES)


def test_junit_reports_are_read_with_outcomes_messages_and_recorded_properties(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(record_property):\n    record_property('rel_error_out', 0.004)\n"
        "    record_property('dtype', 'bfloat16')\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='needs a CUDA GPU')\ndef test_skipped():\n    pass\n")
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_sample.py"),
                    f"--junitxml={report}", "-o", "junit_family=xunit1"], cwd=tmp_path, capture_output=True, timeout=120)
    results = {r["test"].rsplit("::", 1)[-1]: r for r in gpu_check.read_junit(report)}
    assert {name: r["outcome"] for name, r in results.items()} == {
        "test_ok": "passed", "test_bad": "failed", "test_skipped": "skipped"}
    assert results["test_ok"]["rel_error_out"] == 0.004 and results["test_ok"]["dtype"] == "bfloat16"
    assert "one is not two" in results["test_bad"]["message"]
    assert results["test_skipped"]["message"] == "needs a CUDA GPU"
