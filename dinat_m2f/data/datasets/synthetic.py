"""The synthetic dataset, the project's embedded default: pictures of coloured shapes ("thing" classes
with several instances, some touching or occluding each other) on sky and grass ("stuff" classes),
written in the real COCO formats so the same loaders, mappers and evaluators run on it.

Layout of ``<root>/synthetic/`` (COCO's, one folder per split)::

    train/000000.jpg ...                  images (RGB JPEG)
    panoptic_train/000000.png ...         COCO panoptic PNGs (segment id = R + 256 G + 256^2 B)
    panoptic_semseg_train/000000.png ...  semantic labels, contiguous ids 0..4, 255 = void
    annotations/panoptic_train.json       COCO panoptic JSON
    annotations/instances_train.json      COCO instance JSON (RLE masks of the visible parts)
    (same for val), synthetic.yaml (a dataset description of the panoptic splits, registering
    synthetic_shapes_{train,val} through ``--dataset``) and spec.json, written last, recording what was generated.

Generation is deterministic (one seeded generator per image), takes a few seconds, and is safe when
several processes start at once: each writes into its own temporary folder and renames it into place.
"""
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np
from panopticapi.utils import id2rgb

from .coco_json import mask_annotation
from .description import write_dataset_description

logger = logging.getLogger(__name__)

# Bump when the generated content changes: existing folders with another version are regenerated.
SYNTHETIC_VERSION = 2
DESCRIPTION_FILE = "synthetic.yaml"
DESCRIPTION_NAME = "synthetic_shapes"  # not "synthetic": synthetic_train is the registered instance split

# Category ids are not contiguous on purpose (like COCO's), so the id maps are exercised.
SYNTHETIC_CATEGORIES: List[Dict] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 50, 50], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [240, 200, 40], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [170, 70, 220], "supercategory": "shape"},
    {"id": 21, "name": "sky", "isthing": 0, "color": [110, 170, 235], "supercategory": "background"},
    {"id": 22, "name": "grass", "isthing": 0, "color": [60, 150, 55], "supercategory": "background"},
]
# Contiguous ids: position in SYNTHETIC_CATEGORIES (things first, as in COCO's panoptic list).
CONTIGUOUS_ID = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}
_THINGS = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
_THING_IDS = {c["id"] for c in _THINGS}
_SKY, _GRASS = (c for c in SYNTHETIC_CATEGORIES if not c["isthing"])
IGNORE_LABEL = 255
LABEL_DIVISOR = 1000  # panoptic segment id = category_id * LABEL_DIVISOR + instance number

# Scene parameters: thing sizes in pixels, visibility a thing keeps when later ones occlude it.
_MIN_THING_SIZE, _MAX_THING_SIZE = 20, 80
_MIN_VISIBLE_FRACTION, _MIN_VISIBLE_PIXELS = 0.4, 120
_TOUCH_PROBABILITY, _VOID_PROBABILITY = 0.3, 0.3


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: image counts, image side range (pixels) and the seed."""

    num_train: int = 300
    num_val: int = 50
    min_size: int = 128
    max_size: int = 256
    seed: int = 0

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


def synthetic_metadata() -> Dict:
    """Class names, colours and id maps, laid out like Mask2Former's COCO panoptic metadata."""
    return {
        "thing_classes": [c["name"] for c in _THINGS],
        "thing_colors": [c["color"] for c in _THINGS],
        "stuff_classes": [c["name"] for c in SYNTHETIC_CATEGORIES],
        "stuff_colors": [c["color"] for c in SYNTHETIC_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: CONTIGUOUS_ID[c["id"]] for c in _THINGS},
        "stuff_dataset_id_to_contiguous_id": dict(CONTIGUOUS_ID),
    }


def split_paths(directory: str, split: str) -> Dict[str, str]:
    """Paths of one split inside the synthetic folder."""
    return {
        "image_root": os.path.join(directory, split),
        "panoptic_root": os.path.join(directory, f"panoptic_{split}"),
        "sem_seg_root": os.path.join(directory, f"panoptic_semseg_{split}"),
        "panoptic_json": os.path.join(directory, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(directory, "annotations", f"instances_{split}.json"),
    }


# ---------------------------------------------------------------------------------------------
# one scene


def _shape_mask(name: str, center: Tuple[float, float], size: int, angle: float, hw) -> np.ndarray:
    """Filled shape of the given class as a bool (H, W) mask; ``size`` is its diameter / side."""
    canvas = np.zeros(hw, np.uint8)
    cx, cy = center
    if name == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), size // 2, 1, thickness=-1)
        return canvas.astype(bool)
    if name == "square":
        corner_angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radius = size / math.sqrt(2)
    else:  # equilateral triangle with side ~ 1.2 * size
        corner_angles = angle + np.arange(3) * 2 * np.pi / 3
        radius = 1.2 * size / math.sqrt(3)
    corners = np.stack([cx + radius * np.cos(corner_angles), cy + radius * np.sin(corner_angles)], 1)
    cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1)
    return canvas.astype(bool)


def _paint_background(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sky above a wavy horizon, textured grass below. Returns the float image and the sky mask."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * rng.uniform(0.25, 0.75) + rng.uniform(3, 12) * np.sin(
        2 * np.pi * xs / rng.uniform(40, 120) + rng.uniform(0, 2 * np.pi)
    )
    sky = ys < horizon
    image = np.empty((h, w, 3), np.float32)
    sky_color = np.array(_SKY["color"], np.float32) + rng.uniform(-15, 15, 3)
    image[:] = sky_color + (25 * ys / h)[..., None]  # lighter towards the horizon
    image += rng.normal(0, 4, (h, w, 3))
    grass_color = np.array(_GRASS["color"], np.float32) + rng.uniform(-15, 15, 3)
    blades = 12 * np.sin(2 * np.pi * (xs + 0.3 * ys) / 7)[..., None]
    grass = grass_color + blades + rng.normal(0, 14, (h, w, 3))
    image[~sky] = grass[~sky]
    return image, sky


def _place_things(rng: np.random.Generator, h: int, w: int) -> List[Tuple[Dict, np.ndarray]]:
    """Random things, later ones drawn on top; each keeps enough visible area. Returns
    (category, full mask) pairs in drawing order."""
    things: List[Tuple[Dict, np.ndarray, Tuple[float, float], int]] = []
    owner = np.zeros((h, w), np.int32)  # 1 + index of the visible thing at each pixel, 0 = none
    max_size = min(_MAX_THING_SIZE, int(0.45 * min(h, w)))
    for _ in range(int(rng.integers(2, 7))):
        for _attempt in range(10):
            category = _THINGS[int(rng.integers(len(_THINGS)))]
            size = int(rng.integers(_MIN_THING_SIZE, max_size + 1))
            if things and rng.random() < _TOUCH_PROBABILITY:
                _, _, (ox, oy), other_size = things[int(rng.integers(len(things)))]
                direction = rng.uniform(0, 2 * np.pi)
                distance = (other_size + size) / 2 * rng.uniform(0.8, 1.0)
                center = (ox + distance * np.cos(direction), oy + distance * np.sin(direction))
            else:
                center = (rng.uniform(0, w), rng.uniform(0, h))
            center = (
                float(np.clip(center[0], size / 2, w - size / 2)),
                float(np.clip(center[1], size / 2, h - size / 2)),
            )
            mask = _shape_mask(category["name"], center, size, rng.uniform(0, 2 * np.pi), (h, w))
            covered = np.bincount(owner[mask], minlength=len(things) + 1)[1:]
            visible = np.bincount(owner.ravel(), minlength=len(things) + 1)[1:] - covered
            full = np.array([t[1].sum() for t in things])
            if np.all(visible >= np.maximum(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * full)):
                owner[mask] = len(things) + 1
                things.append((category, mask, center, size))
                break
    return [(category, mask) for category, mask, _, _ in things]


def _paint_thing(rng: np.random.Generator, image: np.ndarray, category: Dict, mask: np.ndarray) -> None:
    """Class colour with a per-instance tint, fine noise, and a darker 2-pixel outline."""
    color = np.array(category["color"], np.float32) + rng.uniform(-20, 20, 3)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    n = int(mask.sum())
    image[mask] = color + rng.normal(0, 6, (n, 3))
    outline = mask & ~inner
    image[outline] = 0.55 * color


def render_scene(rng: np.random.Generator, h: int, w: int):
    """One picture. Returns (RGB uint8 image, panoptic id map int32, segments_info list)."""
    image, sky = _paint_background(rng, h, w)
    panoptic = np.where(sky, _SKY["id"] * LABEL_DIVISOR, _GRASS["id"] * LABEL_DIVISOR).astype(np.int32)
    if rng.random() < _VOID_PROBABILITY:  # an unlabeled noisy blob: void in every format
        void = np.zeros((h, w), np.uint8)
        center = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(5, 13)), int(rng.integers(5, 13)))
        cv2.ellipse(void, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        void = void.astype(bool)
        image[void] = rng.uniform(60, 200, (int(void.sum()), 1))
        panoptic[void] = 0
    counts: Dict[int, int] = {}
    for category, mask in _place_things(rng, h, w):
        _paint_thing(rng, image, category, mask)
        counts[category["id"]] = counts.get(category["id"], 0) + 1
        panoptic[mask] = category["id"] * LABEL_DIVISOR + counts[category["id"]]

    segments_info = []
    ids, areas = np.unique(panoptic, return_counts=True)
    for segment_id, area in zip(ids.tolist(), areas.tolist()):
        if segment_id == 0:
            continue
        ys, xs = np.nonzero(panoptic == segment_id)
        x0, y0 = int(xs.min()), int(ys.min())
        segments_info.append(
            {
                "id": segment_id,
                "category_id": segment_id // LABEL_DIVISOR,
                "area": area,
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": 0,
            }
        )
    return np.clip(image, 0, 255).astype(np.uint8), panoptic, segments_info


# ---------------------------------------------------------------------------------------------
# files


def _write_split(directory: str, split: str, spec: SyntheticSpec) -> None:
    paths = split_paths(directory, split)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    to_semantic = np.full(max(CONTIGUOUS_ID) + 1, IGNORE_LABEL, np.uint8)
    for dataset_id, contiguous_id in CONTIGUOUS_ID.items():
        to_semantic[dataset_id] = contiguous_id

    images, panoptic_annotations, instance_annotations = [], [], []
    for index in range(spec.num_images(split)):
        rng = np.random.default_rng([spec.seed, {"train": 0, "val": 1}[split], index])
        h, w = (int(v) for v in rng.integers(spec.min_size, spec.max_size + 1, 2))
        image, panoptic, segments_info = render_scene(rng, h, w)
        stem, image_id = f"{index:06d}", index + 1
        cv2.imwrite(os.path.join(paths["image_root"], stem + ".jpg"), image[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])  # fmt: skip
        cv2.imwrite(os.path.join(paths["panoptic_root"], stem + ".png"), id2rgb(panoptic)[:, :, ::-1])
        cv2.imwrite(os.path.join(paths["sem_seg_root"], stem + ".png"), to_semantic[panoptic // LABEL_DIVISOR])

        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        panoptic_annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info}
        )
        for segment in segments_info:
            if segment["category_id"] in _THING_IDS:
                annotation = mask_annotation(panoptic == segment["id"], image_id, segment["category_id"])
                instance_annotations.append({"id": len(instance_annotations) + 1, **annotation})

    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    info = {"description": f"dinat_m2f synthetic shapes, {split}", "version": SYNTHETIC_VERSION}
    with open(paths["panoptic_json"], "w") as f:
        json.dump({"info": info, "images": images, "annotations": panoptic_annotations,
                   "categories": SYNTHETIC_CATEGORIES}, f)  # fmt: skip
    with open(paths["instances_json"], "w") as f:
        json.dump({"info": info, "images": images, "annotations": instance_annotations,
                   "categories": [{k: c[k] for k in ("id", "name", "supercategory")} for c in _THINGS]},
                  f)  # fmt: skip


def _write_description(directory: str) -> None:
    splits = {}
    for split in ("train", "val"):
        paths = {k: os.path.relpath(v, directory) for k, v in split_paths(directory, split).items()}
        splits[split] = {"images": paths["image_root"], "annotations": paths["panoptic_json"],
                         "masks": paths["panoptic_root"]}  # fmt: skip
    write_dataset_description(os.path.join(directory, DESCRIPTION_FILE), DESCRIPTION_NAME, "coco_panoptic", splits)


def _spec_record(spec: SyntheticSpec) -> Dict:
    return {"version": SYNTHETIC_VERSION, **asdict(spec)}


def _is_complete(directory: str, spec: SyntheticSpec) -> bool:
    try:
        with open(os.path.join(directory, "spec.json")) as f:
            return json.load(f) == _spec_record(spec)
    except (OSError, ValueError):
        return False


def generate_synthetic_dataset(directory: str, spec: SyntheticSpec = SyntheticSpec()) -> None:
    """Write the synthetic dataset into ``directory`` unless it is already there for ``spec``."""
    if _is_complete(directory, spec):
        return
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    logger.info(f"Generating the synthetic dataset into {directory} ({spec}) ...")
    staging = tempfile.mkdtemp(prefix=".synthetic-staging-", dir=parent)
    try:
        for split in ("train", "val"):
            _write_split(staging, split, spec)
        _write_description(staging)
        with open(os.path.join(staging, "spec.json"), "w") as f:
            json.dump(_spec_record(spec), f)
        _move_into_place(staging, directory, spec)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: str, directory: str, spec: SyntheticSpec) -> None:
    """Rename the finished folder to ``directory`` (atomic); another process may have won the race,
    and an outdated folder (other spec or version) is moved aside first."""
    for _ in range(3):
        try:
            os.rename(staging, directory)  # also replaces an empty directory
            return
        except OSError:
            if _is_complete(directory, spec):
                return  # a concurrent process installed the same data
            outdated = f"{directory}.outdated-{uuid.uuid4().hex}"
            try:
                os.rename(directory, outdated)
            except FileNotFoundError:
                continue
            shutil.rmtree(outdated, ignore_errors=True)
    raise RuntimeError(f"Could not install the synthetic dataset at {directory}")
