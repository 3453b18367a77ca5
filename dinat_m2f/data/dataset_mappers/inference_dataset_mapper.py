"""Test-time mapper: resize only; ground truth stays in files for the evaluators."""
import copy
from typing import Dict, List

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_files import read_image_file
from .mapper_utils import image_to_tensor


class InferenceDatasetMapper:
    """Reads the image (an unreadable file raises an error naming it), resizes its shortest edge to
    INPUT.MIN_SIZE_TEST (longest at most INPUT.MAX_SIZE_TEST) and returns "image" with the original
    "height"/"width", which the model resizes its outputs back to."""

    @configurable
    def __init__(self, is_train: bool = False, *, augmentations: List, image_format: str):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = False) -> Dict:
        resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        return {"is_train": is_train, "augmentations": [resize], "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict
