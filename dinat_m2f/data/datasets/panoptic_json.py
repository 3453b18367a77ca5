"""Loader for COCO-format panoptic annotations (PNG + JSON) with semantic labels beside them."""
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from .coco_json import panoptic_json_problems
from .paths import (
    JSON_LAYOUT_ERRORS,
    DatasetFileMissingError,
    load_json_file,
    malformed_json,
    register_checked,
    require_object,
)
from .problems import DatasetProblems


def _to_contiguous(segment: Dict, meta: Dict) -> Dict:
    category_id = segment["category_id"]
    segment = dict(segment)
    isthing = category_id in meta["thing_dataset_id_to_contiguous_id"]
    id_map = meta["thing_dataset_id_to_contiguous_id" if isthing else "stuff_dataset_id_to_contiguous_id"]
    segment["category_id"] = id_map[category_id]
    segment["isthing"] = isthing
    return segment


def load_panoptic_json(
    json_file: str,
    image_dir: str,
    panoptic_dir: str,
    semantic_dir: Optional[str],
    meta: Dict,
) -> List[Dict]:
    """Read a COCO panoptic JSON into detectron2 dataset dicts.

    Each dict has "file_name" (image path from the JSON's "images" entry), "image_id", "height",
    "width", "pan_seg_file_name", "segments_info" (category ids made contiguous with the metadata's
    thing/stuff maps, plus "isthing") and, when ``semantic_dir`` is given, "sem_seg_file_name"
    (same file name as the panoptic PNG). The JSON is checked first (:func:`panoptic_json_problems`; a
    category outside the metadata's maps is one too), every problem in one DatasetFileError.
    """
    content = load_json_file(json_file)
    require_object(content, json_file, "a COCO panoptic annotation file")
    try:
        problems = DatasetProblems()
        problems.extend(panoptic_json_problems(content, json_file))
        known = meta["stuff_dataset_id_to_contiguous_id"].keys() | meta["thing_dataset_id_to_contiguous_id"].keys()
        for category in content.get("categories", []):
            if isinstance(category, dict) and category.get("id") not in known:
                problems.add(f"{json_file}: category id {category.get('id')!r} is not a class of this dataset")
        problems.raise_if_any(f"{json_file} cannot be used")
        return _panoptic_records(content, json_file, image_dir, panoptic_dir, semantic_dir, meta)
    except JSON_LAYOUT_ERRORS as error:
        raise malformed_json(json_file, error, "a COCO panoptic annotation file") from error


def _panoptic_records(content: Dict, json_file: str, image_dir: str, panoptic_dir: str,
                      semantic_dir: Optional[str], meta: Dict) -> List[Dict]:
    images = {image["id"]: image for image in content["images"]}
    dataset_dicts = []
    for ann in content["annotations"]:
        image = images[ann["image_id"]]
        record = {
            "file_name": os.path.join(image_dir, image["file_name"]),
            "image_id": ann["image_id"],
            "height": image["height"],
            "width": image["width"],
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": [_to_contiguous(s, meta) for s in ann["segments_info"]],
        }
        if semantic_dir is not None:
            record["sem_seg_file_name"] = os.path.join(semantic_dir, ann["file_name"])
        dataset_dicts.append(record)
    first = dataset_dicts[0]
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if key in first and not os.path.isfile(first[key]):
            raise DatasetFileMissingError(f"{first[key]} (listed in {json_file}) does not exist")
    return dataset_dicts


def register_panoptic_with_sem_seg(name: str, meta: Dict, image_root: str, panoptic_root: str, panoptic_json: str,
                                   sem_seg_root: str, instances_json: str, evaluator_type: str,
                                   required: Sequence[Tuple[str, str]]) -> None:
    """Register a COCO-format panoptic dataset with semantic labels (Mask2Former's "*_panoptic_with_sem_seg"
    layout), checking `required` (path, remedy) pairs when it is first loaded."""
    register_checked(
        name,
        lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, meta),
        required,
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type=evaluator_type,
        ignore_label=255,
        label_divisor=1000,
        **meta,
    )

