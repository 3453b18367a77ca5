"""Evaluators: ``build_evaluator`` plus the ones detectron2 lacks or cannot run as shipped."""
from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .instance_evaluation import InstanceSegEvaluator

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator", "InstanceSegEvaluator", "build_evaluator"]
