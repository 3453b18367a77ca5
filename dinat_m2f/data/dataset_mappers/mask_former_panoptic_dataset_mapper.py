"""Training mapper for panoptic segmentation ("mask_former_panoptic")."""
import copy
from typing import Dict

import numpy as np
import torch
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from .mapper_utils import (
    IMAGE_PAD_VALUE,
    augmentable_labels,
    image_to_tensor,
    instances_from_masks,
    pad_to_divisibility,
    panoptic_to_semantic,
    read_image_with_panoptic,
)
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """Reads an image, its COCO panoptic PNG and semantic PNG, augments them as the semantic mapper
    does and returns "image", "sem_seg" and "instances" (one mask per non-crowd segment). Without a
    "sem_seg_file_name" the semantic map is derived from the panoptic segments."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, pan_seg, segments_info = read_image_with_panoptic(
            dataset_dict, self.image_format, "mask_former_panoptic"
        )
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = self.read_labels(dataset_dict.pop("sem_seg_file_name"), dataset_dict["file_name"], image)
        else:
            sem_seg = panoptic_to_semantic(rgb2id(pan_seg), segments_info, self.ignore_label)

        aug_input = T.AugInput(image, sem_seg=augmentable_labels(sem_seg))
        transforms = self.augmentations(aug_input)
        pan_ids = torch.as_tensor(rgb2id(transforms.apply_segmentation(pan_seg)).astype(np.int64))

        image = pad_to_divisibility(image_to_tensor(aug_input.image), self.size_divisibility, IMAGE_PAD_VALUE)
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        sem_seg = pad_to_divisibility(sem_seg, self.size_divisibility, self.ignore_label)
        pan_ids = pad_to_divisibility(pan_ids, self.size_divisibility, 0)

        segments = [s for s in segments_info if not s.get("iscrowd", 0)]
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = instances_from_masks(
            image.shape[-2:], [s["category_id"] for s in segments], [pan_ids == s["id"] for s in segments]
        )
        return dataset_dict
