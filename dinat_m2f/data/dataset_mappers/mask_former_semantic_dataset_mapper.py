"""Training mapper for semantic segmentation ("mask_former_semantic")."""
import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_files import check_same_size, read_image_file, read_label_map
from .mapper_utils import (
    IMAGE_PAD_VALUE,
    augmentable_labels,
    ignore_label_of,
    image_to_tensor,
    instances_from_masks,
    mask_former_augmentations,
    pad_to_divisibility,
)


class MaskFormerSemanticDatasetMapper:
    """Reads an image and its semantic label PNG, augments both (resize, crop under the
    single-category area constraint, SSD colour, flip), pads to INPUT.SIZE_DIVISIBILITY (image 128,
    labels ignore_label) and returns "image", "sem_seg" and "instances" (one mask per class present).
    A label that is neither a class (below MODEL.SEM_SEG_HEAD.NUM_CLASSES) nor the ignore label is an error
    naming the file."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        num_classes: int,
    ):
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training; test data uses InferenceDatasetMapper")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": mask_former_augmentations(cfg, category_area_crop=True),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label_of(cfg),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def read_labels(self, file_name: str, image_file: str, image: np.ndarray) -> np.ndarray:
        """The semantic label file of ``image``, checked: same size, classes or the ignore label only."""
        labels = read_label_map(file_name, self.num_classes, self.ignore_label)
        check_same_size(f"Label file {file_name}", labels.shape, image_file, image.shape)
        return labels

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']}: the dataset dict has no 'sem_seg_file_name', "
                "which the mask_former_semantic mapper needs"
            )
        sem_seg = self.read_labels(dataset_dict.pop("sem_seg_file_name"), dataset_dict["file_name"], image)

        aug_input = T.AugInput(image, sem_seg=augmentable_labels(sem_seg))
        self.augmentations(aug_input)
        image = pad_to_divisibility(image_to_tensor(aug_input.image), self.size_divisibility, IMAGE_PAD_VALUE)
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        sem_seg = pad_to_divisibility(sem_seg, self.size_divisibility, self.ignore_label)

        classes = [c for c in torch.unique(sem_seg).tolist() if c != self.ignore_label]
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = instances_from_masks(
            image.shape[-2:], classes, [sem_seg == c for c in classes]
        )
        return dataset_dict
