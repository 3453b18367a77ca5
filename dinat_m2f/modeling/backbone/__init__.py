"""The project's backbones, registered with detectron2's BACKBONE_REGISTRY; each derives from
`base.MultiScaleBackbone` (res2..res5, any input size, activation checkpointing)."""
from . import coatnet  # noqa: F401  (registers D2CoAtNet)
from . import dinat  # noqa: F401  (registers D2DiNAT)
from . import hrvit  # noqa: F401  (registers D2HRViT)
from . import lavit  # noqa: F401  (registers D2LaViT)
from . import shiftvit  # noqa: F401  (registers D2ShiftViT)
from . import swin  # noqa: F401  (registers D2SwinTransformer)
from . import timm_backbone  # noqa: F401  (registers D2TimmBackbone; timm itself is imported when one is built)
from .base import FEATURE_NAMES, FEATURE_STRIDES, MultiScaleBackbone

__all__ = ["FEATURE_NAMES", "FEATURE_STRIDES", "MultiScaleBackbone"]
