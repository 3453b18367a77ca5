"""Training mapper for panoptic segmentation with large-scale jitter ("coco_panoptic_lsj")."""
import copy
from typing import Dict

import numpy as np
import torch
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .mapper_utils import (
    add_boxes_from_masks,
    image_to_tensor,
    instances_from_masks,
    padding_mask_after,
    read_image_with_panoptic,
)


class COCOPanopticLSJDatasetMapper(COCOInstanceLSJDatasetMapper):
    """Large-scale jitter on an image and its COCO panoptic PNG. Returns "image", "padding_mask" and
    "instances" (one mask per non-crowd segment, things and stuff, with gt_boxes)."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, pan_seg, segments_info = read_image_with_panoptic(dataset_dict, self.image_format, "coco_panoptic_lsj")
        dataset_dict.pop("sem_seg_file_name", None)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        # padding of the RGB panoptic map is 255 in every channel: an id no segment has
        pan_ids = torch.as_tensor(rgb2id(transforms.apply_segmentation(pan_seg)).astype(np.int64))

        segments = [s for s in segments_info if not s.get("iscrowd", 0)]
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        dataset_dict["padding_mask"] = padding_mask_after(transforms, image.shape[:2])
        dataset_dict["instances"] = add_boxes_from_masks(
            instances_from_masks(
                pan_ids.shape, [s["category_id"] for s in segments], [pan_ids == s["id"] for s in segments]
            )
        )
        return dataset_dict
