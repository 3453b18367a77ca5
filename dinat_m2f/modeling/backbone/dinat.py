"""DiNAT: Dilated Neighborhood Attention Transformer (Hassani & Shi, 2022) as a detectron2 backbone.
NAT (Hassani et al., 2022) is the same network with every dilation 1.

Module and parameter names follow the original implementation so that the ImageNet and the
Mask2Former-DiNAT checkpoints load unchanged (see docs/MASK2FORMER.md, Backbone section).
`VARIANTS` / `build_variant(name)` give the papers' ImageNet models, `from_reference_config(config)` builds
the D2 backbone from the reference constructor's arguments, and `imagenet_dilations` / `gradual_dilations`
derive each level's dilations from an input size.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, Mlp, NeighborhoodAttention2D, drop_path_rates
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = ["DiNAT", "D2DiNAT", "VARIANTS", "build_variant", "from_reference_config", "max_dilations",
           "imagenet_dilations", "gradual_dilations"]


def max_dilations(size: int, kernel_size: int, num_levels: int = 4) -> list[int]:
    """The largest dilation each level's map allows at an input of `size` pixels (its shorter side): a
    dilated window spans kernel_size * dilation pixels, so level i (stride 4 * 2**i) gets
    floor((size // stride) / kernel_size), at least 1."""
    return [max(1, size // (4 * 2 ** i) // kernel_size) for i in range(num_levels)]


def imagenet_dilations(depths: Sequence[int], kernel_size: int = 7, size: int = 224) -> list[list[int]]:
    """The ImageNet models' rule: plain NA on the first block of each pair, the level's largest dilation on
    the second. At 224 with kernel 7 that is 8, 4, 2, 1 (docs/MASK2FORMER.md)."""
    return [[1 if j % 2 == 0 else dilation for j in range(depth)]
            for depth, dilation in zip(depths, max_dilations(size, kernel_size, len(depths)))]


def gradual_dilations(depths: Sequence[int], kernel_size: int, size: int) -> list[list[int]]:
    """The downstream ("gradual") rule for training at `size` (the crop's shorter side): plain NA on the first
    block of each pair; the dilated blocks of a level alternate between ceil(D/2) and D, D being the level's
    largest dilation (`max_dilations`), and its last dilated block always takes D.

    This reproduces DiNAT-L + Mask2Former's lists (kernel 11) from a 640 crop (D = 14, 7, 3, 1):
    [1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3], [1] * 5. ceil(D/2) is a reading of two data points
    (7 -> 4, 3 -> 2); (D + 1) // 2 and D // 2 + 1 agree on them and differ only for even D.
    """
    lists = []
    for depth, largest in zip(depths, max_dilations(size, kernel_size, len(depths))):
        dilated = list(range(1, depth, 2))
        level = [1] * depth
        for m, j in enumerate(dilated):
            level[j] = largest if m % 2 == 1 or j == dilated[-1] else (largest + 1) // 2
        lists.append(level)
    return lists


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
            x = run_block(block, x)
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


class DiNAT(MultiScaleBackbone):
    """Conv tokenizer, levels of NAT layers with per-block dilations, conv downsamplers, and a LayerNorm
    (`norm0..norm3`) on each output level. Outputs res2..res5 (strides 4..32) as NCHW tensors."""

    checkpoint_blocks = r"levels\.\d+\.blocks\.\d+"

    def __init__(self, embed_dim: int = 192, depths: Sequence[int] = (3, 4, 18, 5),
                 num_heads: Sequence[int] = (6, 12, 24, 48), kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.3, in_chans: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 layer_scale: float | None = None):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"MODEL.DINAT.NUM_HEADS {list(num_heads)} must have one entry per level of "
                             f"DEPTHS {list(depths)}")
        dilations = check_dilations(dilations, depths)
        self.num_levels = len(depths)
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_levels)]
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages

        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depths)
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.levels.append(NATLevel(
                self.num_features[i], depth, num_heads[i], kernel_size, dilations[i],
                downsample=i < self.num_levels - 1, drop_path=rates[i],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, layer_scale=layer_scale,
            ))
        self._add_output_norms(self.out_indices, self.num_features)
        self._set_outputs(self.out_indices, self.num_features)
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

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        outputs = {}
        for i, level in enumerate(self.levels):
            x, level_out = level(x)
            if i in self.out_indices:
                outputs[FEATURE_NAMES[i]] = self._output_norm(i, level_out)
        return outputs


def _layer_scale(value: Any) -> float | None:
    """MODEL.DINAT.LAYER_SCALE: None (off) or the initial gamma. YAML reads `1e-5` (no dot) as a string."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"MODEL.DINAT.LAYER_SCALE must be a number or None, got {value!r}") from None


@BACKBONE_REGISTRY.register()
class D2DiNAT(DiNAT):
    """DiNAT configured by MODEL.DINAT.* (and MODEL.BACKBONE.ACTIVATION_CHECKPOINTING)."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec):
        c = cfg.MODEL.DINAT
        super().__init__(
            embed_dim=c.EMBED_DIM, depths=c.DEPTHS, num_heads=c.NUM_HEADS, kernel_size=c.KERNEL_SIZE,
            dilations=c.DILATIONS, mlp_ratio=c.MLP_RATIO, qkv_bias=c.QKV_BIAS, qk_scale=c.QK_SCALE,
            drop_rate=c.DROP_RATE, attn_drop_rate=c.ATTN_DROP_RATE, drop_path_rate=c.DROP_PATH_RATE,
            in_chans=input_shape.channels, frozen_stages=c.FROZEN_STAGES, layer_scale=_layer_scale(c.LAYER_SCALE),
            out_indices=out_feature_indices(c.OUT_FEATURES, "MODEL.DINAT.OUT_FEATURES"),
        )
        self.activation_checkpointing = cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING


# The papers' ImageNet models (NAT: Hassani et al. 2022; DiNAT: Hassani & Shi 2022), as the reference
# constructors' arguments: kernel 7, 224x224; layer scale 1e-5 on Small and Base.
_NAT_SIZES: dict[str, dict] = {
    "mini": dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0, drop_path_rate=0.2),
    "tiny": dict(embed_dim=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0, drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2.0, drop_path_rate=0.3,
                  layer_scale=1e-5),
    "base": dict(embed_dim=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32], mlp_ratio=2.0, drop_path_rate=0.5,
                 layer_scale=1e-5),
    "large": dict(embed_dim=192, depths=[3, 4, 18, 5], num_heads=[6, 12, 24, 48], mlp_ratio=2.0,
                  drop_path_rate=0.35),
}
VARIANTS: dict[str, dict] = {
    **{f"nat_{size}": dict(kwargs, kernel_size=7) for size, kwargs in _NAT_SIZES.items() if size != "large"},
    **{f"dinat_{size}": dict(kwargs, kernel_size=7, dilations=imagenet_dilations(kwargs["depths"]))
       for size, kwargs in _NAT_SIZES.items()},
}

# The reference constructor's arguments (NAT/DiNAT classification and segmentation models) -> MODEL.DINAT keys.
_REFERENCE_TO_CFG = {
    "embed_dim": "EMBED_DIM", "depths": "DEPTHS", "num_heads": "NUM_HEADS", "kernel_size": "KERNEL_SIZE",
    "dilations": "DILATIONS", "mlp_ratio": "MLP_RATIO", "qkv_bias": "QKV_BIAS", "qk_scale": "QK_SCALE",
    "drop_rate": "DROP_RATE", "attn_drop_rate": "ATTN_DROP_RATE", "drop_path_rate": "DROP_PATH_RATE",
    "layer_scale": "LAYER_SCALE", "frozen_stages": "FROZEN_STAGES",
}
_REFERENCE_REQUIRED = ("embed_dim", "mlp_ratio", "depths", "num_heads")
# The reference constructor's defaults where they differ from MODEL.DINAT's (DiNAT-L) defaults.
_REFERENCE_DEFAULTS = {"drop_path_rate": 0.2, "kernel_size": 7}
# Arguments of the classifier only (its head), or that name objects rather than values.
_REFERENCE_IGNORED = ("num_classes", "pretrained", "norm_layer")


def from_reference_config(config: dict) -> D2DiNAT:
    """D2DiNAT from the arguments of the reference NAT / DiNAT constructor (embed_dim, depths, num_heads,
    kernel_size, dilations, mlp_ratio, layer_scale, drop_path_rate, ..., and in_chans / out_indices of the
    segmentation models); absent ones take the reference's defaults (dilations None: NAT)."""
    from ...config import get_project_cfg

    known = set(_REFERENCE_TO_CFG) | set(_REFERENCE_IGNORED) | {"in_chans", "out_indices"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown NAT/DiNAT constructor arguments {unknown}; known: {sorted(known)}")
    missing = [key for key in _REFERENCE_REQUIRED if key not in config]
    if missing:
        raise ValueError(f"NAT/DiNAT constructor arguments {missing} are required (no reference default)")
    config = {**_REFERENCE_DEFAULTS, **config}
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2DiNAT"
    for key, cfg_key in _REFERENCE_TO_CFG.items():
        if key in config:
            cfg.MODEL.DINAT[cfg_key] = config[key]
    if "out_indices" in config:
        cfg.MODEL.DINAT.OUT_FEATURES = [FEATURE_NAMES[i] for i in config["out_indices"]]
    return D2DiNAT(cfg, ShapeSpec(channels=config.get("in_chans", 3)))


def build_variant(name: str, **overrides) -> D2DiNAT:
    """One of `VARIANTS` (nat_mini ... nat_base, dinat_mini ... dinat_large: kernel 7, the 224 dilations),
    with reference constructor arguments overridden, e.g. build_variant("dinat_large", kernel_size=11)."""
    return from_reference_config({**lookup_variant(VARIANTS, name, "NAT/DiNAT"), **overrides})
