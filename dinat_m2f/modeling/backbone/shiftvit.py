"""ShiftViT ("When Shift Operation Meets Vision Transformer", Wang et al., AAAI 2022) as a detectron2 backbone.

A Swin-like hierarchy whose blocks have no attention: each block shifts a few channel groups by one pixel
and adds an MLP of 1x1 convolutions. Parameter names follow microsoft/SPACH `models/shiftvit.py`
(`patch_embed.*`, `layers.i.blocks.j.*`, `layers.i.downsample.*`), so its ImageNet checkpoints load once the
classifier's `norm.*` / `head.*` are dropped (tools/convert-pretrained-model-to-d2.py --arch shiftvit).
res2..res5 are each stage's output before its downsample, through added channels-last LayerNorms
`norm0..norm3` (docs/BACKBONES.md, ShiftViT).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, drop_path_rates
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = ["ShiftViT", "D2ShiftViT", "VARIANTS", "build_variant", "from_reference_config", "shift_channels"]

# The reference's `norm_layer` choices. "GN1" is GroupNorm with one group: statistics over all of (C, H, W) of
# each sample (not a per-token LayerNorm), per-channel affine.
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "GN1": lambda channels: nn.GroupNorm(1, channels),
    "BN": nn.BatchNorm2d,
}


def shift_channels(x: torch.Tensor, n_div: int) -> torch.Tensor:
    """Partial shift of an NCHW map by one pixel, g = C // n_div channels per direction: [0, g) left,
    [g, 2g) right, [2g, 3g) up, [3g, 4g) down; vacated pixels are zero, channels >= 4g unchanged."""
    g = x.shape[1] // n_div
    out = torch.zeros_like(x)
    out[:, :g, :, :-1] = x[:, :g, :, 1:]
    out[:, g:2 * g, :, 1:] = x[:, g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:] = x[:, 4 * g:]
    return out


class Mlp(nn.Module):
    """1x1 convolution (C -> hidden), GELU, 1x1 convolution back; NCHW in and out."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ShiftViTBlock(nn.Module):
    """x = shift(x); x = x + DropPath(MLP(norm2(x))). The shift has no residual; the only norm is `norm2`."""

    def __init__(self, dim: int, n_div: int, mlp_ratio: float, drop_path: float, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.n_div = n_div
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = shift_channels(x, self.n_div)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """norm, then a 2x2 stride-2 convolution doubling the channels (no bias)."""

    def __init__(self, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=2, stride=2, bias=False)
        self.norm = norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """4x4 stride-4 convolution (with bias), then norm."""

    def __init__(self, in_chans: int, embed_dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=4, stride=4)
        self.norm = norm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class BasicLayer(nn.Module):
    """A stage: its blocks, then (except in the last stage) the downsample; returns (next input, output)."""

    def __init__(self, dim: int, depth: int, n_div: int, mlp_ratio: float, drop_path: Sequence[float],
                 norm: Callable[[int], nn.Module], downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ShiftViTBlock(dim, n_div, mlp_ratio, drop_path[j], norm) for j in range(depth))
        self.downsample = PatchMerging(dim, norm) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = run_block(block, x)
        return (x if self.downsample is None else self.downsample(x)), x


class ShiftViT(MultiScaleBackbone):
    """ShiftViT's stem and four stages, with a channels-last LayerNorm `norm{i}` on each output level.
    Outputs res2..res5 (strides 4..32) as NCHW tensors.

    The 2x2 merges need even maps down to stride 16: inputs are zero-padded to a multiple of 32 at the
    bottom/right (`input_multiple`), as the meta-architecture pads its batch, and the outputs cropped to the
    image's ceil(H / stride) x ceil(W / stride). GN1's statistics cover the padded map, so a padded batch and
    a padded single image give the same features."""

    checkpoint_blocks = r"layers\.\d+\.blocks\.\d+"
    input_multiple = 32

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (6, 8, 18, 6), mlp_ratio: float = 2.0,
                 n_div: int = 12, drop_path_rate: float = 0.0, norm: str = "GN1", in_chans: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if len(depths) != len(FEATURE_NAMES):
            raise ValueError(f"MODEL.SHIFTVIT.DEPTHS must have one entry per level res2..res5 (4), got "
                             f"{len(depths)}: {list(depths)}")
        for level, depth in enumerate(depths):
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
                raise ValueError(f"MODEL.SHIFTVIT.DEPTHS level {level} must be a block count >= 0, got {depth!r}")
        if norm not in NORMS:
            raise ValueError(f"MODEL.SHIFTVIT.NORM {norm!r} is unknown; known: {sorted(NORMS)}")
        if n_div < 4:
            raise ValueError(f"MODEL.SHIFTVIT.N_DIV must be >= 4 (four shifted groups of C // N_DIV channels), "
                             f"got {n_div}")
        norm_layer = NORMS[norm]
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.out_indices = tuple(out_indices)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, norm_layer)
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(
            BasicLayer(self.num_features[i], depth, n_div, mlp_ratio, rates[i], norm_layer,
                       downsample=i < len(depths) - 1)
            for i, depth in enumerate(depths)
        )
        self._add_output_norms(self.out_indices, self.num_features)
        self._set_outputs(self.out_indices, self.num_features)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        outputs = {}
        for i, layer in enumerate(self.layers):
            x, level_out = layer(x)
            if i in self.out_indices:
                outputs[FEATURE_NAMES[i]] = self._output_norm(i, level_out.permute(0, 2, 3, 1))
        return outputs


@BACKBONE_REGISTRY.register()
class D2ShiftViT(ShiftViT):
    """ShiftViT configured by MODEL.SHIFTVIT.* (and MODEL.BACKBONE.ACTIVATION_CHECKPOINTING)."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec):
        c = cfg.MODEL.SHIFTVIT
        super().__init__(
            embed_dim=c.EMBED_DIM, depths=c.DEPTHS, mlp_ratio=c.MLP_RATIO, n_div=c.N_DIV,
            drop_path_rate=c.DROP_PATH_RATE, norm=c.NORM, in_chans=input_shape.channels,
            out_indices=out_feature_indices(c.OUT_FEATURES, "MODEL.SHIFTVIT.OUT_FEATURES"),
        )
        self.activation_checkpointing = cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING


# SPACH's registry variants (tests/fixtures/backbone_manifests.json `constructor`; light_small from
# specs/backbones.md). drop_path_rate is a training choice and not part of these: without one, the reference
# default (0.1) applies.
VARIANTS: dict[str, dict] = {
    "shiftvit_light_tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], mlp_ratio=4, n_div=12),
    "shiftvit_r2_tiny": dict(embed_dim=96, depths=[6, 8, 18, 6], mlp_ratio=2, n_div=12),
    "shiftvit_light_small": dict(embed_dim=96, depths=[2, 2, 18, 2], mlp_ratio=4, n_div=12),
    "shiftvit_r2_small": dict(embed_dim=96, depths=[10, 18, 36, 10], mlp_ratio=2, n_div=12),
    "shiftvit_r2_base": dict(embed_dim=128, depths=[10, 18, 36, 10], mlp_ratio=2, n_div=16),
}

# The reference constructor's arguments -> MODEL.SHIFTVIT keys, with the reference's defaults.
_REFERENCE_TO_CFG = {"embed_dim": ("EMBED_DIM", 96), "depths": ("DEPTHS", [2, 2, 6, 2]),
                     "mlp_ratio": ("MLP_RATIO", 4.0), "n_div": ("N_DIV", 12),
                     "drop_path_rate": ("DROP_PATH_RATE", 0.1), "norm_layer": ("NORM", "GN1")}
# Arguments this backbone implements only at the reference's default value.
_REFERENCE_FIXED = {"patch_size": 4, "patch_norm": True, "act_layer": "GELU", "drop_rate": 0.0}
# Arguments of the classifier or of bookkeeping only: no effect on res2..res5.
_REFERENCE_IGNORED = ("img_size", "num_classes", "use_checkpoint")


def from_reference_config(config: dict) -> D2ShiftViT:
    """D2ShiftViT from the arguments of SPACH's `ShiftViT(**config)` (embed_dim, depths, mlp_ratio, n_div,
    drop_path_rate, norm_layer, in_chans, ...); absent ones take the reference's defaults."""
    from ...config import get_project_cfg

    known = set(_REFERENCE_TO_CFG) | set(_REFERENCE_FIXED) | set(_REFERENCE_IGNORED) | {"in_chans"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown ShiftViT constructor arguments {unknown}; known: {sorted(known)}")
    for key, supported in _REFERENCE_FIXED.items():
        if config.get(key, supported) != supported:
            raise ValueError(f"ShiftViT {key}={config[key]!r} is not supported (only the reference's {supported!r})")
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2ShiftViT"
    for key, (cfg_key, default) in _REFERENCE_TO_CFG.items():
        cfg.MODEL.SHIFTVIT[cfg_key] = config.get(key, default)
    return D2ShiftViT(cfg, ShapeSpec(channels=config.get("in_chans", 3)))


def build_variant(name: str, **overrides) -> D2ShiftViT:
    """One of `VARIANTS` (SPACH's registry names), with reference constructor arguments overridden."""
    return from_reference_config({**lookup_variant(VARIANTS, name, "ShiftViT"), **overrides})
