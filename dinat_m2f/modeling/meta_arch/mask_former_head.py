"""Mask2Former's segmentation head: a pixel decoder followed by a transformer decoder."""
from typing import Dict, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder.build import build_pixel_decoder
from ..transformer_decoder.build import build_transformer_decoder

__all__ = ["MaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    # The transformer decoder reads the pixel decoder's multi-scale outputs (the only mode the
    # masked-attention decoder supports).
    _TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        """
        Args:
            input_shape: shapes of the backbone features the head reads.
            num_classes: number of classes, without the no-object class.
            pixel_decoder: module with ``forward_features``.
            loss_weight, ignore_value: kept for the original's interface (the criterion owns the losses).
            transformer_predictor: the transformer decoder.
            transformer_in_feature: which pixel-decoder output feeds the transformer decoder.
        """
        super().__init__()
        if transformer_in_feature != self._TRANSFORMER_IN_FEATURE:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be {self._TRANSFORMER_IN_FEATURE!r} for this "
                f"head, got {transformer_in_feature!r}"
            )
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda item: item[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not produced by the backbone "
                f"(it gives {sorted(input_shape)})"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            # the multi-scale pixel-decoder outputs have CONVS_DIM channels
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None) -> dict:
        return self.layers(features, mask)

    def layers(self, features: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None) -> dict:
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, mask)
