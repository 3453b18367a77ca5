"""Evaluators: ``build_evaluator`` plus the ones detectron2 lacks or cannot run as shipped, and the check
that their ground-truth files exist and can be evaluated before inference."""
from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .ground_truth import check_ground_truth_files, ground_truth_files
from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_evaluation import SemSegEvaluator

__all__ = [
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "InstanceSegEvaluator",
    "SemSegEvaluator",
    "build_evaluator",
    "check_ground_truth_files",
    "ground_truth_files",
]
