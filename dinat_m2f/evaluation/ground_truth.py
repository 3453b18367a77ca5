"""The ground-truth files each evaluator reads after inference, checked before inference starts.

panopticapi, detectron2's SemSegEvaluator and the Cityscapes scripts open their ground truth only in
``evaluate()``, after the whole inference pass: a missing PNG lost the PQ, AP and mIoU of that pass.
"""
import glob
import os
from typing import Callable, Dict, Iterable, List

from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator, DatasetEvaluators, SemSegEvaluator

from ..data.datasets.paths import load_json_file
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

__all__ = ["check_ground_truth_files", "ground_truth_files"]


def _panoptic_files(evaluator: COCOPanopticEvaluator) -> List[str]:
    # pq_compute reads the panoptic JSON and the PNG of every annotation in it
    json_file, root = evaluator._metadata.panoptic_json, evaluator._metadata.panoptic_root
    if not os.path.isfile(json_file):
        return [json_file]
    return [json_file] + [os.path.join(root, ann["file_name"]) for ann in load_json_file(json_file)["annotations"]]


def _semantic_files(evaluator: SemSegEvaluator) -> List[str]:
    return list(evaluator.input_file_to_gt_file.values())


def _cityscapes_files(suffix: str) -> Callable[[DatasetEvaluator], List[str]]:
    def files(evaluator: DatasetEvaluator) -> List[str]:
        pattern = os.path.join(evaluator._metadata.gt_dir, "*", f"*_gtFine_{suffix}.png")
        return glob.glob(pattern) or [pattern]  # the scripts evaluate every file found; none is an error

    return files


GROUND_TRUTH_FILES: Dict[type, Callable[[DatasetEvaluator], List[str]]] = {
    COCOPanopticEvaluator: _panoptic_files,
    SemSegEvaluator: _semantic_files,
    CityscapesSemSegEvaluator: _cityscapes_files("labelIds"),
    CityscapesInstanceEvaluator: _cityscapes_files("instanceIds"),
}  # COCOEvaluator (and InstanceSegEvaluator) read their JSON when they are built, before inference


def ground_truth_files(evaluator: DatasetEvaluator) -> List[str]:
    """The files ``evaluator`` (or each evaluator of a DatasetEvaluators) reads in ``evaluate()``."""
    if isinstance(evaluator, DatasetEvaluators):
        return [path for e in evaluator._evaluators for path in ground_truth_files(e)]
    for evaluator_type, files in GROUND_TRUTH_FILES.items():
        if isinstance(evaluator, evaluator_type):
            return files(evaluator)
    return []


def check_ground_truth_files(evaluators: Iterable[DatasetEvaluator]) -> None:
    """Raise FileNotFoundError listing every ground-truth file of ``evaluators`` that does not exist."""
    missing = sorted({path for e in evaluators for path in ground_truth_files(e) if not os.path.exists(path)})
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ground-truth file(s) that evaluation reads do not exist (checked before inference, "
            "nothing was run):\n  " + "\n  ".join(missing)
        )
