#!/usr/bin/env python
"""ADE20K panoptic annotations (150 classes: 100 things, 50 stuff) in the COCO panoptic format.

Reads   <root>/ADEChallengeData2016/images/{training,validation}/*.jpg,
        <root>/ADEChallengeData2016/annotations/{training,validation}/*.png (semantic, 0 = other, 1..150) and
        <root>/ADEChallengeData2016/annotations_instance/{training,validation}/*.png (R = instance-benchmark
        class 1..100, G = instance number)
Writes  <root>/ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png (segment id = R + 256 G + 256^2 B)
        and ade20k_panoptic_{train,val}.json (category ids = 0-based 150-class ids; image ids 1..N in
        sorted file order, the same as prepare_ade20k_ins_seg.py).
Stuff segments come from the semantic map, thing segments from the instance map, which wins where
they overlap; pixels of thing classes outside any instance, and "other", are void.
<root> is --root, else $DETECTRON2_DATASETS, else ./datasets.
"""
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image

from dinat_m2f.data.datasets.ade20k_categories import ADE20K_150_CATEGORIES, read_ade20k_instances
from dinat_m2f.data.datasets.prepare import parse_prepare_args, run_jobs

SPLITS = {"train": "training", "val": "validation"}
IS_THING = np.array([c["isthing"] for c in ADE20K_150_CATEGORIES], dtype=bool)
# Segment ids: stuff class c -> c + 1; k-th instance (k >= 1) of thing class c -> c + 1 + 1000 k.
INSTANCE_STRIDE = 1000


def panoptic_map(semantic_png: str, instance_png: str) -> np.ndarray:
    """(H, W) segment ids, 0 = void."""
    semantic = np.asarray(Image.open(semantic_png)).astype(np.int64)  # 0 = other, else class + 1
    width, height = Image.open(instance_png).size
    if semantic.shape != (height, width):
        raise ValueError(f"{semantic_png} and {instance_png} differ in size")
    instances = read_ade20k_instances(instance_png)
    stuff = (semantic > 0) & ~IS_THING[np.maximum(semantic - 1, 0)]
    segments = np.where(stuff, semantic, 0)
    counts: Dict[int, int] = {}
    for category_id, mask in instances:
        counts[category_id] = counts.get(category_id, 0) + 1
        segments[mask] = category_id + 1 + INSTANCE_STRIDE * counts[category_id]
    return segments


def segments_info(segments: np.ndarray) -> List[Dict]:
    info = []
    ids, areas = np.unique(segments, return_counts=True)
    for segment_id, area in zip(ids.tolist(), areas.tolist()):
        if segment_id == 0:
            continue
        ys, xs = np.nonzero(segments == segment_id)
        x0, y0 = int(xs.min()), int(ys.min())
        info.append(
            {
                "id": segment_id,
                "category_id": segment_id % INSTANCE_STRIDE - 1,
                "area": area,
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": 0,
            }
        )
    return info


def convert_image(job: Tuple[int, str, str, str, str]) -> Tuple[Dict, Dict]:
    image_id, image_file, semantic_png, instance_png, output_dir = job
    width, height = Image.open(image_file).size
    segments = panoptic_map(semantic_png, instance_png)
    if segments.shape != (height, width):
        raise ValueError(f"{semantic_png} is {segments.shape[::-1]}, its image {image_file} is {(width, height)}")
    png_name = os.path.splitext(os.path.basename(image_file))[0] + ".png"
    Image.fromarray(id2rgb(segments)).save(os.path.join(output_dir, png_name))
    image = {"id": image_id, "file_name": os.path.basename(image_file), "width": width, "height": height}
    return image, {"image_id": image_id, "file_name": png_name, "segments_info": segments_info(segments)}


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_prepare_args(__doc__, argv)

    ade = os.path.join(args.root, "ADEChallengeData2016")
    categories = [dict(c, supercategory="") for c in ADE20K_150_CATEGORIES]
    for split, folder in SPLITS.items():
        image_dir = os.path.join(ade, "images", folder)
        semantic_dir = os.path.join(ade, "annotations", folder)
        instance_dir = os.path.join(ade, "annotations_instance", folder)
        for path in (image_dir, semantic_dir):
            if not os.path.isdir(path):
                sys.exit(f"{path} not found: unzip ADEChallengeData2016.zip into {args.root}")
        if not os.path.isdir(instance_dir):
            sys.exit(f"{instance_dir} not found: untar annotations_instance.tar into {ade}")
        output_dir = os.path.join(ade, f"ade20k_panoptic_{split}")
        os.makedirs(output_dir, exist_ok=True)
        names = sorted(n for n in os.listdir(image_dir) if n.endswith(".jpg"))
        jobs = []
        for i, name in enumerate(names):
            stem = os.path.splitext(name)[0]
            jobs.append((i + 1, os.path.join(image_dir, name), os.path.join(semantic_dir, stem + ".png"),
                         os.path.join(instance_dir, stem + ".png"), output_dir))  # fmt: skip
        results = run_jobs(convert_image, jobs, args.workers)
        output = os.path.join(ade, f"ade20k_panoptic_{split}.json")
        with open(output, "w") as f:
            json.dump({"images": [r[0] for r in results], "annotations": [r[1] for r in results],
                       "categories": categories}, f)  # fmt: skip
        print(f"{split}: {len(results)} panoptic annotations -> {output_dir}, {output}")


if __name__ == "__main__":
    main()
