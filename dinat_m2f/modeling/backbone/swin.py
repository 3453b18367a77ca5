"""Swin Transformer (Liu et al., 2021) as a detectron2 backbone: Mask2Former's `D2SwinTransformer`.

Config keys (`MODEL.SWIN.*`), module and parameter names follow Mask2Former's D2 backbone, so that its
released segmentation checkpoints (`model_final_*.pkl`) and the converted ImageNet Swin checkpoints load
unchanged. The D2 version differs from the classification Swin in ways that change the numbers, reproduced
here (docs/BACKBONES.md, Swin):
- every block pads its map to a multiple of the window, and the padded tokens are not masked;
- odd blocks always shift, even when the map is not larger than the window;
- the shift mask (-100 between tokens of different regions) is built from the padded size of each stage.
Any input size works: the stem and the patch merging pad odd sizes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, Mlp, PatchEmbed, drop_path_rates, window_partition, window_reverse
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = ["SwinTransformer", "D2SwinTransformer", "VARIANTS", "build_variant", "from_reference_config"]

# The value Swin adds to the scores of token pairs from different shift regions (not -inf).
SHIFT_MASK_VALUE = -100.0


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (odd sizes zero-padded), LayerNorm(4C), Linear(4C -> 2C); channels-last."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Swin's order: (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def relative_position_index(window_size: int) -> torch.Tensor:
    """(M*M, M*M) index into the ((2M-1)^2, heads) bias table: (yi-yj+M-1)*(2M-1) + (xi-xj+M-1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    offsets = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :] + window_size - 1
    return offsets[0] * (2 * window_size - 1) + offsets[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside M x M windows with a relative position bias per head.

    Input (B, windows, M*M, C); `mask` (windows, M*M, M*M) is added to the scores of every head. The scores
    and the weighted sum run in `F.scaled_dot_product_attention` (counted by tools/analyze_model.py)."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool, qk_scale: float | None,
                 attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent: Mask2Former's checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, windows, tokens, channels = x.shape
        # qkv output channels: q of all heads, then k, then v.
        qkv = self.qkv(x).view(batch, windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, windows, heads, tokens, head_dim)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)  # (heads, tokens, tokens)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # (windows, heads, tokens, tokens)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        x = x.transpose(2, 3).reshape(batch, windows, tokens, channels)
        return self.proj_drop(self.proj(x))


def shift_mask(height: int, width: int, window_size: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, M*M, M*M) mask of a cyclically shifted map of the padded size (height, width): rows and
    columns fall into the regions [0, size-M), [size-M, size-shift), [size-shift, size); token pairs of
    different regions get SHIFT_MASK_VALUE."""

    def regions(size: int) -> torch.Tensor:
        positions = torch.arange(size, device=device)
        return (positions >= size - window_size).long() + (positions >= size - shift).long()

    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    labels = window_partition(labels[None, :, :, None], window_size)[0, :, :, 0]  # (windows, M*M)
    different = labels[:, :, None] != labels[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill_(different, SHIFT_MASK_VALUE)


class SwinTransformerBlock(nn.Module):
    """x + DropPath(W-MSA(norm1(x))), then x + DropPath(MLP(norm2(x))); channels-last (B, H, W, C).

    norm1's output is zero-padded at the bottom/right to a multiple of the window (the padded tokens take
    part in attention); with `shift`, the padded map is rolled by -shift before the windows and back after."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        height, width = x.shape[1:3]
        size = self.window_size
        shortcut = x
        x = F.pad(self.norm1(x), (0, 0, 0, -width % size, 0, -height % size))
        padded_height, padded_width = x.shape[1:3]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(window_partition(x, size), mask if self.shift else None)
        x = window_reverse(x, size, padded_height, padded_width)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """`depth` blocks (odd ones shifted by M // 2) and an optional PatchMerging; returns (input of the next
    stage, this stage's output before merging)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, shift=0 if i % 2 == 0 else self.shift,
                                 drop_path=drop_path[i], **block_kwargs)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.window_size
        padded_height, padded_width = -(-x.shape[1] // size) * size, -(-x.shape[2] // size) * size
        mask = shift_mask(padded_height, padded_width, size, self.shift, x.device)
        for block in self.blocks:
            x = run_block(block, x, mask)
        if self.downsample is None:
            return x, x
        return self.downsample(x), x


class SwinTransformer(MultiScaleBackbone):
    """Patch embedding, four stages of (shifted) window attention with patch merging between them, and a
    LayerNorm `norm0..norm3` on each stage's output. Outputs res2..res5 (strides 4..32) as NCHW tensors;
    `use_checkpoint` turns on activation checkpointing."""

    checkpoint_blocks = r"layers\.\d+\.blocks\.\d+"

    def __init__(self, pretrain_img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2, ape: bool = False,
                 patch_norm: bool = True, use_checkpoint: bool = False,
                 out_features: Sequence[str] = FEATURE_NAMES):
        super().__init__()
        check_levels(embed_dim, depths, num_heads)
        self.num_levels = len(depths)
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_levels)]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            # Learned at the pre-training resolution, resized bicubically to each input's grid.
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.layers.append(SwinStage(
                self.num_features[i], depth, num_heads[i], window_size, downsample=i < self.num_levels - 1,
                drop_path=rates[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate,
            ))
        # Mask2Former's output norms exist for every level (its checkpoints carry all four).
        self._add_output_norms(range(self.num_levels), self.num_features)
        self._set_outputs(out_feature_indices(out_features, "MODEL.SWIN.OUT_FEATURES"), self.num_features)
        self.activation_checkpointing = use_checkpoint

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        x = self.pos_drop(x)
        outputs = {}
        for i, stage in enumerate(self.layers):
            x, stage_out = stage(x)
            outputs[FEATURE_NAMES[i]] = self._output_norm(i, stage_out)
        return outputs


def check_levels(embed_dim: int, depths: Sequence[int], num_heads: Sequence[int]) -> None:
    """One NUM_HEADS entry per level of DEPTHS, each dividing that level's channels."""
    if len(num_heads) != len(depths):
        level = min(len(num_heads), len(depths))
        raise ValueError(f"MODEL.SWIN.NUM_HEADS {list(num_heads)} has {len(num_heads)} entries but "
                         f"MODEL.SWIN.DEPTHS {list(depths)} has {len(depths)} levels: level {level} has "
                         f"no {'NUM_HEADS' if len(num_heads) < len(depths) else 'DEPTHS'} entry")
    if len(depths) != len(FEATURE_NAMES):
        raise ValueError(f"MODEL.SWIN.DEPTHS {list(depths)} must have {len(FEATURE_NAMES)} levels "
                         f"({', '.join(FEATURE_NAMES)})")
    for level, heads in enumerate(num_heads):
        channels = embed_dim * 2 ** level
        if channels % heads:
            raise ValueError(f"MODEL.SWIN.NUM_HEADS level {level} is {heads}, which does not divide the "
                             f"{channels} channels of that level (EMBED_DIM {embed_dim} * 2^{level})")


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(SwinTransformer):
    """Swin configured by MODEL.SWIN.* (activation checkpointing: MODEL.BACKBONE.ACTIVATION_CHECKPOINTING or
    MODEL.SWIN.USE_CHECKPOINT)."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec):
        c = cfg.MODEL.SWIN
        super().__init__(
            pretrain_img_size=c.PRETRAIN_IMG_SIZE, patch_size=c.PATCH_SIZE, in_chans=input_shape.channels,
            embed_dim=c.EMBED_DIM, depths=c.DEPTHS, num_heads=c.NUM_HEADS, window_size=c.WINDOW_SIZE,
            mlp_ratio=c.MLP_RATIO, qkv_bias=c.QKV_BIAS, qk_scale=c.QK_SCALE, drop_rate=c.DROP_RATE,
            attn_drop_rate=c.ATTN_DROP_RATE, drop_path_rate=c.DROP_PATH_RATE, ape=c.APE,
            patch_norm=c.PATCH_NORM, out_features=c.OUT_FEATURES,
            use_checkpoint=cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING or c.USE_CHECKPOINT,
        )


def from_reference_config(config: dict) -> D2SwinTransformer:
    """The D2 backbone from the reference constructor's arguments: Mask2Former's D2SwinTransformer takes
    its cfg.MODEL.SWIN keys, so `config` names them in lower case (`embed_dim`, `depths`, `window_size`,
    ...; what the fixtures store under `config`). Keys not given keep MODEL.SWIN's defaults."""
    from ...config import get_project_cfg  # the project's defaults; config.py imports no modeling code

    cfg = get_project_cfg()
    known = {key.lower() for key in cfg.MODEL.SWIN}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown Swin reference config keys {unknown}; known: {sorted(known)}")
    for key, value in config.items():
        cfg.MODEL.SWIN[key.upper()] = list(value) if isinstance(value, (list, tuple)) else value
    return D2SwinTransformer(cfg, ShapeSpec(channels=3))


# The released Swin variants (microsoft/Swin-Transformer ImageNet checkpoints, as Mask2Former configures
# them), as reference constructor arguments. The 384 ones are the window-12 models pre-trained at 384.
_TINY = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])
_SMALL = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24])
_BASE = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])
_LARGE = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48])
_AT_224 = dict(window_size=7, pretrain_img_size=224, drop_path_rate=0.3)
_AT_384 = dict(window_size=12, pretrain_img_size=384, drop_path_rate=0.3)
VARIANTS: dict[str, dict] = {
    "swin_tiny": {**_TINY, **_AT_224},
    "swin_small": {**_SMALL, **_AT_224},
    "swin_base": {**_BASE, **_AT_224},
    "swin_base_384": {**_BASE, **_AT_384},
    "swin_large": {**_LARGE, **_AT_224},
    "swin_large_384": {**_LARGE, **_AT_384},
}


def build_variant(name: str, **overrides) -> D2SwinTransformer:
    """A released variant by name (see VARIANTS), e.g. build_variant("swin_large_384"); `overrides` are
    further reference config keys (e.g. drop_path_rate=0.0)."""
    return from_reference_config({**lookup_variant(VARIANTS, name, "Swin"), **overrides})
