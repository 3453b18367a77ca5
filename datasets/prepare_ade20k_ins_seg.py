#!/usr/bin/env python
"""ADE20K instance annotations (100 classes) as COCO-format JSON.

Reads   <root>/ADEChallengeData2016/images/{training,validation}/*.jpg and
        <root>/ADEChallengeData2016/annotations_instance/{training,validation}/*.png
        (from annotations_instance.tar: R channel = instance-benchmark class 1..100, G = instance number,
        0 = none)
Writes  <root>/ADEChallengeData2016/ade20k_instance_{train,val}.json: "images" (ids 1..N in sorted file
        order, the same as prepare_ade20k_pan_seg.py), "annotations" (RLE masks, bbox, area, iscrowd 0),
        "categories" (ids = 0-based ADE20K 150-class ids, e.g. 7 "bed", 12 "person").
<root> is --root, else $DETECTRON2_DATASETS, else ./datasets.
"""
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from dinat_m2f.data.datasets.ade20k_categories import ADE20K_150_NAMES, ADE20K_INSTANCE_IDS, read_ade20k_instances
from dinat_m2f.data.datasets.prepare import parse_prepare_args, run_jobs

SPLITS = {"train": "training", "val": "validation"}


def annotate_image(job: Tuple[int, str, str]) -> Tuple[Dict, List[Dict]]:
    image_id, image_file, instance_png = job
    width, height = Image.open(image_file).size
    annotations = []
    for category_id, mask in read_ade20k_instances(instance_png):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    image = {"id": image_id, "file_name": os.path.basename(image_file), "width": width, "height": height}
    return image, annotations


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_prepare_args(__doc__, argv)

    ade = os.path.join(args.root, "ADEChallengeData2016")
    categories = [{"id": i, "name": ADE20K_150_NAMES[i]} for i in ADE20K_INSTANCE_IDS]
    for split, folder in SPLITS.items():
        image_dir = os.path.join(ade, "images", folder)
        instance_dir = os.path.join(ade, "annotations_instance", folder)
        if not os.path.isdir(image_dir):
            sys.exit(f"{image_dir} not found: unzip ADEChallengeData2016.zip into {args.root}")
        if not os.path.isdir(instance_dir):
            sys.exit(f"{instance_dir} not found: untar annotations_instance.tar into {ade}")
        names = sorted(n for n in os.listdir(image_dir) if n.endswith(".jpg"))
        jobs = [
            (i + 1, os.path.join(image_dir, n), os.path.join(instance_dir, os.path.splitext(n)[0] + ".png"))
            for i, n in enumerate(names)
        ]
        results = run_jobs(annotate_image, jobs, args.workers)
        annotations = [ann for _, anns in results for ann in anns]
        for i, ann in enumerate(annotations):
            ann["id"] = i + 1
        output = os.path.join(ade, f"ade20k_instance_{split}.json")
        with open(output, "w") as f:
            json.dump({"images": [image for image, _ in results], "annotations": annotations,
                       "categories": categories}, f)  # fmt: skip
        print(f"{split}: {len(results)} images, {len(annotations)} instances -> {output}")


if __name__ == "__main__":
    main()
