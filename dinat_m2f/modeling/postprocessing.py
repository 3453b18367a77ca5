"""Mask2Former's inference: semantic, panoptic and instance results from the network's outputs (pred_logits,
pred_masks), the one post-processing of `MaskFormer` and of exported models (dinat_m2f.export).
Rules: shared/specs/mask2former.md, "Inference".

Every decision is taken on the masks at the output size, as in Mask2Former, but no (Q, H, W) tensor of that size
is made: `QueryMasks` upsamples a chunk of queries at a time (CHUNK_ELEMENTS values), semantic scores are summed
over chunks, the panoptic argmax is a running maximum over the kept queries, and instances upsample only their top
queries. Memory is the results' (K x H x W scores, one boolean mask per instance, the panoptic map) and one
chunk's."""
import copy
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Instances
from detectron2.utils.memory import retry_if_cuda_oom

__all__ = ["MaskFormerPostProcessor", "QueryMasks", "dataset_metadata"]

# Mask values at the output size held at a time (64 MB of float32); at least one query's mask.
CHUNK_ELEMENTS = 2 ** 24


def dataset_metadata(cfg: CfgNode):
    """Metadata of the first training dataset (the test dataset if no training dataset is given)."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("MaskFormer needs dataset metadata: set DATASETS.TRAIN or DATASETS.TEST")
    return MetadataCatalog.get(names[0])


class QueryMasks:
    """Every query's mask logits at the output size, made for a few queries at a time the way Mask2Former makes
    them for all: bilinear upsampling from stride 4 to the padded size, the crop to the image and a bilinear
    resize to the output size (sem_seg_postprocess). Bilinear interpolation computes each query's values on its
    own, so a chunk holds the very values of the whole computation. (PyTorch's CPU kernel vectorizes over the
    queries for outputs with H + W <= 128, where grouping could change the last bit; such padded sizes are
    upsampled for all queries at once: they are small.)"""

    def __init__(self, masks: torch.Tensor, padded_size: Optional[Tuple[int, int]] = None,
                 image_size: Optional[Tuple[int, int]] = None, output_size: Optional[Tuple[int, int]] = None):
        """masks: (Q, h, w) logits, upsampled to `padded_size` first if given; `image_size` is the image's part
        of the padded size, `output_size` the wanted one. Without sizes the masks are at the output size."""
        if padded_size is not None and len(masks) * padded_size[0] * padded_size[1] <= CHUNK_ELEMENTS:
            masks = F.interpolate(masks[None], size=tuple(padded_size), mode="bilinear", align_corners=False)[0]
            padded_size = None
        self.masks = masks
        self.padded_size = None if padded_size is None else tuple(padded_size)
        self.image_size = tuple(self.padded_size or masks.shape[-2:]) if image_size is None else tuple(image_size)
        self.size = self.image_size if output_size is None else tuple(output_size)

    @classmethod
    def of(cls, masks: "Masks") -> "QueryMasks":
        return masks if isinstance(masks, QueryMasks) else cls(masks)

    def __len__(self) -> int:
        return self.masks.shape[0]

    @property
    def device(self) -> torch.device:
        return self.masks.device

    def to(self, device) -> "QueryMasks":
        """The same masks on `device` (retry_if_cuda_oom moves its arguments to the CPU with this)."""
        moved = copy.copy(self)
        moved.masks = self.masks.to(device)
        return moved

    def chunks(self, indices: Optional[torch.Tensor] = None) -> Iterator[Tuple[slice, torch.Tensor]]:
        """For consecutive chunks of `indices` (query numbers; default: all queries in order): the chunk's
        positions in `indices` and its queries' (n, H, W) mask logits at the output size, to be read only (they
        may be a view of the masks). Up to CHUNK_ELEMENTS / Q output pixels this is one chunk."""
        count = len(self) if indices is None else len(indices)
        height, width = max(self.size, self.padded_size or self.size, key=lambda size: size[0] * size[1])
        step = max(1, CHUNK_ELEMENTS // (height * width))
        for start in range(0, count, step):
            positions = slice(start, min(start + step, count))
            masks = self.masks[positions] if indices is None else self.masks.index_select(0, indices[positions])
            yield positions, self._at_output_size(masks)

    def _at_output_size(self, masks: torch.Tensor) -> torch.Tensor:
        if self.padded_size is not None:
            masks = F.interpolate(masks[None], size=self.padded_size, mode="bilinear", align_corners=False)[0]
        height, width = self.image_size
        masks = masks[:, :height, :width]
        if (height, width) != self.size:  # resizing to the same size is the identity: skipped
            masks = F.interpolate(masks[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return masks


# Mask logits at the output size: a (Q, H, W) tensor or QueryMasks.
Masks = Union[torch.Tensor, QueryMasks]


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
        processed_results = []
        for mask_cls, mask_pred, image_size, output_size in zip(pred_logits, pred_masks, image_sizes, output_sizes):
            result = {}
            # Masks are predicted at stride 4: upsampled to the padded size, then to the output size if the
            # inference is to be taken there.
            if self.sem_seg_postprocess_before_inference:
                masks = QueryMasks(mask_pred, padded_size, image_size, output_size)
                mask_cls = mask_cls.to(mask_pred)
            else:
                masks = QueryMasks(mask_pred, padded_size)
            if self.semantic_on:
                sem_seg = retry_if_cuda_oom(self.semantic_inference)(mask_cls, masks)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = retry_if_cuda_oom(sem_seg_postprocess)(sem_seg, image_size, *output_size)
                result["sem_seg"] = sem_seg
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(self.panoptic_inference)(mask_cls, masks)
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(self.instance_inference)(mask_cls, masks)
            processed_results.append(result)
        return processed_results

    @staticmethod
    def semantic_inference(mask_cls: torch.Tensor, masks: Masks) -> torch.Tensor:
        """(Q, K+1) logits and (Q, H, W) mask logits -> (K, H, W) class scores."""
        masks = QueryMasks.of(masks)
        class_prob = F.softmax(mask_cls, dim=-1)[..., :-1]
        sem_seg = None
        for queries, logits in masks.chunks():
            mask_prob = logits.sigmoid()
            if sem_seg is None:
                sem_seg = torch.einsum("qc,qhw->chw", class_prob[queries], mask_prob)
            else:
                # a view (never a copy, which would drop the sum): einsum's result is contiguous
                sem_seg.view(len(sem_seg), -1).addmm_(class_prob[queries].t(), mask_prob.flatten(1))
        return sem_seg

    def _is_thing(self, contiguous_id: int) -> bool:
        return contiguous_id in self.metadata.thing_dataset_id_to_contiguous_id.values()

    def panoptic_inference(self, mask_cls: torch.Tensor, masks: Masks) -> Tuple[torch.Tensor, List[dict]]:
        """Returns the (H, W) int32 segment-id map (0: void) and segments_info (id, isthing, category_id)."""
        masks = QueryMasks.of(masks)
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        keep = labels.ne(self.num_classes) & (scores > self.object_mask_threshold)
        kept = keep.nonzero().squeeze(1)
        cur_scores = scores[kept]
        cur_classes = labels[kept].tolist()

        h, w = masks.size
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_cls.device)
        segments_info = []
        if len(kept) == 0:
            return panoptic_seg, segments_info

        # Each pixel goes to the kept query with the highest score * mask probability (the first one on ties,
        # as argmax): a running maximum over chunks of queries. Its segment keeps the pixel if the winner's
        # probability there is >= 0.5.
        best = winner = winner_in_mask = None
        own_area = torch.zeros(len(kept), dtype=torch.int64, device=mask_cls.device)
        for queries, logits in masks.chunks(kept):
            mask_prob = logits.sigmoid()
            in_mask = mask_prob >= 0.5
            own_area[queries] = in_mask.flatten(1).sum(1)
            chunk_best, chunk_winner = mask_prob.mul_(cur_scores[queries].view(-1, 1, 1)).max(0)
            chunk_in_mask = in_mask.gather(0, chunk_winner[None])[0]
            del mask_prob, in_mask
            chunk_winner += queries.start
            if best is None:
                best, winner, winner_in_mask = chunk_best, chunk_winner, chunk_in_mask
                continue
            better = chunk_best > best
            torch.where(better, chunk_best, best, out=best)
            torch.where(better, chunk_winner, winner, out=winner)
            torch.where(better, chunk_in_mask, winner_in_mask, out=winner_in_mask)
            del better, chunk_best, chunk_winner, chunk_in_mask
        del best
        won_area = torch.bincount(winner.flatten(), minlength=len(kept)).tolist()
        # the winner where it keeps the pixel, else len(kept) (void)
        winner = torch.where(winner_in_mask, winner, len(kept))
        del winner_in_mask
        kept_area = torch.bincount(winner.flatten(), minlength=len(kept) + 1)[:-1].tolist()
        own_area = own_area.tolist()

        # Segment id of each kept query (0: dropped); queries own disjoint pixels, so one lookup paints all.
        segment_ids = [0] * (len(kept) + 1)
        current_segment_id = 0
        stuff_segment_ids: Dict[int, int] = {}
        for k, pred_class in enumerate(cur_classes):
            is_thing = self._is_thing(pred_class)
            if won_area[k] == 0 or own_area[k] == 0 or kept_area[k] == 0:
                continue
            # drop queries that lose too much of their own mask to others
            if won_area[k] / own_area[k] < self.overlap_threshold:
                continue
            if not is_thing and pred_class in stuff_segment_ids:
                # one segment per stuff class
                segment_ids[k] = stuff_segment_ids[pred_class]
                continue
            current_segment_id += 1
            if not is_thing:
                stuff_segment_ids[pred_class] = current_segment_id
            segment_ids[k] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": is_thing, "category_id": pred_class})
        panoptic_seg = torch.tensor(segment_ids, dtype=torch.int32, device=mask_cls.device)[winner]
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls: torch.Tensor, masks: Masks) -> Instances:
        """Top TEST.DETECTIONS_PER_IMAGE (query, class) pairs; with panoptic on, only thing classes."""
        masks = QueryMasks.of(masks)
        num_classes = self.num_classes
        num_queries = mask_cls.shape[0]
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        labels = torch.arange(num_classes, device=mask_cls.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
        topk = min(self.test_topk_per_image, scores.numel())
        scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
        labels_per_image = labels[topk_indices]
        query_per_image = topk_indices // num_classes
        if self.panoptic_on:
            keep = torch.tensor(
                [self._is_thing(int(lab)) for lab in labels_per_image], dtype=torch.bool, device=mask_cls.device
            )
            scores_per_image = scores_per_image[keep]
            labels_per_image = labels_per_image[keep]
            query_per_image = query_per_image[keep]

        # A query in several (query, class) pairs is upsampled once; only these queries are.
        queries, pair_query = query_per_image.unique(return_inverse=True)
        h, w = masks.size
        binary_masks = torch.zeros((len(query_per_image), h, w), dtype=torch.bool, device=mask_cls.device)
        mask_scores = torch.zeros(len(queries), dtype=scores.dtype, device=mask_cls.device)
        for chunk, logits in masks.chunks(queries):
            binary = logits > 0
            # Score = class probability * mean mask probability inside the predicted mask.
            flat = binary.flatten(1)
            mask_scores[chunk] = (logits.sigmoid().flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
            pairs = ((pair_query >= chunk.start) & (pair_query < chunk.stop)).nonzero().squeeze(1)
            binary_masks[pairs] = binary[pair_query[pairs] - chunk.start]

        result = Instances((h, w))
        result.pred_masks = binary_masks
        result.pred_boxes = BitMasks(binary_masks).get_bounding_boxes()
        result.scores = scores_per_image * mask_scores[pair_query]
        result.pred_classes = labels_per_image
        return result
