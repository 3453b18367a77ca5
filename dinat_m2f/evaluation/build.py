"""Evaluators for a dataset, chosen the way Mask2Former's train_net chooses them: by the dataset's
``evaluator_type`` and the MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON flags."""
import os
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from ..data.datasets import ensure_synthetic_files, is_synthetic
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .instance_evaluation import InstanceSegEvaluator

PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "cityscapes_panoptic_seg")


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` (a DatasetEvaluators when there are several).

    - "sem_seg": SemSegEvaluator (mIoU).
    - "coco": COCOEvaluator on masks (AP).
    - "coco_panoptic_seg" / "ade20k_panoptic_seg" / "cityscapes_panoptic_seg": COCOPanopticEvaluator (PQ)
      when PANOPTIC_ON; instance AP when INSTANCE_ON (COCOEvaluator on the dataset's ``json_file``;
      InstanceSegEvaluator for ADE20K, whose thing ids are not 0..K-1; Cityscapes' own script);
      mIoU when SEMANTIC_ON (SemSegEvaluator; Cityscapes' own script).
    - "cityscapes_instance", "cityscapes_sem_seg": the Cityscapes scripts.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    if is_synthetic(dataset_name):
        ensure_synthetic_files(dataset_name)  # the evaluators read the ground-truth files
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators: List[DatasetEvaluator] = []

    if evaluator_type == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder))
    if evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))

    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test.INSTANCE_ON:
        if evaluator_type == "coco_panoptic_seg":
            evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder))
        elif evaluator_type == "ade20k_panoptic_seg":
            evaluators.append(InstanceSegEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder))
        else:
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test.SEMANTIC_ON:
        if evaluator_type == "cityscapes_panoptic_seg":
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        else:
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))

    if not evaluators:
        raise ValueError(
            f"No evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}, "
            f"SEMANTIC_ON={test.SEMANTIC_ON}, INSTANCE_ON={test.INSTANCE_ON}, PANOPTIC_ON={test.PANOPTIC_ON})"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
