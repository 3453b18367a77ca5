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


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable:
    """The training mapper INPUT.DATASET_MAPPER_NAME names, or the test-time InferenceDatasetMapper."""
    if not is_train:
        return InferenceDatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(f"Unknown INPUT.DATASET_MAPPER_NAME '{name}'; known: {', '.join(sorted(TRAIN_MAPPERS))}")
    return TRAIN_MAPPERS[name](cfg, True)
