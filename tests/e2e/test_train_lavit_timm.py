"""train_net.py trains the synthetic LaViT and timm configs (the main job with another backbone) for a few
iterations: finite losses (LaViT's loss_lavit_dp among them) and a final checkpoint with the backbone's
weights. The full 1000-iteration runs are the configs of docs/GETTING_STARTED.md."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from project_paths import CONFIGS, REPO

SHORT = [
    "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
    "INPUT.IMAGE_SIZE", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()",
]


@pytest.mark.parametrize("config,loss,weight", [
    ("lavit_mini", "loss_lavit_dp", "backbone.layers.1.attn_residual.head_mix.weight"),
    ("timm_mini", "loss_ce", "backbone.model.stem_0.weight"),
])
def test_synthetic_config_trains_a_few_iterations(tmp_path, config, loss, weight):
    out = tmp_path / "run"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file",
               str(CONFIGS / "synthetic" / "panoptic" / f"{config}.yaml"), *SHORT, "OUTPUT_DIR", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 3
    assert all(math.isfinite(m[loss]) and math.isfinite(m["total_loss"]) for m in metrics)
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert torch.isfinite(weights[weight]).all()
