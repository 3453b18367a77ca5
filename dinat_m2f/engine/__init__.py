"""Trainer pieces: optimizer groups, LR schedules (incl. WarmupPolyLR), the mixed-precision training step,
a launch that also runs CPU processes over gloo or under torchrun, one training per OUTPUT_DIR, the state an
exact resume needs, semantic test-time augmentation, the reuse of freed host memory, and detectron2's run set-up
with a plain-text log."""
from .host_memory import reuse_freed_memory
from .launch import (
    create_ddp_model,
    launch,
    launch_from_environment,
    launches_rank_zero,
    process_group_timeout,
    started_by_torchrun,
)
from .output_lock import OutputDirInUseError, lock_output_dir, unlock_output_dir
from .lr_scheduler import PolyParamScheduler, build_lr_scheduler
from .optimizer import build_optimizer, get_param_groups
from .resume import ResumeStateHook
from .rng import capture_rng_states, preserved_rng_states, restore_rng_states, seeded_rng
from .setup import default_setup
from .train_loop import MixedPrecisionTrainer, autocast_dtype, check_finite_losses
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "build_lr_scheduler",
    "build_optimizer",
    "capture_rng_states",
    "check_finite_losses",
    "autocast_dtype",
    "create_ddp_model",
    "default_setup",
    "get_param_groups",
    "launch",
    "launch_from_environment",
    "launches_rank_zero",
    "lock_output_dir",
    "MixedPrecisionTrainer",
    "OutputDirInUseError",
    "PolyParamScheduler",
    "preserved_rng_states",
    "process_group_timeout",
    "restore_rng_states",
    "reuse_freed_memory",
    "ResumeStateHook",
    "seeded_rng",
    "SemanticSegmentorWithTTA",
    "started_by_torchrun",
    "unlock_output_dir",
]
