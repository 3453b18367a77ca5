"""tools/benchmark_checkpointing.py on the synthetic config: one row per setting, checkpointing keeping less for
the backward; a row whose step failed still shows what its forward kept."""
import subprocess
import sys

from project_paths import REPO, import_script

benchmark_checkpointing = import_script(REPO / "tools" / "benchmark_checkpointing.py", "benchmark_checkpointing")


def test_backbone_rows_with_and_without_checkpointing_alternated():
    command = [sys.executable, str(REPO / "tools" / "benchmark_checkpointing.py"), "--config-file",
               "configs/synthetic/panoptic/dinat_mini.yaml", "--size", "96", "--parts", "backbone", "--threads", "1",
               "--rounds", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith(("| 1 | backbone |", "| 2 | backbone |"))]
    assert [(cells[0], cells[2]) for cells in rows] == [("1", "off"), ("1", "on"), ("2", "off"), ("2", "on")]
    kept = [float(cells[3]) for cells in rows]
    assert kept[0] == kept[2] and kept[1] == kept[3]  # the same graph each round
    assert 0 < kept[1] <= kept[0] and float(rows[0][6]) == 1 and float(rows[1][6]) < 0.7  # kept, on / off


def test_a_failed_step_keeps_the_forwards_reading():
    off = {"kept_mb": 100.0, "peak_mb": 150.0, "step_s": 2.0}
    failed = {"kept_mb": 40.0, "error": "out of memory"}
    assert benchmark_checkpointing._cells(failed, off) == ["40", "n/a", "n/a (out of memory)", "0.40", "n/a"]
    assert benchmark_checkpointing._cells(off, off) == ["100", "150", "2.00", "1.00", "1.00"]
