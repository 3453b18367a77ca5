"""The MaskFormer meta-architecture of Mask2Former: backbone + MaskFormerHead, trained with a Hungarian
set criterion, with semantic, panoptic and instance inference (modeling/postprocessing.py)."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.structures import BitMasks, ImageList, Instances
from torch import nn

from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher
from .modeling.meta_arch import MaskFormerHead  # noqa: F401  (registers the head)
from .modeling.postprocessing import MaskFormerPostProcessor, dataset_metadata

__all__ = ["MaskFormer"]

logger = logging.getLogger(__name__)


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
        postprocessor: MaskFormerPostProcessor,
        size_divisibility: int,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        compile_modules: Sequence[str] = (),
        compile_options: Optional[dict] = None,
        channels_last: bool = False,
    ):
        """
        Args:
            backbone, sem_seg_head: the backbone and the MaskFormerHead.
            criterion: the SetCriterion (its ``weight_dict`` weights the losses).
            num_queries: number of object queries.
            postprocessor: semantic / panoptic / instance inference from the head's outputs.
            size_divisibility: pad images to a multiple of this (< 0: the backbone's).
            pixel_mean, pixel_std: per-channel normalization, in INPUT.FORMAT order.
            compile_modules: submodules ("backbone", "sem_seg_head", ...) compiled in place by torch.compile with
                `compile_options` (Module.compile: state_dict names stay the same, checkpoints load unchanged).
            channels_last: 4-D weights (the convolutions') in channels-last memory format.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.postprocessor = postprocessor
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        for name in compile_modules:
            module = getattr(self, name, None)
            if not isinstance(module, nn.Module):
                children = ", ".join(n for n, _ in self.named_children())
                raise ValueError(f"MODEL.COMPILE.MODULES: {name!r} is not a submodule of MaskFormer ({children})")
            module.compile(**(compile_options or {}))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        _check_num_classes(cfg, dataset_metadata(cfg))
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
            "postprocessor": MaskFormerPostProcessor(cfg),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "compile_modules": cfg.MODEL.COMPILE.MODULES if cfg.MODEL.COMPILE.ENABLED else (),
            "compile_options": {"backend": cfg.MODEL.COMPILE.BACKEND, "mode": cfg.MODEL.COMPILE.MODE},
            "channels_last": cfg.MODEL.CHANNELS_LAST,
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
        # The results need the last layer's predictions only; the earlier layers' masks (aux_outputs: 9 x Q x
        # H/4 x W/4 floats for DiNAT-L, 184 MB at 640x640) are freed before post-processing, where the peak is.
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        del outputs
        return self.inference(pred_logits, pred_masks, batched_inputs, images.image_sizes, images.tensor.shape[-2:])

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

    def inference(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, batched_inputs: List[dict], image_sizes,
                  padded_size) -> List[dict]:
        output_sizes = [(x.get("height", size[0]), x.get("width", size[1]))
                        for x, size in zip(batched_inputs, image_sizes)]
        return self.postprocessor(pred_logits, pred_masks, image_sizes, output_sizes, padded_size)
