"""Evaluators: ``build_evaluator`` plus the ones detectron2 lacks or cannot run as shipped, and the check
that their ground-truth files exist before inference."""
from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .ground_truth import check_ground_truth_files, ground_truth_files
from .instance_evaluation import InstanceSegEvaluator

__all__ = [
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "InstanceSegEvaluator",
    "build_evaluator",
    "check_ground_truth_files",
    "ground_truth_files",
]
