"""Trainer pieces: optimizer groups, LR schedules (incl. WarmupPolyLR), the mixed-precision training step,
a launch that also runs CPU processes over gloo, and semantic test-time augmentation."""
from .launch import create_ddp_model, launch
from .lr_scheduler import PolyParamScheduler, build_lr_scheduler
from .optimizer import build_optimizer, get_param_groups
from .train_loop import MixedPrecisionTrainer, autocast_dtype, check_finite_losses
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "build_lr_scheduler",
    "build_optimizer",
    "check_finite_losses",
    "autocast_dtype",
    "create_ddp_model",
    "get_param_groups",
    "launch",
    "MixedPrecisionTrainer",
    "PolyParamScheduler",
    "SemanticSegmentorWithTTA",
]
