"""Cityscapes splits are detectron2's own; this adds errors that name the missing download or script,
and replaces the instance loader: detectron2's imports the Cityscapes labels from a module path that
exists only inside Meta (and needs shapely for the polygons). Instances are read from the
``*_gtFine_instanceIds.png`` files instead, the ground truth the Cityscapes evaluation itself uses."""
import multiprocessing as mp
import os
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from .paths import add_path_check, register_checked

_DOWNLOAD = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip them into cityscapes/."
)
_PANOPTIC_SCRIPT = (
    "Run: CITYSCAPES_DATASET=<datasets root>/cityscapes "
    "python -m cityscapesscripts.preparation.createPanopticImgs"
)
_IMAGE_SUFFIX = "leftImg8bit.png"


def _instance_record(files: Tuple[str, str]) -> Dict:
    from cityscapesscripts.helpers.labels import id2label

    image_file, instance_file = files
    ids = np.asarray(Image.open(instance_file))
    record = {"file_name": image_file, "image_id": os.path.basename(image_file), "height": ids.shape[0],
              "width": ids.shape[1], "annotations": []}  # fmt: skip
    # values >= 1000 are label id * 1000 + instance number; smaller ones are label ids (crowd regions of
    # instance classes, or stuff)
    for value in np.unique(ids[ids >= 24]).tolist():
        label = id2label[value // 1000 if value >= 1000 else value]
        if not label.hasInstances or label.ignoreInEval:
            continue
        mask = np.asfortranarray((ids == value).astype(np.uint8))
        rle = mask_util.encode(mask)
        x, y, w, h = mask_util.toBbox(rle).tolist()
        record["annotations"].append(
            {
                "iscrowd": int(value < 1000),
                "category_id": label.id,
                "segmentation": rle,
                "bbox": [x, y, x + w, y + h],
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    return record


def load_cityscapes_instances_from_pngs(image_dir: str, gt_dir: str) -> List[Dict]:
    """Dataset dicts of a Cityscapes split with one RLE-mask annotation per instance; category ids are
    contiguous over the 8 evaluated instance classes (person .. bicycle)."""
    from cityscapesscripts.helpers.labels import labels

    files = []
    for city in sorted(os.listdir(image_dir)):
        for name in sorted(os.listdir(os.path.join(image_dir, city))):
            if name.endswith(_IMAGE_SUFFIX):
                stem = name[: -len(_IMAGE_SUFFIX)]
                files.append(
                    (os.path.join(image_dir, city, name), os.path.join(gt_dir, city, stem + "gtFine_instanceIds.png"))
                )
    if not files:
        raise FileNotFoundError(f"No *_{_IMAGE_SUFFIX} images under {image_dir}/<city>/")
    if not os.path.isfile(files[0][1]):
        raise FileNotFoundError(f"{files[0][1]} does not exist. {_DOWNLOAD}")
    with mp.Pool(min(8, mp.cpu_count())) as pool:
        records = pool.map(_instance_record, files, chunksize=16)
    evaluated = (label for label in labels if label.hasInstances and not label.ignoreInEval)
    contiguous = {label.id: i for i, label in enumerate(evaluated)}
    for record in records:
        for ann in record["annotations"]:
            ann["category_id"] = contiguous[ann["category_id"]]
    return records


def register_cityscapes_instances_and_checks() -> None:
    """Loaders that work outside Meta for the instance splits, path checks for all splits."""
    for split in ("train", "val"):
        name = f"cityscapes_fine_instance_seg_{split}"
        meta = MetadataCatalog.get(name)
        required = [(meta.image_dir, _DOWNLOAD), (meta.gt_dir, _DOWNLOAD)]
        DatasetCatalog.remove(name)
        register_checked(
            name, lambda i=meta.image_dir, g=meta.gt_dir: load_cityscapes_instances_from_pngs(i, g), required
        )

        name = f"cityscapes_fine_sem_seg_{split}"
        meta = MetadataCatalog.get(name)
        add_path_check(name, [(meta.image_dir, _DOWNLOAD), (meta.gt_dir, _DOWNLOAD)])

        name = f"cityscapes_fine_panoptic_{split}"
        meta = MetadataCatalog.get(name)
        add_path_check(
            name,
            [
                (meta.image_root, _DOWNLOAD),
                (meta.panoptic_json, _PANOPTIC_SCRIPT),
                (meta.panoptic_root, _PANOPTIC_SCRIPT),
            ],
        )
