"""train_net.py trains the Swin synthetic config (configs/synthetic/panoptic/swin_mini.yaml) through its
command line: a few iterations on small crops of the synthetic panoptic dataset, then a checkpoint whose
backbone is Mask2Former's Swin by name."""
import json
import math
import os
import subprocess
import sys

import torch
from project_paths import REPO

CONFIG = REPO / "configs" / "synthetic" / "panoptic" / "swin_mini.yaml"


def test_swin_mini_trains_a_few_iterations_and_saves_a_swin_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [
        sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG),
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "INPUT.IMAGE_SIZE", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 2 and math.isfinite(metrics[-1]["total_loss"])
    model = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert model["backbone.layers.0.blocks.1.attn.relative_position_bias_table"].shape == (81, 1)  # window 5
    assert "backbone.layers.2.downsample.reduction.weight" in model and "backbone.norm3.weight" in model
