"""detectron2's mIoU evaluator with ground truth that is checked as it is read."""
from typing import Dict, List

import numpy as np
from detectron2.evaluation import SemSegEvaluator as Detectron2SemSegEvaluator

from ..data.image_files import check_same_size, read_image_header, read_label_map


class SemSegEvaluator(Detectron2SemSegEvaluator):
    """detectron2's SemSegEvaluator reading ground truth through the project's reader (8/16-bit, palette):
    a label file whose size differs from the prediction (its image's size), or with a value that is neither
    a class nor the ignore label, is an error naming the file (detectron2's raised a broadcast or reshape
    error, or counted the value as another class)."""

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str | None = None):
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=self._read_ground_truth)

    def _read_ground_truth(self, file_name: str, dtype=int) -> np.ndarray:
        return read_label_map(file_name, self._num_classes, self._ignore_label).astype(dtype)

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for sample, output in zip(inputs, outputs):
            gt_file = self.input_file_to_gt_file[sample["file_name"]]
            header = read_image_header(gt_file)
            check_same_size(f"Label file {gt_file}", (header.height, header.width), sample["file_name"],
                            tuple(output["sem_seg"].shape[-2:]))  # fmt: skip
        super().process(inputs, outputs)
