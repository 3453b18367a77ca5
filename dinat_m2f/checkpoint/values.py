"""Weights that would load without a message but give wrong results: integers or booleans for floating-point
parameters (loading casts them silently) and NaN or infinite values (every output NaN, the demo writing empty
results with exit status 0). Both are refused, naming the file and the keys: no model computes anything useful
from them, and a loud warning scrolls past in a training log that then runs for days."""
from typing import Any, Dict, List

import torch

from .readers import CheckpointFileError

__all__ = ["check_weight_values"]

_SHOWN = 10


def _listed(items: List[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def check_weight_values(filename: str, weights: Dict[str, Any], model_state: Dict[str, torch.Tensor]) -> None:
    """Raise CheckpointFileError naming ``filename`` and every key of ``weights`` (a state_dict under the
    model's names, optionally with DDP's "module." prefix) that is not floating point where the model's entry
    is, or that holds NaN or infinite values. Entries the model does not have are not looked at."""
    wrong_dtype, not_finite = [], []
    for key, value in weights.items():
        target = model_state.get(key.removeprefix("module."))
        if target is None or not isinstance(value, torch.Tensor):
            continue
        if target.is_floating_point() and not value.is_floating_point():
            wrong_dtype.append(f"{key} ({value.dtype}, the model's is {target.dtype})")
        elif value.is_floating_point() and not torch.isfinite(value.sum()):
            # a NaN or infinity makes the sum non-finite (a reduction, no copy); an overflowing sum of finite
            # values also lands here and is counted exactly
            bad = value.numel() - int(torch.isfinite(value).sum())
            if bad:
                not_finite.append(f"{key} ({bad} of {value.numel()} values)")
    problems = []
    if wrong_dtype:
        problems.append(f"these weights are not floating point, so they cannot be the model's floating-point "
                        f"parameters (loading would cast them): {_listed(wrong_dtype)}")
    if not_finite:
        problems.append(f"these weights hold NaN or infinite values (every output would be NaN): {_listed(not_finite)}")
    if problems:
        raise CheckpointFileError(f"Refusing to load {filename}: " + "; ".join(problems))
