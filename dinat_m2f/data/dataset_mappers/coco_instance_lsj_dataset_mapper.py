"""Training mapper for instance segmentation with large-scale jitter ("coco_instance_lsj")."""
import copy
from typing import Dict, List

from detectron2.config import configurable
from detectron2.data import transforms as T

from .mapper_utils import (
    add_boxes_from_masks,
    image_to_tensor,
    instances_from_masks,
    lsj_augmentations,
    padding_mask_after,
    read_image_with_instance_masks,
    transform_mask,
)


class COCOInstanceLSJDatasetMapper:
    """Large-scale jitter (flip, ResizeScale(MIN_SCALE, MAX_SCALE) of IMAGE_SIZE, FixedSizeCrop to
    IMAGE_SIZE x IMAGE_SIZE with padding) on an image and its COCO instance annotations. Returns
    "image" (IMAGE_SIZE square), "padding_mask" (True on padding) and "instances" with gt_classes,
    gt_masks and gt_boxes (tight boxes of the masks). Crowd annotations are skipped."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str):
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training; test data uses InferenceDatasetMapper")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        return {"is_train": is_train, "augmentations": lsj_augmentations(cfg), "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, annotations, masks = read_image_with_instance_masks(dataset_dict, self.image_format)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        h, w = aug_input.image.shape[:2]
        masks = [transform_mask(transforms, m) for m in masks]
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        dataset_dict["padding_mask"] = padding_mask_after(transforms, image.shape[:2])
        dataset_dict["instances"] = add_boxes_from_masks(
            instances_from_masks((h, w), [ann["category_id"] for ann in annotations], masks)
        )
        return dataset_dict
