"""Values a config must have before any work starts: batch sizes, iteration counts, query counts, image sizes,
learning rates and thresholds in range. Out of range they hung (``SOLVER.IMS_PER_BATCH 0``: a data loader
that never fills a batch), divided by zero (``SOLVER.MAX_ITER 0``), trained on infinities
(``SOLVER.BASE_LR .inf``) or failed deep inside the model. Every problem is listed at once."""
import math
from functools import reduce
from typing import Any, Callable, List, Optional

from detectron2.config import CfgNode

__all__ = ["check_config_values"]

Check = Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _fraction(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= 1


def _below_one(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 1


def _positive_ints(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and len(values) > 0 and all(_positive_int(v) for v in values)


def _finite(value: Any) -> bool:
    return _is_number(value)


# (key, check, what it must be)
RULES = [
    ("SOLVER.IMS_PER_BATCH", _positive_int, "a positive integer"),
    ("SOLVER.MAX_ITER", _positive_int, "a positive integer"),
    ("SOLVER.BASE_LR", _positive, "a positive finite number"),
    ("SOLVER.WEIGHT_DECAY", _non_negative, "a finite number >= 0"),
    ("SOLVER.WEIGHT_DECAY_NORM", _non_negative, "a finite number >= 0"),
    ("SOLVER.WEIGHT_DECAY_EMBED", _non_negative, "a finite number >= 0"),
    ("SOLVER.BACKBONE_MULTIPLIER", _non_negative, "a finite number >= 0"),
    ("SOLVER.MOMENTUM", _below_one, "a number in [0, 1)"),
    ("SOLVER.WARMUP_FACTOR", _fraction, "a number in [0, 1]"),
    ("SOLVER.WARMUP_ITERS", _non_negative_int, "an integer >= 0"),
    ("SOLVER.GAMMA", _positive, "a positive finite number"),
    ("SOLVER.POLY_LR_POWER", _finite, "a finite number"),
    ("SOLVER.CHECKPOINT_PERIOD", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.HIDDEN_DIM", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.NHEADS", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.DEC_LAYERS", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.DROPOUT", _below_one, "a number in [0, 1)"),
    ("MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", _non_negative, "a finite number >= 0"),
    ("MODEL.MASK_FORMER.CLASS_WEIGHT", _non_negative, "a finite number >= 0"),
    ("MODEL.MASK_FORMER.DICE_WEIGHT", _non_negative, "a finite number >= 0"),
    ("MODEL.MASK_FORMER.MASK_WEIGHT", _non_negative, "a finite number >= 0"),
    ("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", _positive_int, "a positive integer"),
    ("MODEL.MASK_FORMER.OVERSAMPLE_RATIO", lambda v: _is_number(v) and v >= 1, "a finite number >= 1"),
    ("MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", _fraction, "a number in [0, 1]"),
    ("MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", _fraction, "a number in [0, 1]"),
    ("MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", _fraction, "a number in [0, 1]"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", _positive_int, "a positive integer"),
    ("MODEL.SEM_SEG_HEAD.MASK_DIM", _positive_int, "a positive integer"),
    ("MODEL.SEM_SEG_HEAD.CONVS_DIM", _positive_int, "a positive integer"),
    ("INPUT.MIN_SIZE_TRAIN", _positive_ints, "a list of positive integers"),
    ("INPUT.MAX_SIZE_TRAIN", _positive_int, "a positive integer"),
    ("INPUT.MIN_SIZE_TEST", _non_negative_int, "an integer >= 0 (0: no resizing)"),
    ("INPUT.MAX_SIZE_TEST", _positive_int, "a positive integer"),
    ("INPUT.IMAGE_SIZE", _positive_int, "a positive integer"),
    ("INPUT.MIN_SCALE", _positive, "a positive finite number"),
    ("INPUT.MAX_SCALE", _positive, "a positive finite number"),
    ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("INPUT.SIZE_DIVISIBILITY", lambda v: isinstance(v, int) and (v == -1 or v > 0), "-1 or a positive integer"),
    ("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", _non_negative_int, "an integer >= 0"),
    ("DATALOADER.NUM_WORKERS", _non_negative_int, "an integer >= 0"),
    ("TEST.EVAL_PERIOD", _non_negative_int, "an integer >= 0 (0: only at the end)"),
    ("TEST.DETECTIONS_PER_IMAGE", _positive_int, "a positive integer"),
    ("TEST.AUG.MIN_SIZES", _positive_ints, "a list of positive integers"),
    ("TEST.AUG.MAX_SIZE", _positive_int, "a positive integer"),
]


def _value(cfg: CfgNode, key: str) -> Any:
    return reduce(getattr, key.split("."), cfg)


def _crop_problem(cfg: CfgNode) -> Optional[str]:
    crop = cfg.INPUT.CROP
    if not crop.ENABLED:
        return None
    size = crop.SIZE
    pair = isinstance(size, (list, tuple)) and len(size) == 2
    if crop.TYPE in ("relative", "relative_range"):
        if not (pair and all(_is_number(v) and 0 < v <= 1 for v in size)):
            return f"INPUT.CROP.SIZE = {size!r}: with TYPE {crop.TYPE!r}, two fractions in (0, 1]"
    elif crop.TYPE in ("absolute", "absolute_range"):
        if not (pair and _positive_ints(size)):
            return f"INPUT.CROP.SIZE = {size!r}: with TYPE {crop.TYPE!r}, two positive integers"
    return None


def _relation_problems(cfg: CfgNode) -> List[str]:
    problems = []
    mask_former = cfg.MODEL.MASK_FORMER
    if _positive_int(mask_former.HIDDEN_DIM) and _positive_int(mask_former.NHEADS) and (
        mask_former.HIDDEN_DIM % mask_former.NHEADS
    ):
        problems.append(f"MODEL.MASK_FORMER.HIDDEN_DIM = {mask_former.HIDDEN_DIM}: must be a multiple of "
                        f"MODEL.MASK_FORMER.NHEADS = {mask_former.NHEADS}")
    if _positive(cfg.INPUT.MIN_SCALE) and _positive(cfg.INPUT.MAX_SCALE) and cfg.INPUT.MIN_SCALE > cfg.INPUT.MAX_SCALE:
        problems.append(f"INPUT.MIN_SCALE = {cfg.INPUT.MIN_SCALE}: must not exceed INPUT.MAX_SCALE = "
                        f"{cfg.INPUT.MAX_SCALE}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and not _positive(clip.CLIP_VALUE):
        problems.append(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = {clip.CLIP_VALUE!r}: must be a positive finite number "
                        "when SOLVER.CLIP_GRADIENTS.ENABLED")
    crop = _crop_problem(cfg)
    return problems + ([crop] if crop else [])


def check_config_values(cfg: CfgNode, source: str) -> None:
    """Raise ValueError listing every key of ``cfg`` whose value is out of range (key, value, what it must be);
    ``source`` says where the config came from (the file, with its _BASE_ files and the command line)."""
    problems = [f"{key} = {_value(cfg, key)!r}: must be {what}" for key, check, what in RULES
                if not check(_value(cfg, key))]
    problems += _relation_problems(cfg)
    if problems:
        raise ValueError(f"Config {source} has values out of range:\n  " + "\n  ".join(problems))
