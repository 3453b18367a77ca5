"""Pieces shared by the dataset mappers: reading a sample's files (errors naming them, see
:mod:`..image_files`) and checking they agree, padding, per-segment masks, and the augmentation lists built
from the config."""
import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask
from detectron2.utils.logger import log_first_n
from panopticapi.utils import rgb2id

from ..image_files import check_same_size, read_image_file, read_panoptic_png
from .color_augmentation import ColorAugSSDTransform

# Value of padded image pixels (mid-grey, as Mask2Former pads).
IMAGE_PAD_VALUE = 128


def augmentable_labels(labels: np.ndarray) -> np.ndarray:
    """Label map in a dtype detectron2's resize handles exactly: uint8 (PIL) when the values fit,
    else float64 (torch's nearest interpolation has no integer kernels)."""
    if labels.dtype == np.uint8:
        return labels
    if labels.size and labels.min() >= 0 and labels.max() <= 255:
        return labels.astype(np.uint8)
    return labels.astype(np.float64)


def pad_to_divisibility(tensor: torch.Tensor, size_divisibility: int, value: float) -> torch.Tensor:
    """Pad the last two dims at the bottom/right up to the next multiple of ``size_divisibility``."""
    if size_divisibility <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    pad_h = (size_divisibility - h % size_divisibility) % size_divisibility
    pad_w = (size_divisibility - w % size_divisibility) % size_divisibility
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value).contiguous()


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array to a (C, H, W) uint8 tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def instances_from_masks(
    image_size: Sequence[int], classes: Sequence[int], masks: Sequence[torch.Tensor]
) -> Instances:
    """Instances with ``gt_classes`` (N,) int64 and ``gt_masks`` (N, H, W) bool; empty masks (e.g.
    segments cropped away by augmentation) are dropped."""
    keep = [i for i, m in enumerate(masks) if bool(m.any())]
    instances = Instances(tuple(image_size))
    instances.gt_classes = torch.tensor([int(classes[i]) for i in keep], dtype=torch.int64)
    if keep:
        instances.gt_masks = torch.stack([masks[i].to(torch.bool) for i in keep])
    else:
        instances.gt_masks = torch.zeros((0, *image_size), dtype=torch.bool)
    return instances


def add_boxes_from_masks(instances: Instances) -> Instances:
    instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
    return instances


def annotation_masks(annotations: List[Dict], height: int, width: int) -> List[np.ndarray]:
    """Bool masks of transformed COCO annotations: polygons, RLE (compressed or not) or arrays."""
    masks = []
    for ann in annotations:
        segm = ann["segmentation"]
        if isinstance(segm, list):
            masks.append(polygons_to_bitmask(segm, height, width))
        elif isinstance(segm, dict):
            if isinstance(segm["counts"], list):  # uncompressed RLE
                segm = mask_util.frPyObjects(segm, *segm["size"])
            masks.append(mask_util.decode(segm).astype(bool))
        elif isinstance(segm, np.ndarray) and segm.ndim == 2:
            masks.append(segm.astype(bool))
        else:
            raise ValueError(f"Cannot convert a segmentation of type {type(segm)} to a mask")
    return masks


def transform_mask(transforms: T.TransformList, mask: np.ndarray) -> torch.Tensor:
    """A bool mask through the image's geometric transforms (padding they add is False)."""
    return torch.as_tensor(transforms.apply_segmentation(mask.astype(np.uint8)) == 1)


def panoptic_to_semantic(pan_ids: np.ndarray, segments_info: List[Dict], ignore_label: int) -> np.ndarray:
    """Semantic label map of a panoptic id map (contiguous category ids; void -> ignore_label)."""
    semantic = np.full(pan_ids.shape, ignore_label, dtype=np.int64)
    for segment in segments_info:
        semantic[pan_ids == segment["id"]] = segment["category_id"]
    return semantic


def ignore_label_of(cfg: CfgNode) -> int:
    """The training set's ignore label (metadata), else MODEL.SEM_SEG_HEAD.IGNORE_VALUE."""
    default = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if not cfg.DATASETS.TRAIN:
        return default
    return MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", default)


def _flip(cfg: CfgNode) -> List[T.Augmentation]:
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    direction = cfg.INPUT.RANDOM_FLIP
    return [T.RandomFlip(horizontal=direction == "horizontal", vertical=direction == "vertical")]


def mask_former_augmentations(cfg: CfgNode, category_area_crop: bool) -> List[T.Augmentation]:
    """Resize the shortest edge, crop (under the single-category area constraint when the mapper has
    semantic labels), SSD colour distortion, flip."""
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_area_crop:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    ignore_label_of(cfg),
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    return augs + _flip(cfg)


def lsj_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Large-scale jitter: flip, resize to a random scale of IMAGE_SIZE, fixed-size crop/pad."""
    size = cfg.INPUT.IMAGE_SIZE
    return _flip(cfg) + [
        T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size), pad_value=IMAGE_PAD_VALUE),
    ]


def padding_mask_after(transforms: T.TransformList, image_hw: Sequence[int]) -> torch.Tensor:
    """(H, W) bool tensor, True on pixels that the transforms added as padding."""
    ones = np.ones(tuple(image_hw), dtype=np.uint8)
    return torch.as_tensor(transforms.apply_segmentation(ones) != 1)


def read_image_with_instance_masks(dataset_dict: Dict, image_format) -> tuple:
    """(image, non-crowd annotations, their masks) of a dataset dict with COCO "annotations"; the masks
    are rasterized (polygons) or decoded (RLE) at the original size, to follow the image's transforms."""
    image = read_image_file(dataset_dict["file_name"], image_format)
    utils.check_image_size(dataset_dict, image)
    annotations = [ann for ann in dataset_dict.pop("annotations", []) if not ann.get("iscrowd", 0)]
    return image, annotations, annotation_masks(annotations, *image.shape[:2])


def read_image_with_panoptic(dataset_dict: Dict, image_format, mapper_name: str) -> tuple:
    """(image, RGB panoptic PNG, segments_info) of a COCO panoptic dataset dict. A PNG of another size than
    its image is an error naming both; segments absent from the PNG (and PNG ids without a segment, which
    train as void) get a warning naming the file, once per process."""
    image = read_image_file(dataset_dict["file_name"], image_format)
    utils.check_image_size(dataset_dict, image)
    if "pan_seg_file_name" not in dataset_dict:
        raise ValueError(
            f"{dataset_dict['file_name']}: the dataset dict has no 'pan_seg_file_name', "
            f"which the {mapper_name} mapper needs"
        )
    pan_file = dataset_dict.pop("pan_seg_file_name")
    pan_seg = read_panoptic_png(pan_file)
    check_same_size(f"Panoptic PNG {pan_file}", pan_seg.shape, dataset_dict["file_name"], image.shape)
    segments_info = dataset_dict.pop("segments_info")
    _warn_unmatched_segments(pan_file, rgb2id(pan_seg), segments_info)
    return image, pan_seg, segments_info


def unmatched_segments(pan_ids: np.ndarray, segments_info: List[Dict]) -> Tuple[List[int], List[int]]:
    """(ids of segments_info absent from the id map, non-void ids of the map without a segment)."""
    present = set(np.unique(pan_ids).tolist()) - {0}
    listed = [s["id"] for s in segments_info]
    return [i for i in listed if i not in present], sorted(present - set(listed))


def _warn_unmatched_segments(pan_file: str, pan_ids: np.ndarray, segments_info: List[Dict]) -> None:
    absent, unlisted = unmatched_segments(pan_ids, segments_info)
    if absent or unlisted:
        log_first_n(
            logging.WARNING,
            f"Panoptic PNG {pan_file}: segments_info ids {absent} are absent from it, its ids {unlisted} have no "
            "segment (trained as void)",
            n=1,
            name=__name__,
            key="message",
        )
