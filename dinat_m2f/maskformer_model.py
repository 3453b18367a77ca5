"""The MaskFormer meta-architecture of Mask2Former: backbone + MaskFormerHead, trained with a Hungarian
set criterion, with semantic, panoptic and instance inference."""
import logging
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList, Instances
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn

from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher
from .modeling.meta_arch import MaskFormerHead  # noqa: F401  (registers the head)

__all__ = ["MaskFormer"]

logger = logging.getLogger(__name__)


def _dataset_metadata(cfg: CfgNode):
    """Metadata of the first training dataset (the test dataset if no training dataset is given)."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("MaskFormer needs dataset metadata: set DATASETS.TRAIN or DATASETS.TEST")
    return MetadataCatalog.get(names[0])


def _check_num_classes(cfg: CfgNode, metadata) -> None:
    """NUM_CLASSES must match the dataset: all classes (stuff_classes) for semantic/panoptic models,
    thing_classes for instance-only models."""
    test = cfg.MODEL.MASK_FORMER.TEST
    fields = ["stuff_classes", "thing_classes"]
    if not (test.SEMANTIC_ON or test.PANOPTIC_ON):
        fields.reverse()
    field = next((f for f in fields if metadata.get(f) is not None), None)
    if field is None:
        logger.warning(f"Dataset {metadata.name!r} lists no classes; MODEL.SEM_SEG_HEAD.NUM_CLASSES is not checked")
        return
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    expected = len(metadata.get(field))
    if num_classes != expected:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes} but dataset {metadata.name!r} has {expected} "
            f"classes ({field})"
        )


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
    ):
        """
        Args:
            backbone, sem_seg_head: the backbone and the MaskFormerHead.
            criterion: the SetCriterion (its ``weight_dict`` weights the losses).
            num_queries: number of object queries.
            object_mask_threshold, overlap_threshold: panoptic inference thresholds.
            metadata: dataset metadata (``thing_dataset_id_to_contiguous_id`` decides which classes are things).
            size_divisibility: pad images to a multiple of this (< 0: the backbone's).
            sem_seg_postprocess_before_inference: resize the masks to the output size before inference
                (needed by panoptic and instance inference).
            pixel_mean, pixel_std: per-channel normalization, in INPUT.FORMAT order.
            semantic_on, panoptic_on, instance_on: which results to return.
            test_topk_per_image: number of instances per image.
        """
        super().__init__()
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("MODEL.MASK_FORMER.TEST: at least one of SEMANTIC_ON, PANOPTIC_ON, INSTANCE_ON must be on")
        if panoptic_on and metadata.get("thing_dataset_id_to_contiguous_id") is None:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.PANOPTIC_ON needs thing_dataset_id_to_contiguous_id in the metadata of "
                f"dataset {metadata.name!r}"
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        # Without semantic inference nothing would resize the masks afterwards.
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference or not semantic_on
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        metadata = _dataset_metadata(cfg)
        _check_num_classes(cfg, metadata)
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())

        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        base_weights = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(base_weights)
        if mf.DEEP_SUPERVISION:
            # one auxiliary prediction per decoder layer before the last: DEC_LAYERS - 1 of them
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base_weights.items()})
        criterion = SetCriterion(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "metadata": metadata,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or mf.TEST.PANOPTIC_ON or mf.TEST.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: dataset-mapper outputs: "image" (C, H, W) in INPUT.FORMAT order; for training
                "instances" (gt_classes, gt_masks); optional "height", "width" of the wanted output.
        Returns:
            in training, the weighted losses; otherwise, per image, a dict with "sem_seg" (K, H, W),
            "panoptic_seg" (id map (H, W), segments_info) and/or "instances", as enabled.
        """
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        outputs = self.sem_seg_head(self.backbone(images.tensor))

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("MaskFormer training needs 'instances' (gt_classes, gt_masks) in every input")
            targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
            losses = self.criterion(outputs, targets)
            weight_dict = self.criterion.weight_dict
            losses = {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}
            # A backbone with a loss of its own (LaViT's loss_lavit_dp) returns it, weighted, after its forward.
            if hasattr(self.backbone, "training_losses"):
                losses.update(self.backbone.training_losses())
            return losses
        return self.inference(outputs, batched_inputs, images.image_sizes, images.tensor.shape[-2:])

    def prepare_targets(self, targets: List[Instances], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Ground-truth masks zero-padded to the padded batch size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for instances in targets:
            gt_masks = instances.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            padded = torch.zeros((gt_masks.shape[0], h_pad, w_pad), dtype=gt_masks.dtype, device=gt_masks.device)
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": instances.gt_classes, "masks": padded})
        return new_targets

    def inference(self, outputs: dict, batched_inputs: List[dict], image_sizes, padded_size) -> List[dict]:
        mask_cls_results = outputs["pred_logits"]
        # Masks are predicted at stride 4: upsample to the padded input size.
        mask_pred_results = F.interpolate(
            outputs["pred_masks"], size=tuple(padded_size), mode="bilinear", align_corners=False
        )
        processed_results = []
        for mask_cls, mask_pred, input_per_image, image_size in zip(
            mask_cls_results, mask_pred_results, batched_inputs, image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            result = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = retry_if_cuda_oom(sem_seg_postprocess)(mask_pred, image_size, height, width)
                mask_cls = mask_cls.to(mask_pred)
            if self.semantic_on:
                sem_seg = retry_if_cuda_oom(self.semantic_inference)(mask_cls, mask_pred)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = retry_if_cuda_oom(sem_seg_postprocess)(sem_seg, image_size, height, width)
                result["sem_seg"] = sem_seg
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(self.panoptic_inference)(mask_cls, mask_pred)
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(self.instance_inference)(mask_cls, mask_pred)
            processed_results.append(result)
        return processed_results

    @staticmethod
    def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """(Q, K+1) logits and (Q, H, W) mask logits -> (K, H, W) class scores."""
        class_prob = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", class_prob, mask_pred.sigmoid())

    def _is_thing(self, contiguous_id: int) -> bool:
        return contiguous_id in self.metadata.thing_dataset_id_to_contiguous_id.values()

    def panoptic_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Tuple[torch.Tensor, List[dict]]:
        """Returns the (H, W) int32 segment-id map (0: void) and segments_info (id, isthing, category_id)."""
        num_classes = self.sem_seg_head.num_classes
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        mask_prob = mask_pred.sigmoid()
        keep = labels.ne(num_classes) & (scores > self.object_mask_threshold)
        cur_scores = scores[keep]
        cur_classes = labels[keep]
        cur_masks = mask_prob[keep]

        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
        segments_info = []
        if cur_masks.shape[0] == 0:
            return panoptic_seg, segments_info

        # Each pixel goes to the query with the highest score * mask probability.
        cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        current_segment_id = 0
        stuff_segment_ids: Dict[int, int] = {}
        for k in range(cur_classes.shape[0]):
            pred_class = int(cur_classes[k].item())
            is_thing = self._is_thing(pred_class)
            won = cur_mask_ids == k
            mask_area = won.sum().item()
            original_area = (cur_masks[k] >= 0.5).sum().item()
            mask = won & (cur_masks[k] >= 0.5)
            if mask_area == 0 or original_area == 0 or mask.sum().item() == 0:
                continue
            # drop queries that lose too much of their own mask to others
            if mask_area / original_area < self.overlap_threshold:
                continue
            if not is_thing and pred_class in stuff_segment_ids:
                # one segment per stuff class
                panoptic_seg[mask] = stuff_segment_ids[pred_class]
                continue
            current_segment_id += 1
            if not is_thing:
                stuff_segment_ids[pred_class] = current_segment_id
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": is_thing, "category_id": pred_class})
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Instances:
        """Top TEST.DETECTIONS_PER_IMAGE (query, class) pairs; with panoptic on, only thing classes."""
        image_size = mask_pred.shape[-2:]
        num_classes = self.sem_seg_head.num_classes
        num_queries = mask_cls.shape[0]
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        labels = torch.arange(num_classes, device=mask_cls.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
        topk = min(self.test_topk_per_image, scores.numel())
        scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
        labels_per_image = labels[topk_indices]
        mask_pred = mask_pred[topk_indices // num_classes]
        if self.panoptic_on:
            keep = torch.tensor(
                [self._is_thing(int(lab)) for lab in labels_per_image], dtype=torch.bool, device=mask_cls.device
            )
            scores_per_image = scores_per_image[keep]
            labels_per_image = labels_per_image[keep]
            mask_pred = mask_pred[keep]

        result = Instances(image_size)
        binary_masks = mask_pred > 0
        result.pred_masks = binary_masks.float()
        result.pred_boxes = BitMasks(binary_masks).get_bounding_boxes()
        # Score = class probability * mean mask probability inside the predicted mask.
        flat_masks = result.pred_masks.flatten(1)
        mask_scores = (mask_pred.sigmoid().flatten(1) * flat_masks).sum(1) / (flat_masks.sum(1) + 1e-6)
        result.scores = scores_per_image * mask_scores
        result.pred_classes = labels_per_image
        return result
