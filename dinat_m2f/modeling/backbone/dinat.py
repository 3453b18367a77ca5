"""DiNAT: Dilated Neighborhood Attention Transformer (Hassani & Shi, 2022) as a detectron2 backbone.

Module and parameter names follow the original implementation so that the ImageNet and the
Mask2Former-DiNAT checkpoints load unchanged (see shared/specs/mask2former.md, Backbone section).
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import nn

from ...layers import DropPath, NeighborhoodAttention2D

__all__ = ["DiNAT", "D2DiNAT", "DINAT_VARIANTS", "build_dinat_variant"]


def _alternating(depth: int, dilation: int) -> list[int]:
    """Plain NA on the first block of each pair, dilated on the second (the ImageNet models at 224)."""
    return [1 if i % 2 == 0 else dilation for i in range(depth)]


def _imagenet_dilations(depths: Sequence[int]) -> list[list[int]]:
    return [_alternating(depth, dilation) for depth, dilation in zip(depths, (8, 4, 2, 1))]


# The paper's ImageNet variants (kernel 7, 224x224).
DINAT_VARIANTS: dict[str, dict] = {
    "mini": dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0,
                 drop_path_rate=0.2),
    "tiny": dict(embed_dim=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0,
                 drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2.0,
                  drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32], mlp_ratio=2.0,
                 drop_path_rate=0.5, layer_scale=1e-5),
    "large": dict(embed_dim=192, depths=[3, 4, 18, 5], num_heads=[6, 12, 24, 48], mlp_ratio=2.0,
                  drop_path_rate=0.35),
}


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convolutions (no activation between) and a LayerNorm; output channels-last."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution doubling the channels, then LayerNorm; channels-last in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class NATLayer(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)), with optional layer scale."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float, drop_path: float,
                 layer_scale: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation=dilation,
                                            rel_pos_bias=True, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                            attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_scale:
            x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class NATLevel(nn.Module):
    """A stage of NAT layers; returns (input of the next stage, this stage's output before downsampling)."""

    def __init__(self, dim: int, depth: int, num_heads: int, kernel_size: int, dilations: Sequence[int],
                 downsample: bool, drop_path: Sequence[float], **layer_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            NATLayer(dim, num_heads, kernel_size, dilations[i], drop_path=drop_path[i], **layer_kwargs)
            for i in range(depth)
        )
        self.downsample = ConvDownsampler(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x, x
        return self.downsample(x), x


def check_dilations(dilations: Sequence[Sequence[int]] | None, depths: Sequence[int]) -> list[list[int]]:
    """One list per level with one dilation per block; None means dilation 1 everywhere."""
    if dilations is None:
        return [[1] * depth for depth in depths]
    if len(dilations) != len(depths):
        raise ValueError(f"MODEL.DINAT.DILATIONS must have one list per level ({len(depths)} levels for "
                         f"DEPTHS {list(depths)}), got {len(dilations)}: {dilations}")
    for level, (level_dilations, depth) in enumerate(zip(dilations, depths)):
        if len(level_dilations) != depth:
            raise ValueError(f"MODEL.DINAT.DILATIONS level {level} has {len(level_dilations)} values "
                             f"{list(level_dilations)} but DEPTHS[{level}] = {depth} blocks")
    return [list(level_dilations) for level_dilations in dilations]


class DiNAT(nn.Module):
    """Conv tokenizer, levels of NAT layers with per-block dilations, conv downsamplers, and a LayerNorm
    (`norm0..norm3`) on each output level. Outputs res2..res5 (strides 4..32) as NCHW tensors."""

    def __init__(self, embed_dim: int = 192, depths: Sequence[int] = (3, 4, 18, 5),
                 num_heads: Sequence[int] = (6, 12, 24, 48), kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.3, in_chans: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 layer_scale: float | None = None):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"NUM_HEADS {list(num_heads)} must have one entry per level of DEPTHS {list(depths)}")
        dilations = check_dilations(dilations, depths)
        self.num_levels = len(depths)
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_levels)]
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages

        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth rises linearly over all blocks.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.levels.append(NATLevel(
                self.num_features[i], depth, num_heads[i], kernel_size, dilations[i],
                downsample=i < self.num_levels - 1, drop_path=rates[first:first + depth],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, layer_scale=layer_scale,
            ))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        """FROZEN_STAGES = n >= 0 freezes the tokenizer and the first n levels."""
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed] + list(self.levels[: self.frozen_stages])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "DiNAT":
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        outputs = {}
        for i, level in enumerate(self.levels):
            x, level_out = level(x)
            if i in self.out_indices:
                level_out = getattr(self, f"norm{i}")(level_out)
                outputs[f"res{i + 2}"] = level_out.permute(0, 3, 1, 2).contiguous()
        return outputs


def build_dinat_variant(name: str, kernel_size: int = 7, **overrides) -> DiNAT:
    """One of the paper's ImageNet variants ("mini", "tiny", "small", "base", "large") with its 224 dilations."""
    if name not in DINAT_VARIANTS:
        raise ValueError(f"unknown DiNAT variant {name!r}; known: {sorted(DINAT_VARIANTS)}")
    kwargs = dict(DINAT_VARIANTS[name], kernel_size=kernel_size)
    kwargs["dilations"] = _imagenet_dilations(kwargs["depths"])
    kwargs.update(overrides)
    return DiNAT(**kwargs)


_FEATURE_NAMES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
class D2DiNAT(DiNAT, Backbone):
    """DiNAT configured by MODEL.DINAT.*, with detectron2's Backbone interface."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        c = cfg.MODEL.DINAT
        out_features = list(c.OUT_FEATURES)
        unknown = [name for name in out_features if name not in _FEATURE_NAMES]
        if unknown:
            raise ValueError(f"MODEL.DINAT.OUT_FEATURES has unknown names {unknown}; choose from {_FEATURE_NAMES}")
        super().__init__(
            embed_dim=c.EMBED_DIM, depths=c.DEPTHS, num_heads=c.NUM_HEADS, kernel_size=c.KERNEL_SIZE,
            dilations=c.DILATIONS, mlp_ratio=c.MLP_RATIO, qkv_bias=c.QKV_BIAS, qk_scale=c.QK_SCALE,
            drop_rate=c.DROP_RATE, attn_drop_rate=c.ATTN_DROP_RATE, drop_path_rate=c.DROP_PATH_RATE,
            in_chans=input_shape.channels, out_indices=tuple(_FEATURE_NAMES.index(n) for n in out_features),
            frozen_stages=c.FROZEN_STAGES, layer_scale=c.LAYER_SCALE,
        )
        self._out_features = out_features
        self._out_feature_strides = {name: 4 * 2 ** i for i, name in enumerate(_FEATURE_NAMES)}
        self._out_feature_channels = {name: self.num_features[i] for i, name in enumerate(_FEATURE_NAMES)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"D2DiNAT takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        return super().forward(x)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
