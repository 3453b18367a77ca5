"""Cityscapes splits are detectron2's own; this adds errors that name the missing download or script."""
from detectron2.data import MetadataCatalog

from .paths import add_path_check

_DOWNLOAD = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip them into cityscapes/."
)
_PANOPTIC_SCRIPT = (
    "Run: CITYSCAPES_DATASET=<datasets root>/cityscapes "
    "python -m cityscapesscripts.preparation.createPanopticImgs"
)


def add_cityscapes_path_checks() -> None:
    for split in ("train", "val"):
        for task in ("instance_seg", "sem_seg"):
            name = f"cityscapes_fine_{task}_{split}"
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
