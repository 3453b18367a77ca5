"""A tiny dataset with its description file, in any of the formats descriptions name (coco_panoptic,
coco_instances, semantic_masks): the worked example of docs/CUSTOM_DATASETS.md
(``datasets/make_example_dataset.py``) and the tests' data. The scenes are the synthetic dataset's
(:func:`.synthetic.render_scene`), with category ids as a user's data may have them: neither contiguous nor
sorted (things circle 42, square 7, triangle 1001; stuff sky 3, grass 500).

Layout of ``<directory>`` (one folder per split)::

    shapes.yaml                      the description file
    train/images/0000.jpg ...        images
    train/panoptic.json, panoptic/   coco_panoptic: COCO panoptic JSON and PNGs
    train/instances.json             coco_instances: COCO instance JSON (RLE)
    train/labels/0000.png ...        semantic_masks: label PNGs (class index, 255 = unlabelled)
"""
import json
import os
from typing import Dict, List

import cv2
import numpy as np
from panopticapi.utils import id2rgb

from .coco_json import mask_annotation
from .description import FORMATS, write_dataset_description
from .synthetic import render_scene

__all__ = ["EXAMPLE_CATEGORIES", "write_example_dataset"]

EXAMPLE_CATEGORIES: List[Dict] = [
    {"id": 42, "name": "circle", "isthing": 1, "color": [220, 50, 50]},
    {"id": 7, "name": "square", "isthing": 1, "color": [240, 200, 40]},
    {"id": 1001, "name": "triangle", "isthing": 1, "color": [170, 70, 220]},
    {"id": 3, "name": "sky", "isthing": 0, "color": [110, 170, 235]},
    {"id": 500, "name": "grass", "isthing": 0, "color": [60, 150, 55]},
]
_THING_IDS = {c["id"] for c in EXAMPLE_CATEGORIES if c["isthing"]}
_FROM_SYNTHETIC_ID = {1: 42, 2: 7, 3: 1001, 21: 3, 22: 500}  # synthetic category id -> example id
IGNORE_LABEL = 255


def _split_files(format_name: str, split: str) -> Dict[str, str]:
    files = {"images": f"{split}/images", "annotations": None, "masks": None}
    if format_name == "coco_panoptic":
        files.update(annotations=f"{split}/panoptic.json", masks=f"{split}/panoptic")
    elif format_name == "coco_instances":
        files.update(annotations=f"{split}/instances.json")
    else:
        files.update(masks=f"{split}/labels")
    return {key: value for key, value in files.items() if value is not None}


def _write_split(directory: str, format_name: str, split: str, count: int, sizes: range, seed: int) -> None:
    files = {key: os.path.join(directory, path) for key, path in _split_files(format_name, split).items()}
    for key in ("images", "masks"):
        if key in files:
            os.makedirs(files[key], exist_ok=True)
    label_of = {c["id"]: i for i, c in enumerate(EXAMPLE_CATEGORIES)}
    images, panoptic_annotations, instance_annotations = [], [], []
    for index in range(count):
        rng = np.random.default_rng([seed, {"train": 0, "val": 1}.get(split, 2), index])
        h, w = (int(v) for v in rng.integers(sizes.start, sizes.stop, 2))
        image, panoptic, segments_info = render_scene(rng, h, w)
        stem, image_id = f"{index:04d}", index + 1
        cv2.imwrite(os.path.join(files["images"], stem + ".jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        segments = [dict(s, category_id=_FROM_SYNTHETIC_ID[s["category_id"]]) for s in segments_info]
        if format_name == "coco_panoptic":
            cv2.imwrite(os.path.join(files["masks"], stem + ".png"), id2rgb(panoptic)[:, :, ::-1])
            panoptic_annotations.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments})
        elif format_name == "coco_instances":
            for segment in segments:
                if segment["category_id"] in _THING_IDS:
                    annotation = mask_annotation(panoptic == segment["id"], image_id, segment["category_id"])
                    instance_annotations.append({"id": len(instance_annotations) + 1, **annotation})
        else:
            labels = np.full((h, w), IGNORE_LABEL, np.uint8)
            for segment in segments:
                labels[panoptic == segment["id"]] = label_of[segment["category_id"]]
            cv2.imwrite(os.path.join(files["masks"], stem + ".png"), labels)
    if format_name == "coco_panoptic":
        content = {"images": images, "annotations": panoptic_annotations, "categories": EXAMPLE_CATEGORIES}
    elif format_name == "coco_instances":
        things = [{k: c[k] for k in ("id", "name", "color")} for c in EXAMPLE_CATEGORIES if c["isthing"]]
        content = {"images": images, "annotations": instance_annotations, "categories": things}
    else:
        return
    with open(files["annotations"], "w", encoding="utf-8") as f:
        json.dump(content, f)


def write_example_dataset(directory: str, format_name: str, name: str = "shapes", num_train: int = 8,
                          num_val: int = 4, min_size: int = 64, max_size: int = 96, seed: int = 0) -> str:
    """Write the dataset and its description into ``directory``; returns the description file's path."""
    if format_name not in FORMATS:
        raise ValueError(f"Unknown format {format_name!r}; one of {', '.join(FORMATS)}")
    sizes = range(min_size, max_size + 1)
    splits = {}
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(directory, format_name, split, count, sizes, seed)
        splits[split] = _split_files(format_name, split)
    description = os.path.join(directory, f"{name}.yaml")
    classes = [c["name"] for c in EXAMPLE_CATEGORIES] if format_name == "semantic_masks" else ()
    ignore_label = IGNORE_LABEL if format_name == "semantic_masks" else None
    write_dataset_description(description, name, format_name, splits, classes, ignore_label)
    return description
