#!/usr/bin/env python
"""ADE20K semantic labels for detectron2.

Reads   <root>/ADEChallengeData2016/annotations/{training,validation}/*.png   (0 = other, 1..150)
Writes  <root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png
        (class ids 0..149, 255 = ignore), which "ade20k_sem_seg_*" and "ade20k_panoptic_*" read.
<root> is --root, else $DETECTRON2_DATASETS, else ./datasets.
"""
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from dinat_m2f.data.datasets.prepare import parse_prepare_args, run_jobs

SPLITS = ("training", "validation")


def convert_file(paths: Tuple[str, str]) -> None:
    source, target = paths
    labels = np.asarray(Image.open(source))
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"{source}: expected an 8-bit single-channel label PNG, got {labels.dtype} {labels.shape}")
    # 0 ("other") wraps to 255, the ignore label; 1..150 become 0..149
    Image.fromarray((labels - np.uint8(1)).astype(np.uint8)).save(target)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_prepare_args(__doc__, argv)

    ade = os.path.join(args.root, "ADEChallengeData2016")
    for split in SPLITS:
        source_dir = os.path.join(ade, "annotations", split)
        target_dir = os.path.join(ade, "annotations_detectron2", split)
        if not os.path.isdir(source_dir):
            sys.exit(f"{source_dir} not found: unzip ADEChallengeData2016.zip into {args.root}")
        os.makedirs(target_dir, exist_ok=True)
        jobs = [
            (os.path.join(source_dir, name), os.path.join(target_dir, name))
            for name in sorted(os.listdir(source_dir))
            if name.endswith(".png")
        ]
        run_jobs(convert_file, jobs, args.workers)
        print(f"{split}: wrote {len(jobs)} label maps to {target_dir}")


if __name__ == "__main__":
    main()
