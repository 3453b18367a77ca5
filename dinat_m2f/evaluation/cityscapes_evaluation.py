"""Cityscapes evaluators that run with the public ``cityscapesscripts`` package.

detectron2's CityscapesInstanceEvaluator / CityscapesSemSegEvaluator import the Cityscapes API under
an internal module path that does not exist outside Meta, so they fail at the first image. These
subclasses use ``cityscapesscripts`` and keep the API's side files (matches.json) in the temporary folder
instead of the working directory. The scripts (cityscapesScripts 2.3) also predate NumPy 2: they call
``np.in1d`` (removed in NumPy 2.4) and cannot write NumPy integers to JSON; the evaluators give the
script modules a numpy with ``in1d`` and a JSON writer that converts NumPy scalars."""
import contextlib
import glob
import json
import os
from collections import OrderedDict
from typing import Dict, List

import numpy as np
from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator
from detectron2.evaluation import CityscapesSemSegEvaluator as _D2CityscapesSemSegEvaluator
from detectron2.utils import comm
from PIL import Image


def _ground_truth_files(gt_dir: str, suffix: str) -> List[str]:
    files = sorted(glob.glob(os.path.join(gt_dir, "*", f"*_gtFine_{suffix}.png")))
    if not files:
        raise FileNotFoundError(f"No Cityscapes ground truth '*_gtFine_{suffix}.png' under {gt_dir}/<city>/")
    return files


class _NumpyWithIn1d:
    """numpy as the Cityscapes scripts call it (np.in1d, removed in NumPy 2.4, is np.isin flattened)."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def in1d(values, test_values, invert: bool = False) -> np.ndarray:
        return np.isin(np.ravel(values), test_values, invert=invert)


def _write_json(content, file_name: str) -> None:
    def encode(value):
        return value.item() if isinstance(value, np.generic) else value.__dict__

    with open(file_name, "w") as f:
        json.dump(content, f, default=encode, sort_keys=True, indent=4)


def _configure(api, prediction_dir: str) -> None:
    if not hasattr(np, "in1d"):
        api.np = _NumpyWithIn1d()
    api.writeDict2JSON = _write_json
    api.args.predictionPath = os.path.abspath(prediction_dir)
    api.args.predictionWalk = None
    api.args.JSONOutput = False
    api.args.colorized = False
    api.args.quiet = True


class CityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    """Instance AP / AP50 with the official Cityscapes script (it evaluates in the main process)."""

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        from cityscapesscripts.helpers.labels import name2label

        for input, output in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            lines = []
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                for i in range(len(instances)):
                    class_name = self._metadata.thing_classes[int(instances.pred_classes[i])]
                    png_name = f"{stem}_{i}_{class_name}.png"
                    mask = instances.pred_masks[i].numpy().astype(np.uint8) * 255
                    Image.fromarray(mask).save(os.path.join(self._temp_dir, png_name))
                    lines.append(f"{png_name} {name2label[class_name].id} {float(instances.scores[i])}\n")
            # the script needs a (possibly empty) prediction file for every ground-truth image
            with open(os.path.join(self._temp_dir, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as api

        _configure(api, self._temp_dir)
        api.args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")
        gt_files = _ground_truth_files(self._metadata.gt_dir, "instanceIds")
        predictions = [api.getPrediction(gt, api.args) for gt in gt_files]
        with contextlib.chdir(self._temp_dir):
            averages = api.evaluateImgLists(predictions, gt_files, api.args)["averages"]
        self._working_dir.cleanup()
        return OrderedDict(segm={"AP": averages["allAp"] * 100, "AP50": averages["allAp50%"] * 100})


class CityscapesSemSegEvaluator(_D2CityscapesSemSegEvaluator):
    """IoU / iIoU over classes and categories with the official Cityscapes script."""

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        from cityscapesscripts.helpers.labels import trainId2label

        for input, output in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            train_ids = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy()
            label_ids = np.full(train_ids.shape, 255, dtype=np.uint8)
            for train_id, label in trainId2label.items():
                if not label.ignoreInEval:
                    label_ids[train_ids == train_id] = label.id
            Image.fromarray(label_ids).save(os.path.join(self._temp_dir, stem + "_pred.png"))

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as api

        _configure(api, self._temp_dir)
        gt_files = _ground_truth_files(self._metadata.gt_dir, "labelIds")
        predictions = [api.getPrediction(api.args, gt) for gt in gt_files]
        with contextlib.chdir(self._temp_dir):
            results = api.evaluateImgLists(predictions, gt_files, api.args)
        self._working_dir.cleanup()
        return OrderedDict(
            sem_seg={
                "IoU": 100.0 * results["averageScoreClasses"],
                "iIoU": 100.0 * results["averageScoreInstClasses"],
                "IoU_sup": 100.0 * results["averageScoreCategories"],
                "iIoU_sup": 100.0 * results["averageScoreInstCategories"],
            }
        )
