"""LR schedules: detectron2's (WarmupMultiStepLR, WarmupCosineLR, ...) plus Mask2Former's WarmupPolyLR,
which current detectron2 does not have.

WarmupPolyLR multiplies the base LR by (1 - iter / MAX_ITER) ** SOLVER.POLY_LR_POWER, floored at
SOLVER.POLY_LR_CONSTANT_ENDING when that is > 0, after detectron2's warmup (SOLVER.WARMUP_*). It is an
fvcore ParamScheduler behind detectron2's LRMultiplier, so its state (the iteration) is checkpointed and
``--resume`` continues at the saved LR.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, LRScheduler, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler


class PolyParamScheduler(ParamScheduler):
    """(1 - where) ** power, never below ``constant_ending`` when that is > 0; ``where`` in [0, 1]."""

    def __init__(self, power: float, constant_ending: float = 0.0) -> None:
        if power <= 0:
            raise ValueError(f"SOLVER.POLY_LR_POWER must be > 0, got {power}")
        self.power = power
        self.constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        value = max(1.0 - where, 0.0) ** self.power
        if self.constant_ending > 0:
            return max(value, self.constant_ending)
        return value


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The schedule named by SOLVER.LR_SCHEDULER_NAME."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    max_iter = cfg.SOLVER.MAX_ITER
    schedule = WarmupParamScheduler(
        PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
        cfg.SOLVER.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=max_iter)
