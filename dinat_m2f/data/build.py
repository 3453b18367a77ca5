"""Pick the dataset mapper named by INPUT.DATASET_MAPPER_NAME."""
from typing import Callable, Dict

from detectron2.config import CfgNode

from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    InferenceDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)

TRAIN_MAPPERS: Dict[str, Callable] = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
}


def build_train_mapper(cfg: CfgNode, is_train: bool = True) -> Callable:
    """The training mapper that INPUT.DATASET_MAPPER_NAME names."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(f"Unknown INPUT.DATASET_MAPPER_NAME '{name}'; known: {', '.join(sorted(TRAIN_MAPPERS))}")
    return TRAIN_MAPPERS[name](cfg, is_train)


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable:
    """The training mapper INPUT.DATASET_MAPPER_NAME names, or the test-time InferenceDatasetMapper."""
    return build_train_mapper(cfg) if is_train else InferenceDatasetMapper(cfg, False)
