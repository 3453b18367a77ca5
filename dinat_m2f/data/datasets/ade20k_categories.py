"""ADE20K (SceneParsing "ADEChallengeData2016") class facts: the 150 semantic classes, their palette,
and which of them are the 100 "thing" classes of the ADE20K instance-segmentation benchmark.

Ids are 0-based positions in the 150-class list (the value in ``annotations/*.png`` minus one).
The panoptic and instance annotations made by ``datasets/prepare_ade20k_{pan,ins}_seg.py`` use these
ids as their ``category_id``.
"""
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

# Short names of the 150 SceneParsing classes, in label order (label value 1 is "wall").
ADE20K_150_NAMES: List[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip

# The standard ADE20K visualization palette (RGB), one colour per class above.
ADE20K_150_COLORS: List[List[int]] = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
]  # fmt: skip

# 0-based ids of the 100 instance-benchmark classes, in the benchmark's order: the R channel of
# ``annotations_instance/*.png`` holds k (1..100) for the class ADE20K_INSTANCE_IDS[k - 1].
ADE20K_INSTANCE_IDS: List[int] = [
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42,
    43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76,
    78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110,
    111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132, 133, 134, 135,
    136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
]  # fmt: skip

ADE20K_150_CATEGORIES: List[Dict] = [
    {"id": i, "name": name, "color": color, "isthing": int(i in ADE20K_INSTANCE_IDS)}
    for i, (name, color) in enumerate(zip(ADE20K_150_NAMES, ADE20K_150_COLORS))
]


def ade20k_panoptic_metadata() -> Dict:
    """Metadata of the 150-class panoptic split: contiguous ids are the 150-class ids, so thing ids
    are not contiguous among themselves (hence the InstanceSegEvaluator for its instance metric)."""
    things = [c for c in ADE20K_150_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": list(ADE20K_150_NAMES),
        "stuff_colors": [list(c) for c in ADE20K_150_COLORS],
        "thing_dataset_id_to_contiguous_id": {c["id"]: c["id"] for c in things},
        # every class, things included, so the semantic evaluator can read the panoptic metadata
        "stuff_dataset_id_to_contiguous_id": {c["id"]: c["id"] for c in ADE20K_150_CATEGORIES},
    }


def ade20k_instance_metadata() -> Dict:
    """Metadata of the 100-class instance split (contiguous ids 0..99, dataset ids as above)."""
    return {
        "thing_classes": [ADE20K_150_NAMES[i] for i in ADE20K_INSTANCE_IDS],
        "thing_colors": [list(ADE20K_150_COLORS[i]) for i in ADE20K_INSTANCE_IDS],
        "thing_dataset_id_to_contiguous_id": {d: i for i, d in enumerate(ADE20K_INSTANCE_IDS)},
    }


def read_ade20k_instances(instance_png: str) -> List[Tuple[int, np.ndarray]]:
    """(0-based ADE20K class id, bool mask) for each instance of an annotations_instance PNG
    (R = 1-based index into the 100 instance classes, G = instance number, 0 = none)."""
    encoded = np.asarray(Image.open(instance_png).convert("RGB"))
    classes, numbers = encoded[:, :, 0], encoded[:, :, 1]
    instances = []
    for number in np.unique(numbers):
        if number == 0:
            continue
        mask = numbers == number
        benchmark_classes = np.unique(classes[mask])
        if len(benchmark_classes) != 1 or not 1 <= benchmark_classes[0] <= len(ADE20K_INSTANCE_IDS):
            raise ValueError(f"{instance_png}: instance {number} has class values {benchmark_classes.tolist()}")
        instances.append((ADE20K_INSTANCE_IDS[int(benchmark_classes[0]) - 1], mask))
    return instances

