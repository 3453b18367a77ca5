"""ADE20K (ADEChallengeData2016): 150-class panoptic and 100-class instance splits, plus missing-path
checks and colours for detectron2's own "ade20k_sem_seg_{train,val}"."""
import os

from detectron2.data import MetadataCatalog

from .ade20k_categories import ADE20K_150_COLORS, ade20k_instance_metadata, ade20k_panoptic_metadata
from .panoptic_json import register_panoptic_with_sem_seg
from .coco_json import load_coco_instances
from .paths import add_path_check, register_checked

_ADE_ZIP = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
_INSTANCE_TAR = "http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar"
_IMAGES_REMEDY = f"Download {_ADE_ZIP} and unzip it into the datasets root."
_SEM_SEG_REMEDY = "Run: python datasets/prepare_ade20k_sem_seg.py"
_INSTANCE_REMEDY = (
    f"Download {_INSTANCE_TAR}, untar it into ADEChallengeData2016/, then run: "
    "python datasets/prepare_ade20k_ins_seg.py"
)
_PANOPTIC_REMEDY = (
    f"Download {_INSTANCE_TAR}, untar it into ADEChallengeData2016/, then run: "
    "python datasets/prepare_ade20k_pan_seg.py"
)
_SPLITS = {"train": "training", "val": "validation"}


def register_ade20k_panoptic(root: str) -> None:
    """"ade20k_panoptic_{train,val}": 150 classes (100 things), panoptic + semantic labels."""
    meta = ade20k_panoptic_metadata()
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, folder in _SPLITS.items():
        image_root = os.path.join(ade, "images", folder)
        panoptic_root = os.path.join(ade, f"ade20k_panoptic_{split}")
        panoptic_json = os.path.join(ade, f"ade20k_panoptic_{split}.json")
        sem_seg_root = os.path.join(ade, "annotations_detectron2", folder)
        instances_json = os.path.join(ade, f"ade20k_instance_{split}.json")
        register_panoptic_with_sem_seg(
            f"ade20k_panoptic_{split}", meta, image_root, panoptic_root, panoptic_json, sem_seg_root,
            instances_json, "ade20k_panoptic_seg",
            [
                (image_root, _IMAGES_REMEDY),
                (panoptic_json, _PANOPTIC_REMEDY),
                (panoptic_root, _PANOPTIC_REMEDY),
                (sem_seg_root, _SEM_SEG_REMEDY),
            ],
        )


def register_ade20k_instance(root: str) -> None:
    """"ade20k_instance_{train,val}": the 100 instance classes, COCO-format JSON with RLE masks."""
    meta = ade20k_instance_metadata()
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, folder in _SPLITS.items():
        image_root = os.path.join(ade, "images", folder)
        json_file = os.path.join(ade, f"ade20k_instance_{split}.json")
        name = f"ade20k_instance_{split}"
        register_checked(
            name,
            lambda j=json_file, i=image_root: load_coco_instances(j, i, meta["thing_dataset_id_to_contiguous_id"]),
            [(image_root, _IMAGES_REMEDY), (json_file, _INSTANCE_REMEDY)],
        )
        MetadataCatalog.get(name).set(
            image_root=image_root, json_file=json_file, evaluator_type="coco", **meta
        )


def add_ade20k_sem_seg_checks() -> None:
    """detectron2 registers "ade20k_sem_seg_{train,val}": add path checks and the class colours."""
    for split in _SPLITS:
        name = f"ade20k_sem_seg_{split}"
        meta = MetadataCatalog.get(name)
        add_path_check(name, [(meta.image_root, _IMAGES_REMEDY), (meta.sem_seg_root, _SEM_SEG_REMEDY)])
        if not meta.get("stuff_colors"):
            meta.stuff_colors = [list(c) for c in ADE20K_150_COLORS]
