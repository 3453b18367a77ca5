"""COCO-style instance evaluation for datasets whose thing classes have non-contiguous contiguous ids
(e.g. ADE20K panoptic: things are 100 of the 150 class ids), which COCOEvaluator refuses, or whose
contiguous ids do not follow ascending dataset ids (a custom dataset listing its categories in any order)."""
import itertools
import json
import os
from typing import Dict, List, Optional

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import COCOeval, COCOeval_opt, _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager


class InstanceSegEvaluator(COCOEvaluator):
    """COCOEvaluator that maps predicted classes back to dataset ids through the inverse of
    ``thing_dataset_id_to_contiguous_id`` without requiring its values to be 0..K-1, and names the per-class
    results by dataset id (COCOeval's category order)."""

    def _eval_predictions(self, predictions: List[Dict], img_ids: Optional[List] = None) -> None:
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            to_dataset_id = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
            for result in coco_results:
                if result["category_id"] not in to_dataset_id:
                    raise ValueError(
                        f"A prediction has class {result['category_id']}, which is not a thing class of "
                        f"this dataset (thing ids: {sorted(to_dataset_id)})"
                    )
                result["category_id"] = to_dataset_id[result["category_id"]]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        for task in sorted(tasks):
            coco_eval = (
                _evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    cocoeval_fn=COCOeval_opt if self._use_fast_impl else COCOeval,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if coco_results
                else None  # the COCO API does not handle empty results
            )
            self._results[task] = self._derive_coco_results(coco_eval, task, class_names=self._class_names())

    def _class_names(self) -> Optional[List[str]]:
        """Names in COCOeval's category order (ascending dataset id). Contiguous ids index ``stuff_classes``
        where panoptic metadata lists every class there (Mask2Former's layout); ``thing_classes`` lists the
        things in the order of their contiguous ids."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            return self._metadata.get("thing_classes")
        stuff_map = self._metadata.get("stuff_dataset_id_to_contiguous_id") or {}
        if all(stuff_map.get(d) == c for d, c in id_map.items()):
            return [self._metadata.stuff_classes[id_map[d]] for d in sorted(id_map)]
        rank = {c: i for i, c in enumerate(sorted(id_map.values()))}
        return [self._metadata.thing_classes[rank[id_map[d]]] for d in sorted(id_map)]
