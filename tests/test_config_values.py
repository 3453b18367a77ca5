"""Config values out of range are refused when the config is read, every problem at once, naming key and value:
they hung (SOLVER.IMS_PER_BATCH 0), divided by zero (SOLVER.MAX_ITER 0) or trained on infinities."""
import subprocess
import sys

import pytest

from dinat_m2f.config import load_project_config
from project_paths import CONFIGS, REPO

CONFIG = CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"


def problems(opts=(), config=CONFIG):
    with pytest.raises(ValueError) as error:
        load_project_config(str(config), list(opts))
    message = str(error.value)
    assert message.startswith(f"Config {config} (with its _BASE_ files and the command line) has values out of range")
    return message.splitlines()[1:]


def test_every_problem_is_listed_at_once():
    lines = problems([
        "SOLVER.IMS_PER_BATCH", "0",
        "SOLVER.MAX_ITER", "0",
        "SOLVER.BASE_LR", "1e999",  # literal_eval reads it as inf
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "-5",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "1.5",
        "INPUT.MIN_SIZE_TRAIN", "(512, 0)",
        "INPUT.MAX_SIZE_TEST", "0",
    ])
    assert lines == [
        "  SOLVER.IMS_PER_BATCH = 0: must be a positive integer",
        "  SOLVER.MAX_ITER = 0: must be a positive integer",
        "  SOLVER.BASE_LR = inf: must be a positive finite number",
        "  MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = -5: must be a positive integer",
        "  MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 1.5: must be a number in [0, 1]",
        "  INPUT.MIN_SIZE_TRAIN = (512, 0): must be a list of positive integers",
        "  INPUT.MAX_SIZE_TEST = 0: must be a positive integer",
    ]


def test_values_from_a_file_are_checked_too(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{CONFIG}"\nSOLVER:\n  BASE_LR: .inf\n  WARMUP_FACTOR: .nan\n')
    assert problems(config=config) == [
        "  SOLVER.BASE_LR = inf: must be a positive finite number",
        "  SOLVER.WARMUP_FACTOR = nan: must be a number in [0, 1]",
    ]


@pytest.mark.parametrize("opts, line", [
    (["MODEL.MASK_FORMER.HIDDEN_DIM", "100", "MODEL.MASK_FORMER.NHEADS", "8"],
     "HIDDEN_DIM = 100: must be a multiple of MODEL.MASK_FORMER.NHEADS = 8"),
    (["INPUT.MIN_SCALE", "2.0", "INPUT.MAX_SCALE", "1.0"], "INPUT.MIN_SCALE = 2.0: must not exceed INPUT.MAX_SCALE"),
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[0.5, 0.5]"],
     "INPUT.CROP.SIZE = [0.5, 0.5]: with TYPE 'absolute', two positive integers"),
    (["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"],
     "CLIP_VALUE = 0.0: must be a positive finite number when SOLVER.CLIP_GRADIENTS.ENABLED"),
])  # fmt: skip
def test_values_that_depend_on_each_other(opts, line):
    assert any(line in problem for problem in problems(opts)), problems(opts)


def test_every_config_of_the_project_passes():
    for config in sorted(CONFIGS.rglob("*.yaml")):
        load_project_config(str(config))


def test_train_net_stops_at_once_instead_of_hanging(tmp_path):
    """SOLVER.IMS_PER_BATCH 0 hung with growing memory; SOLVER.MAX_ITER 0 was a ZeroDivisionError."""
    result = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG), "OUTPUT_DIR", str(tmp_path / "out"),
         "SOLVER.IMS_PER_BATCH", "0", "SOLVER.MAX_ITER", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "SOLVER.IMS_PER_BATCH = 0: must be a positive integer" in result.stderr
    assert "SOLVER.MAX_ITER = 0: must be a positive integer" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing was started"
