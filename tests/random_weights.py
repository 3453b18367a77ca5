"""A random synthetic panoptic model saved as a checkpoint, for the demos' tests."""
from pathlib import Path
from typing import List

import torch
from detectron2.modeling import build_model
from project_paths import CONFIGS

from dinat_m2f.app import app_config
from dinat_m2f.checkpoint import SafeDetectionCheckpointer

SYNTHETIC_PANOPTIC = str(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml")


def random_synthetic_opts(folder: Path) -> List[str]:
    """--opts of the synthetic panoptic config with seeded random weights saved in `folder`, thresholds at 0 so
    that the random model returns segments."""
    torch.manual_seed(0)
    SafeDetectionCheckpointer(build_model(app_config(SYNTHETIC_PANOPTIC)), save_dir=str(folder)).save("random_init")
    return ["MODEL.WEIGHTS", str(folder / "random_init.pth"), "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"]
