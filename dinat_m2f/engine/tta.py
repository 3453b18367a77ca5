"""Semantic-segmentation test-time augmentation (TEST.AUG): multi-scale and horizontal flip.

Each image is resized to every TEST.AUG.MIN_SIZES (capped by TEST.AUG.MAX_SIZE) and, with TEST.AUG.FLIP,
also flipped; the model's per-class semantic scores of every version (already resized to the original
height/width by the model) are flipped back and averaged.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.modeling import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a model that returns ``[{"sem_seg": (K, H, W)}, ...]`` in eval mode."""

    def __init__(self, cfg: CfgNode, model: nn.Module, tta_mapper: DatasetMapperTTA | None = None) -> None:
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        return [self._inference_one_image(inputs) for inputs in batched_inputs]

    def _inference_one_image(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        total = None
        augmented_inputs = self.tta_mapper(inputs)
        for augmented in augmented_inputs:
            transforms = augmented.pop("transforms")
            with torch.no_grad():
                scores = self.model([augmented])[0]["sem_seg"]
            if any(isinstance(t, HFlipTransform) for t in transforms.transforms):
                scores = scores.flip(dims=[2])
            total = scores if total is None else total + scores
        return {"sem_seg": total / len(augmented_inputs)}
