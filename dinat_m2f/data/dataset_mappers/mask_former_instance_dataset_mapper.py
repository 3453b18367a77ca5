"""Training mapper for instance segmentation ("mask_former_instance")."""
import copy
from typing import Dict, List

from detectron2.config import configurable
from detectron2.data import transforms as T

from .mapper_utils import (
    IMAGE_PAD_VALUE,
    image_to_tensor,
    instances_from_masks,
    mask_former_augmentations,
    pad_to_divisibility,
    read_image_with_instance_masks,
    transform_mask,
)


class MaskFormerInstanceDatasetMapper:
    """Reads an image and its COCO instance annotations (polygons or RLE), augments them (resize,
    random crop, SSD colour, flip; there is no semantic map for an area constraint), pads to
    INPUT.SIZE_DIVISIBILITY (image 128, masks 0) and returns "image" and "instances".
    Crowd annotations are skipped."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str, size_divisibility: int):
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training; test data uses InferenceDatasetMapper")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": mask_former_augmentations(cfg, category_area_crop=False),
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, annotations, masks = read_image_with_instance_masks(dataset_dict, self.image_format)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        masks = [pad_to_divisibility(transform_mask(transforms, m), self.size_divisibility, 0) for m in masks]
        image = pad_to_divisibility(image_to_tensor(image), self.size_divisibility, IMAGE_PAD_VALUE)
        dataset_dict["image"] = image
        dataset_dict["instances"] = instances_from_masks(
            image.shape[-2:], [ann["category_id"] for ann in annotations], masks
        )
        return dataset_dict
