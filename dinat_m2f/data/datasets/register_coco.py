"""COCO: panoptic with semantic labels derived from it (Mask2Former's names), the 133-class semantic
split made from the panoptic annotations, and missing-path checks for detectron2's instance splits."""
import os
from typing import Dict

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.coco import load_sem_seg

from .panoptic_json import register_panoptic_with_sem_seg
from .paths import add_path_check, register_checked

_ANNOTATIONS_ZIP = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
_PANOPTIC_ZIP = "http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip"
_SEMANTIC_SCRIPT = "python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py"


def _images_remedy(split: str) -> str:
    return f"Download http://images.cocodataset.org/zips/{split}2017.zip and unzip it into coco/."


def _panoptic_remedy(split: str) -> str:
    return (
        f"Download {_PANOPTIC_ZIP}, unzip it into coco/, then unzip "
        f"coco/annotations/panoptic_{split}2017.zip into coco/."
    )


def coco_panoptic_metadata() -> Dict:
    """133 panoptic classes; contiguous ids follow COCO_CATEGORIES (things first, ids 0..79)."""
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in COCO_CATEGORIES],
        "stuff_colors": [c["color"] for c in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]
        },
        # every class, things included, so the semantic evaluator can read the panoptic metadata
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)},
    }


def register_coco_panoptic_with_sem_seg(root: str) -> None:
    """"coco_2017_{train,val}_panoptic_with_sem_seg" (panoptic + semantic, for the Mask2Former mappers)
    and "coco_2017_{train,val}_panoptic_sem_seg" (the same semantic PNGs as a semantic dataset)."""
    meta = coco_panoptic_metadata()
    for split in ("train", "val"):
        image_root = os.path.join(root, "coco", f"{split}2017")
        panoptic_root = os.path.join(root, "coco", f"panoptic_{split}2017")
        panoptic_json = os.path.join(root, "coco", "annotations", f"panoptic_{split}2017.json")
        sem_seg_root = os.path.join(root, "coco", f"panoptic_semseg_{split}2017")
        instances_json = os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")
        required = [
            (image_root, _images_remedy(split)),
            (panoptic_json, _panoptic_remedy(split)),
            (panoptic_root, _panoptic_remedy(split)),
            (sem_seg_root, f"Run: {_SEMANTIC_SCRIPT}"),
        ]

        register_panoptic_with_sem_seg(
            f"coco_2017_{split}_panoptic_with_sem_seg", meta, image_root, panoptic_root, panoptic_json,
            sem_seg_root, instances_json, "coco_panoptic_seg", required,
        )

        name = f"coco_2017_{split}_panoptic_sem_seg"
        register_checked(
            name,
            lambda s=sem_seg_root, i=image_root: load_sem_seg(s, i, gt_ext="png", image_ext="jpg"),
            [required[0], required[3]],
        )
        MetadataCatalog.get(name).set(
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            stuff_classes=meta["stuff_classes"],
            stuff_colors=meta["stuff_colors"],
            evaluator_type="sem_seg",
            ignore_label=255,
        )


def add_coco_instance_path_checks() -> None:
    """detectron2 registers "coco_2017_{train,val}"; make their loaders name the missing download."""
    for split in ("train", "val"):
        name = f"coco_2017_{split}"
        meta = MetadataCatalog.get(name)
        add_path_check(
            name,
            [
                (meta.image_root, _images_remedy(split)),
                (meta.json_file, f"Download {_ANNOTATIONS_ZIP} and unzip it into coco/."),
            ],
        )
