"""HRViT: multi-scale high-resolution vision transformer (Gu et al., CVPR 2022) as a detectron2 backbone.

Parameter names follow the reference (facebookresearch/HRViT ``models/hrvit.py``, whose code is CC-BY-NC; this
module is written from the facts in docs/BACKBONES.md (HRViT), no code is copied):
``stem.*``, then ``features.{2k}`` = module k's fusion and ``features.{2k+1}`` = its stage, so a reference
state_dict without its classification ``head.*`` loads strictly. The reference constructor's arguments build
the same model with `from_reference_config`; the released layouts are `VARIANTS` (``hrvit_b1..b3``).

Any input size. The reference needs H and W to be multiples of 32: its fusion upsamples a branch by exactly
2^(j-i) with nearest neighbours, while the stem and the strided fusion convolutions round up, so branch i is
ceil(H / 2^(i+2)) high and an upsampled coarser branch comes out too large elsewhere. Two ways out:
- pad the image to a multiple of 32 and crop every output to ceil(H/s): the padded pixels then take part in
  the computation (the horizontal and vertical stripes span the whole width and height, so every row and
  column of real pixels attends to them), and features change with the amount of padding;
- crop inside the fusion (chosen here): each upsampled map is cut to the size of the branch it is added to.
  Nothing is padded: every branch has ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)) real positions and the result
  depends on the image alone. Low-resolution pixel y still covers the high-resolution rows
  [y 2^m, (y+1) 2^m) as in the reference, only the last one is cut short. For multiples of 32 the crop is
  empty and the numbers are the reference's (fixture).
The stripe attention keeps the reference's own padding (zero tokens after the last stripe, -100 on their
scores), which leaves the real tokens' results unchanged up to exp(-100). Inside MaskFormer, detectron2
still pads the batch to ``size_divisibility`` (32), as for every backbone.

Normalization. The stem, the fusion paths and the attention output use BatchNorm (``MODEL.HRVIT.NORM``,
detectron2's `get_norm` names: "BN", "SyncBN", "FrozenBN"); the attention's BatchNorm1d over tokens is run as
a 2D BatchNorm over (B * N, C, 1, 1) (same statistics, same state_dict). Mask2Former trains with 2 images per GPU,
too few for batch statistics: the configs use "SyncBN" (statistics over all GPUs, 16 images on 8; a single
process falls back to plain BN). "FrozenBN" keeps a checkpoint's statistics and affine fixed, for fine-tuning
from trained weights at small total batch sizes (the checkpoints' ``num_batches_tracked`` are then ignored).
No official HRViT weights exist, so FrozenBN is never right for a randomly initialised model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from torch import nn

from ...layers import DropPath, drop_path_rates
from .base import FEATURE_NAMES, MultiScaleBackbone, lookup_variant, out_feature_indices, run_block

__all__ = ["HRViT", "D2HRViT", "VARIANTS", "build_variant", "from_reference_config"]
# Score added to the padded keys of the last stripe (the reference's value, not -inf).
_PAD_SCORE = -100.0


def _variant(channels: Sequence[int], dim_head: int, mlp_ratio_list: Sequence[int], last_blocks: int,
             stage3_last: int) -> dict:
    """The released layout: modules with 1, 2, 3, 3, 4, 4 branches; 6 blocks per module at stride 16."""
    c1, c2, c3, c4 = channels
    return dict(
        channels=64,
        channel_list=[[c1], [c1, c2], [c1, c2, c3], [c1, c2, c3], [c1, c2, c3, c4], [c1, c2, c3, c4]],
        block_list=[[1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, last_blocks], [1, 1, stage3_last, last_blocks]],
        dim_head=dim_head, ws_list=[1, 2, 7, 7], mlp_ratio_list=list(mlp_ratio_list),
    )


# The reference's HRViT_b{1,2,3}_224 constructor arguments (without the classification head).
VARIANTS: dict[str, dict] = {
    "hrvit_b1": _variant((32, 64, 128, 256), 32, (4, 4, 4, 4), last_blocks=2, stage3_last=2),
    "hrvit_b2": _variant((48, 96, 240, 384), 24, (2, 3, 3, 3), last_blocks=2, stage3_last=6),
    "hrvit_b3": _variant((64, 128, 256, 512), 32, (2, 2, 2, 2), last_blocks=3, stage3_last=6),
}


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def stripe_attention(q: torch.Tensor, v: torch.Tensor, stripe: int, heads: int, scale: float) -> torch.Tensor:
    """Attention inside horizontal stripes of `stripe` rows by the full width, with the key equal to v.

    q, v: (B, H, W, C). A height that is not a multiple of `stripe` is zero-padded at the bottom; the padded
    keys get -100 on their scores and the padded query rows are cropped. Returns (B, H, W, C).
    """
    batch, height, width, channels = q.shape
    pad = (-height) % stripe
    if pad:
        q = F.pad(q, (0, 0, 0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, 0, 0, pad))
    stripes, length = (height + pad) // stripe, stripe * width

    # 4D (B * stripes, heads, stripe * W, C / heads): the layout CPU's fused SDPA kernel takes
    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch * stripes, length, heads, channels // heads).transpose(1, 2)

    mask = None
    if pad:
        rows = torch.arange(stripes * stripe, device=q.device).view(1, stripes, stripe, 1)
        padded = (rows >= height).expand(batch, stripes, stripe, width).reshape(batch * stripes, 1, 1, length)
        mask = torch.zeros(padded.shape, dtype=q.dtype, device=q.device).masked_fill(padded, _PAD_SCORE)
    v = split_heads(v)
    out = F.scaled_dot_product_attention(split_heads(q), v, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, stripes * stripe, width, channels)[:, :height]


def half_heads(dim: int, dim_head: int) -> tuple[int, float]:
    """Heads and score scale of each channel half: heads = dim // dim_head of width d = dim // heads; a half
    has (dim/2) // d heads with scale d^-0.5, or, when dim/2 < d, one head of width dim/2 (scale (dim/2)^-0.5)."""
    heads = dim // dim_head
    if dim % 2 or heads < 1:
        raise ValueError(f"HRViT attention needs an even channel count of at least dim_head; got {dim} channels "
                         f"with dim_head {dim_head}")
    head_width, half = dim // heads, dim // 2
    if half < head_width:
        return 1, half ** -0.5
    half_count = half // head_width
    if half % half_count:
        raise ValueError(f"HRViT attention: {half} channels per half do not split into {half_count} heads "
                         f"({dim} channels, dim_head {dim_head})")
    return half_count, head_width ** -0.5


class HRViTAttention(nn.Module):
    """Cross-shaped stripe attention with a shared key/value: horizontal stripes on the first channel half,
    vertical stripes on the second; plus a depthwise-conv path on v; Hardswish, projection, BatchNorm."""

    def __init__(self, dim: int, dim_head: int, stripe: int, norm: str):
        super().__init__()
        self.stripe = stripe
        self.heads, self.scale = half_heads(dim, dim_head)
        self.to_qkv = nn.Linear(dim, 2 * dim)  # q, then v (= k)
        self.parallel_conv = nn.Sequential(nn.Hardswish(), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
        self.act = nn.Hardswish()
        self.to_out = nn.Sequential(nn.Linear(dim, dim))
        self.attn_bn = get_norm(norm, dim)  # a BatchNorm over all tokens, as (B * N, C, 1, 1)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        q, v = self.to_qkv(x).view(batch, height, width, 2 * dim).chunk(2, dim=-1)
        half = dim // 2
        rows = stripe_attention(q[..., :half], v[..., :half], self.stripe, self.heads, self.scale)
        columns = stripe_attention(q[..., half:].transpose(1, 2), v[..., half:].transpose(1, 2), self.stripe,
                                   self.heads, self.scale).transpose(1, 2)
        out = torch.cat([rows, columns], dim=-1).reshape(batch, height * width, dim)
        out = out + _map_to_tokens(self.parallel_conv(v.permute(0, 3, 1, 2)))
        out = self.to_out(self.act(out))
        return self.attn_bn(out.reshape(-1, dim, 1, 1)).view(batch, height * width, dim)


def des_split(dim: int) -> tuple[int, int]:
    """DES factors (p, k) with dim = k * p: e = floor(log2(dim)), p = 2^(e - e // 2), k = dim // p."""
    exponent = dim.bit_length() - 1
    p = 2 ** (exponent - exponent // 2)
    if dim % p:
        raise ValueError(f"HRViT DES: {dim} channels are not a multiple of its factor p = {p}")
    return p, dim // p


class DES(nn.Module):
    """Dense efficient shortcut: the channels as a (k, p) grid, Linear over p, GELU, Linear over k."""

    def __init__(self, dim: int):
        super().__init__()
        self.p, self.k = des_split(dim)
        self.proj_right = nn.Linear(self.p, self.p)
        self.act = nn.GELU()
        self.proj_left = nn.Linear(self.k, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GELU before the swap of the two axes (elementwise, the same result; contiguous memory is faster)
        y = self.act(self.proj_right(x.unflatten(-1, (self.k, self.p)))).transpose(-1, -2)
        return self.proj_left(y).transpose(-1, -2).flatten(-2)


class MixConv(nn.Module):
    """Depthwise 3x3 on the first channel half, depthwise 5x5 on the second."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.conv_3 = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.conv_5 = nn.Conv2d(dim - half, dim - half, 5, padding=2, groups=dim - half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.split([self.conv_3.in_channels, self.conv_5.in_channels], dim=1)
        return torch.cat([self.conv_3(first), self.conv_5(second)], dim=1)


class MixCFN(nn.Module):
    """fc1, mixed-scale depthwise convolutions, GELU, fc2."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        hidden = dim * mlp_ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = MixConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.act(self.conv(_tokens_to_map(self.fc1(x), height, width)))
        return self.fc2(_map_to_tokens(x))


class HRViTBlock(nn.Module):
    """x + DropPath(attn(LN(x)) + DES(x)), then x + DropPath(MixCFN(LN(x)))."""

    def __init__(self, dim: int, dim_head: int, stripe: int, mlp_ratio: int, drop_path: float, norm: str):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = HRViTAttention(dim, dim_head, stripe, norm)
        self.des = DES(dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = MixCFN(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.attn_norm(x), height, width) + self.des(x))
        return x + self.drop_path(self.ffn(self.ffn_norm(x), height, width))


class PatchEmbed(nn.Module):
    """Conv1x1 and depthwise Conv3x3 (both with bias), then LayerNorm: NCHW in, tokens out."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_dim, dim, 1), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_map_to_tokens(self.proj(x)))


class HRViTStage(nn.Module):
    """Per branch: patch embedding, blocks, LayerNorm (`norm.i`). NCHW maps in and out."""

    def __init__(self, in_dims: Sequence[int], dims: Sequence[int], depths: Sequence[int], dim_head: int,
                 stripes: Sequence[int], mlp_ratios: Sequence[int], drop_path: Sequence[Sequence[float]],
                 norm: str):
        super().__init__()
        self.patch_embed = nn.ModuleList(PatchEmbed(i, d) for i, d in zip(in_dims, dims))
        self.branches = nn.ModuleList(
            nn.ModuleList(HRViTBlock(dims[i], dim_head, stripes[i], mlp_ratios[i], drop_path[i][j], norm)
                          for j in range(depths[i]))
            for i in range(len(dims))
        )
        self.norm = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for x, embed, blocks, norm in zip(xs, self.patch_embed, self.branches, self.norm):
            height, width = x.shape[-2:]
            x = embed(x)
            for block in blocks:
                x = run_block(block, x, height, width)
            outputs.append(_tokens_to_map(norm(x), height, width))
        return outputs


class HRViTFusion(nn.Module):
    """Output i = GELU(sum over inputs j of path_ij(x_j)): identity for j == i; for j < i a strided depthwise
    conv (kernel 2^(i-j)+1, stride 2^(i-j)), norm, Conv1x1, norm; for j > i Conv1x1, norm, nearest upsampling by
    2^(j-i) cropped to branch i's size. With one output more than inputs, the new branch sums downsample paths."""

    def __init__(self, in_dims: Sequence[int], out_dims: Sequence[int], norm: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, out_dim in enumerate(out_dims):
            paths = nn.ModuleList()
            for j, in_dim in enumerate(in_dims):
                if j == i:
                    paths.append(nn.Identity())
                elif j < i:
                    factor = 2 ** (i - j)
                    paths.append(nn.Sequential(
                        nn.Conv2d(in_dim, in_dim, factor + 1, stride=factor, padding=factor // 2, groups=in_dim,
                                  bias=False),
                        get_norm(norm, in_dim), nn.Conv2d(in_dim, out_dim, 1), get_norm(norm, out_dim),
                    ))
                else:
                    paths.append(nn.Sequential(nn.Conv2d(in_dim, out_dim, 1), get_norm(norm, out_dim)))
            self.blocks.append(paths)
        self.act = nn.GELU()

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for i, paths in enumerate(self.blocks):
            total = 0
            for j, (x, path) in enumerate(zip(xs, paths)):
                y = path(x)
                if j > i:  # (only existing branches receive upsampled maps)
                    height, width = xs[i].shape[-2:]
                    y = F.interpolate(y, scale_factor=2 ** (j - i), mode="nearest")[..., :height, :width]
                total = total + y
            outputs.append(self.act(total))
        return outputs


class HRViTStem(nn.Module):
    """Two 3x3 stride-2 convolutions, each followed by a norm and ReLU."""

    def __init__(self, in_channels: int, channels: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1)
        self.bn1 = get_norm(norm, channels // 2)
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.bn2 = get_norm(norm, channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


def check_layout(channel_list: Sequence[Sequence[int]], block_list: Sequence[Sequence[int]],
                 ws_list: Sequence[int], mlp_ratio_list: Sequence[int]) -> None:
    """Modules open branches one at a time (1, then the same or one more each), ending with 4 (res2..res5)."""
    if len(channel_list) != len(block_list) or not channel_list:
        raise ValueError(f"HRViT channel_list and block_list need one entry per module; got {len(channel_list)} "
                         f"and {len(block_list)}")
    previous = 0
    for k, (dims, depths) in enumerate(zip(channel_list, block_list)):
        if len(dims) != len(depths):
            raise ValueError(f"HRViT module {k}: channel_list {list(dims)} and block_list {list(depths)} differ "
                             "in their number of branches")
        if len(dims) not in (previous, previous + 1) or len(dims) < 1:
            raise ValueError(f"HRViT module {k} has {len(dims)} branches after {previous}: each module keeps the "
                             "branches or opens one more, starting from 1")
        previous = len(dims)
    if previous != len(FEATURE_NAMES):
        raise ValueError(f"HRViT's last module must have 4 branches (strides 4..32), got {previous}")
    for name, values in (("ws_list", ws_list), ("mlp_ratio_list", mlp_ratio_list)):
        if len(values) != len(FEATURE_NAMES):
            raise ValueError(f"HRViT {name} needs one value per branch (4), got {list(values)}")


class HRViT(MultiScaleBackbone):
    """Stem, then modules of (fusion, stage) with 1 to 4 parallel branches at strides 4, 8, 16, 32; returns
    the last stage's four LayerNorm-ed maps as res2..res5 (NCHW). `with_cp` turns on activation
    checkpointing."""

    checkpoint_blocks = r"features\.\d+\.branches\.\d+\.\d+"

    def __init__(self, channel_list: Sequence[Sequence[int]], block_list: Sequence[Sequence[int]],
                 dim_head: int, ws_list: Sequence[int], mlp_ratio_list: Sequence[int], channels: int = 64,
                 in_channels: int = 3, drop_path_rate: float = 0.0, norm: str = "BN", with_cp: bool = False,
                 out_features: Sequence[str] = FEATURE_NAMES):
        super().__init__()
        check_layout(channel_list, block_list, ws_list, mlp_ratio_list)
        self.num_features = list(channel_list[-1])
        self.stem = HRViTStem(in_channels, channels, norm)
        # Stochastic depth rises over all blocks in build order (module, branch, block): this project's
        # choice, the fixture (eval mode) cannot tell.
        rates = iter(drop_path_rates(drop_path_rate, [depth for depths in block_list for depth in depths]))
        self.features = nn.ModuleList()
        in_dims = [channels]
        for dims, depths in zip(channel_list, block_list):
            fused_dims = in_dims + list(dims[len(in_dims):])
            self.features.append(HRViTFusion(in_dims, fused_dims, norm))
            drop_path = [next(rates) for _ in depths]
            self.features.append(HRViTStage(fused_dims, dims, depths, dim_head, ws_list, mlp_ratio_list, drop_path,
                                            norm))
            in_dims = list(dims)
        if norm == "FrozenBN":
            self._register_load_state_dict_pre_hook(self._drop_frozen_batch_counters)
        self._set_outputs(out_feature_indices(out_features, "MODEL.HRVIT.OUT_FEATURES"), self.num_features)
        self.activation_checkpointing = with_cp

    def _drop_frozen_batch_counters(self, state_dict, prefix, *args) -> None:
        """FrozenBN has no `num_batches_tracked`: a BN checkpoint's counters are dropped, not reported."""
        for name, module in self.named_modules():
            if isinstance(module, FrozenBatchNorm2d):
                state_dict.pop(f"{prefix}{name}.num_batches_tracked", None)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        xs = [self.stem(x)]
        for module in self.features:
            xs = module(xs)
        return dict(zip(FEATURE_NAMES, xs))


def from_reference_config(config: dict, **overrides) -> HRViT:
    """HRViT from the reference constructor's arguments (`HRViT(**config)`, e.g. a fixture's `config`).
    The classification head's arguments (num_classes, head_dropout) are ignored: the head is not built."""
    config = dict(config)
    for key in ("num_classes", "head_dropout"):
        config.pop(key, None)
    stride = config.pop("stride", 4)
    if stride != 4:
        raise ValueError(f"HRViT stride {stride} is not supported: the stem has stride 4")
    for key in ("dropout", "proj_dropout"):
        rate = config.pop(key, 0.0)
        if rate:
            raise ValueError(f"HRViT {key}={rate} is not supported (only 0, as in the released models)")
    known = {"channels", "channel_list", "block_list", "dim_head", "ws_list", "mlp_ratio_list", "in_channels",
             "drop_path_rate", "with_cp"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown HRViT reference arguments {unknown}; known: {sorted(known)}")
    config.update(overrides)
    return HRViT(**config)


def build_variant(name: str, **overrides) -> HRViT:
    """A released layout by name ("hrvit_b1", "hrvit_b2", "hrvit_b3"); keyword arguments override HRViT's."""
    return HRViT(**dict(lookup_variant(VARIANTS, name, "HRViT"), **overrides))


# MODEL.HRVIT list keys -> HRViT arguments; None in the config means "the variant's value".
_LAYOUT_KEYS = {"CHANNELS": "channels", "CHANNEL_LIST": "channel_list", "BLOCK_LIST": "block_list",
                "DIM_HEAD": "dim_head", "WS_LIST": "ws_list", "MLP_RATIO_LIST": "mlp_ratio_list"}


def layout_from_cfg(c) -> dict:
    """The layout of MODEL.HRVIT: VARIANT's values, each replaced by its key when that key is set."""
    if c.VARIANT and c.VARIANT not in VARIANTS:
        raise ValueError(f"MODEL.HRVIT.VARIANT {c.VARIANT!r} is unknown; known: {sorted(VARIANTS)} or '' "
                         "(then every layout key is given)")
    layout = dict(VARIANTS[c.VARIANT]) if c.VARIANT else {}
    for key, argument in _LAYOUT_KEYS.items():
        if c[key] is not None:
            layout[argument] = c[key]
        elif argument not in layout:
            raise ValueError(f"MODEL.HRVIT.{key} must be set when MODEL.HRVIT.VARIANT is empty")
    return layout


@BACKBONE_REGISTRY.register()
class D2HRViT(HRViT):
    """HRViT configured by MODEL.HRVIT.* (activation checkpointing: MODEL.BACKBONE.ACTIVATION_CHECKPOINTING or
    MODEL.HRVIT.WITH_CP)."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec):
        c = cfg.MODEL.HRVIT
        norms = ("BN", "SyncBN", "FrozenBN")
        if c.NORM not in norms:
            raise ValueError(f"MODEL.HRVIT.NORM {c.NORM!r} is not one of {norms}")
        super().__init__(**layout_from_cfg(c), in_channels=input_shape.channels, drop_path_rate=c.DROP_PATH_RATE,
                         norm=c.NORM, with_cp=cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING or c.WITH_CP,
                         out_features=c.OUT_FEATURES)
