"""Described datasets (:mod:`.description`) in detectron2's catalogs, and the config side of
``train_net.py --dataset FILE`` / ``DATASETS.DESCRIPTIONS``.

Each split registers as ``<name>_<split>`` with the metadata of the built-in dataset of its kind, so that the
mappers, the Visualizer and the evaluators read it unchanged: ``coco_panoptic`` like
``coco_2017_val_panoptic_with_sem_seg`` (PQ, mask AP, mIoU), ``coco_instances`` like ``coco_2017_val`` (mask
AP), ``semantic_masks`` like ``ade20k_sem_seg_val`` (mIoU, per-class IoU under the given names). A split's
loader checks its files first (:func:`.description_content.prepare_split`, cached).
"""
import logging
import os
from typing import Dict, List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from .coco_json import load_coco_instances
from .description import DatasetDescription, DatasetDescriptionError, load_dataset_description
from .description_content import (
    derived_instances_json,
    derived_semantic_folder,
    prepare_description,
    prepare_split,
    semantic_mask_pairs,
)
from .panoptic_json import load_panoptic_json

__all__ = [
    "apply_dataset_descriptions",
    "description_metadata",
    "prepare_dataset_descriptions",
    "register_dataset_description",
]

logger = logging.getLogger(__name__)

# The training mappers (INPUT.DATASET_MAPPER_NAME) that can read each format's dataset dicts.
FORMAT_MAPPERS: Dict[str, Sequence[str]] = {
    "coco_panoptic": ("mask_former_panoptic", "coco_panoptic_lsj", "mask_former_semantic"),
    "coco_instances": ("mask_former_instance", "coco_instance_lsj"),
    "semantic_masks": ("mask_former_semantic",),
}
EVALUATOR_TYPES = {"coco_panoptic": "coco_panoptic_seg", "coco_instances": "coco", "semantic_masks": "sem_seg"}
NUM_CLASSES_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def description_metadata(description: DatasetDescription, split: str) -> Dict:
    """The MetadataCatalog fields of one split."""
    files = description.splits[split]
    classes = description.classes
    meta = {
        "description_file": description.file,
        "evaluator_type": EVALUATOR_TYPES[description.format],
        "image_root": files.images,
    }
    if description.format == "semantic_masks":
        return dict(
            meta,
            sem_seg_root=files.masks,
            ignore_label=description.ignore_label,
            stuff_classes=[c.name for c in classes],
            stuff_colors=[list(c.color) for c in classes],
        )
    things = [(i, c) for i, c in enumerate(classes) if c.isthing]
    meta.update(
        thing_classes=[c.name for _, c in things],
        thing_colors=[list(c.color) for _, c in things],
        thing_dataset_id_to_contiguous_id={c.dataset_id: i for i, c in things},
    )
    if description.format == "coco_instances":
        return dict(meta, json_file=files.annotations)
    return dict(
        meta,
        panoptic_root=files.masks,
        panoptic_json=files.annotations,
        sem_seg_root=derived_semantic_folder(description, split),
        json_file=derived_instances_json(description, split),
        ignore_label=description.ignore_label,
        label_divisor=1000,
        # every class, things included, so the semantic evaluator can read the panoptic metadata
        stuff_classes=[c.name for c in classes],
        stuff_colors=[list(c.color) for c in classes],
        stuff_dataset_id_to_contiguous_id={c.dataset_id: i for i, c in enumerate(classes)},
    )


def _load_split(description: DatasetDescription, split: str) -> List[Dict]:
    prepare_split(description, split)
    files = description.splits[split]
    meta = description_metadata(description, split)
    if description.format == "coco_panoptic":
        return load_panoptic_json(files.annotations, files.images, files.masks, meta["sem_seg_root"], meta)
    if description.format == "coco_instances":
        return load_coco_instances(files.annotations, files.images, meta["thing_dataset_id_to_contiguous_id"])
    pairs, _, _ = semantic_mask_pairs(files)
    return [
        {"file_name": image, "sem_seg_file_name": mask, "image_id": os.path.relpath(image, files.images)}
        for image, mask in pairs
    ]


def register_dataset_description(description: DatasetDescription) -> List[str]:
    """Register every split as ``<name>_<split>`` and return the names. A name another description or a
    built-in dataset already holds is an error; the same file registers again in place."""
    names = [description.dataset_name(split) for split in description.splits]
    for name in names:
        if name in DatasetCatalog:
            owner = MetadataCatalog.get(name).get("description_file")
            if owner != description.file:
                held_by = f"the description {owner}" if owner else "a built-in dataset"
                raise DatasetDescriptionError(
                    f"Dataset description {description.file}: name: '{name}' is already registered by {held_by}; "
                    "choose another name"
                )
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    for split, name in zip(description.splits, names):
        DatasetCatalog.register(name, lambda s=split: _load_split(description, s))
        MetadataCatalog.get(name).set(**description_metadata(description, split))
    return names


def _num_classes(descriptions: Sequence[DatasetDescription]) -> int:
    first = descriptions[0]
    for other in descriptions[1:]:
        if [c.name for c in other.classes] != [c.name for c in first.classes]:
            raise DatasetDescriptionError(
                f"DATASETS.DESCRIPTIONS: {other.file} and {first.file} have other classes; datasets trained "
                "together need the same classes in the same order"
            )
    return len(first.classes)


def apply_dataset_descriptions(cfg: CfgNode, command_line_opts: Sequence[str] = ()) -> List[DatasetDescription]:
    """Load and register the files of DATASETS.DESCRIPTIONS (recorded as absolute paths) and set from them
    DATASETS.TRAIN (their "train" splits), DATASETS.TEST (their "val" splits) and
    MODEL.SEM_SEG_HEAD.NUM_CLASSES (their class count). A DATASETS.TRAIN or TEST given in
    ``command_line_opts`` (KEY VALUE pairs) is kept; a NUM_CLASSES given there that disagrees is an error
    naming both. The config's INPUT.DATASET_MAPPER_NAME must be able to read the training format."""
    files = list(dict.fromkeys(os.path.abspath(path) for path in cfg.DATASETS.DESCRIPTIONS))  # each file once
    if not files:
        return []
    cfg.DATASETS.DESCRIPTIONS = files
    descriptions = [load_dataset_description(file) for file in files]
    for description in descriptions:
        register_dataset_description(description)
    explicit = dict(zip(command_line_opts[0::2], command_line_opts[1::2]))
    splits = {"DATASETS.TRAIN": "train", "DATASETS.TEST": "val"}
    for key, split in splits.items():
        if key not in explicit:
            names = tuple(d.dataset_name(split) for d in descriptions if split in d.splits)
            setattr(cfg.DATASETS, key.split(".")[1], names)
    num_classes = _num_classes(descriptions)
    if NUM_CLASSES_KEY in explicit and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != num_classes:
        raise DatasetDescriptionError(
            f"{NUM_CLASSES_KEY} {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} (command line) disagrees with the "
            f"{num_classes} classes of {descriptions[0].file}; leave it out, --dataset sets it"
        )
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != num_classes:
        logger.info("%s %d -> %d: the classes of %s", NUM_CLASSES_KEY, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                    num_classes, descriptions[0].file)  # fmt: skip
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    trained = [d for d in descriptions if "train" in d.splits]
    mapper = cfg.INPUT.DATASET_MAPPER_NAME
    for description in trained:
        if mapper not in FORMAT_MAPPERS[description.format]:
            raise DatasetDescriptionError(
                f"INPUT.DATASET_MAPPER_NAME '{mapper}' cannot read format {description.format} "
                f"({description.file}); it needs one of {', '.join(FORMAT_MAPPERS[description.format])}: use a "
                "config of the matching task (configs/<dataset>/<task>/...)"
            )
    return descriptions


def prepare_dataset_descriptions(cfg: CfgNode) -> None:
    """Log what each DATASETS.DESCRIPTIONS file registers and check all its splits (all problems at once),
    deriving coco_panoptic's files; unchanged splits that passed before are not read again. The main
    process checks while the others wait (a failure there ends them all)."""
    if not cfg.DATASETS.DESCRIPTIONS:
        return
    for file in cfg.DATASETS.DESCRIPTIONS:
        description = load_dataset_description(file)
        logger.info(
            "Dataset %s (%s, %s): %d classes (%s); splits %s", description.name, file, description.format,
            len(description.classes), ", ".join(c.name for c in description.classes),
            ", ".join(description.dataset_name(split) for split in description.splits),
        )  # fmt: skip
        if comm.is_main_process():
            prepare_description(description)
    comm.synchronize()
