"""The ground-truth files each evaluator reads after inference, checked before inference starts.

panopticapi, detectron2's SemSegEvaluator and the Cityscapes scripts open their ground truth only in
``evaluate()``, after the whole inference pass: a missing PNG lost the PQ, AP and mIoU of that pass, and so
did a panoptic PNG of another size than its image (a broadcast error) or not 8-bit RGB. Both are checked
from the files' headers (nothing is decoded).
"""
import glob
import os
from typing import Callable, Dict, Iterable, List

from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator, DatasetEvaluators, SemSegEvaluator

from ..data.datasets.paths import load_json_file
from ..data.image_files import ImageFileError, panoptic_png_problem, read_image_header
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

__all__ = ["check_ground_truth_files", "ground_truth_files", "panoptic_ground_truth_problems"]

MAX_LISTED = 20


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


def panoptic_ground_truth_problems(evaluator: COCOPanopticEvaluator) -> List[str]:
    """What makes the panoptic PNGs of ``evaluator`` unusable: another size than the JSON gives their image,
    or not 8-bit RGB (read from the headers)."""
    content = load_json_file(evaluator._metadata.panoptic_json)
    sizes = {image["id"]: (image["height"], image["width"]) for image in content["images"]}
    problems = []
    for annotation in content["annotations"]:
        path = os.path.join(evaluator._metadata.panoptic_root, annotation["file_name"])
        try:
            header = read_image_header(path)
        except ImageFileError as error:
            problems.append(str(error))
            continue
        problem = panoptic_png_problem(path, header)
        if problem:
            problems.append(problem)
        expected = sizes.get(annotation["image_id"])
        if expected is not None and expected != (header.height, header.width):
            problems.append(
                f"Panoptic PNG {path} is {header.width}x{header.height} (width x height) but its image "
                f"(image_id {annotation['image_id']}) is {expected[1]}x{expected[0]}"
            )
    return problems


def _evaluators(evaluators: Iterable[DatasetEvaluator]) -> List[DatasetEvaluator]:
    flat = []
    for evaluator in evaluators:
        flat += _evaluators(evaluator._evaluators) if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    return flat


def check_ground_truth_files(evaluators: Iterable[DatasetEvaluator]) -> None:
    """Raise FileNotFoundError listing every ground-truth file of ``evaluators`` that does not exist, then a
    ValueError listing the panoptic PNGs that cannot be evaluated (:func:`panoptic_ground_truth_problems`)."""
    evaluators = _evaluators(evaluators)
    missing = sorted({path for e in evaluators for path in ground_truth_files(e) if not os.path.exists(path)})
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ground-truth file(s) that evaluation reads do not exist (checked before inference, "
            "nothing was run):\n  " + "\n  ".join(missing)
        )
    panoptic = [e for e in evaluators if isinstance(e, COCOPanopticEvaluator)]
    problems = [problem for e in panoptic for problem in panoptic_ground_truth_problems(e)]
    if problems:
        raise ValueError(
            f"{len(problems)} problem(s) with the panoptic ground truth (checked before inference, nothing was "
            f"run; the first {min(len(problems), MAX_LISTED)}):\n  " + "\n  ".join(problems[:MAX_LISTED])
        )
