"""tools/benchmark_model.py --before: the eager model of a git revision (its own package and configs, archived
into a temporary folder) against this checkout's, alternated in fresh processes, with the allocator each ran."""
import os
import subprocess
import sys

import pytest
from project_paths import REPO, import_script

benchmark_model = import_script(REPO / "tools" / "benchmark_model.py", "benchmark_model")

pytestmark = pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")


def test_before_times_a_revisions_model_beside_this_checkouts():
    command = [sys.executable, str(REPO / "tools" / "benchmark_model.py"), "--before", "HEAD", "--rounds", "2",
               "--config-file", "configs/synthetic/panoptic/dinat_mini.yaml", "--size", "64", "64", "--images", "1",
               "--threads", "1"]
    env = {key: value for key, value in os.environ.items() if key != benchmark_model.PACKAGE_ROOT_ENV}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    rounds = [line.split(" | ") for line in lines if line[2].isdigit()]
    # Alternated: the revision first in odd rounds, this checkout first in even ones; each names its allocator.
    assert [(cells[0], cells[1]) for cells in rounds] == [
        ("| 1", "HEAD"), ("| 1", "this checkout"), ("| 2", "this checkout"), ("| 2", "HEAD")]
    assert all(cells[-1] == "freed memory reused |" for cells in rounds)
    summary = [line for line in lines if line.startswith(("| HEAD |", "| this checkout |"))]
    assert len(summary) == 2 and all("s/image" in line for line in summary)
