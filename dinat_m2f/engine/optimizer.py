"""Optimizer of Mask2Former: parameter groups with a backbone LR multiplier and weight decay 0 for norms,
embeddings and positional bias tables, plus optional full-model gradient clipping.

Weight decay per parameter (the first rule that matches wins, in this order of precedence):
  1. parameters of normalization layers (LayerNorm, GroupNorm, BatchNorm, ...): SOLVER.WEIGHT_DECAY_NORM;
  2. parameters of ``nn.Embedding`` (the decoder's query_feat, query_embed, level_embed): SOLVER.WEIGHT_DECAY_EMBED;
  3. positional bias tables, i.e. parameters named ``rpb`` (DiNAT's relative positional bias),
     ``relative_position_bias_table`` or ``absolute_pos_embed`` (Swin): always 0, as in Mask2Former's and
     DiNAT's trainers (these tables are additive attention biases, not weights, and were trained without
     decay in the released checkpoints);
  4. everything else: SOLVER.WEIGHT_DECAY.
Parameters of modules whose name contains "backbone" get SOLVER.BASE_LR * SOLVER.BACKBONE_MULTIPLIER.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Set, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)
# Parameter names (the part after the module's name) of positional bias tables: never decayed.
POSITIONAL_TABLE_NAMES = ("rpb", "relative_position_bias_table", "absolute_pos_embed")

OPTIMIZERS = ("SGD", "ADAMW")


def get_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups (lr, weight_decay) of ``model`` following the rules in this module's docstring."""
    base_lr = cfg.SOLVER.BASE_LR
    params: List[Dict[str, Any]] = []
    seen: Set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr = base_lr
            if "backbone" in module_name:
                lr = base_lr * cfg.SOLVER.BACKBONE_MULTIPLIER
            if isinstance(module, NORM_MODULE_TYPES):
                weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, torch.nn.Embedding):
                weight_decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            elif param_name in POSITIONAL_TABLE_NAMES:
                weight_decay = 0.0
            else:
                weight_decay = cfg.SOLVER.WEIGHT_DECAY
            params.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    return reduce_param_groups(params)


def _with_full_model_clipping(
    optimizer_type: Type[torch.optim.Optimizer], clip_value: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose step() first clips the gradient norm of all its parameters
    together. With a GradScaler, ``scaler.step(opt)`` unscales the gradients before calling this step."""

    def step(self, closure=None):
        all_params = itertools.chain(*[group["params"] for group in self.param_groups])
        torch.nn.utils.clip_grad_norm_(all_params, clip_value, norm_type)
        return super(clipped_type, self).step(closure)

    clipped_type = type(optimizer_type.__name__ + "WithFullModelGradientClip", (optimizer_type,), {"step": step})
    return clipped_type


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW (SOLVER.OPTIMIZER) over :func:`get_param_groups`, with SOLVER.CLIP_GRADIENTS applied:
    CLIP_TYPE "full_model" clips the norm of all gradients together; "value"/"norm" are detectron2's
    per-parameter clippers."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {cfg.SOLVER.OPTIMIZER!r}")
    optimizer_type: Type[torch.optim.Optimizer] = torch.optim.SGD if name == "SGD" else torch.optim.AdamW
    clip = cfg.SOLVER.CLIP_GRADIENTS
    full_model_clipping = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0
    if full_model_clipping:
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm", "full_model"):
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model', 'value' or 'norm', "
            f"got {clip.CLIP_TYPE!r}"
        )

    groups = get_param_groups(cfg, model)
    if name == "SGD":
        optimizer = optimizer_type(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    else:
        optimizer = optimizer_type(groups, lr=cfg.SOLVER.BASE_LR)
    if clip.ENABLED and not full_model_clipping:
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer

