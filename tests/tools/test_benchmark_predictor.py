"""tools/benchmark_predictor.py: a row per task set, each with the Predictor call's time and its post-processing
part (run in-process on the synthetic config at a small size)."""
import pytest
from project_paths import REPO, import_script

benchmark_predictor = import_script(REPO / "tools" / "benchmark_predictor.py", "benchmark_predictor")


def test_a_row_per_task_set(capsys):
    benchmark_predictor.main(["--name", "synthetic/panoptic/dinat_mini", "--size", "64", "80", "--repeat", "1",
                              "--threads", "1", "--tasks", "all", "panoptic", "instance,semantic"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]  # after the header
    assert [row[0] for row in rows] == ["| panoptic, instance, semantic", "| panoptic", "| instance, semantic"]
    for row in rows:
        call, postprocessing, rest = float(row[1]), float(row[2]), float(row[3].rstrip(" |"))
        assert 0 < postprocessing < call and rest == pytest.approx(call - postprocessing, abs=0.01)


def test_a_task_the_model_lacks_is_named_before_timing():
    with pytest.raises(ValueError, match=r"tasks \('panoptic',\): this model computes semantic"):
        benchmark_predictor.main(["--name", "synthetic/semantic/dinat_mini", "--tasks", "all", "panoptic"])
