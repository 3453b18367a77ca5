"""train_net.py against a careless user: a second training in a busy OUTPUT_DIR, --resume after the model's
shapes changed. Each stops before any work, with an error that names the cause."""
import subprocess
import time

import pytest
from test_train import TINY, run_train_net, train_net_command
from project_paths import REPO


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def test_a_second_training_in_the_same_output_dir_stops_at_once_naming_the_holder(tmp_path, datasets_root):
    """Both used to run and exit 0, the second overwriting the first's checkpoints and config."""
    out = tmp_path / "out"
    command, env = train_net_command(datasets_root, *TINY, "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(out))
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "Starting training from iteration 0" not in (tmp_path / "first.log").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        config_written = (out / "config.yaml").stat().st_mtime_ns
        code, output = run_train_net(datasets_root, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out),
                                     expect_ok=False)
        assert code != 0
        assert f"OutputDirInUseError: OUTPUT_DIR {out} is in use by another training: process {first.pid} on " in output
        assert first.poll() is None, "the first training goes on"
        assert (out / "config.yaml").stat().st_mtime_ns == config_written, "the second wrote no config there"
        assert "Running on" not in output, "it stopped before setting anything up"
    finally:
        first.kill()
        first.wait()


def test_resume_after_changing_the_number_of_queries_names_the_parameter_and_shapes(tmp_path, datasets_root):
    """It failed at the first step with a tensor-size error."""
    out = tmp_path / "out"
    run_train_net(datasets_root, *TINY, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out))
    code, output = run_train_net(datasets_root, "--resume", *TINY, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "12",
                                 "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out), expect_ok=False)
    assert code != 0
    assert f"Cannot resume from {out / 'model_final.pth'}: the model's shapes differ from the checkpoint's" in output
    assert "sem_seg_head.predictor.query_feat.weight: (8, 32) in the checkpoint, (12, 32) in the model" in output
