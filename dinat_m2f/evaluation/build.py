"""Evaluators for a dataset, chosen the way Mask2Former's train_net chooses them: by the dataset's
``evaluator_type`` and the MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON flags."""
import os
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluator, DatasetEvaluators

from ..data.datasets import ensure_synthetic_files, is_synthetic
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_evaluation import SemSegEvaluator

PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "cityscapes_panoptic_seg")


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` (a DatasetEvaluators when there are several).

    - "sem_seg": SemSegEvaluator (mIoU; the project's, which checks the ground truth it reads).
    - "coco": mask AP (:func:`mask_ap_evaluator`).
    - "coco_panoptic_seg" / "ade20k_panoptic_seg" / "cityscapes_panoptic_seg": COCOPanopticEvaluator (PQ)
      when PANOPTIC_ON; instance AP when INSTANCE_ON (:func:`mask_ap_evaluator` on the dataset's
      ``json_file``; Cityscapes' own script); mIoU when SEMANTIC_ON (SemSegEvaluator; Cityscapes' own script).
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
        evaluators.append(mask_ap_evaluator(dataset_name, output_folder))
    if evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))

    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test.INSTANCE_ON:
        if evaluator_type == "cityscapes_panoptic_seg":
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        else:
            evaluators.append(mask_ap_evaluator(dataset_name, output_folder))
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


def mask_ap_evaluator(dataset_name: str, output_folder: str) -> COCOEvaluator:
    """COCOEvaluator on masks when the thing classes' contiguous ids are 0..K-1 in ascending dataset-id
    order (COCO's layout), else InstanceSegEvaluator: COCOEvaluator refuses other ids (e.g. ADE20K's) and
    would name per-class results by position, which is wrong when the dataset lists its ids in another order."""
    id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id") or {}
    coco_layout = [id_map[d] for d in sorted(id_map)] == list(range(len(id_map)))
    evaluator_class = COCOEvaluator if coco_layout else InstanceSegEvaluator
    return evaluator_class(dataset_name, tasks=("segm",), output_dir=output_folder)
