"""train_net.py with the CoAtNet synthetic config (configs/synthetic/panoptic/coatnet_mini.yaml), shortened:
a few training steps on crops of one size, then the evaluation on images of other sizes, so the
relative-position tables are trained through their resize and evaluated on grids they were not made for."""
import math

import pytest
from project_paths import REPO
from test_train import read_metrics, run_train_net

CONFIG = REPO / "configs" / "synthetic" / "panoptic" / "coatnet_mini.yaml"
SMALL = [
    "MODEL.COATNET.EMBED_DIM", "[16, 32, 32, 64]",
    "MODEL.COATNET.STEM_WIDTH", "[8, 16]",
    "MODEL.COATNET.DIM_HEAD", "16",
    "MODEL.COATNET.PRETRAIN_IMG_SIZE", "[96, 96]",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "INPUT.IMAGE_SIZE", "64",  # training crops 64 px: tables made for 96 px, resized in every step
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "DATALOADER.NUM_WORKERS", "0",
]


@pytest.mark.slow
def test_coatnet_trains_and_evaluates_at_other_sizes(tmp_path):
    out = tmp_path / "out"
    _, output = run_train_net(tmp_path / "datasets", *SMALL, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out),
                              config=CONFIG)
    losses = [m["total_loss"] for m in read_metrics(out) if "total_loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert "D2CoAtNet" in (out / "config.yaml").read_text()
    # evaluated after training on the 50 val images (64-96 px: other grids than the 96 px tables)
    assert "Panoptic Evaluation Results" in output and "mIoU" in output
