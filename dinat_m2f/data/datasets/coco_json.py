"""COCO annotation files (instance and panoptic JSON): everything the JSON alone can tell is checked when it
is loaded, before any image is read, every problem named at once (file, image id, segment or category id);
and the instance JSON read into detectron2 dataset dicts with a fixed category-id map."""
import logging
import os
from typing import Any, Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from .paths import JSON_LAYOUT_ERRORS, load_json_file, malformed_json, require_object
from .problems import DatasetProblems

__all__ = ["instances_json_problems", "load_coco_instances", "mask_annotation", "panoptic_json_problems"]

logger = logging.getLogger(__name__)


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _entries(content: Any, key: str, json_file: str, problems: DatasetProblems) -> List[Any]:
    value = content.get(key) if isinstance(content, dict) else None
    if not isinstance(value, list):
        problems.add(f"{json_file}: '{key}' is missing or not a list")
        return []
    return value


def _images(content: Any, json_file: str, problems: DatasetProblems) -> Dict[Any, Dict]:
    """The 'images' entries by id; entries without id, file_name, height or width, and repeated ids, are
    problems."""
    by_id: Dict[Any, Dict] = {}
    for index, image in enumerate(_entries(content, "images", json_file, problems)):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            problems.add(f"{json_file}: images[{index}] has no integer or string 'id'")
            continue
        image_id = image["id"]
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            problems.add(f"{json_file}: image id {image_id} has no 'file_name'")
        for key in ("height", "width"):
            if not _is_positive_int(image.get(key)):
                problems.add(f"{json_file}: image id {image_id} has no positive integer '{key}'")
        if image_id in by_id:
            problems.add(
                f"{json_file}: image id {image_id} is listed twice ({by_id[image_id].get('file_name')!r} and "
                f"{image.get('file_name')!r})"
            )
        else:
            by_id[image_id] = image
    return by_id


def _is_color(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value)


def _categories(content: Any, json_file: str, problems: DatasetProblems, panoptic: bool) -> Dict[int, Dict]:
    """The 'categories' entries by id (integer id, name; panoptic ones also isthing 0/1; color optional)."""
    by_id: Dict[int, Dict] = {}
    for index, category in enumerate(_entries(content, "categories", json_file, problems)):
        if not isinstance(category, dict) or not _is_id(category.get("id")) or isinstance(category["id"], str):
            problems.add(f"{json_file}: categories[{index}] has no integer 'id'")
            continue
        category_id = category["id"]
        if not isinstance(category.get("name"), str) or not category["name"]:
            problems.add(f"{json_file}: category id {category_id} has no 'name'")
        if panoptic and category.get("isthing") not in (0, 1):
            problems.add(f"{json_file}: category id {category_id} has no 'isthing' 0 or 1")
        if "color" in category and not _is_color(category["color"]):
            problems.add(f"{json_file}: category id {category_id} has 'color' {category['color']!r}, not [R, G, B]")
        if category_id in by_id:
            problems.add(f"{json_file}: category id {category_id} is listed twice")
        else:
            by_id[category_id] = category
    if not by_id and isinstance(content, dict) and isinstance(content.get("categories"), list):
        problems.add(f"{json_file}: 'categories' is empty")
    return by_id


def panoptic_json_problems(content: Any, json_file: str) -> List[str]:
    """What is wrong in a COCO panoptic JSON: layout, repeated image / category / segment ids, an annotation
    of an image without entry (or two for one image), a segment of an unknown category, no annotations."""
    problems = DatasetProblems()
    images = _images(content, json_file, problems)
    categories = _categories(content, json_file, problems, panoptic=True)
    annotated: Dict[Any, str] = {}
    annotations = _entries(content, "annotations", json_file, problems)
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            problems.add(f"{json_file}: annotations[{index}] is not an object")
            continue
        image_id = annotation.get("image_id")
        if image_id not in images:
            problems.add(f"{json_file}: annotations[{index}] has image_id {image_id!r}, which has no 'images' entry")
        elif image_id in annotated:
            problems.add(f"{json_file}: image id {image_id} has two annotations ({annotated[image_id]!r} and "
                         f"{annotation.get('file_name')!r})")  # fmt: skip
        annotated.setdefault(image_id, annotation.get("file_name"))
        if not isinstance(annotation.get("file_name"), str) or not annotation["file_name"]:
            problems.add(f"{json_file}: the annotation of image id {image_id} has no PNG 'file_name'")
        segments = annotation.get("segments_info")
        if not isinstance(segments, list):
            problems.add(f"{json_file}: the annotation of image id {image_id} has no 'segments_info' list")
            continue
        segment_ids = set()
        for segment in segments:
            segment_id = segment.get("id") if isinstance(segment, dict) else None
            if not _is_positive_int(segment_id):
                problems.add(f"{json_file}: image id {image_id} has a segment without a positive integer 'id'")
                continue
            if segment_id in segment_ids:
                problems.add(f"{json_file}: image id {image_id} lists segment id {segment_id} twice")
            segment_ids.add(segment_id)
            if segment.get("category_id") not in categories:
                problems.add(f"{json_file}: segment {segment_id} of image id {image_id} has category_id "
                             f"{segment.get('category_id')!r}, which is not in 'categories'")  # fmt: skip
    if isinstance(content, dict) and isinstance(content.get("annotations"), list) and not annotations:
        problems.add(f"{json_file} has no annotations (an empty split)")
    return problems.messages


def _polygons_problem(segmentation: List) -> str:
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
            return "a polygon that is not a list of numbers"
    return ""


def _rle_problem(segmentation: Dict, image: Dict) -> str:
    size = segmentation.get("size")
    if not isinstance(segmentation.get("counts"), (str, list)) or not isinstance(size, list) or len(size) != 2:
        return "an RLE without 'counts' and 'size' [height, width]"
    if image and size != [image.get("height"), image.get("width")]:
        return f"an RLE of size {size}, but the image is [{image.get('height')}, {image.get('width')}]"
    return ""


def instances_json_problems(content: Any, json_file: str) -> List[str]:
    """What is wrong in a COCO instance JSON: layout, repeated image / category / annotation ids, an
    annotation of an unknown image or category, a segmentation that is neither polygons nor an RLE of its
    image's size, no images."""
    problems = DatasetProblems()
    images = _images(content, json_file, problems)
    categories = _categories(content, json_file, problems, panoptic=False)
    annotation_ids = set()
    for index, annotation in enumerate(_entries(content, "annotations", json_file, problems)):
        if not isinstance(annotation, dict) or not _is_id(annotation.get("id")):
            problems.add(f"{json_file}: annotations[{index}] has no integer or string 'id'")
            continue
        where = f"{json_file}: annotation id {annotation['id']}"
        if annotation["id"] in annotation_ids:
            problems.add(f"{where} is listed twice")
        annotation_ids.add(annotation["id"])
        image = images.get(annotation.get("image_id"))
        if image is None:
            problems.add(f"{where} has image_id {annotation.get('image_id')!r}, which has no 'images' entry")
        if annotation.get("category_id") not in categories:
            problems.add(f"{where} has category_id {annotation.get('category_id')!r}, which is not in 'categories'")
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            problem = _polygons_problem(segmentation)
        elif isinstance(segmentation, dict):
            problem = _rle_problem(segmentation, image)
        else:
            problem = "no 'segmentation' (polygons or RLE)"
        if problem:
            problems.add(f"{where} has {problem}")
    if isinstance(content, dict) and isinstance(content.get("images"), list) and not images:
        problems.add(f"{json_file} has no images (an empty split)")
    return problems.messages


def _valid_polygons(segmentation: Any) -> Any:
    """RLEs as they are; polygons with at least 3 points (detectron2 drops the others too)."""
    if isinstance(segmentation, dict):
        return segmentation
    return [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]


def load_coco_instances(json_file: str, image_root: str, id_map: Dict[int, int]) -> List[Dict]:
    """A COCO instance JSON as detectron2 dataset dicts (one per image, in the JSON's order, with its
    "annotations"), category ids mapped by ``id_map`` (dataset id -> contiguous id). The JSON is checked
    first (:func:`instances_json_problems`; a category outside ``id_map`` is one too), every problem in one
    DatasetFileError. Annotations whose polygons all have fewer than 3 points are skipped with a warning."""
    content = load_json_file(json_file)
    require_object(content, json_file, "a COCO annotation file")
    try:
        problems = DatasetProblems()
        problems.extend(instances_json_problems(content, json_file))
        for category in content.get("categories", []):
            if isinstance(category, dict) and category.get("id") not in id_map:
                problems.add(f"{json_file}: category id {category.get('id')!r} is not a class of this dataset")
        problems.raise_if_any(f"{json_file} cannot be used")
        records, skipped = _instance_records(content, image_root, id_map)
    except JSON_LAYOUT_ERRORS as error:
        raise malformed_json(json_file, error, "a COCO annotation file") from error
    if skipped:
        logger.warning("%s: %d annotations without a polygon of 3 or more points were skipped", json_file, skipped)
    return records


def _instance_records(content: Dict, image_root: str, id_map: Dict[int, int]) -> Tuple[List[Dict], int]:
    per_image: Dict[Any, List[Dict]] = {image["id"]: [] for image in content["images"]}
    skipped = 0
    for annotation in content["annotations"]:
        segmentation = _valid_polygons(annotation["segmentation"])
        if not segmentation:
            skipped += 1
            continue
        instance = {
            "iscrowd": annotation.get("iscrowd", 0),
            "category_id": id_map[annotation["category_id"]],
            "segmentation": segmentation,
            "bbox_mode": BoxMode.XYWH_ABS,
        }
        if "bbox" in annotation:
            instance["bbox"] = annotation["bbox"]
        per_image[annotation["image_id"]].append(instance)
    records = [
        {
            "file_name": os.path.join(image_root, image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "annotations": per_image[image["id"]],
        }
        for image in content["images"]
    ]
    return records, skipped


def mask_annotation(mask: np.ndarray, image_id: Any, category_id: int, iscrowd: int = 0) -> Dict:
    """A COCO instance annotation (RLE segmentation, area, integer bbox) of a bool (H, W) mask; no "id"."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()),
        "bbox": [int(v) for v in mask_util.toBbox(rle)],
        "iscrowd": iscrowd,
    }
