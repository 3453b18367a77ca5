"""The base of every backbone of this project: what the head reads from a backbone, in one place.

A `MultiScaleBackbone` returns res2..res5 (strides 4, 8, 16, 32 unless the family says otherwise) as NCHW maps
of ceil(H / stride) x ceil(W / stride) for an input of any size, and owns:
- the feature names, strides and channels (`output_shape`), and the check of a config's OUT_FEATURES;
- the input check and the size policy: a family whose layers need sizes of a multiple sets `input_multiple`;
  its input is then zero-padded at the bottom/right to that multiple and its features cropped back;
- `size_divisibility` (32: the batch padding of the meta-architecture);
- activation checkpointing (`MODEL.BACKBONE.ACTIVATION_CHECKPOINTING`): each block named by the family's
  `checkpoint_blocks` pattern, run through `run_block`, keeps only its inputs for the backward and recomputes
  its activations there (torch.utils.checkpoint, non-reentrant). Same numbers, less memory, more time.

A family implements `forward_features(x) -> {name: map}` and calls `_set_outputs(...)` in its constructor; its
D2 class (the registered one) only turns config keys into constructor arguments.
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["FEATURE_NAMES", "FEATURE_STRIDES", "MultiScaleBackbone", "out_feature_indices", "run_block",
           "lookup_variant"]

FEATURE_NAMES = ("res2", "res3", "res4", "res5")
FEATURE_STRIDES = (4, 8, 16, 32)


def out_feature_indices(names: Sequence[str], key: str) -> tuple[int, ...]:
    """Positions in FEATURE_NAMES of a config's OUT_FEATURES `names` (`key` names the config key in the error)."""
    unknown = [name for name in names if name not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"{key} has unknown names {unknown}; choose from {FEATURE_NAMES}")
    return tuple(FEATURE_NAMES.index(name) for name in names)


def lookup_variant(variants: dict[str, dict], name: str, family: str) -> dict:
    """`variants[name]`, or a ValueError naming the family's known variants."""
    if name not in variants:
        raise ValueError(f"unknown {family} variant {name!r}; known: {sorted(variants)}")
    return variants[name]


@contextlib.contextmanager
def _running_statistics_kept(block: nn.Module):
    """Recomputing a block runs its BatchNorms in training mode a second time: their running statistics (and
    batch counters) are put back afterwards, so that each batch counts once, as without checkpointing."""
    norms = [m for m in block.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [[buffer.clone() for buffer in norm.buffers(recurse=False)] for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved):
                for buffer, value in zip(norm.buffers(recurse=False), buffers):
                    buffer.copy_(value)


def _checkpoint_contexts(block: nn.Module):
    return contextlib.nullcontext(), _running_statistics_kept(block)


def run_block(block: nn.Module, *args):
    """`block(*args)`; for a block the backbone marked for activation checkpointing, while gradients are
    recorded, through torch.utils.checkpoint (non-reentrant: the random state is replayed, so dropout and
    stochastic depth draw the same masks in the recomputation)."""
    if getattr(block, "_checkpoint_activations", False) and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, context_fn=functools.partial(_checkpoint_contexts, block))
    return block(*args)


class MultiScaleBackbone(Backbone):
    """detectron2 Backbone with this project's contract (module docstring)."""

    # Full names (regular expression) of the blocks whose activations checkpointing recomputes; the family's
    # loops call them through `run_block`.
    checkpoint_blocks: str = ""
    # Input sizes the family's layers need a multiple of (1: any size runs as it is).
    input_multiple: int = 1

    def __init__(self):
        super().__init__()
        self._activation_checkpointing = False

    def _set_outputs(self, out_indices: Sequence[int], channels: Sequence[int],
                     strides: Sequence[int] = FEATURE_STRIDES) -> None:
        """The features forward returns (positions in FEATURE_NAMES) and every level's channels and stride."""
        self._out_features = [FEATURE_NAMES[i] for i in out_indices]
        self._out_feature_channels = dict(zip(FEATURE_NAMES, channels))
        self._out_feature_strides = dict(zip(FEATURE_NAMES, strides))

    def _add_output_norms(self, indices: Sequence[int], channels: Sequence[int]) -> None:
        """A LayerNorm `norm{i}` (the references' checkpoint name) for each output level i."""
        for i in indices:
            self.add_module(f"norm{i}", nn.LayerNorm(channels[i]))

    def _output_norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Level i's channels-last (N, H, W, C) map through `norm{i}`, as a contiguous NCHW map."""
        return getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous()

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's network on an input of a multiple of `input_multiple`: at least the out features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        multiple = self.input_multiple
        padded = multiple > 1 and (height % multiple or width % multiple)
        if padded:
            x = F.pad(x, (0, -width % multiple, 0, -height % multiple))
        features = self.forward_features(x)
        outputs = {name: features[name] for name in self._out_features}
        if padded:
            for name, feature in outputs.items():
                stride = self._out_feature_strides[name]
                outputs[name] = feature[..., :-(-height // stride), :-(-width // stride)].contiguous()
        return outputs

    @property
    def size_divisibility(self) -> int:
        return 32

    @property
    def activation_checkpointing(self) -> bool:
        """Whether the blocks recompute their activations in the backward instead of keeping them."""
        return self._activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self._apply_activation_checkpointing(bool(enabled))
        self._activation_checkpointing = bool(enabled)

    def _apply_activation_checkpointing(self, enabled: bool) -> None:
        pattern = re.compile(self.checkpoint_blocks)
        blocks = [module for name, module in self.named_modules() if name and pattern.fullmatch(name)]
        if not blocks:
            raise RuntimeError(f"{type(self).__name__}: no block matches its checkpoint_blocks "
                               f"{self.checkpoint_blocks!r}")
        for block in blocks:
            block._checkpoint_activations = enabled
