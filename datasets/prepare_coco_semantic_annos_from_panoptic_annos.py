#!/usr/bin/env python
"""COCO semantic labels (133 panoptic classes) from the COCO panoptic annotations.

Reads   <root>/coco/annotations/panoptic_{train,val}2017.json and <root>/coco/panoptic_{train,val}2017/*.png
Writes  <root>/coco/panoptic_semseg_{train,val}2017/*.png: per pixel the contiguous id (0..132, the
        position of its category in detectron2's COCO_CATEGORIES: 80 things, then 53 stuff), 255 = void.
These are the semantic labels of "coco_2017_*_panoptic_with_sem_seg" and "coco_2017_*_panoptic_sem_seg".
<root> is --root, else $DETECTRON2_DATASETS, else ./datasets.
"""
import functools
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from panopticapi.utils import rgb2id
from PIL import Image

from dinat_m2f.data.datasets.prepare import parse_prepare_args, run_jobs

SPLITS = ("train", "val")


def convert_annotation(annotation: Dict, panoptic_dir: str, semantic_dir: str, id_map: Dict[int, int]) -> None:
    panoptic = rgb2id(np.asarray(Image.open(os.path.join(panoptic_dir, annotation["file_name"])), dtype=np.uint32))
    semantic = np.full(panoptic.shape, 255, dtype=np.uint8)
    for segment in annotation["segments_info"]:
        semantic[panoptic == segment["id"]] = id_map[segment["category_id"]]
    Image.fromarray(semantic).save(os.path.join(semantic_dir, annotation["file_name"]))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_prepare_args(__doc__, argv)

    id_map = {category["id"]: i for i, category in enumerate(COCO_CATEGORIES)}
    coco = os.path.join(args.root, "coco")
    for split in SPLITS:
        json_file = os.path.join(coco, "annotations", f"panoptic_{split}2017.json")
        panoptic_dir = os.path.join(coco, f"panoptic_{split}2017")
        semantic_dir = os.path.join(coco, f"panoptic_semseg_{split}2017")
        for path in (json_file, panoptic_dir):
            if not os.path.exists(path):
                sys.exit(f"{path} not found: unzip panoptic_annotations_trainval2017.zip into {coco}, "
                         f"then annotations/panoptic_{split}2017.zip into {coco}")  # fmt: skip
        with open(json_file) as f:
            annotations = json.load(f)["annotations"]
        os.makedirs(semantic_dir, exist_ok=True)
        convert = functools.partial(
            convert_annotation, panoptic_dir=panoptic_dir, semantic_dir=semantic_dir, id_map=id_map
        )
        run_jobs(convert, annotations, args.workers)
        print(f"{split}: wrote {len(annotations)} semantic label maps to {semantic_dir}")


if __name__ == "__main__":
    main()
