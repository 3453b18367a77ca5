"""Mask2Former's inference: semantic, panoptic and instance results from the network's outputs (pred_logits,
pred_masks), the one post-processing of `MaskFormer` and of exported models (dinat_m2f.export).
Rules: shared/specs/mask2former.md, "Inference"."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Instances
from detectron2.utils.memory import retry_if_cuda_oom

__all__ = ["MaskFormerPostProcessor", "dataset_metadata"]


def dataset_metadata(cfg: CfgNode):
    """Metadata of the first training dataset (the test dataset if no training dataset is given)."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("MaskFormer needs dataset metadata: set DATASETS.TRAIN or DATASETS.TEST")
    return MetadataCatalog.get(names[0])


class MaskFormerPostProcessor:
    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        metadata,
        object_mask_threshold: float,
        overlap_threshold: float,
        sem_seg_postprocess_before_inference: bool,
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
    ):
        """
        Args:
            num_classes: number of classes K (the logits have K + 1 columns, the last is no-object).
            metadata: dataset metadata (``thing_dataset_id_to_contiguous_id`` decides which classes are things).
            object_mask_threshold, overlap_threshold: panoptic inference thresholds.
            sem_seg_postprocess_before_inference: resize the masks to the output size before inference
                (needed by panoptic and instance inference).
            semantic_on, panoptic_on, instance_on: which results to return.
            test_topk_per_image: number of instances per image.
        """
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("MODEL.MASK_FORMER.TEST: at least one of SEMANTIC_ON, PANOPTIC_ON, INSTANCE_ON must be on")
        if panoptic_on and metadata.get("thing_dataset_id_to_contiguous_id") is None:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.PANOPTIC_ON needs thing_dataset_id_to_contiguous_id in the metadata of "
                f"dataset {metadata.name!r}"
            )
        self.num_classes = num_classes
        self.metadata = metadata
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        # Without semantic inference nothing would resize the masks afterwards.
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference or not semantic_on
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        test = cfg.MODEL.MASK_FORMER.TEST
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "metadata": dataset_metadata(cfg),
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def __call__(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, image_sizes: Sequence[Tuple[int, int]],
                 output_sizes: Sequence[Tuple[int, int]], padded_size: Tuple[int, int]) -> List[dict]:
        """
        Args:
            pred_logits: (N, Q, K + 1) class logits; pred_masks: (N, Q, H/4, W/4) mask logits of the padded
                (H, W) = `padded_size` batch.
            image_sizes: (height, width) of each image inside the padded batch; output_sizes: the (height,
                width) each image's results are wanted at.
        Returns:
            per image, a dict with "sem_seg" (K, h, w), "panoptic_seg" (id map (h, w), segments_info) and/or
            "instances", as enabled, at its output size.
        """
        # Masks are predicted at stride 4: upsample to the padded input size.
        mask_pred_results = F.interpolate(pred_masks, size=tuple(padded_size), mode="bilinear", align_corners=False)
        processed_results = []
        for mask_cls, mask_pred, image_size, (height, width) in zip(
            pred_logits, mask_pred_results, image_sizes, output_sizes
        ):
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
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        mask_prob = mask_pred.sigmoid()
        keep = labels.ne(self.num_classes) & (scores > self.object_mask_threshold)
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
        num_classes = self.num_classes
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
