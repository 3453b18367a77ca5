"""dinat_m2f.utils.benchmark, the benchmark tools' shared instrument: a git revision's files extracted (with
this module added to its package), best-of timing, memory readings."""
import subprocess
import sys
import time

import pytest
from project_paths import REPO

from dinat_m2f.utils import benchmark


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_a_revision_is_extracted_with_this_module_added_and_an_unknown_one_is_named(tmp_path):
    folder = benchmark.extract_revision("HEAD", ["dinat_m2f", "configs/synthetic"], tmp_path)
    committed = subprocess.run(["git", "-C", str(REPO), "show", "HEAD:dinat_m2f/config.py"], capture_output=True,
                               text=True, check=True).stdout
    assert (folder / "dinat_m2f" / "config.py").read_text() == committed
    assert (folder / "configs" / "synthetic" / "Base-Synthetic.yaml").exists() and not (folder / "tools").exists()
    assert (folder / "dinat_m2f" / "utils" / "benchmark.py").read_text() == (REPO / "dinat_m2f/utils/benchmark.py").read_text()
    with pytest.raises(SystemExit, match="--before no-such-revision: git archive failed"):
        benchmark.extract_revision("no-such-revision", ["dinat_m2f"], tmp_path / "other")


def test_best_time_is_the_fastest_call_after_the_warm_up():
    durations = iter([0.05, 0.03, 0.01, 0.02])
    calls = []

    def sleep():
        calls.append(1)
        time.sleep(next(durations))

    wall, cpu = benchmark.best_time(sleep, repeats=3)
    assert len(calls) == 4 and 0.01 <= wall < 0.02 and cpu < wall  # the 0.05 s warm-up is not counted


def test_peak_resident_memory_grows_by_what_is_touched():
    """In a fresh process (the high-water mark of this one is whatever earlier tests left)."""
    code = ("import torch; from dinat_m2f.utils import benchmark\n"
            "base = benchmark.reset_peak_memory(torch.device('cpu'))\n"
            "assert benchmark.peak_resident_mb() >= base >= benchmark.resident_mb() > 0\n"
            "block = torch.ones(64 * 2 ** 20 // 4)  # 64 MB, every page written\n"
            "print(benchmark.peak_memory_mb(torch.device('cpu')) - base)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 60 < float(done.stdout) < 80
