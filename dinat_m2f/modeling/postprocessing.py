"""Mask2Former's inference: semantic, panoptic and instance results from the network's outputs (pred_logits,
pred_masks), the one post-processing of `MaskFormer` and of exported models (dinat_m2f.export).
Rules: docs/MASK2FORMER.md, "Inference".

Every decision is taken on the masks at the output size, as in Mask2Former, but no (Q, H, W) tensor of that size
is made: `QueryMasks` upsamples a chunk of queries at a time (CHUNK_ELEMENTS values), and one pass over the chunks
feeds every result: semantic scores are summed over chunks, the panoptic argmax is a running maximum over the kept
queries, and instances read their top queries' rows. Each query needed by any result is upsampled (and its
sigmoid taken) once; without semantic results only the kept and top queries are. Memory is the results' (K x H x W
scores, one boolean mask per instance, the panoptic map) and one chunk's."""
import copy
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Instances
from detectron2.utils.memory import retry_if_cuda_oom

__all__ = ["TASKS", "MaskFormerPostProcessor", "PanopticMerge", "QueryMasks", "SemanticScores", "TopInstances",
           "config_tasks", "dataset_metadata", "infer", "select_tasks"]

# Mask values at the output size held at a time (64 MB of float32); at least one query's mask.
CHUNK_ELEMENTS = 2 ** 24
# The results a model can return, each named by its task, and the output key it fills.
TASKS = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}


def config_tasks(cfg: CfgNode) -> Tuple[str, ...]:
    """The tasks a config's model computes (MODEL.MASK_FORMER.TEST.*_ON), in TASKS order."""
    test = cfg.MODEL.MASK_FORMER.TEST
    on = {"panoptic": test.PANOPTIC_ON, "instance": test.INSTANCE_ON, "semantic": test.SEMANTIC_ON}
    return tuple(task for task in TASKS if on[task])


def select_tasks(tasks: Union[str, Iterable[str]], available: Sequence[str]) -> Tuple[str, ...]:
    """`tasks` (one task or several) in TASKS order; a ValueError naming the available ones when any is not."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks or any(task not in available for task in tasks):
        raise ValueError(f"tasks {tasks!r}: this model computes {', '.join(available)} "
                         f"(MODEL.MASK_FORMER.TEST.*_ON); ask for one or more of them")
    return tuple(task for task in TASKS if task in tasks)


def dataset_metadata(cfg: CfgNode):
    """The model's classes: the metadata (class names, thing/stuff id maps) of DATASETS.TRAIN[0], the dataset its
    class head was trained on, or of DATASETS.TEST[0] when no training dataset is given. Post-processing, the
    class-count check, the demo and the Predictor all read it here."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("The model's classes come from its dataset's metadata: set DATASETS.TRAIN or DATASETS.TEST")
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


class SemanticScores:
    """Semantic inference, one chunk of queries at a time: (K, H, W) class scores, the sum over all queries of
    the class probability times the mask probability."""

    queries = None  # every query

    def __init__(self, mask_cls: torch.Tensor):
        self.class_prob = F.softmax(mask_cls, dim=-1)[..., :-1]
        self.sem_seg: Optional[torch.Tensor] = None

    def add(self, positions: slice, logits: torch.Tensor, mask_prob: torch.Tensor) -> None:
        if self.sem_seg is None:
            self.sem_seg = torch.einsum("qc,qhw->chw", self.class_prob[positions], mask_prob)
        else:
            # a view (never a copy, which would drop the sum): einsum's result is contiguous
            self.sem_seg.view(len(self.sem_seg), -1).addmm_(self.class_prob[positions].t(), mask_prob.flatten(1))

    def result(self) -> torch.Tensor:
        return self.sem_seg


class PanopticMerge:
    """Panoptic inference over the confident queries (not no-object, score above the threshold): each pixel goes
    to the kept query with the highest score * mask probability (the first one on ties, as argmax), a running
    maximum over chunks; its segment keeps the pixel if the winner's probability there is >= 0.5."""

    def __init__(self, processor: "MaskFormerPostProcessor", mask_cls: torch.Tensor, size: Tuple[int, int]):
        self.processor = processor
        self.size = size
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        keep = labels.ne(processor.num_classes) & (scores > processor.object_mask_threshold)
        self.queries = keep.nonzero().squeeze(1)
        self.scores = scores[self.queries]
        self.classes = labels[self.queries].tolist()
        self.best = self.winner = self.winner_in_mask = None
        self.own_area = torch.zeros(len(self.queries), dtype=torch.int64, device=mask_cls.device)

    def add(self, positions: slice, logits: torch.Tensor, mask_prob: torch.Tensor) -> None:
        in_mask = mask_prob >= 0.5
        self.own_area[positions] = in_mask.flatten(1).sum(1)
        chunk_best, chunk_winner = (mask_prob * self.scores[positions].view(-1, 1, 1)).max(0)
        chunk_in_mask = in_mask.gather(0, chunk_winner[None])[0]
        del in_mask
        chunk_winner += positions.start
        if self.best is None:
            self.best, self.winner, self.winner_in_mask = chunk_best, chunk_winner, chunk_in_mask
            return
        better = chunk_best > self.best
        torch.where(better, chunk_best, self.best, out=self.best)
        torch.where(better, chunk_winner, self.winner, out=self.winner)
        torch.where(better, chunk_in_mask, self.winner_in_mask, out=self.winner_in_mask)

    def result(self) -> Tuple[torch.Tensor, List[dict]]:
        """The (H, W) int32 segment-id map (0: void) and segments_info (id, isthing, category_id)."""
        device = self.own_area.device
        segments_info = []
        if self.winner is None:
            return torch.zeros(self.size, dtype=torch.int32, device=device), segments_info
        count = len(self.queries)
        won_area = torch.bincount(self.winner.flatten(), minlength=count).tolist()
        # the winner where it keeps the pixel, else `count` (void)
        winner = torch.where(self.winner_in_mask, self.winner, count)
        kept_area = torch.bincount(winner.flatten(), minlength=count + 1)[:-1].tolist()
        own_area = self.own_area.tolist()

        # Segment id of each kept query (0: dropped); queries own disjoint pixels, so one lookup paints all.
        segment_ids = [0] * (count + 1)
        current_segment_id = 0
        stuff_segment_ids: Dict[int, int] = {}
        for k, pred_class in enumerate(self.classes):
            is_thing = self.processor.is_thing(pred_class)
            if won_area[k] == 0 or own_area[k] == 0 or kept_area[k] == 0:
                continue
            # drop queries that lose too much of their own mask to others
            if won_area[k] / own_area[k] < self.processor.overlap_threshold:
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
        panoptic_seg = torch.tensor(segment_ids, dtype=torch.int32, device=device)[winner]
        return panoptic_seg, segments_info


class TopInstances:
    """Instance inference: the top TEST.DETECTIONS_PER_IMAGE (query, class) pairs (with panoptic on, of thing
    classes only), each with its query's binary mask (logits > 0) and the score class probability * mean mask
    probability inside that mask. A query in several pairs is read once."""

    def __init__(self, processor: "MaskFormerPostProcessor", mask_cls: torch.Tensor, size: Tuple[int, int]):
        num_classes = processor.num_classes
        device = mask_cls.device
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        topk = min(processor.test_topk_per_image, scores.numel())
        self.scores, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
        self.labels = topk_indices % num_classes  # pair (query q, class c) is flat index q * K + c
        query_per_pair = topk_indices // num_classes
        if processor.panoptic_on:
            keep = torch.tensor([processor.is_thing(int(label)) for label in self.labels], dtype=torch.bool,
                                device=device)
            self.scores, self.labels, query_per_pair = self.scores[keep], self.labels[keep], query_per_pair[keep]
        self.queries, self.pair_query = query_per_pair.unique(return_inverse=True)
        self.size = size
        self.binary_masks = torch.zeros((len(query_per_pair), *size), dtype=torch.bool, device=device)
        self.mask_scores = torch.zeros(len(self.queries), dtype=scores.dtype, device=device)

    def add(self, positions: slice, logits: torch.Tensor, mask_prob: torch.Tensor) -> None:
        binary = logits > 0
        flat = binary.flatten(1)
        self.mask_scores[positions] = (mask_prob.flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
        pairs = ((self.pair_query >= positions.start) & (self.pair_query < positions.stop)).nonzero().squeeze(1)
        self.binary_masks[pairs] = binary[self.pair_query[pairs] - positions.start]

    def result(self) -> Instances:
        result = Instances(self.size)
        result.pred_masks = self.binary_masks
        result.pred_boxes = BitMasks(self.binary_masks).get_bounding_boxes()
        result.scores = self.scores * self.mask_scores[self.pair_query]
        result.pred_classes = self.labels
        return result


# A result made in one pass over the mask chunks: `queries` (sorted query numbers, None for all) are the
# queries it reads; `add(positions, logits, mask_prob)` gets the rows of its queries[positions] in one chunk,
# in order, at the output size (to be read only); `result()` gives it.
Inference = Union[SemanticScores, PanopticMerge, TopInstances]


def infer(inferences: Sequence[Inference], masks: QueryMasks) -> None:
    """Feed every inference the mask logits and probabilities of its queries, upsampling each query needed by
    any of them once, in chunks of the query numbers in increasing order."""
    if any(inference.queries is None for inference in inferences):
        needed = None
    else:
        needed = torch.cat([inference.queries for inference in inferences]).unique()
        if len(needed) == 0:
            return
    for chunk_positions, logits in masks.chunks(needed):
        if needed is None:
            chunk = torch.arange(chunk_positions.start, chunk_positions.stop, device=masks.device)
        else:
            chunk = needed[chunk_positions]
        mask_prob = logits.sigmoid()
        for inference in inferences:
            if inference.queries is None:
                inference.add(chunk_positions, logits, mask_prob)
                continue
            start = int(torch.searchsorted(inference.queries, chunk[0]))
            stop = int(torch.searchsorted(inference.queries, chunk[-1], right=True))
            if start == stop:
                continue
            if stop - start == len(chunk):  # all of the chunk: no copy
                inference.add(slice(start, stop), logits, mask_prob)
            else:
                rows = torch.searchsorted(chunk, inference.queries[start:stop])
                inference.add(slice(start, stop), logits[rows], mask_prob[rows])
        del logits, mask_prob  # freed before the next chunk is made: one chunk at a time


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
            semantic_on, panoptic_on, instance_on: which results the model has (MODEL.MASK_FORMER.TEST.*_ON); they
                also decide how results are made (with panoptic on, instances are of thing classes only), and
                `tasks` can narrow the results returned to some of them without changing any.
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
        self._tasks: Optional[Tuple[str, ...]] = None  # all available ones

    @property
    def available_tasks(self) -> Tuple[str, ...]:
        """The tasks the config turns on, in TASKS order."""
        on = {"panoptic": self.panoptic_on, "instance": self.instance_on, "semantic": self.semantic_on}
        return tuple(task for task in TASKS if on[task])

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The tasks whose results are computed and returned: some of the available ones (None: all of them)."""
        return self.available_tasks if self._tasks is None else self._tasks

    @tasks.setter
    def tasks(self, tasks: Optional[Iterable[str]]) -> None:
        self._tasks = None if tasks is None else select_tasks(tasks, self.available_tasks)

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
            "instances", as enabled (and selected by `tasks`), at its output size.
        """
        processed_results = []
        for mask_cls, mask_pred, image_size, output_size in zip(pred_logits, pred_masks, image_sizes, output_sizes):
            # Masks are predicted at stride 4: upsampled to the padded size, then to the output size if the
            # inference is to be taken there.
            if self.sem_seg_postprocess_before_inference:
                masks = QueryMasks(mask_pred, padded_size, image_size, output_size)
                mask_cls = mask_cls.to(mask_pred)
            else:
                masks = QueryMasks(mask_pred, padded_size)
            result = retry_if_cuda_oom(self.inference)(mask_cls, masks)
            if "semantic" in self.tasks and not self.sem_seg_postprocess_before_inference:
                result["sem_seg"] = retry_if_cuda_oom(sem_seg_postprocess)(result["sem_seg"], image_size, *output_size)
            processed_results.append(result)
        return processed_results

    def inference(self, mask_cls: torch.Tensor, masks: Masks) -> dict:
        """(Q, K+1) logits and (Q, H, W) mask logits -> the results of `tasks` ("sem_seg", "panoptic_seg",
        "instances"), made in one pass over the masks."""
        masks = QueryMasks.of(masks)
        inferences = {}
        if "semantic" in self.tasks:
            inferences["sem_seg"] = SemanticScores(mask_cls)
        if "panoptic" in self.tasks:
            inferences["panoptic_seg"] = PanopticMerge(self, mask_cls, masks.size)
        if "instance" in self.tasks:
            inferences["instances"] = TopInstances(self, mask_cls, masks.size)
        infer(list(inferences.values()), masks)
        return {name: inference.result() for name, inference in inferences.items()}

    def is_thing(self, contiguous_id: int) -> bool:
        return contiguous_id in self.metadata.thing_dataset_id_to_contiguous_id.values()

    def panoptic_inference(self, mask_cls: torch.Tensor, masks: Masks) -> Tuple[torch.Tensor, List[dict]]:
        """Returns the (H, W) int32 segment-id map (0: void) and segments_info (id, isthing, category_id)."""
        masks = QueryMasks.of(masks)
        panoptic = PanopticMerge(self, mask_cls, masks.size)
        infer([panoptic], masks)
        return panoptic.result()

    def instance_inference(self, mask_cls: torch.Tensor, masks: Masks) -> Instances:
        """Top TEST.DETECTIONS_PER_IMAGE (query, class) pairs; with panoptic on, only thing classes."""
        masks = QueryMasks.of(masks)
        instances = TopInstances(self, mask_cls, masks.size)
        infer([instances], masks)
        return instances.result()
